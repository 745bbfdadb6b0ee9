"""Where things are in the checkout."""

from __future__ import annotations

from pathlib import Path

SUPPORT = Path(__file__).resolve().parent
TESTS = SUPPORT.parent
REPO = TESTS.parent
MIGRATIONS = REPO / "cex_arbitrage" / "db" / "migrations"


def shipped_versions(extensions: frozenset[str] = frozenset()) -> list[str]:
    """Versions of the shipped migrations the runner applies where only `extensions` are
    installed (beyond plpgsql), in its order: 007 is for Citus only (migrate:extension)."""
    from cex_arbitrage.db.migrator.source import PackageSource, load_catalog

    catalog = load_catalog(PackageSource("cex_arbitrage.db.migrations"))
    return [
        m.version for m in catalog.migrations if m.extension is None or m.extension in extensions
    ]
