"""The core loop: plan, lock, then for each migration run its steps and record them.

Everything that applies migrations (the CLI, `MigrationRunner`, the
engine's `ensure_schema`) goes through `apply_plan` for the foreground part
and `run_background_steps` for the old-row work after it.
"""

from __future__ import annotations

import dataclasses

from cex_arbitrage.db.migrator import fingerprint, lock, steps
from cex_arbitrage.db.migrator.history import read_progress, read_state
from cex_arbitrage.db.migrator.model import Catalog, Routine
from cex_arbitrage.db.migrator.plan import Plan, PlannedMigration, make_plan
from cex_arbitrage.db.migrator.preflight import run_preflight
from cex_arbitrage.db.migrator.session import RunContext
from cex_arbitrage.db.migrator.states import MigrationState


@dataclasses.dataclass
class RunResult:
    """What a run did."""

    plan: Plan
    applied: list[str] = dataclasses.field(default_factory=list)
    durations_ms: dict[str, int] = dataclasses.field(default_factory=dict)
    background_done: list[str] = dataclasses.field(default_factory=list)
    background_pending: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    routines: list[str] = dataclasses.field(default_factory=list)
    # Another runner held the background lock (not waited for): who, and how far it got.
    background_elsewhere: str | None = None


async def apply_plan(ctx: RunContext, catalog: Catalog, target: str | None) -> RunResult:
    """Take the lock, plan again under it, pre-flight, run the foreground steps, release.

    The plan is made again under the lock: another runner may have applied
    some or all of it while we waited. Routines that changed run right after
    the infrastructure migration, before any other step that may call them.
    """
    settings = ctx.settings
    async with lock.held(
        ctx.conn, lock.MIGRATE_LOCK, settings.lock_wait_timeout, ctx.database, ctx.say
    ):
        state = await read_state(ctx.conn)
        plan = make_plan(
            catalog,
            state.history,
            settings.features,
            ctx.database,
            target,
            extensions=state.extensions,
        )
        result = RunResult(plan=plan)
        if plan.foreground or plan.routines:
            result.warnings.extend(await _preflight(ctx))
        await ctx.prepare()
        try:
            routines_due = plan.routines
            for pm in plan.foreground:
                if routines_due and not pm.migration.is_infrastructure:
                    result.routines += await _apply_routines(ctx, routines_due)
                    routines_due = ()
                await _apply_foreground(ctx, pm, result)
            result.routines += await _apply_routines(ctx, routines_due)
            await _record_checksums(ctx, plan)
            if result.applied or result.routines or plan.has_bookkeeping:
                # The schema changed (or a psql run was adopted): record what it is now.
                # Not on a boot with nothing to do: then this code is never reached.
                await fingerprint.record(ctx.conn, ctx.applied_from)
        finally:
            ctx.release()
        result.background_pending = [pm.migration.version for pm in plan.background]
        return result


@dataclasses.dataclass
class BackgroundOutcome:
    """What one pass over the background work found and did."""

    done: list[str] = dataclasses.field(default_factory=list)  # finished by this pass
    remaining: list[str] = dataclasses.field(default_factory=list)  # still unfinished after it
    # Another runner holds the background lock (nothing ran here): who, and how far.
    elsewhere: str | None = None


async def run_background_steps(
    ctx: RunContext,
    catalog: Catalog,
    *,
    wait_for_lock: bool,
    elsewhere: list[str] | None = None,
) -> list[str]:
    """Run every unfinished background step, in version order; return versions finished.

    With `wait_for_lock` false, another holder means the work is in hand and this
    returns at once, appending who holds it and how far it got to `elsewhere`.
    """
    outcome = await background_pass(ctx, catalog, wait_for_lock=wait_for_lock)
    if outcome.elsewhere is not None and elsewhere is not None:
        elsewhere.append(outcome.elsewhere)
    return outcome.done


