"""MigrationRunner: the Python API over the core loop, shared by the CLI and applications.

runner = MigrationRunner(db_config, source=..., settings=RunnerSettings(...))
result = await runner.migrate(target_version="001")
status = await runner.get_migration_status(conn)
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import asyncpg

from cex_arbitrage.db.migrator import lock
from cex_arbitrage.db.migrator.catalog import cached_catalog
from cex_arbitrage.db.migrator.connect import owned_connection
from cex_arbitrage.db.migrator.fingerprint import Drift, read_drift
from cex_arbitrage.db.migrator.fingerprint import record as record_fingerprint
from cex_arbitrage.db.migrator.history import read_history_lean, read_progress, read_state
from cex_arbitrage.db.migrator.model import Catalog, Migration
from cex_arbitrage.db.migrator.plan import Plan, check_checksums, make_plan, versioned
from cex_arbitrage.db.migrator.run import (
    RunResult,
    apply_plan,
    background_pass,
    run_background_steps,
)
from cex_arbitrage.db.migrator.session import RunContext, applied_from
from cex_arbitrage.db.migrator.settings import RunnerSettings
from cex_arbitrage.db.migrator.source import MigrationSource
from cex_arbitrage.db.migrator.status import MigrationStatus, collect_status
from cex_arbitrage.db.structs import DatabaseConfig
from cex_arbitrage.errors import (
    MigrationError,
    NotAppliedError,
    UnknownTargetError,
)

if TYPE_CHECKING:  # `down` loads its modules when called: apply and status do not need them
    from cex_arbitrage.db.migrator.down import DownResult

log = logging.getLogger("cex_arbitrage.migrations")


class MigrationRunner:
    """Applies the migrations of one source to one database."""

    def __init__(
        self,
        db_config: DatabaseConfig,
        *,
        source: MigrationSource,
        settings: RunnerSettings,
        say: Callable[[str], None] | None = None,
        verbose: bool = False,
        program: str | None = None,
    ) -> None:
        self.db_config = db_config
        self.source = source
        self.settings = settings
        self.say = say or log.info
        self.verbose = verbose
        self.program = program or os.path.basename(sys.argv[0] or "python")
        self.last_error: MigrationError | None = None

    @property
    def features(self) -> dict[str, bool]:
        return dict(self.settings.features)

    def catalog(self) -> Catalog:
        """Parse and validate the migration set (no database needed)."""
        return cached_catalog(self.source)

    def migrations(self) -> list[Migration]:
        return list(self.catalog().migrations)

    def _context(self, conn: asyncpg.Connection) -> RunContext:
        return RunContext(
            conn=conn,
            db=self.db_config,
            settings=self.settings,
            applied_from=applied_from(self.program),
            say=self.say,
            verbose=self.verbose,
        )

    async def plan(
        self, target_version: str | None = None, conn: asyncpg.Connection | None = None
    ) -> Plan:
        """What a run would do; changes nothing (not even creating the history table)."""
        catalog = self.catalog()
        async with owned_connection(conn, self.db_config) as c:
            state = await read_state(c)
        return make_plan(
            catalog,
            state.history,
            self.settings.features,
            self.db_config.display,
            target_version,
            extensions=state.extensions,
        )

    async def migrate(
        self,
        target_version: str | None = None,
        *,
        background: bool = True,
        conn: asyncpg.Connection | None = None,
        wait_background: bool = True,
    ) -> RunResult:
        """Apply what is pending up to the target; raise a MigrationError when refused or failed.

        With `background`, unfinished background steps then run to completion
        here (the CLI's default); otherwise they are left for an engine. When
        another runner holds the background lock, `wait_background` waits for
        it (up to lock_wait_timeout); without it the run returns at once with
        the holder in `result.background_elsewhere`.
        """
        catalog = self.catalog()
        database = self.db_config.display
        async with owned_connection(conn, self.db_config) as c:
            ctx = self._context(c)
            # Validate before taking any lock: an edited file or a bad target is refused at once.
            lean = await read_history_lean(c)
            plan = make_plan(
                catalog,
                lean.history,
                self.settings.features,
                database,
                target_version,
                extensions=lean.extensions,
            )
            if plan.foreground or plan.has_bookkeeping:
                result = await apply_plan(ctx, catalog, target_version)
            else:
                pending = [pm.migration.version for pm in plan.background]
                result = RunResult(plan=plan, background_pending=pending)
                self.say(f"{database}: nothing to apply; the schema is current")
            if background and result.background_pending:
                # Applied migrations' old-row work; a target does not limit it.
                outcome = await background_pass(ctx, catalog, wait_for_lock=wait_background)
                result.background_elsewhere = outcome.elsewhere
                result.background_done = outcome.done
                if outcome.elsewhere is None:  # read under the lock: what is really left
                    left = set(outcome.remaining)
                    result.background_pending = [v for v in result.background_pending if v in left]
            return result

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
        catalog = self.catalog()
        async with owned_connection(None, self.db_config) as conn:
            return await run_background_steps(self._context(conn), catalog, wait_for_lock=True)

    async def get_migration_status(
        self, conn: asyncpg.Connection | None = None
    ) -> list[MigrationStatus]:
        """One row per migration file and history row, then routines: state, timing, progress."""
        catalog = self.catalog()
        async with owned_connection(conn, self.db_config) as c:
            state = await read_state(c)
            progress = await read_progress(c) if state.has_history else []
            held = await lock.holders(c)
        return collect_status(
            catalog,
            state.history,
            progress,
            self.settings.features,
            locks=(held.get(lock.MIGRATE_LOCK), held.get(lock.BACKGROUND_LOCK)),
            extensions=state.extensions,
        )

    async def down(
        self, target_version: str, *, allow_data_loss: bool = False, dry_run: bool = False
    ) -> DownResult:
        """Undo recorded migrations above `target_version`, newest first (see migrator.down).

        Refused before anything is undone (ValidationError subclasses) when a
        migration in the walk has no down file or is irreversible, or when a down
        would drop rows and `allow_data_loss` is not set. `dry_run` plans and
        rehearses (rolled back) and returns what would be undone and dropped.
        """
        from cex_arbitrage.db.migrator.down import run_down

        catalog = self.catalog()
        async with owned_connection(None, self.db_config) as conn:
            return await run_down(
                self._context(conn),
                catalog,
                target_version,
                allow_data_loss=allow_data_loss,
                dry_run=dry_run,
            )

    async def drift(self, conn: asyncpg.Connection | None = None) -> Drift:
        """The schema now against the fingerprint the last run recorded (changes nothing)."""
        async with owned_connection(conn, self.db_config) as c:
            return await read_drift(c)

    async def accept_drift(self) -> bool:
        """Record the schema as it is now as the fingerprint; False before migration 006.

        For a deliberate change outside migrations, or after a major-version upgrade
        (the server's deparsed definitions may read differently).
        """
        async with owned_connection(None, self.db_config) as conn:
            return await record_fingerprint(conn, applied_from(self.program))

    async def accept_checksum(self, version: str) -> str:
        """Record the current file's checksum for an applied migration (deliberate edit).

        Returns the checksum recorded before; when that is already the file's,
        nothing is written (the caller can say "already matches").
        """
        database = self.db_config.display
        catalog = self.catalog()
        m = catalog.by_version().get(version)
        if m is None:
            raise UnknownTargetError(
                f"{database}: no migration file has version {version!r}; known versions: "
                f"{', '.join(catalog.by_version()) or 'none'}",
                target=version,
                known=list(catalog.by_version()),
            )
        async with owned_connection(None, self.db_config) as conn:
            state = await read_state(conn)
            row = state.history.get(version)
            if row is None or not row.is_applied:
                raise NotAppliedError(
                    f"{database}: {m.filename} is not applied; nothing to accept",
                    version=version,
                )
            if row.checksum != m.checksum:
                await conn.execute(
                    "UPDATE migration_history SET checksum = $2 WHERE version = $1",
                    version,
                    m.checksum,
                )
            others = [x for x in catalog.migrations if x.version != version]
            check_checksums(others, versioned(state.history), database)
            return row.checksum or ""
