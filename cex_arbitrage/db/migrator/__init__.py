"""The migration runner: parse, source, plan, lock, execute, history, status, boot hook.

Generic: it names no table and no setting of the application; what it needs
of one arrives as a `RunnerSettings` value. Its layers, each a module with one
job:

    model, split, parse, parse_down,       what migrations (and their down files) exist
    source, catalog                        (no database)
    plan, down_plan, states, status        what runs or is undone, and how it stands
                                           (no database)
    connect, lock, history, preflight,     the database seams; fingerprint: the schema
    fingerprint                            recorded after a run, for `status --drift`
    session, statements, invalid_index,    how SQL is sent: sessions, lock retry,
    parallel, failures, steps, blockers    fan-out, failures, one migration's steps,
                                           who holds a lock we timed out on
    run, down                              the core loops: plan, lock, run, record; and
                                           the walk back (rehearsed, then undone)
    runner, ensure, background             the API: MigrationRunner, ensure_schema
    scaffold                               a new migration file to fill in (CLI `new`)

Names are loaded on first use, so `import cex_arbitrage.db.migrator.settings`
(the config layer does) does not load asyncpg.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cex_arbitrage.db.migrator.background import (
        BackgroundWork as BackgroundWork,
    )
    from cex_arbitrage.db.migrator.ensure import (
        SchemaReport as SchemaReport,
    )
    from cex_arbitrage.db.migrator.ensure import (
        ensure_schema as ensure_schema,
    )
    from cex_arbitrage.db.migrator.model import (
        Catalog as Catalog,
    )
    from cex_arbitrage.db.migrator.model import (
        Migration as Migration,
    )
    from cex_arbitrage.db.migrator.model import (
        Routine as Routine,
    )
    from cex_arbitrage.db.migrator.model import (
        Step as Step,
    )
    from cex_arbitrage.db.migrator.plan import (
        Plan as Plan,
    )
    from cex_arbitrage.db.migrator.plan import (
        PlannedMigration as PlannedMigration,
    )
    from cex_arbitrage.db.migrator.plan import (
        make_plan as make_plan,
    )
    from cex_arbitrage.db.migrator.run import (
        RunResult as RunResult,
    )
    from cex_arbitrage.db.migrator.runner import (
        MigrationRunner as MigrationRunner,
    )
    from cex_arbitrage.db.migrator.settings import (
        RunnerSettings as RunnerSettings,
    )
    from cex_arbitrage.db.migrator.source import (
        DirectorySource as DirectorySource,
    )
    from cex_arbitrage.db.migrator.source import (
        MigrationSource as MigrationSource,
    )
    from cex_arbitrage.db.migrator.source import (
        PackageSource as PackageSource,
    )
    from cex_arbitrage.db.migrator.source import (
        load_catalog as load_catalog,
    )
    from cex_arbitrage.db.migrator.source import (
        load_migrations as load_migrations,
    )
    from cex_arbitrage.db.migrator.states import (
        MigrationState as MigrationState,
    )
    from cex_arbitrage.db.migrator.status import (
        MigrationStatus as MigrationStatus,
    )

_EXPORTS = {
    "BackgroundWork": "background",
    "Catalog": "model",
    "DirectorySource": "source",
    "Migration": "model",
    "MigrationRunner": "runner",
    "MigrationSource": "source",
    "MigrationState": "states",
    "MigrationStatus": "status",
    "PackageSource": "source",
    "Plan": "plan",
    "PlannedMigration": "plan",
    "Routine": "model",
    "RunResult": "run",
    "RunnerSettings": "settings",
    "SchemaReport": "ensure",
    "Step": "model",
    "ensure_schema": "ensure",
    "load_catalog": "source",
    "load_migrations": "source",
    "make_plan": "plan",
}

__all__ = [
    "BackgroundWork",
    "Catalog",
    "DirectorySource",
    "Migration",
    "MigrationRunner",
    "MigrationSource",
    "MigrationState",
    "MigrationStatus",
    "PackageSource",
    "Plan",
    "PlannedMigration",
    "Routine",
    "RunResult",
    "RunnerSettings",
    "SchemaReport",
    "Step",
    "ensure_schema",
    "load_catalog",
    "load_migrations",
    "make_plan",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
