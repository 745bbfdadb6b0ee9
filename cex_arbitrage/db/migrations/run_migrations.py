"""MigrationRunner: the seed's Python API, and the one code path the CLI and engine share.

runner = MigrationRunner(db_config)
success = await runner.run_migrations(target_version="001")
status = await runner.get_migration_status(conn)
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import asyncpg

from cex_arbitrage.db.migrations import lock
from cex_arbitrage.db.migrations.apply import Activity, Executor
from cex_arbitrage.db.migrations.connect import connect
from cex_arbitrage.db.migrations.errors import MigrationError, ValidationError
from cex_arbitrage.db.migrations.history import read_history_lean, read_progress, read_state
from cex_arbitrage.db.migrations.plan import Plan, check_checksums, make_plan
from cex_arbitrage.db.migrations.preflight import run_preflight
from cex_arbitrage.db.migrations.script import Migration
from cex_arbitrage.db.migrations.source import MigrationSource, PackageSource, load_migrations
from cex_arbitrage.db.migrations.status import MigrationStatus, collect_status
from cex_arbitrage.db.structs import DEFAULT_FEATURES, DatabaseConfig

if TYPE_CHECKING:  # config imports the error types of this package
    from cex_arbitrage.config import MigrationSettings

log = logging.getLogger("cex_arbitrage.migrations")

_PARSED: dict[str, list[Migration]] = {}


def default_say(message: str) -> None:
    log.info(message)


def cached_migrations(source: MigrationSource | None) -> list[Migration]:
    """The shipped migrations are parsed once per process (boot stays cheap)."""
    if source is None:
        key = "package"
        if key not in _PARSED:
            _PARSED[key] = load_migrations(PackageSource())
        return _PARSED[key]
    return load_migrations(source)


def applied_from(program: str) -> str:
    return f"{program} on {socket.gethostname()} pid {os.getpid()}"


@dataclasses.dataclass
class RunResult:
    """What a run did."""

    plan: Plan
    applied: list[str] = dataclasses.field(default_factory=list)
    durations_ms: dict[str, int] = dataclasses.field(default_factory=dict)
    background_done: list[str] = dataclasses.field(default_factory=list)
    background_pending: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)


async def start_executor(
    conn: asyncpg.Connection,
    db_config: DatabaseConfig,
    settings: MigrationSettings,
    say: Callable[[str], None],
    program: str,
    verbose: bool,
    activity: Activity | None = None,
) -> Executor:
    """An executor on `conn` with the session prepared (timeouts, cex.* settings, NOTICEs)."""
    executor = Executor(
        conn,
        database=db_config.display,
        settings=settings,
        lock_timeout_ms=db_config.lock_timeout_ms,
        statement_timeout_ms=db_config.statement_timeout_ms,
        lock_retries=db_config.lock_retries,
        applied_from=applied_from(program),
        say=say,
        verbose=verbose,
        activity=activity,
        open_session=lambda: connect(db_config),
    )
    await executor.prepare()
    return executor


async def apply_plan(
    conn: asyncpg.Connection,
    *,
    migrations: Sequence[Migration],
    features: Mapping[str, bool],
    settings: MigrationSettings,
    db_config: DatabaseConfig,
    target: str | None,
    say: Callable[[str], None],
    program: str,
    verbose: bool = False,
    activity: Activity | None = None,
) -> RunResult:
    """Take the lock, re-plan under it, pre-flight, run the foreground steps, release.

    The plan is made again under the lock: another runner may have applied
    some or all of it while we waited.
    """
    database = db_config.display
    await lock.acquire(conn, lock.MIGRATE_LOCK, settings.lock_wait_timeout, database, say)
    try:
        state = await read_state(conn)
        plan = make_plan(migrations, state.history, features, database, target)
        result = RunResult(plan=plan)
        if plan.foreground:
            pre = await run_preflight(conn, database)
            result.warnings.extend(pre.warnings)
            for warning in pre.warnings:
                say(f"warning: {warning}")
        executor = await start_executor(conn, db_config, settings, say, program, verbose, activity)
        try:
            for pm in plan.foreground:
                m = pm.migration
                verb = "resuming" if pm.resuming else "applying"
                say(f"{database}: {verb} {m.filename}")
                ms = await executor.run_foreground(pm)
                result.applied.append(m.version)
                result.durations_ms[m.version] = ms
                tail = " (background steps pending)" if m.background_steps else ""
                say(f"{database}: applied {m.filename} in {ms} ms{tail}")
            for m in plan.adopt_checksum:
                await conn.execute(
                    "UPDATE migration_history SET checksum = $2, applied_from = "
                    "coalesce(applied_from, 'psql') WHERE version = $1 AND checksum IS NULL",
                    m.version,
                    m.checksum,
                )
                say(
                    f"{database}: {m.filename} was applied by hand with psql; recorded its checksum"
                )
        finally:
            executor.close()
        result.background_pending = [pm.migration.version for pm in plan.background]
        return result
    finally:
        await lock.unlock(conn, lock.MIGRATE_LOCK)


async def run_background_steps(
    conn: asyncpg.Connection,
    *,
    migrations: Sequence[Migration],
    features: Mapping[str, bool],
    settings: MigrationSettings,
    db_config: DatabaseConfig,
    say: Callable[[str], None],
    program: str,
    wait_for_lock: bool,
    verbose: bool = False,
) -> list[str]:
    """Run every unfinished background step, in version order; return versions finished.

    Exclusive through a second advisory lock: one runner does the backfill;
    with `wait_for_lock` false (engines), another holder means the work is in
    hand and this returns at once.
    """
    database = db_config.display
    if wait_for_lock:
        await lock.acquire(conn, lock.BACKGROUND_LOCK, settings.lock_wait_timeout, database, say)
    elif not await lock.try_lock(conn, lock.BACKGROUND_LOCK):
        holder = await lock.describe_holder(conn, lock.BACKGROUND_LOCK)
        say(f"{database}: background migration work is being run by {holder}")
        return []
    done: list[str] = []
    try:
        state = await read_state(conn)
        plan = make_plan(migrations, state.history, features, database)
        if not plan.background:
            return done
        executor = await start_executor(conn, db_config, settings, say, program, verbose)
        try:
            for pm in plan.background:
                m = pm.migration
                row = state.history.get(m.version)
                if row is None or row.state != "background":
                    # Foreground not applied (pending, failed, above a target): the plan
                    # lists its background steps for after it; apply runs it first.
                    continue
                resumed = pm.start_step > len(m.foreground_steps) or pm.start_statement > 0
                say(
                    f"{database}: background steps of {m.filename} "
                    f"{'resume where they stopped' if resumed else 'start'}"
                )
                ms = await executor.run_background(pm)
                done.append(m.version)
                say(f"{database}: background steps of {m.filename} done in {ms} ms")
        finally:
            executor.close()
        return done
    finally:
        await lock.unlock(conn, lock.BACKGROUND_LOCK)


class MigrationRunner:
    """Applies the migrations shipped with cex_arbitrage (or another source) to one database."""

    def __init__(
        self,
        db_config: DatabaseConfig,
        *,
        source: MigrationSource | None = None,
        features: Mapping[str, bool] | None = None,
        settings: MigrationSettings | None = None,
        say: Callable[[str], None] | None = None,
        verbose: bool = False,
        program: str | None = None,
    ) -> None:
        self.db_config = db_config
        self.source = source
        self.features = dict(DEFAULT_FEATURES if features is None else features)
        self.settings = settings or _default_settings()
        self.say = say or default_say
        self.verbose = verbose
        self.program = program or os.path.basename(sys.argv[0] or "python")
        self.last_error: MigrationError | None = None

    def migrations(self) -> list[Migration]:
        """Parse and validate the migration set (no database needed)."""
        return cached_migrations(self.source)

    async def _connect(self) -> asyncpg.Connection:
        return await connect(self.db_config)

    async def plan(
        self, target_version: str | None = None, conn: asyncpg.Connection | None = None
    ) -> Plan:
        """What a run would do; changes nothing (not even creating the history table)."""
        migrations = self.migrations()
        own = conn is None
        conn = conn or await self._connect()
        try:
            state = await read_state(conn)
            return make_plan(
                migrations, state.history, self.features, self.db_config.display, target_version
            )
        finally:
            if own:
                await conn.close()

    async def migrate(
        self,
        target_version: str | None = None,
        *,
        background: bool = True,
        conn: asyncpg.Connection | None = None,
    ) -> RunResult:
        """Apply what is pending up to the target; raise a MigrationError when refused or failed.

        With `background`, unfinished background steps then run to completion
        here (the CLI's default); otherwise they are left for an engine.
        """
        migrations = self.migrations()
        own = conn is None
        conn = conn or await self._connect()
        try:
            # Validate before taking any lock: an edited file or a bad target is refused at once.
            plan = make_plan(
                migrations,
                await read_history_lean(conn),
                self.features,
                self.db_config.display,
                target_version,
            )
            if plan.foreground or plan.adopt_checksum:
                result = await apply_plan(
                    conn,
                    migrations=migrations,
                    features=self.features,
                    settings=self.settings,
                    db_config=self.db_config,
                    target=target_version,
                    say=self.say,
                    program=self.program,
                    verbose=self.verbose,
                )
            else:
                result = RunResult(
                    plan=plan, background_pending=[pm.migration.version for pm in plan.background]
                )
                self.say(f"{self.db_config.display}: nothing to apply; the schema is current")
            if background and result.background_pending:
                # Applied migrations' old-row work; a target does not limit it.
                result.background_done = await run_background_steps(
                    conn,
                    migrations=migrations,
                    features=self.features,
                    settings=self.settings,
                    db_config=self.db_config,
                    say=self.say,
                    program=self.program,
                    wait_for_lock=True,
                    verbose=self.verbose,
                )
                result.background_pending = [
                    v for v in result.background_pending if v not in result.background_done
                ]
            return result
        finally:
            if own:
                await conn.close()

    async def run_migrations(
        self, target_version: str | None = None, *, background: bool = True
    ) -> bool:
        """The seed's API: apply pending migrations; True on success.

        On failure the error is logged and kept in `last_error`; nothing half-
        applied is recorded as applied.
        """
        try:
            await self.migrate(target_version, background=background)
        except MigrationError as exc:
            self.last_error = exc
            log.error("%s", exc.message)
            return False
        self.last_error = None
        return True

    async def run_background(self) -> list[str]:
        """Run unfinished background steps to completion; return the versions finished."""
        conn = await self._connect()
        try:
            return await run_background_steps(
                conn,
                migrations=self.migrations(),
                features=self.features,
                settings=self.settings,
                db_config=self.db_config,
                say=self.say,
                program=self.program,
                wait_for_lock=True,
                verbose=self.verbose,
            )
        finally:
            await conn.close()

    async def get_migration_status(
        self, conn: asyncpg.Connection | None = None
    ) -> list[MigrationStatus]:
        """One row per migration file and history row: state, timing, checksum, progress."""
        migrations = self.migrations()
        own = conn is None
        conn = conn or await self._connect()
        try:
            state = await read_state(conn)
            progress = await read_progress(conn) if state.has_history else []
            return collect_status(migrations, state.history, progress, self.features)
        finally:
            if own:
                await conn.close()

    async def accept_checksum(self, version: str) -> str:
        """Record the current file's checksum for an applied migration (deliberate edit)."""
        by_version = {m.version: m for m in self.migrations()}
        m = by_version.get(version)
        if m is None:
            raise ValidationError(
                f"{self.db_config.display}: no migration file has version {version!r}"
            )
        conn = await self._connect()
        try:
            state = await read_state(conn)
            row = state.history.get(version)
            if row is None or not row.is_applied:
                raise ValidationError(
                    f"{self.db_config.display}: {m.filename} is not applied; nothing to accept"
                )
            old = row.checksum
            await conn.execute(
                "UPDATE migration_history SET checksum = $2 WHERE version = $1", version, m.checksum
            )
            others = [x for x in self.migrations() if x.version != version]
            check_checksums(others, state.history, self.db_config.display)
            return old or ""
        finally:
            await conn.close()


def _default_settings() -> MigrationSettings:
    from cex_arbitrage.config import MigrationSettings

    return MigrationSettings()
