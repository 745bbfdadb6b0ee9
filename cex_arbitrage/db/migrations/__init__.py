"""The migration system: SQL files shipped in this package, and the runner that applies them."""

from cex_arbitrage.db.migrations.ensure import BackgroundWork, SchemaReport, ensure_schema
from cex_arbitrage.db.migrations.errors import ExitCode, MigrationError
from cex_arbitrage.db.migrations.run_migrations import MigrationRunner, RunResult
from cex_arbitrage.db.migrations.source import DirectorySource, PackageSource
from cex_arbitrage.db.migrations.status import MigrationStatus

__all__ = [
    "BackgroundWork",
    "DirectorySource",
    "ExitCode",
    "MigrationError",
    "MigrationRunner",
    "MigrationStatus",
    "PackageSource",
    "RunResult",
    "SchemaReport",
    "ensure_schema",
]
