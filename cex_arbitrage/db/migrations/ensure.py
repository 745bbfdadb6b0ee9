"""ensure_schema(): the engine's boot hook, run before any collector starts.

Every boot but the first finds nothing pending: that costs one round trip
(history and server version in one query) and takes no lock. Otherwise the
runner's advisory lock serialises concurrent engines, the foreground part is
applied, and background steps are handed to a task the engine supervises.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

from cex_arbitrage.db.migrations.apply import Activity
from cex_arbitrage.db.migrations.connect import connect
from cex_arbitrage.db.migrations.errors import MigrationError, SchemaNotReadyError
from cex_arbitrage.db.migrations.history import read_history_lean
from cex_arbitrage.db.migrations.plan import Plan, make_plan
from cex_arbitrage.db.migrations.run_migrations import (
    apply_plan,
    cached_migrations,
    run_background_steps,
)
from cex_arbitrage.db.migrations.script import Migration
from cex_arbitrage.db.migrations.source import MigrationSource
from cex_arbitrage.db.structs import DEFAULT_FEATURES, DatabaseConfig

if TYPE_CHECKING:  # config imports the error types of this package
    from cex_arbitrage.config import MigrationSettings

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


class BackgroundWork:
    """Background migration steps running in a task the engine supervises."""

    def __init__(
        self,
        config: DatabaseConfig,
        migrations: list[Migration],
        features: Mapping[str, bool],
        settings: MigrationSettings,
        say: Callable[[str], None],
    ) -> None:
        self.config = config
        self.migrations = migrations
        self.features = dict(features)
        self.settings = settings
        self.say = say
        self.finished: list[str] = []
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] = asyncio.create_task(
            self._run(), name=f"cex-migrations-background {config.display}"
        )

    @property
    def done(self) -> bool:
        return self.task.done()

    async def _run(self) -> None:
        conn = await connect(self.config)
        try:
            self.finished = await run_background_steps(
                conn,
                migrations=self.migrations,
                features=self.features,
                settings=self.settings,
                db_config=self.config,
                say=self.say,
                program="engine",
                wait_for_lock=False,
            )
        except MigrationError as exc:
            self.error = exc
            self.say(f"background migration work stopped: {exc.message}")
        except asyncio.CancelledError:
            self.say(
                f"{self.config.display}: background migration work stopped for shutdown; "
                "it resumes from its checkpoint on the next start"
            )
            raise
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(conn.close(timeout=5))

    async def wait(self) -> None:
        """Until the work ends; re-raise what stopped it."""
        try:
            await asyncio.shield(self.task)
        except asyncio.CancelledError:
            if not self.task.cancelled():
                raise  # the caller was cancelled, not the work: propagate
        if self.error is not None:
            raise self.error

    async def stop(self) -> None:
        """Stop cleanly: committed batches stay, the rest resumes on the next start."""
        if not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


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


async def ensure_schema(
    target: Target,
    *,
    features: Mapping[str, bool] | None = None,
    settings: MigrationSettings | None = None,
    source: MigrationSource | None = None,
    config: DatabaseConfig | None = None,
    say: Callable[[str], None] | None = None,
) -> SchemaReport:
    """Bring the schema up to date for the enabled features, before collectors start.

    `target` is an asyncpg connection, a pool, or a DatabaseConfig (then the
    hook also waits for the server to come up, `boot_wait_timeout`). Raises a
    MigrationError when the schema cannot be made current: collectors must
    not start on a wrong schema.
    """
    settings = settings or _default_settings()
    features = dict(DEFAULT_FEATURES if features is None else features)
    say = say or log.info
    migrations = cached_migrations(source)
    if isinstance(target, DatabaseConfig):
        config = config or target
        conn = await connect(target, wait=settings.boot_wait_timeout, say=say)
        try:
            return await _ensure(conn, config, migrations, features, settings, say)
        finally:
            await conn.close()
    if isinstance(target, asyncpg.Pool):
        async with target.acquire() as pooled:
            raw: asyncpg.Connection = pooled
            config = config or _config_of_connection(raw)
            return await _ensure(raw, config, migrations, features, settings, say)
    config = config or _config_of_connection(target)
    return await _ensure(target, config, migrations, features, settings, say)


async def _ensure(
    conn: asyncpg.Connection,
    config: DatabaseConfig,
    migrations: list[Migration],
    features: Mapping[str, bool],
    settings: MigrationSettings,
    say: Callable[[str], None],
) -> SchemaReport:
    database = config.display
    history = await read_history_lean(conn)  # the one round trip of the usual boot
    plan = make_plan(migrations, history, features, database)
    started = time.monotonic()
    applied: list[str] = []
    if plan.foreground or plan.adopt_checksum:
        if settings.mode == "wait":
            plan = await _wait_until_current(conn, migrations, features, settings, database, say)
        else:
            activity = Activity()
            ticker = asyncio.create_task(
                _progress(activity, settings.progress_interval, say, database)
            )
            try:
                result = await apply_plan(
                    conn,
                    migrations=migrations,
                    features=features,
                    settings=settings,
                    db_config=config,
                    target=None,
                    say=say,
                    program="engine",
                    activity=activity,
                )
            finally:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
            applied = result.applied
            plan = result.plan
    pending_bg = [pm.migration.version for pm in plan.background]
    work: BackgroundWork | None = None
    if pending_bg and settings.run_background and settings.mode == "apply":
        work = BackgroundWork(config, migrations, features, settings, say)
    return SchemaReport(
        applied=applied,
        pending_background=pending_bg,
        background=work,
        waited_s=time.monotonic() - started,
        disabled=[m.version for m in plan.disabled],
    )


async def _progress(
    activity: Activity, interval: float, say: Callable[[str], None], database: str
) -> None:
    """A line at a steady interval while migrating: working, not hung."""
    while True:
        await asyncio.sleep(interval)
        say(
            f"{database}: still migrating ({activity.migration} step {activity.step}, "
            f"{time.monotonic() - activity.started:.0f}s)"
        )


async def _wait_until_current(
    conn: asyncpg.Connection,
    migrations: list[Migration],
    features: Mapping[str, bool],
    settings: MigrationSettings,
    database: str,
    say: Callable[[str], None],
) -> Plan:
    """Follower mode: poll cheaply until another instance has migrated, or give up."""
    started = time.monotonic()
    next_log = 0.0
    while True:
        plan = make_plan(migrations, await read_history_lean(conn), features, database)
        if not plan.foreground:
            return plan
        waited = time.monotonic() - started
        pending = ", ".join(pm.migration.filename for pm in plan.foreground)
        if waited >= settings.wait_timeout:
            raise SchemaNotReadyError(
                f"{database}: waited {waited:.0f}s for another instance to apply {pending} "
                "(migrations.mode is 'wait', so this engine does not migrate). Run "
                "`python -m cex_arbitrage.db.migrate`, or set migrations.mode: apply on one "
                "instance (migrations.wait_timeout sets how long to wait)"
            )
        if waited >= next_log:
            say(
                f"{database}: waiting for the schema to be migrated by another instance: "
                f"{pending} pending ({waited:.0f}s)"
            )
            next_log = waited + settings.progress_interval
        await asyncio.sleep(min(1.0, settings.wait_timeout - waited))


def _default_settings() -> MigrationSettings:
    from cex_arbitrage.config import MigrationSettings

    return MigrationSettings()
