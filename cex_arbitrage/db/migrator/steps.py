"""Run the steps of one planned migration, recording each in migration_history.

Transactional steps travel as ONE simple-query message:
`BEGIN; <step SQL>; <history upsert>; COMMIT;` — one round trip, and the
history row commits atomically with the schema change it records.

Steps marked `transaction:false` run statement by statement in autocommit,
because PostgreSQL runs a multi-statement message as one implicit
transaction, where `CREATE INDEX CONCURRENTLY` or a procedure that COMMITs
is refused. After each statement the history row records how far the step
got, so a re-run resumes at the first statement that did not finish.
"""

from __future__ import annotations

import time

from cex_arbitrage.db.migrator import history as hist
from cex_arbitrage.db.migrator.failures import execute
from cex_arbitrage.db.migrator.invalid_index import done_before, drop_invalid_index
from cex_arbitrage.db.migrator.model import Migration, Routine, Step
from cex_arbitrage.db.migrator.parallel import parallel_statement
from cex_arbitrage.db.migrator.plan import PlannedMigration
from cex_arbitrage.db.migrator.repeat import StatementKind, classify
from cex_arbitrage.db.migrator.session import RunContext
from cex_arbitrage.db.migrator.split import concurrent_index_name
from cex_arbitrage.db.migrator.statements import statement_with_retry, transaction_with_retry
from cex_arbitrage.db.migrator.states import MigrationState

# The step's time as the server measures it, inside the transaction that records it.
_ELAPSED_MS = "(extract(epoch FROM clock_timestamp() - now()) * 1000)::int"
_PREAMBLE = "BEGIN;\nSET LOCAL standard_conforming_strings = on;\n"


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _record(
    ctx: RunContext,
    m: Migration,
    state: MigrationState,
    steps_done: int,
    *,
    statements_done: int = 0,
    execution_ms_sql: str = "NULL",
    step_name: str | None = None,
    step_ms_sql: str | None = None,
) -> str:
    """The history upsert for `m`, sent with the SQL it records."""
    return hist.record_statement(
        version=m.version,
        name=m.name,
        feature=m.feature,
        checksum=m.checksum,
        state=state,
        steps_done=steps_done,
        statements_done=statements_done,
        applied_from=ctx.applied_from,
        execution_ms_sql=execution_ms_sql,
        step_name=step_name,
        step_ms_sql=step_ms_sql,
    )


async def apply_routine(ctx: RunContext, routine: Routine) -> int:
    """Create or replace a routine's objects and record its checksum, in one transaction."""
    started = time.monotonic()
    ctx.current = ctx.activity.migration = routine.label
    record = hist.record_routine_statement(routine, ctx.applied_from, _ELAPSED_MS)
    message = f"{_PREAMBLE}{routine.sql}\n;\n{record}\nCOMMIT;"
    as_migration = Migration(
        version=routine.key,
        name=routine.name,
        filename=routine.filename,
        feature=routine.feature,
        depends=(),
        description=routine.description,
        steps=(),
        checksum=routine.checksum,
    )
    await transaction_with_retry(ctx, as_migration, message, step=None, background=False)
    return _ms_since(started)


async def run_foreground(ctx: RunContext, pm: PlannedMigration) -> int:
    """Apply the foreground steps of one migration; returns its duration in ms."""
    m = pm.migration
    started = time.monotonic()
    ctx.current = ctx.activity.migration = m.label
    ctx.activity.started = started
    if pm.checksum_changed:
        ctx.say(
            f"{ctx.database}: {m.label}: the file changed since the failed attempt; "
            "resuming with the new file"
        )
    if m.single_transaction and not pm.resuming:
        await _single_transaction(ctx, m)
    else:
        await execute(
            ctx,
            _record(
                ctx,
                m,
                MigrationState.RUNNING,
                pm.start_step,
                statements_done=pm.start_statement,
            ),
            m,
        )
        await _run_steps(ctx, pm, background=False, started=started)
    return _ms_since(started)


async def run_background(ctx: RunContext, pm: PlannedMigration) -> int:
    """Run the background steps of one migration from where they stopped."""
    m = pm.migration
    ctx.current = m.label
    started = time.monotonic()
    await _run_steps(ctx, pm, background=True, started=started)
    elapsed = _ms_since(started)
    await execute(
        ctx,
        "UPDATE migration_history SET background_ms = coalesce(background_ms, 0) + "
        f"{elapsed} WHERE version = {hist.literal(m.version)}",
        m,
    )
    return elapsed


