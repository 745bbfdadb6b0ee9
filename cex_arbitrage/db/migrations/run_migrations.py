"""The seed's API for cex_arbitrage's own migrations: the runner with this application's defaults.

    from cex_arbitrage.db.migrations.run_migrations import MigrationRunner
    runner = MigrationRunner(db_config)
    success = await runner.run_migrations(target_version="001")
    status = await runner.get_migration_status(conn)

The generic runner (`cex_arbitrage.db.migrator`) takes its source and
settings explicitly; here they default to the SQL files of this package and
the application's settings from `cex_arbitrage.config`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from cex_arbitrage.config import MigrationSettings
from cex_arbitrage.db.migrator import ensure as _ensure
from cex_arbitrage.db.migrator import runner as _runner
from cex_arbitrage.db.migrator.ensure import SchemaReport, Target
from cex_arbitrage.db.migrator.run import RunResult
from cex_arbitrage.db.migrator.settings import RunnerSettings
from cex_arbitrage.db.migrator.source import MigrationSource, PackageSource
from cex_arbitrage.db.structs import DEFAULT_FEATURES, DatabaseConfig

PACKAGE = "cex_arbitrage.db.migrations"

__all__ = ["PACKAGE", "MigrationRunner", "RunResult", "ensure_schema", "shipped_source"]


def shipped_source() -> PackageSource:
    """The migrations shipped inside cex_arbitrage (package data of this package)."""
    return PackageSource(PACKAGE)


def _settings(
    settings: MigrationSettings | RunnerSettings | None, features: Mapping[str, bool] | None
) -> RunnerSettings:
    """The runner's settings from the application's (config section or ready-made)."""
    chosen = dict(DEFAULT_FEATURES if features is None else features)
    if isinstance(settings, RunnerSettings):
        return settings if features is None else settings.replace(features=chosen)
    return (settings or MigrationSettings()).runner_settings(chosen)


class MigrationRunner(_runner.MigrationRunner):
    """The runner over cex_arbitrage's shipped migrations, with the application's defaults."""

    def __init__(
        self,
        db_config: DatabaseConfig,
        *,
        source: MigrationSource | None = None,
        features: Mapping[str, bool] | None = None,
        settings: MigrationSettings | RunnerSettings | None = None,
        say: Callable[[str], None] | None = None,
        verbose: bool = False,
        program: str | None = None,
    ) -> None:
        super().__init__(
            db_config,
            source=source or shipped_source(),
            settings=_settings(settings, features),
            say=say,
            verbose=verbose,
            program=program,
        )


async def ensure_schema(
    target: Target,
    *,
    features: Mapping[str, bool] | None = None,
    settings: MigrationSettings | RunnerSettings | None = None,
    source: MigrationSource | None = None,
    config: DatabaseConfig | None = None,
    say: Callable[[str], None] | None = None,
) -> SchemaReport:
    """The engine's boot hook over the shipped migrations (see migrator.ensure)."""
    return await _ensure.ensure_schema(
        target,
        source=source or shipped_source(),
        settings=_settings(settings, features),
        config=config,
        say=say,
    )
