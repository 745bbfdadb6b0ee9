"""Where things are in the checkout."""

from __future__ import annotations

from pathlib import Path

SUPPORT = Path(__file__).resolve().parent
TESTS = SUPPORT.parent
REPO = TESTS.parent
MIGRATIONS = REPO / "cex_arbitrage" / "db" / "migrations"