async def _single_transaction(ctx: RunContext, m: Migration) -> None:
    final = MigrationState.BACKGROUND if m.background_steps else MigrationState.APPLIED
    body = "\n;\n".join(step.sql for step in m.foreground_steps)
    record = _record(
        ctx,
        m,
        final,
        len(m.foreground_steps),
        execution_ms_sql=_ELAPSED_MS,
        step_name="all",
        step_ms_sql=_ELAPSED_MS,
    )
    ctx.activity.step = "all"
    await transaction_with_retry(
        ctx, m, f"{_PREAMBLE}{body}\n;\n{record}\nCOMMIT;", step=None, background=False
    )


def _state_after(m: Migration, index: int, background: bool) -> MigrationState:
    """The migration's state once step `index` (in execution order) is done."""
    if index == len(m.execution_order) - 1:
        return MigrationState.APPLIED
    if index >= len(m.foreground_steps) - 1:
        return MigrationState.BACKGROUND  # foreground done, background steps remain
    return MigrationState.RUNNING


async def _run_steps(
    ctx: RunContext, pm: PlannedMigration, *, background: bool, started: float
) -> None:
    """The foreground (or background) steps from where the plan starts, one by one."""
    m = pm.migration
    n_fg = len(m.foreground_steps)
    indices = range(n_fg, len(m.execution_order)) if background else range(n_fg)
    for index in indices:
        if index < pm.start_step:
            continue
        step = m.execution_order[index]
        first = pm.start_statement if index == pm.start_step else 0
        ctx.activity.step = step.name
        step_started = time.monotonic()
        if ctx.verbose:
            ctx.say(f"{ctx.database}: {m.label}: step {step.name} starts")
        prior_ms = int((step_started - started) * 1000)
        final = _state_after(m, index, background)
        if step.transactional:
            record = _record(
                ctx,
                m,
                final,
                index + 1,
                execution_ms_sql="NULL" if background else f"{prior_ms} + {_ELAPSED_MS}",
                step_name=step.name,
                step_ms_sql=_ELAPSED_MS,
            )
            message = f"{_PREAMBLE}{step.sql}\n;\n{record}\nCOMMIT;"
            await transaction_with_retry(ctx, m, message, step=step, background=background)
        else:
            await _autocommit_step(ctx, m, step, first, background, resumed=index == pm.start_step)
            step_ms = _ms_since(step_started)
            record = _record(
                ctx,
                m,
                final,
                index + 1,
                execution_ms_sql="NULL" if background else str(prior_ms + step_ms),
                step_name=step.name,
                step_ms_sql=str(step_ms),
            )
            await execute(ctx, record, m)
        if ctx.verbose:
            ctx.say(
                f"{ctx.database}: {m.label}: step {step.name} done in {_ms_since(step_started)} ms"
            )


async def _autocommit_step(
    ctx: RunContext, m: Migration, step: Step, first: int, background: bool, *, resumed: bool
) -> None:
    """A `transaction:false` step from statement `first`, recording each one done.

    `resumed`: statement `first` is where this run takes the migration up, so
    an earlier run may have finished it without recording it (repeat.py).
    """
    statements = step.statements
    for j in sorted(i for i in step.session_statements if i < first):
        # Resuming on a new connection: re-establish the step's session state.
        ctx.say(
            f"{ctx.database}: {m.label}: step {step.name}: re-running session statement "
            f"{j + 1} before resuming at statement {first + 1}"
        )
        await statement_with_retry(ctx, m, step, statements[j], background=background, index=j)
    for j in range(first, len(statements)):
        progress = (
            f"UPDATE migration_history SET statements_done = {j + 1} "
            f"WHERE version = {hist.literal(m.version)}"
        )
        kind = classify(statements[j])
        if resumed and j == first and await done_before(ctx, m, step, kind):
            await execute(ctx, progress, m)
            continue
        if not await _send_statement(ctx, m, step, j, background, progress, kind):
            await execute(ctx, progress, m)


async def _send_statement(
    ctx: RunContext,
    m: Migration,
    step: Step,
    j: int,
    background: bool,
    progress: str,
    kind: StatementKind,
) -> bool:
    """Statement `j` of the step; True when its progress record went with it."""
    statement = step.statements[j]
    index_name = concurrent_index_name(statement)
    if index_name is not None:
        await drop_invalid_index(ctx, m, index_name)
    if step.parallel and ctx.settings.parallel_sessions > 1:
        replay = [step.statements[k] for k in sorted(step.session_statements) if k < j]
        await parallel_statement(
            ctx, m, step, statement, index=j, background=background, replay=replay
        )
        return False
    return await statement_with_retry(
        ctx,
        m,
        step,
        statement,
        background=background,
        index=j,
        progress_sql=progress if kind.in_transaction else None,
    )
