"""ensure_schema(): the boot hook an application awaits before its writers start.

Every boot but the first finds nothing pending: that costs one round trip
(the lean history read) and takes no lock. Otherwise the runner's advisory
lock serialises concurrent engines, the foreground part is applied, and
background steps are handed to a task the application supervises.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import asyncpg

from cex_arbitrage.db.migrator.background import BackgroundWork
from cex_arbitrage.db.migrator.catalog import cached_catalog
from cex_arbitrage.db.migrator.connect import connect
from cex_arbitrage.db.migrator.history import read_history_lean
from cex_arbitrage.db.migrator.model import Catalog
from cex_arbitrage.db.migrator.plan import Plan, make_plan
from cex_arbitrage.db.migrator.run import apply_plan
from cex_arbitrage.db.migrator.session import Activity, RunContext, applied_from
from cex_arbitrage.db.migrator.settings import RunnerSettings
from cex_arbitrage.db.migrator.source import MigrationSource
from cex_arbitrage.db.structs import DatabaseConfig
from cex_arbitrage.errors import SchemaNotReadyError

log = logging.getLogger("cex_arbitrage.migrations")
Target: TypeAlias = "asyncpg.Connection | asyncpg.Pool | DatabaseConfig"


@dataclasses.dataclass
class SchemaReport:
    """What ensure_schema did."""

    applied: list[str]
    pending_background: list[str]
    background: BackgroundWork | None
    waited_s: float = 0.0
    disabled: list[str] = dataclasses.field(default_factory=list)


def _config_of_connection(conn: asyncpg.Connection) -> DatabaseConfig:
    """Connection parameters of an existing connection, for the background task's own."""
    addr: Any = conn._addr  # asyncpg keeps these private but stable
    params: Any = conn._params
    host, port = (addr, 5432) if isinstance(addr, str) else (addr[0], addr[1])
    if isinstance(addr, str) and "/.s.PGSQL." in addr:
        host, _, p = addr.rpartition("/.s.PGSQL.")
        port = int(p)
    return DatabaseConfig(
        host=host,
        port=int(port),
        database=params.database,
        user=params.user,
        password=params.password,
    )


@contextlib.asynccontextmanager
async def _boot_connection(
    target: Target, settings: RunnerSettings, say: Callable[[str], None]
) -> AsyncIterator[tuple[asyncpg.Connection, DatabaseConfig]]:
    """A connection for the boot check: the caller's, one from its pool, or our own."""
    if isinstance(target, DatabaseConfig):
        conn = await connect(target, wait=settings.boot_wait_timeout, say=say)
        try:
            yield conn, target
        finally:
            await conn.close()
    elif isinstance(target, asyncpg.Pool):
        async with target.acquire() as pooled:
            raw: asyncpg.Connection = pooled
            yield raw, _config_of_connection(raw)
    else:
        yield target, _config_of_connection(target)


async def ensure_schema(
    target: Target,
    *,
    source: MigrationSource,
    settings: RunnerSettings,
    config: DatabaseConfig | None = None,
    say: Callable[[str], None] | None = None,
) -> SchemaReport:
    """Bring the schema up to date for the enabled features, before writers start.

    `target` is an asyncpg connection, a pool, or a DatabaseConfig (then the
    hook also waits for the server to come up, `boot_wait_timeout`). Raises a
    MigrationError when the schema cannot be made current: writers must not
    start on a wrong schema.
    """
    say = say or log.info
    catalog = cached_catalog(source)
    async with _boot_connection(target, settings, say) as (conn, found):
        ctx = RunContext(conn, config or found, settings, applied_from("engine"), say)
        return await _ensure(ctx, catalog)


async def _ensure(ctx: RunContext, catalog: Catalog) -> SchemaReport:
    settings = ctx.settings
    lean = await read_history_lean(ctx.conn)  # the one round trip of the usual boot
    plan = make_plan(
        catalog, lean.history, settings.features, ctx.database, extensions=lean.extensions
    )
    started = time.monotonic()
    applied: list[str] = []
    if plan.foreground or plan.has_bookkeeping:
        if settings.mode == "wait":
            plan = await _wait_until_current(ctx, catalog)
        else:
            ticker = asyncio.create_task(_progress(ctx))
            try:
                result = await apply_plan(ctx, catalog, None)
            finally:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
            applied, plan = result.applied, result.plan
    pending_bg = [pm.migration.version for pm in plan.background]
    work: BackgroundWork | None = None
    if pending_bg and settings.run_background and settings.mode == "apply":
        work = BackgroundWork(ctx.db, catalog, settings, ctx.say)
    return SchemaReport(
        applied=applied,
        pending_background=pending_bg,
        background=work,
        waited_s=time.monotonic() - started,
        disabled=[m.version for m in plan.disabled],
    )


async def _progress(ctx: RunContext) -> None:
    """A line at a steady interval while migrating: working, not hung."""
    activity: Activity = ctx.activity
    while True:
        await asyncio.sleep(ctx.settings.progress_interval)
        ctx.say(
            f"{ctx.database}: still migrating ({activity.migration} step {activity.step}, "
            f"{time.monotonic() - activity.started:.0f}s)"
        )


async def _wait_until_current(ctx: RunContext, catalog: Catalog) -> Plan:
    """Follower mode: poll cheaply until another instance has migrated, or give up."""
    settings = ctx.settings
    started = time.monotonic()
    next_log = 0.0
    while True:
        lean = await read_history_lean(ctx.conn)
        plan = make_plan(
            catalog, lean.history, settings.features, ctx.database, extensions=lean.extensions
        )
        if not plan.foreground:
            return plan
        waited = time.monotonic() - started
        pending = [pm.migration.filename for pm in plan.foreground]
        if waited >= settings.wait_timeout:
            raise SchemaNotReadyError(
                f"{ctx.database}: waited {waited:.0f}s for another instance to apply "
                f"{', '.join(pending)} (migrations.mode is 'wait', so this engine does not "
                "migrate). Run `python -m cex_arbitrage.db.migrate`, or set migrations.mode: "
                "apply on one instance (migrations.wait_timeout sets how long to wait)",
                pending=pending,
                waited_s=waited,
            )
        if waited >= next_log:
            ctx.say(
                f"{ctx.database}: waiting for the schema to be migrated by another instance: "
                f"{', '.join(pending)} pending ({waited:.0f}s)"
            )
            next_log = waited + settings.progress_interval
        await asyncio.sleep(min(1.0, settings.wait_timeout - waited))
