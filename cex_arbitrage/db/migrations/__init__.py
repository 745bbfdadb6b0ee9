"""cex_arbitrage's migrations: the SQL files of this package, and the seed's API over them.

Only package data and the thin module the contract names (`run_migrations`)
live here; the runner itself is `cex_arbitrage.db.migrator`. Names load on
first use, so reading these files as resources does not load the runner.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cex_arbitrage.db.migrations.run_migrations import (
        MigrationRunner as MigrationRunner,
    )
    from cex_arbitrage.db.migrations.run_migrations import (
        RunResult as RunResult,
    )
    from cex_arbitrage.db.migrations.run_migrations import (
        ensure_schema as ensure_schema,
    )
    from cex_arbitrage.db.migrator import (
        BackgroundWork as BackgroundWork,
    )
    from cex_arbitrage.db.migrator import (
        DirectorySource as DirectorySource,
    )
    from cex_arbitrage.db.migrator import (
        MigrationStatus as MigrationStatus,
    )
    from cex_arbitrage.db.migrator import (
        PackageSource as PackageSource,
    )
    from cex_arbitrage.db.migrator import (
        SchemaReport as SchemaReport,
    )
    from cex_arbitrage.errors import (
        ExitCode as ExitCode,
    )
    from cex_arbitrage.errors import (
        MigrationError as MigrationError,
    )

_EXPORTS = {
    "BackgroundWork": "cex_arbitrage.db.migrator",
    "DirectorySource": "cex_arbitrage.db.migrator",
    "ExitCode": "cex_arbitrage.errors",
    "MigrationError": "cex_arbitrage.errors",
    "MigrationRunner": "cex_arbitrage.db.migrations.run_migrations",
    "MigrationStatus": "cex_arbitrage.db.migrator",
    "PackageSource": "cex_arbitrage.db.migrator",
    "RunResult": "cex_arbitrage.db.migrations.run_migrations",
    "SchemaReport": "cex_arbitrage.db.migrator",
    "ensure_schema": "cex_arbitrage.db.migrations.run_migrations",
}

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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
