"""`down --target VERSION`: undo recorded migrations newest first, each in its own transaction.

Under the migration lock (and the background lock: no background step may
run on a migration being undone), the walk is planned again, then
rehearsed: every down runs in ONE transaction that is rolled back, and the
tables and columns each one drops are read from the catalog before and
after it. So a down that fails, or that would drop rows without
--allow-data-loss, stops the walk before anything was undone, and the
refusal says how many rows. Then each down runs for real: its SQL and the
deletion of its history row (and progress rows) in one transaction.

The same transaction records the schema fingerprint the down leaves. The
row is deleted, not marked: 000's CHECK allows no "reverted" state (only
running, failed, background, applied, each of which means some of it is in
the schema), and without a row the migration is plainly pending, so the
next apply brings it back. The fingerprint keeps who went down (recorded_by).
"""

from __future__ import annotations

import dataclasses
import time

import asyncpg

from cex_arbitrage.db.migrator import fingerprint, lock
from cex_arbitrage.db.migrator.blockers import find_blockers
from cex_arbitrage.db.migrator.down_plan import DownPlan, DownStep, make_down_plan
from cex_arbitrage.db.migrator.failures import is_connection_lost, wrap
from cex_arbitrage.db.migrator.history import literal, read_state
from cex_arbitrage.db.migrator.model import Catalog, Migration
from cex_arbitrage.db.migrator.session import RunContext
from cex_arbitrage.db.migrator.statements import LOCK_ERRORS, backoff
from cex_arbitrage.errors import (
    DataLossRefusedError,
    MigrationFailedError,
    TableLockTimeoutError,
)

# Tables and columns (attname NULL for the table itself) that a down could drop with rows.
_TABLES_AND_COLUMNS = f"""
WITH rel AS ({fingerprint.RELATIONS})
SELECT r.nspname, r.relname, NULL::name AS attname FROM rel r WHERE r.relkind IN ('r', 'p')
UNION ALL
SELECT r.nspname, r.relname, a.attname FROM rel r
JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE r.relkind IN ('r', 'p')
"""
# The runner's own bookkeeping: recorded again after the next run, not data.
_BOOKKEEPING = {fingerprint.TABLE}

Item = tuple[str, str, str | None]  # schema, table, column (None: the whole table)


@dataclasses.dataclass(frozen=True)
class Loss:
    """A table or column one down drops, and the rows (non-NULL values) it holds now."""

    version: str
    item: Item
    rows: int

    @property
    def bookkeeping(self) -> bool:
        """The runner's own table (recorded again after the next run), not data."""
        return self.item[1] in _BOOKKEEPING

    @property
    def label(self) -> str:
        schema, table, column = self.item
        name = f'"{schema}"."{table}"' if not _plain(schema, table) else f"{schema}.{table}"
        return f"column {name}.{column}" if column else f"table {name}"


def _plain(*names: str) -> bool:
    return all(n.isidentifier() and n == n.lower() for n in names)


@dataclasses.dataclass
class DownResult:
    """What a down run did (or, dry, would do)."""

    plan: DownPlan
    losses: list[Loss] = dataclasses.field(default_factory=list)
    undone: list[str] = dataclasses.field(default_factory=list)
    durations_ms: dict[str, int] = dataclasses.field(default_factory=dict)


async def run_down(
    ctx: RunContext, catalog: Catalog, target: str, *, allow_data_loss: bool, dry_run: bool
) -> DownResult:
    """Plan, rehearse and (unless `dry_run`) undo down to `target`, under both locks."""
    timeout = ctx.settings.lock_wait_timeout
    async with (
        lock.held(ctx.conn, lock.MIGRATE_LOCK, timeout, ctx.database, ctx.say),
        lock.held(ctx.conn, lock.BACKGROUND_LOCK, timeout, ctx.database, ctx.say),
    ):
        state = await read_state(ctx.conn)
        plan = make_down_plan(catalog, state.history, ctx.database, target)
        result = DownResult(plan=plan)
        if not plan.steps:
            return result
        await ctx.prepare()
        try:
            result.losses = await _rehearse(ctx, plan)
            if dry_run:
                return result
            _refuse_data_loss(ctx, plan, result.losses, allow_data_loss)
            await _walk(ctx, plan, result)
        finally:
            ctx.release()
        return result


async def _walk(ctx: RunContext, plan: DownPlan, result: DownResult) -> None:
    """Each down in its own transaction, which also records the fingerprint it leaves:
    a walk cut short (a failure, Ctrl-C) leaves no undone down unrecorded."""
    for step in plan.steps:
        result.durations_ms[step.migration.version] = await _undo(ctx, step)
        result.undone.append(step.migration.version)


async def _snapshot(conn: asyncpg.Connection) -> set[Item]:
    return {(r[0], r[1], r[2]) for r in await conn.fetch(_TABLES_AND_COLUMNS)}


