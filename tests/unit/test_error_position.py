"""A server error's position maps back to the migration file's line (no database)."""

from __future__ import annotations

from cex_arbitrage.db.migrator.failures import file_line
from cex_arbitrage.db.migrator.parse import parse_migration

TEXT = """-- migrate:description two steps
CREATE TABLE a (id int);

CREATE TABLE b (id int,,);
-- migrate:step later transaction:false
-- migrate:session
SET search_path = public;
SELECT 1;
SELECT *
  FROM missing;
"""
M = parse_migration("001_two.sql", TEXT)


class ServerError(Exception):
    def __init__(self, position: int) -> None:
        super().__init__("boom")
        self.position = str(position)


def test_a_position_in_a_one_message_transaction_is_the_files_line() -> None:
    sent = f"BEGIN;\nSET LOCAL x = 1;\n{M.steps[0].sql}\n;\nINSERT INTO h VALUES (1);\nCOMMIT;"
    comma = sent.index(",,") + 1  # the server counts characters from 1
    assert file_line(M, sent, ServerError(comma + 1)) == 4


def test_a_position_in_one_statement_of_a_step_is_the_files_line() -> None:
    statement = M.steps[1].statements[-1]
    assert "missing" in statement
    assert file_line(M, statement, ServerError(statement.index("missing") + 1)) == 10


def test_no_position_or_text_not_from_the_file_gives_no_line() -> None:
    assert file_line(M, "SELECT 1", Exception("no position")) is None
    assert file_line(M, "SELECT 42 FROM elsewhere", ServerError(3)) is None
    assert file_line(M, None, ServerError(3)) is None
