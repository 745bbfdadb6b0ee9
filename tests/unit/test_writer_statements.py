"""The writers' move statements agree with migration 005 and need no index to run."""

from __future__ import annotations

import re

from cex_arbitrage.collectors.statements import (
    MOVE_BOOK_TICKERS,
    MOVE_BOOK_TICKERS_DISTRIBUTED,
    MOVE_TRADES,
    MOVE_TRADES_DISTRIBUTED,
)
from tests.support.paths import MIGRATIONS

M005 = (MIGRATIONS / "005_natural_keys_for_shared_feeds.sql").read_text(encoding="utf-8")


def test_the_key_indexes_the_writers_look_for_are_the_ones_005_builds() -> None:
    built = set(re.findall(r"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS (\w+)", M005))
    looked_up = set(re.findall(r"to_regclass\('(\w+)'\)", MOVE_BOOK_TICKERS + MOVE_TRADES))
    assert built == looked_up == {"uq_book_ticker_snapshots_natural_key", "uq_trades_natural_key"}


def test_on_conflict_names_no_target_so_a_missing_index_is_no_error() -> None:
    for move in (MOVE_BOOK_TICKERS, MOVE_TRADES):
        assert move.rstrip().endswith("ON CONFLICT DO NOTHING")
        assert move.count("ON CONFLICT") == 1


def test_feeds_are_locked_in_one_order_and_only_without_a_valid_key_index() -> None:
    for move in (MOVE_BOOK_TICKERS, MOVE_TRADES):
        jit, lock = move.split(";\n")[:2]
        assert jit == "SET LOCAL jit = off"
        assert "pg_advisory_xact_lock" in lock and "ORDER BY 1" in lock
        assert "WHERE NOT EXISTS (SELECT 1 FROM pg_index" in lock


def test_the_distributed_moves_count_by_returning_and_join_no_stored_table() -> None:
    """On Citus the tag counts rows sent unless rows are returned; a lookup join is refused."""
    for move, table in (
        (MOVE_BOOK_TICKERS_DISTRIBUTED, "book_ticker_snapshots"),
        (MOVE_TRADES_DISTRIBUTED, "trades"),
    ):
        assert move.startswith(f"INSERT INTO {table} (")
        assert move.endswith("ON CONFLICT DO NOTHING RETURNING 1")
        assert "EXISTS" not in move and "stored" not in move and ";" not in move


def test_007_keeps_the_key_name_the_writers_look_up() -> None:
    m007 = (MIGRATIONS / "007_distribute_on_citus.sql").read_text(encoding="utf-8")
    routine = (MIGRATIONS / "R__citus_distribution.sql").read_text(encoding="utf-8")
    assert "uq_trades_natural_key_dist" in m007
    assert "RENAME TO uq_trades_natural_key;" in routine
