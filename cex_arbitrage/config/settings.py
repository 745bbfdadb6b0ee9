"""The typed settings the engine and the CLI read: one frozen value per config section."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cex_arbitrage.db.migrator.settings import RunnerSettings
from cex_arbitrage.db.structs import DEFAULT_FEATURES, DatabaseConfig

# Tables the shipped migrations alter: pre-flight refuses a user that does not own them.
MIGRATED_TABLES = ("trades", "book_ticker_snapshots", "migration_history", "migration_progress")


@dataclass(frozen=True)
class MigrationSettings:
    """How the engine and the CLI run migrations (`migrations:` section)."""

    mode: Literal["apply", "wait"] = "apply"  # apply on boot, or only wait for schema
    lock_wait_timeout: float = 300.0  # seconds to wait for the runner's advisory lock
    wait_timeout: float = 600.0  # follower mode: give up after this
    boot_wait_timeout: float = 60.0  # database not up yet at boot: retry this long
    progress_interval: float = 10.0  # log a progress line this often while migrating
    app_role: str = "cex_app"
    readonly_role: str = "cex_readonly"
    backfill_batch_size: int = 50000
    backfill_sleep_ms: int = 0
    # Sessions a `parallel` step runs on at once (the 001 backfill shares its
    # chunks out among them); 1 runs it on the runner's connection only.
    parallel_sessions: int = 2
    run_background: bool = True
    # Seconds between an engine's attempts to take over background work whose
    # runner may have stopped (only while that work is unfinished).
    background_retry_interval: float = 30.0

    def session_settings(self) -> dict[str, str]:
        """The `cex.*` settings the migration SQL reads (docs/migration-files.md)."""
        return {
            "cex.app_role": self.app_role,
            "cex.readonly_role": self.readonly_role,
            "cex.backfill_batch_size": str(self.backfill_batch_size),
            "cex.backfill_sleep_ms": str(self.backfill_sleep_ms),
            "cex.parallel_sessions": str(self.parallel_sessions),
        }

    def runner_settings(self, features: Mapping[str, bool]) -> RunnerSettings:
        """This application's facts and choices, as the one value the runner takes."""
        return RunnerSettings(
            features=features,
            session_settings=self.session_settings(),
            watched_tables=MIGRATED_TABLES,
            mode=self.mode,
            lock_wait_timeout=self.lock_wait_timeout,
            wait_timeout=self.wait_timeout,
            boot_wait_timeout=self.boot_wait_timeout,
            progress_interval=self.progress_interval,
            parallel_sessions=self.parallel_sessions,
            run_background=self.run_background,
            background_retry_interval=self.background_retry_interval,
        )


@dataclass(frozen=True)
class CollectorSettings:
    """Batching of the collectors' database writers (`collectors:` section)."""

    batch_size: int = 500
    flush_interval: float = 0.5
    max_retries: int = 5


@dataclass(frozen=True)
class AppConfig:
    """Everything the engine and the migrate CLI read from configuration."""

    database: DatabaseConfig
    features: Mapping[str, bool]
    migrations: MigrationSettings
    collectors: CollectorSettings
    source: str  # where the settings came from, for `status --verbose` and logs
    database_configured: bool  # False: nothing told us where the database is
    path: Path | None  # the config file used, if any

    def feature_enabled(self, name: str) -> bool:
        """Whether feature `name` is on; a feature nobody configured is off."""
        return self.features.get(name, DEFAULT_FEATURES.get(name, False))

    def runner_settings(self) -> RunnerSettings:
        """The runner's settings for this configuration (features included)."""
        return self.migrations.runner_settings(self.features)