async def background_pass(
    ctx: RunContext, catalog: Catalog, *, wait_for_lock: bool, quiet: bool = False
) -> BackgroundOutcome:
    """Under the background lock, run what is unfinished; say what is left and who runs it.

    Exclusive through a second advisory lock: one runner does the backfill.
    What is unfinished is read again under the lock: another runner may have
    finished it meanwhile, which is then neither run again nor reported pending.
    """
    purpose = lock.BACKGROUND_LOCK
    if wait_for_lock:
        await lock.acquire(ctx.conn, purpose, ctx.settings.lock_wait_timeout, ctx.database, ctx.say)
    elif not await lock.try_lock(ctx.conn, purpose):
        holder = await describe_background_work(ctx)
        if not quiet:
            ctx.say(f"{ctx.database}: background migration work is being run by {holder}")
        return BackgroundOutcome(elsewhere=holder)
    try:
        state = await read_state(ctx.conn)
        plan = make_plan(
            catalog,
            state.history,
            ctx.settings.features,
            ctx.database,
            extensions=state.extensions,
        )
        if plan.routines:  # the background steps call them: bring them up to date first
            await _apply_routines_locked(ctx, catalog)
        outcome = BackgroundOutcome()
        checkpoints = (
            {p.version for p in await read_progress(ctx.conn)} if plan.background else set()
        )
        await ctx.prepare()
        try:
            for pm in plan.background:
                row = state.history.get(pm.migration.version)
                if row is None or row.state is not MigrationState.BACKGROUND:
                    # Foreground not applied (pending, failed, above a target): the plan
                    # lists its background steps for after it; apply runs it first.
                    outcome.remaining.append(pm.migration.version)
                    continue
                await _run_background(ctx, pm, pm.migration.version in checkpoints)
                outcome.done.append(pm.migration.version)
            if outcome.done:  # background steps build schema too (indexes, validated constraints)
                await fingerprint.record(ctx.conn, ctx.applied_from)
        finally:
            ctx.release()
        return outcome
    finally:
        await lock.unlock(ctx.conn, purpose)


async def describe_background_work(ctx: RunContext) -> str:
    """Who holds the background lock, and how far the work got (migration_progress)."""
    holder = await lock.describe_holder(ctx.conn, lock.BACKGROUND_LOCK)
    tasks = [p for p in await read_progress(ctx.conn) if not p.done]
    how_far = ", ".join(f"{p.version} {p.describe()}" for p in tasks)
    return f"{holder}; progress: {how_far or 'no checkpoint recorded yet'}"


async def _apply_foreground(ctx: RunContext, pm: PlannedMigration, result: RunResult) -> None:
    m = pm.migration
    ctx.say(f"{ctx.database}: {'resuming' if pm.resuming else 'applying'} {m.filename}")
    ms = await steps.run_foreground(ctx, pm)
    result.applied.append(m.version)
    result.durations_ms[m.version] = ms
    tail = " (background steps pending)" if m.background_steps else ""
    ctx.say(f"{ctx.database}: applied {m.filename} in {ms} ms{tail}")


async def _run_background(ctx: RunContext, pm: PlannedMigration, checkpointed: bool) -> None:
    """One migration's background steps; `checkpointed`: an earlier run left progress rows."""
    m = pm.migration
    resumed = pm.start_step > len(m.foreground_steps) or pm.start_statement > 0 or checkpointed
    ctx.say(
        f"{ctx.database}: background steps of {m.filename} "
        f"{'resume where they stopped' if resumed else 'start'}"
    )
    ms = await steps.run_background(ctx, pm)
    ctx.say(f"{ctx.database}: background steps of {m.filename} done in {ms} ms")


async def _apply_routines(ctx: RunContext, routines: tuple[Routine, ...]) -> list[str]:
    for routine in routines:
        ms = await steps.apply_routine(ctx, routine)
        ctx.say(f"{ctx.database}: routine {routine.filename} created or replaced in {ms} ms")
    return [r.key for r in routines]


async def _apply_routines_locked(ctx: RunContext, catalog: Catalog) -> None:
    """Changed routines alone, under the migration lock (planned again under it)."""
    settings = ctx.settings
    async with lock.held(
        ctx.conn, lock.MIGRATE_LOCK, settings.lock_wait_timeout, ctx.database, ctx.say
    ):
        state = await read_state(ctx.conn)
        plan = make_plan(
            catalog, state.history, settings.features, ctx.database, extensions=state.extensions
        )
        await ctx.prepare()
        try:
            await _apply_routines(ctx, plan.routines)
        finally:
            ctx.release()


async def _record_checksums(ctx: RunContext, plan: Plan) -> None:
    """Files applied by hand with psql, or recorded by a release this file replaces."""
    for m in plan.adopt_checksum:
        await ctx.conn.execute(
            "UPDATE migration_history SET checksum = $2, applied_from = "
            "coalesce(applied_from, 'psql') WHERE version = $1 AND checksum IS NULL",
            m.version,
            m.checksum,
        )
        ctx.say(
            f"{ctx.database}: {m.filename} was applied by hand with psql; recorded its checksum"
        )
    for m in plan.replaced_checksum:
        await ctx.conn.execute(
            "UPDATE migration_history SET checksum = $2 WHERE version = $1 AND checksum <> $2",
            m.version,
            m.checksum,
        )
        ctx.say(
            f"{ctx.database}: {m.filename} replaces the release recorded for it (same schema, "
            "declared in the file); recorded its checksum"
        )


async def _preflight(ctx: RunContext) -> list[str]:
    pre = await run_preflight(
        ctx.conn,
        ctx.database,
        ctx.settings.watched_tables,
        ctx.settings.long_transaction_seconds,
        ctx.settings.writeback_check_rows,
    )
    for warning in pre.warnings:
        ctx.say(f"warning: {warning}")
    return list(pre.warnings)
