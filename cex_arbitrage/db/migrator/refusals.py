"""What a step may not hold, refused before anything runs, naming the file line.

Transaction control would end the runner's transaction halfway through a
migration; a psql meta-command is not SQL and the server would refuse it
mid-run. Used by the migration, routine and down parsers.
"""

from __future__ import annotations

import re

from cex_arbitrage.db.migrator.split import split_statements, strip_leading_comments
from cex_arbitrage.errors import MigrationFileError, TransactionControlError

# The runner owns transactions; a top-level COMMIT in a step would commit half a migration.
# Every spelling PostgreSQL accepts: BEGIN [WORK|TRANSACTION], START TRANSACTION,
# COMMIT/END [AND CHAIN], ROLLBACK/ABORT (not ROLLBACK TO a savepoint), and PREPARE
# TRANSACTION (it ends the transaction too). END closing a BEGIN ATOMIC body is part
# of its CREATE statement (split.py), so a statement that starts with END ends a
# transaction.
_TRANSACTION_CONTROL_RE = re.compile(
    r"^(?P<word>BEGIN|START\s+TRANSACTION|COMMIT|END|ROLLBACK|ABORT|PREPARE\s+TRANSACTION)\b"
    r"(?!\s+(?:TO|PREPARED)\b)",
    re.IGNORECASE,
)


def _refuse_meta_command(filename: str, body: str, line: int) -> None:
    """A psql meta-command (`\\set`) is not SQL: the server would refuse it mid-run."""
    raise MigrationFileError(
        f"{filename}:{line}: {body.split(None, 1)[0]} is a psql meta-command, which the runner "
        "cannot run; remove it, or move it below `-- migrate:psql-only`, which only psql reads",
        filename=filename,
        line=line,
    )


def refuse_transaction_control(filename: str, sql: str, line_numbers: list[int]) -> None:
    """Refuse BEGIN/COMMIT/ROLLBACK and psql meta-commands at top level, naming the line."""
    pos = 0
    for statement in split_statements(sql):
        fragment = statement[:-1]  # as it stands in `sql`, stripped, without the `;`
        start = sql.find(fragment, pos)
        pos = start + len(fragment)
        body = strip_leading_comments(fragment)
        line = line_numbers[min(sql.count("\n", 0, pos - len(body)), len(line_numbers) - 1)]
        if body.startswith("\\"):
            _refuse_meta_command(filename, body, line)
        match = _TRANSACTION_CONTROL_RE.match(body)
        if match:
            word = " ".join(match["word"].upper().split())
            raise TransactionControlError(
                f"{filename}:{line}: {word} is not allowed in a migration: the runner runs "
                "each step in a transaction of its own (a transaction:false step statement "
                f"by statement), and {word} would end it halfway through the migration. "
                "Remove it; put work that must commit on its own in a "
                "`-- migrate:step NAME transaction:false` step. A manual run gets the same "
                "by psql -1 -f of a file whose steps are all transactional (a file with "
                "transaction:false steps runs with plain psql -f, as the README says)",
                filename=filename,
                line=line,
                word=word,
            )
