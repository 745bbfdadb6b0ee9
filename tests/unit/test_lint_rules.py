"""`migrate lint`: each rule on a bad and a good example, at top level, in a DO block and in a
procedure body; what an earlier file created counts as live."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pglast", reason="the lint extra (pglast) is not installed")

from cex_arbitrage.collectors.columns import WRITTEN_COLUMNS
from cex_arbitrage.db.lint import RULES, AppFacts, Finding, lint_paths
from cex_arbitrage.db.structs import LEGACY_TABLES

FACTS = AppFacts(frozenset(LEGACY_TABLES), WRITTEN_COLUMNS, {"distribute_table": "symbol_base"})
# An earlier file of the set: creates the legacy `trades` (as 001 does) and a table of its own.
EARLIER = """-- migrate:description earlier
CREATE TABLE IF NOT EXISTS trades (
    id BIGSERIAL, symbol VARCHAR(50) NOT NULL, price NUMERIC(20,8) NOT NULL,
    trade_id VARCHAR(100), created_at TIMESTAMPTZ DEFAULT now()
);
CREATE TABLE IF NOT EXISTS orders (id bigint PRIMARY KEY, note text);
"""
COMMITTING = """-- migrate:description a procedure that commits per batch
CREATE OR REPLACE PROCEDURE batches() LANGUAGE plpgsql AS $$
BEGIN
    COMMIT;
