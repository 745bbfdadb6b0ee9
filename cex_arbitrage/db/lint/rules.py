"""The rule table: each rule's id, what it guards against, and the function that checks it.

Suppress a finding with `-- lint:ignore RULE reason` on its line or in the
comment block right above it (docs/lint.md); the ids are the keys here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType

from cex_arbitrage.db.lint import rules_citus, rules_code, rules_locks
from cex_arbitrage.db.lint.model import Hit, Knowledge, Stmt

Check = Callable[[Stmt, Knowledge], Iterator[Hit]]

RULES: Mapping[str, tuple[str, Check]] = MappingProxyType(
    {
        "index-not-concurrent": (
            "CREATE INDEX / REINDEX without CONCURRENTLY on a live table",
            rules_locks.index_not_concurrent,
        ),
        "concurrent-in-transaction": (
            "CONCURRENTLY or VACUUM in a transactional step, a DO block or a function",
            rules_locks.concurrent_in_transaction,
        ),
        "add-column-volatile-default": (
            "ADD COLUMN that rewrites a live table (volatile default, serial, identity)",
            rules_locks.add_column_volatile_default,
        ),
        "add-column-not-null": (
            "ADD COLUMN NOT NULL without a default on a live table",
            rules_locks.add_column_not_null,
        ),
        "set-not-null": (
            "SET NOT NULL on a live table without a validated CHECK (col IS NOT NULL)",
            rules_locks.set_not_null,
        ),
        "constraint-not-valid": (
            "CHECK or FOREIGN KEY added to a live table without NOT VALID",
            rules_locks.constraint_not_valid,
        ),
        "constraint-builds-index": (
            "UNIQUE/PRIMARY KEY/EXCLUDE constraint that builds its index under lock",
            rules_locks.constraint_not_valid,
        ),
        "column-type-change": (
            "ALTER COLUMN TYPE that rewrites a live table",
            rules_locks.column_type_change,
        ),
        "lock-table": ("an explicit LOCK TABLE", rules_locks.lock_table),
        "whole-table-dml": (
            "UPDATE/DELETE without WHERE or TRUNCATE of a live table in a foreground step",
            rules_code.whole_table_dml,
        ),
        "drop-written": (
            "DROP or RENAME of a table or column the collectors still write",
            rules_code.drop_written,
        ),
        "transaction-control": (
            "SAVEPOINT in a step; COMMIT/ROLLBACK, or CALL of a committing procedure, "
            "in a function or in a transaction block",
            rules_code.transaction_control,
        ),
        "citus-unique-key": (
            "a unique index or key without the distribution column on a Citus distributed table",
            rules_citus.unique_without_distribution_column,
        ),
        "citus-add-constraint-alone": (
            "ADD CONSTRAINT with other subcommands on a Citus distributed table",
            rules_citus.add_constraint_with_others,
        ),
        "citus-trigger": (
            "CREATE TRIGGER on a Citus distributed table without citus.enable_unsafe_triggers",
            rules_citus.trigger_without_setting,
        ),
        "role-literal": (
            "a role name written into the SQL instead of read from the settings",
            rules_code.role_literal,
        ),
    }
)
# Findings about the files and the suppressions themselves: never suppressible.
FILE_FORMAT = "file-format"
SQL_SYNTAX = "sql-syntax"
BAD_SUPPRESSION = "lint-suppression"
META_RULES: Mapping[str, str] = MappingProxyType(
    {
        FILE_FORMAT: "the runner refuses the file (migrate:* directives, names, steps)",
        SQL_SYNTAX: "PostgreSQL's parser refuses the SQL",
        BAD_SUPPRESSION: "a suppression without a reason, of an unknown rule, or unused",
    }
)


def hits(stmt: Stmt, know: Knowledge) -> Iterator[Hit]:
    """Every rule's hits on one statement (a function shared by two ids runs once)."""
    seen: set[Check] = set()
    for _, check in RULES.values():
        if check not in seen:
            seen.add(check)
            yield from check(stmt, know)
