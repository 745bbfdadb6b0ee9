"""Which `transaction:false` statements a resumed run may send twice, and how the others run once.

A runner killed after the server finished a statement of a `transaction:false`
step, but before it recorded `statements_done`, resumes at that statement. So
each statement is one of:

- recorded: PostgreSQL allows it in a transaction block, so the runner sends
  it in ONE transaction with its own progress record
  (`BEGIN; <statement>; UPDATE migration_history ...; COMMIT`). Both commit or
  neither does: it runs exactly once, whenever the runner dies.
- outside: PostgreSQL refuses it in a transaction block (VACUUM, the
  CONCURRENTLY index commands, CALL or DO of code that COMMITs, ...). It runs
  in autocommit and is recorded after, so a resume may send it again; the
  kinds below make that second run harmless. `CREATE INDEX CONCURRENTLY`
  without `IF NOT EXISTS` and `DROP INDEX CONCURRENTLY` without `IF EXISTS`
  would fail the second time: for them the runner looks at the catalog first,
  and an index already built (valid) or already gone counts as done.

docs/resume.md has the decision table and the reasons.
"""

from __future__ import annotations

import dataclasses
import re

from cex_arbitrage.db.migrator.split import concurrent_index_name, strip_leading_comments

_IDENT = r"(?:\"(?:[^\"]|\"\")+\"|[A-Za-z_][A-Za-z0-9_$]*)"
_QUALIFIED = rf"{_IDENT}(?:\s*\.\s*{_IDENT})?"

# Statement starts PostgreSQL refuses inside a transaction block (or that may COMMIT
# themselves), with the reason a second run does no harm.
_OUTSIDE: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), label)
    for pattern, label in (
        (r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\b", "create index concurrently"),
        (r"DROP\s+INDEX\s+CONCURRENTLY\b", "drop index concurrently"),
        (r"REINDEX\b", "reindex"),
        (r"VACUUM\b", "vacuum"),
        (r"CALL\b", "call"),
        (r"DO\b", "do"),
        (r"CLUSTER\b", "cluster"),
        (
            r"(?:CREATE|DROP|ALTER)\s+(?:DATABASE|TABLESPACE|SUBSCRIPTION)\b|ALTER\s+SYSTEM\b"
            r"|DISCARD\b|(?:COMMIT|ROLLBACK)\s+PREPARED\b",
            "server-level command",
        ),
    )
)
_CREATE_IF_NOT_EXISTS = re.compile(
    r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+IF\s+NOT\s+EXISTS\b", re.IGNORECASE
)
_DROP_INDEX = re.compile(
    rf"DROP\s+INDEX\s+CONCURRENTLY\s+(?P<if>IF\s+EXISTS\s+)?(?P<name>{_QUALIFIED})\s*"
    r"(?:CASCADE|RESTRICT)?\s*;?\s*$",
    re.IGNORECASE,
)


@dataclasses.dataclass(frozen=True)
class StatementKind:
    """How one statement of a `transaction:false` step is sent, and how a resume treats it."""

    label: str
    # Sent in one transaction with its progress record: runs exactly once.
    in_transaction: bool
    # CREATE INDEX CONCURRENTLY without IF NOT EXISTS: the index; valid means done.
    builds_index: str | None = None
    # DROP INDEX CONCURRENTLY without IF EXISTS: the index (as written); absent means done.
    drops_index: str | None = None


def classify(statement: str) -> StatementKind:
    """The kind of `statement`, from its first words (comments before it skipped)."""
    text = strip_leading_comments(statement)
    for pattern, label in _OUTSIDE:
        if not pattern.match(text):
            continue
        if label == "create index concurrently" and not _CREATE_IF_NOT_EXISTS.match(text):
            return StatementKind(label, False, builds_index=concurrent_index_name(text))
        if label == "drop index concurrently":
            drop = _DROP_INDEX.match(text)
            if drop is not None and not drop["if"]:
                return StatementKind(label, False, drops_index=drop["name"])
        return StatementKind(label, False)
    return StatementKind("in transaction", True)