async def _rehearse(ctx: RunContext, plan: DownPlan) -> list[Loss]:
    """Run the whole walk in one transaction, rolled back; return what each down drops."""
    attempt = 0
    while True:
        dropped: list[tuple[str, Item]] = []
        try:
            async with ctx.conn.transaction():
                for step in plan.steps:
                    ctx.current = step.down.filename
                    before = await _snapshot(ctx.conn)
                    if step.down.sql:
                        await ctx.conn.execute(step.down.sql)
                    # as the walk will: a later down may ask migration_is_applied()
                    await ctx.conn.execute(_forget(step.migration.version))
                    gone = before - await _snapshot(ctx.conn)
                    tables = {(s, t) for s, t, c in gone if c is None}
                    dropped += [
                        (step.migration.version, item)
                        for item in sorted(gone, key=lambda i: (i[0], i[1], i[2] or ""))
                        if item[2] is None or (item[0], item[1]) not in tables
                    ]
                    ctx.current = "-"
                raise _Rollback()
        except _Rollback:
            break
        except LOCK_ERRORS as exc:
            attempt += 1
            if attempt > ctx.db.lock_retries:
                what = f"rehearsing {ctx.current}"
                ctx.current = "-"
                raise await _lock_timeout(ctx, plan.steps[0].migration, exc, attempt, what) from exc
            await backoff(ctx, plan.steps[0].migration, attempt, exc)
        except Exception as exc:
            raise _failed(ctx, plan, exc) from exc
    return [Loss(v, item, await _count(ctx.conn, item)) for v, item in dropped]


class _Rollback(Exception):
    """Ends the rehearsal's transaction by rolling it back."""


def _failed(ctx: RunContext, plan: DownPlan, exc: BaseException) -> Exception:
    if is_connection_lost(exc):
        return wrap(ctx, exc, plan.steps[0].migration, None)
    failing = ctx.current
    ctx.current = "-"
    return MigrationFailedError(
        f"{ctx.database}: down to {plan.target}: {failing} fails when the walk is rehearsed "
        f"({type(exc).__name__}: {exc}); the rehearsal was rolled back and nothing was "
        "undone. Fix the down file (or what it trips over), then run again",
        version=plan.steps[0].migration.version,
        step="down",
        sqlstate=getattr(exc, "sqlstate", None),
        rolled_back=True,
    )


async def _count(conn: asyncpg.Connection, item: Item) -> int:
    """Rows of a table, or non-NULL values of a column, as they are now."""
    schema, table, column = item
    if table in _BOOKKEEPING:
        return 0
    qualified = f"{_ident(schema)}.{_ident(table)}"
    where = f" WHERE {_ident(column)} IS NOT NULL" if column else ""
    return int(await conn.fetchval(f"SELECT count(*) FROM {qualified}{where}"))


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _refuse_data_loss(
    ctx: RunContext, plan: DownPlan, losses: list[Loss], allow_data_loss: bool
) -> None:
    lost = [x for x in losses if x.rows > 0]
    if not lost or allow_data_loss:
        for x in lost:
            ctx.say(f"{ctx.database}: down of {x.version} drops {x.label} with {x.rows} row(s)")
        return
    listed = "; ".join(f"down of {x.version} drops {x.label} with {x.rows} row(s)" for x in lost)
    raise DataLossRefusedError(
        f"{ctx.database}: down to {plan.target} would lose data: {listed}. Nothing was "
        "undone. Back up what you need (pg_dump -t TABLE), then run again with "
        "--allow-data-loss",
        losses=[(x.version, x.label, x.rows) for x in lost],
    )


def _forget(version: str) -> str:
    """The history change of a down: the migration's rows go, so it is pending again."""
    v = literal(version)
    return (
        f"DELETE FROM migration_progress WHERE version = {v};\n"
        f"DELETE FROM migration_history WHERE version = {v};"
    )


async def _undo(ctx: RunContext, step: DownStep) -> int:
    """One down and the deletion of its history rows, in one transaction; its time in ms."""
    m, down = step.migration, step.down
    ctx.current = ctx.activity.migration = down.filename
    ctx.say(f"{ctx.database}: undoing {m.filename} ({down.filename})")
    started = time.monotonic()
    message = (
        "BEGIN;\nSET LOCAL standard_conforming_strings = on;\n"
        + (f"{down.sql}\n;\n" if down.sql else "")
        + f"{_forget(m.version)}\n{fingerprint.record_statement(ctx.applied_from)}\nCOMMIT;"
    )
    attempt = 0
    while True:
        try:
            await ctx.conn.execute(message)
            break
        except LOCK_ERRORS as exc:
            await _end_transaction(ctx)
            attempt += 1
            if attempt > ctx.db.lock_retries:
                raise await _lock_timeout(ctx, m, exc, attempt, f"undoing {m.filename}") from exc
            await backoff(ctx, m, attempt, exc)
        except Exception as exc:
            await _end_transaction(ctx)
            raise wrap(ctx, exc, m, None) from exc
    ms = int((time.monotonic() - started) * 1000)
    ctx.current = "-"
    ctx.say(f"{ctx.database}: undid {m.filename} in {ms} ms")
    return ms


async def _lock_timeout(
    ctx: RunContext, m: Migration, exc: BaseException, attempts: int, what: str
) -> TableLockTimeoutError:
    """A table lock not had after the retries: rolled back, the likely holders named."""
    pids, blockers = await find_blockers(ctx.conn)
    return TableLockTimeoutError(
        f"{ctx.database}: down: {what}: could not get a table lock within "
        f"{ctx.db.lock_timeout_ms} ms after {attempts} attempts ({exc}); rolled back, this "
        f"down is not undone.{blockers or ' Long transactions on its tables hold it up.'} "
        "Then run again",
        version=m.version,
        step="down",
        statement_index=None,
        attempts=attempts,
        blocking_pids=pids,
    )


async def _end_transaction(ctx: RunContext) -> None:
    """Roll back the failed down's transaction (a lost session needs nothing)."""
    try:
        await ctx.conn.execute("ROLLBACK")
    except Exception as exc:
        if not is_connection_lost(exc):
            raise
