"""Statement kinds of `transaction:false` steps: which go with their record, which may repeat."""

from __future__ import annotations

import pytest

from cex_arbitrage.db.migrator.repeat import StatementKind, classify


@pytest.mark.parametrize(
    ("statement", "kind"),
    [
        ("INSERT INTO t VALUES (1);", StatementKind("in transaction", True)),
        ("ALTER TABLE t VALIDATE CONSTRAINT c;", StatementKind("in transaction", True)),
        ("ANALYZE trades;", StatementKind("in transaction", True)),
        ("SELECT set_config('work_mem', '1GB', false);", StatementKind("in transaction", True)),
        ("-- note\nVACUUM (ANALYZE) trades;", StatementKind("vacuum", False)),
        ("vacuum;", StatementKind("vacuum", False)),
        ("CALL cex_migration.backfill_trade_symbols();", StatementKind("call", False)),
        ("DO $$ BEGIN COMMIT; END $$;", StatementKind("do", False)),
        ("REINDEX INDEX CONCURRENTLY i;", StatementKind("reindex", False)),
        (
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS uq ON t (a);",
            StatementKind("create index concurrently", False),
        ),
        (
            "CREATE INDEX CONCURRENTLY Big_A ON t (a);",
            StatementKind("create index concurrently", False, builds_index="big_a"),
        ),
        (
            "DROP INDEX CONCURRENTLY IF EXISTS i;",
            StatementKind("drop index concurrently", False),
        ),
        (
            "DROP INDEX CONCURRENTLY public.i;",
            StatementKind("drop index concurrently", False, drops_index="public.i"),
        ),
        ("ALTER SYSTEM SET work_mem = '1GB';", StatementKind("server-level command", False)),
        ("DOUBLE_IT();", StatementKind("in transaction", True)),
        ("CALLBACK_TABLE_FILL();", StatementKind("in transaction", True)),
    ],
)
def test_statement_kind(statement: str, kind: StatementKind) -> None:
    assert classify(statement) == kind