END
$$;
"""


def lint(tmp_path: Path, sql: str, *, name: str = "005_change.sql") -> list[Finding]:
    (tmp_path / "001_earlier.sql").write_text(EARLIER)
    (tmp_path / "R__batches.sql").write_text(COMMITTING)
    target = tmp_path / name
    target.write_text("-- migrate:description change\n" + sql)
    return list(lint_paths([target], FACTS).active)


def rules_of(tmp_path: Path, sql: str) -> set[str]:
    return {f.rule for f in lint(tmp_path, sql)}


def do(sql: str) -> str:
    return f"DO $$\nBEGIN\n    {sql}\nEND\n$$;\n"


def procedure(sql: str) -> str:
    return f"CREATE PROCEDURE p() LANGUAGE plpgsql AS $$\nBEGIN\n    {sql}\nEND\n$$;\n"


NON_TX = "-- migrate:step work transaction:false\n"
# trades distributed on Citus by a statement before (a Citus call, or 007's procedure)
DISTRIBUTED = "SELECT create_distributed_table_concurrently('trades', 'symbol_base');\n"
CALLED = "CALL cex_migration.distribute_table('public.trades');\n"
BACKGROUND = "-- migrate:step work transaction:false background\n"

CASES = [
    # rule, bad SQL, good SQL
    ("index-not-concurrent", "CREATE INDEX i ON trades (price);",
     NON_TX + "CREATE INDEX CONCURRENTLY i ON trades (price);"),
    ("index-not-concurrent", do("CREATE INDEX i ON orders (note);"),
     "CREATE TABLE fresh (a int);\nCREATE INDEX i ON fresh (a);"),
    ("index-not-concurrent", procedure("CREATE INDEX i ON trades (price);"),
     procedure("CREATE INDEX i ON fresh (a);")),
    ("index-not-concurrent", "REINDEX TABLE trades;",
     NON_TX + "REINDEX (CONCURRENTLY) TABLE trades;"),
    ("concurrent-in-transaction", "CREATE INDEX CONCURRENTLY i ON trades (price);",
     NON_TX + "CREATE INDEX CONCURRENTLY i ON trades (price);"),
    ("concurrent-in-transaction", NON_TX + do("EXECUTE 'CREATE INDEX CONCURRENTLY i ON t (a)';"),
     NON_TX + "DROP INDEX CONCURRENTLY IF EXISTS i;"),
    ("concurrent-in-transaction", procedure("VACUUM trades;"), BACKGROUND + "VACUUM trades;"),
    ("add-column-volatile-default",
     "ALTER TABLE trades ADD COLUMN u uuid DEFAULT gen_random_uuid();",
     "ALTER TABLE trades ADD COLUMN seen timestamptz DEFAULT now();"),
    ("add-column-volatile-default", do("ALTER TABLE orders ADD COLUMN n bigserial;"),
     do("ALTER TABLE fresh_table ADD COLUMN n bigserial;")),
    ("add-column-volatile-default",
     procedure("ALTER TABLE trades ADD COLUMN n int GENERATED ALWAYS AS IDENTITY;"),
     procedure("ALTER TABLE trades ADD COLUMN n int DEFAULT 0;")),
    ("add-column-not-null", "ALTER TABLE trades ADD COLUMN n int NOT NULL;",
     "ALTER TABLE trades ADD COLUMN n int NOT NULL DEFAULT 0;"),
    ("add-column-not-null",
     procedure("EXECUTE format('ALTER TABLE trades ADD COLUMN %I int NOT NULL', c);"),
     procedure("EXECUTE format('ALTER TABLE trades ADD COLUMN %I int', c);")),
    ("add-column-not-null", do("ALTER TABLE orders ADD COLUMN n int NOT NULL;"),
     do("ALTER TABLE orders ADD COLUMN n int;")),
    ("set-not-null", procedure("ALTER TABLE orders ALTER COLUMN note SET NOT NULL;"),
     procedure("ALTER TABLE orders ALTER COLUMN note DROP NOT NULL;")),
    ("constraint-builds-index", do("ALTER TABLE orders ADD CONSTRAINT u UNIQUE (note);"),
     do("ALTER TABLE fresh ADD CONSTRAINT u UNIQUE (note);")),
    ("constraint-builds-index", procedure("ALTER TABLE trades ADD PRIMARY KEY (id);"),
     procedure("ALTER TABLE trades ADD CONSTRAINT pk PRIMARY KEY USING INDEX trades_id;")),
    ("set-not-null", "ALTER TABLE trades ALTER COLUMN trade_id SET NOT NULL;",
     "ALTER TABLE trades ADD CONSTRAINT c CHECK (trade_id IS NOT NULL) NOT VALID;\n"
     "ALTER TABLE trades VALIDATE CONSTRAINT c;\n"
     "ALTER TABLE trades ALTER COLUMN trade_id SET NOT NULL;"),
    ("set-not-null",
     "ALTER TABLE trades ADD CONSTRAINT c CHECK (trade_id IS NOT NULL) NOT VALID;\n"
     + do("ALTER TABLE trades ALTER COLUMN trade_id SET NOT NULL;"),
     do("ALTER TABLE fresh ALTER COLUMN a SET NOT NULL;")),
    ("constraint-not-valid", "ALTER TABLE trades ADD CONSTRAINT c CHECK (price > 0);",
     "ALTER TABLE trades ADD CONSTRAINT c CHECK (price > 0) NOT VALID;"),
    ("constraint-not-valid",
     do("ALTER TABLE trades ADD CONSTRAINT f FOREIGN KEY (id) REFERENCES orders (id);"),
     do("ALTER TABLE trades ADD CONSTRAINT f FOREIGN KEY (id) REFERENCES orders (id) NOT VALID;")),
    ("constraint-not-valid", procedure("ALTER TABLE trades ADD COLUMN o bigint REFERENCES orders;"),
     procedure("ALTER TABLE trades VALIDATE CONSTRAINT f;")),
    ("constraint-builds-index", "ALTER TABLE trades ADD CONSTRAINT u UNIQUE (trade_id);",
     "ALTER TABLE trades ADD CONSTRAINT u UNIQUE USING INDEX uq_trade;"),
    ("column-type-change", "ALTER TABLE trades ALTER COLUMN price TYPE float8;",
     "ALTER TABLE trades ALTER COLUMN symbol TYPE varchar(100);"),
    ("column-type-change", do("ALTER TABLE trades ALTER COLUMN symbol TYPE varchar(10);"),
     do("ALTER TABLE trades ALTER COLUMN symbol TYPE text;")),
    ("column-type-change",
     procedure("ALTER TABLE trades ALTER COLUMN price TYPE numeric(20,4);"),
     procedure("ALTER TABLE trades ALTER COLUMN price TYPE numeric(30,8);")),
    ("lock-table", "LOCK TABLE trades IN EXCLUSIVE MODE;", "SELECT 1 FROM trades LIMIT 1;"),
    ("lock-table", do("EXECUTE format('LOCK TABLE %I IN SHARE MODE', t);"),
     do("EXECUTE format('SELECT 1 FROM %I', t);")),
    ("lock-table", procedure("LOCK TABLE trades;"), procedure("PERFORM 1;")),
    ("whole-table-dml", "UPDATE trades SET price = price;",
     "UPDATE trades SET price = price WHERE id < 10;"),
    ("whole-table-dml", do("DELETE FROM orders;"), BACKGROUND + "DELETE FROM orders;"),
    ("whole-table-dml", "TRUNCATE orders;", procedure("DELETE FROM orders;")),
    ("drop-written", "ALTER TABLE trades DROP COLUMN symbol;",
     "ALTER TABLE trades DROP COLUMN created_at;"),
    ("drop-written", do("DROP TABLE book_ticker_snapshots;"), do("DROP TABLE pg_temp.trades;")),
    ("drop-written", procedure("ALTER TABLE trades RENAME COLUMN price TO px;"),
     procedure("ALTER TABLE orders RENAME COLUMN note TO remark;")),
    ("transaction-control", "SAVEPOINT a;", "SELECT 1;"),
    ("transaction-control", do("COMMIT;"), procedure("COMMIT;")),
    ("transaction-control",
     "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN COMMIT; END $$;",
     NON_TX + "CALL batches();"),
    ("transaction-control", "CALL batches();", NON_TX + do("PERFORM 1;")),
    ("transaction-control", do("CALL batches();"), NON_TX + do("CALL batches();\n    COMMIT;")),
    ("citus-unique-key",
     NON_TX + DISTRIBUTED + "CREATE UNIQUE INDEX CONCURRENTLY u ON trades (exchange, trade_id);",
     NON_TX + DISTRIBUTED
     + "CREATE UNIQUE INDEX CONCURRENTLY u ON trades (exchange, trade_id, symbol_base);"),
    ("citus-unique-key",
     CALLED + "ALTER TABLE trades ADD CONSTRAINT u UNIQUE (id);",
     CALLED + "ALTER TABLE trades ADD CONSTRAINT u UNIQUE (id, symbol_base);"),
    ("citus-unique-key",  # the good one: before the distribution, a local table
     NON_TX + DISTRIBUTED + "CREATE UNIQUE INDEX CONCURRENTLY u ON trades (id);",
     NON_TX + "CREATE UNIQUE INDEX CONCURRENTLY u ON trades (id);\n" + DISTRIBUTED),
    ("citus-add-constraint-alone",
     CALLED + "ALTER TABLE trades ADD CONSTRAINT a CHECK (price > 0) NOT VALID, "
     "ADD CONSTRAINT b CHECK (price < 1e9) NOT VALID;",
     CALLED + "ALTER TABLE trades ADD CONSTRAINT a CHECK (price > 0) NOT VALID;\n"
     "ALTER TABLE trades ADD CONSTRAINT b CHECK (price < 1e9) NOT VALID;"),
    ("citus-trigger",
     CALLED + "CREATE TRIGGER t BEFORE INSERT ON trades FOR EACH ROW EXECUTE FUNCTION f();",
     CALLED + "SET LOCAL citus.enable_unsafe_triggers = on;\n"
     "CREATE TRIGGER t BEFORE INSERT ON trades FOR EACH ROW EXECUTE FUNCTION f();"),
    ("role-literal", "GRANT SELECT ON trades TO reporting;", "GRANT SELECT ON trades TO PUBLIC;"),
    ("role-literal", do("EXECUTE 'GRANT SELECT ON trades TO reporting';"),
     do("EXECUTE format('GRANT SELECT ON trades TO %I', current_setting('cex.app_role'));")),
    ("role-literal", procedure("ALTER TABLE trades OWNER TO admin;"),
     procedure("ALTER TABLE trades OWNER TO CURRENT_USER;")),
    ("role-literal", "CREATE ROLE reporting NOLOGIN;",
     do("EXECUTE format('CREATE ROLE %I NOLOGIN', 'x');")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rule", "bad", "good"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_rule_on_a_bad_and_a_good_example(tmp_path: Path, rule: str, bad: str, good: str) -> None:
    assert rule in rules_of(tmp_path, bad)
    assert rule not in rules_of(tmp_path, good)


def test_every_rule_has_examples() -> None:
    assert {c[0] for c in CASES} == set(RULES)


def test_nested_statement_findings_name_their_own_line(tmp_path: Path) -> None:
    sql = "SELECT 1;\n" + do("PERFORM 1;\n    DELETE FROM orders;")
    (finding,) = lint(tmp_path, sql)
    assert finding.rule == "whole-table-dml"
    assert finding.line == 6  # header, SELECT, DO $$, BEGIN, PERFORM, then the DELETE
    assert finding.statement == "DELETE FROM orders" and finding.step == "main"


def test_non_ascii_text_before_a_statement_does_not_shift_it(tmp_path: Path) -> None:
    """pglast's offsets count characters: a comment with é or — before a body is harmless."""
    sql = "-- prix é — ok\nSELECT 1;\n" + do("PERFORM 1;\n    DELETE FROM orders;")
    (finding,) = lint(tmp_path, sql)
    assert finding.rule == "whole-table-dml" and finding.line == 7
    assert finding.statement == "DELETE FROM orders"


def test_a_table_this_file_creates_is_new_and_one_an_earlier_file_created_is_live(
    tmp_path: Path,
) -> None:
    assert not rules_of(tmp_path, "CREATE TABLE t2 (a int);\nUPDATE t2 SET a = 1;")
    assert rules_of(tmp_path, "UPDATE orders SET note = '';") == {"whole-table-dml"}


def test_a_legacy_table_is_live_even_when_this_file_creates_it_if_not_exists(
    tmp_path: Path,
) -> None:
    sql = (
        "CREATE TABLE IF NOT EXISTS book_ticker_snapshots (id bigint);\n"
        "CREATE INDEX i ON book_ticker_snapshots (id);"
    )
    assert rules_of(tmp_path, sql) == {"index-not-concurrent"}


def test_unreadable_dynamic_sql_is_skipped_not_guessed(tmp_path: Path) -> None:
    assert not rules_of(tmp_path, do("EXECUTE 'ALTER TABLE trades ' || missing;"))
