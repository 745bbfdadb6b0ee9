"""`migrate lint` next to squawk (npm squawk-cli), rule by rule: docs/lint.md's table, held.

Each row is a statement, the rule of ours that fires on it (None: none, on
purpose) and the squawk rule that fires on it (None: squawk finds nothing;
squawk may add a second rule, e.g. constraint-missing-not-valid next to
adding-foreign-key-constraint). The
reasons for every None are in docs/lint.md. Needs the squawk binary: on PATH,
or $SQUAWK; without it the test is skipped, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("pglast", reason="the lint extra (pglast) is not installed")

from tests.unit.test_lint_rules import do, lint

SQUAWK = os.environ.get("SQUAWK") or shutil.which("squawk")
# squawk rules about style or the tool's own habits, not about this statement's safety
NOISE = {
    "prefer-robust-stmts",
    "require-lock-timeout",
    "require-statement-timeout",
    "prefer-bigint-over-int",
    "prefer-bigint-over-smallint",
}
NON_TX = "-- migrate:step work transaction:false\n"

COMPARISON = [
    ("CREATE INDEX i ON trades (price);", "index-not-concurrent",
     "require-concurrent-index-creation"),
    ("CREATE INDEX CONCURRENTLY i ON trades (price);\nSELECT 1;", "concurrent-in-transaction",
     "ban-concurrent-index-creation-in-transaction"),
    ("ALTER TABLE trades ADD COLUMN u uuid DEFAULT gen_random_uuid();",
     "add-column-volatile-default", "adding-field-with-default"),
    ("ALTER TABLE trades ADD COLUMN n bigint NOT NULL;", "add-column-not-null",
     "adding-required-field"),
    ("ALTER TABLE trades ALTER COLUMN trade_id SET NOT NULL;", "set-not-null",
     "adding-not-nullable-field"),
    ("ALTER TABLE trades ADD CONSTRAINT c CHECK (price > 0);", "constraint-not-valid",
     "constraint-missing-not-valid"),
    ("ALTER TABLE trades ADD CONSTRAINT f FOREIGN KEY (id) REFERENCES orders (id);",
     "constraint-not-valid", "adding-foreign-key-constraint"),
    ("ALTER TABLE trades ADD CONSTRAINT u UNIQUE (trade_id);", "constraint-builds-index",
     "disallowed-unique-constraint"),
    ("ALTER TABLE trades ADD PRIMARY KEY (id);", "constraint-builds-index",
     "adding-serial-primary-key-field"),
    ("ALTER TABLE trades ALTER COLUMN price TYPE float8;", "column-type-change",
     "changing-column-type"),
    ("ALTER TABLE trades DROP COLUMN symbol;", "drop-written", "ban-drop-column"),
    ("DROP TABLE book_ticker_snapshots;", "drop-written", "ban-drop-table"),
    ("ALTER TABLE trades RENAME COLUMN price TO px;", "drop-written", "renaming-column"),
    ("ALTER TABLE trades RENAME TO trades_old;", "drop-written", "renaming-table"),
    ("REINDEX TABLE trades;", "index-not-concurrent", "require-concurrent-reindex"),
    ("TRUNCATE orders CASCADE;", "whole-table-dml", "ban-truncate-cascade"),
    ("BEGIN;\nSELECT 1;\nCOMMIT;", "file-format", "transaction-nesting"),
    # squawk misses these
    ("CREATE INDEX CONCURRENTLY i ON trades (price);", "concurrent-in-transaction", None),
    ("LOCK TABLE trades IN EXCLUSIVE MODE;", "lock-table", None),
    ("UPDATE trades SET price = price;", "whole-table-dml", None),
    ("SAVEPOINT a;", "transaction-control", None),
    ("GRANT SELECT ON trades TO reporting;", "role-literal", None),
    (do("CREATE INDEX i ON trades (price);"), "index-not-concurrent", None),
    (do("ALTER TABLE trades ADD CONSTRAINT c CHECK (price > 0);"), "constraint-not-valid", None),
    (do("COMMIT;"), "transaction-control", None),
    ("CALL batches();", "transaction-control", None),
    # we pass these on purpose (docs/lint.md says why)
    (NON_TX + "DROP INDEX IF EXISTS i;", None, "require-concurrent-index-deletion"),
    ("ALTER TABLE trades ALTER COLUMN trade_id DROP NOT NULL;", None, "ban-drop-not-null"),
    ("ALTER TABLE trades DROP COLUMN created_at;", None, "ban-drop-column"),
    ("CREATE TABLE z (a char(4));", None, "ban-char-field"),
    ("CREATE TABLE z (a timestamp);", None, "prefer-timestamp-tz"),
    ("CREATE TABLE z (a varchar(3));", None, "prefer-text-field"),
    ("CREATE TABLE z (id bigserial PRIMARY KEY);", None, "prefer-identity"),
    ("CREATE DOMAIN d AS bigint CHECK (VALUE > 0);", None, "ban-create-domain-with-constraint"),
    (NON_TX + "DROP DATABASE other;", None, "ban-drop-database"),
]  # fmt: skip


def _squawk(path: Path) -> set[str]:
    assert SQUAWK is not None
    result = subprocess.run(
        [SQUAWK, "--reporter", "json", "--assume-in-transaction", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return {item["rule_name"] for item in json.loads(result.stdout or "[]")} - NOISE


@pytest.mark.skipif(SQUAWK is None, reason="squawk not found: npm install squawk-cli, or $SQUAWK")
@pytest.mark.parametrize(
    ("sql", "ours", "theirs"),
    COMPARISON,
    ids=[f"{i}-{c[1]}-{c[2]}" for i, c in enumerate(COMPARISON)],
)
def test_each_rule_next_to_squawk(
    tmp_path: Path, sql: str, ours: str | None, theirs: str | None
) -> None:
    found = {f.rule for f in lint(tmp_path, sql)}
    assert found == ({ours} if ours else set())
    squawked = _squawk(tmp_path / "005_change.sql")
    assert theirs in squawked if theirs else not squawked, squawked
