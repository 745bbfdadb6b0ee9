"""The linter's values: where a statement runs, what the migration set knows, what was found.

Plain data, no parser: `statements` builds `Stmt` values from pglast's tree,
the rules read them with a `Knowledge` of the migration set, and return `Hit`s
that become `Finding`s with a file and line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

# Where a statement sits: top level of a step, inside a DO block, inside a
# function or procedure body (runs when called), or dynamic SQL (EXECUTE).
TOP, DO_BLOCK, FUNCTION_BODY, PROCEDURE_BODY = "top", "do", "function", "procedure"
# Identifiers that stand in for a format() placeholder (%I, %s) of dynamic SQL.
PLACEHOLDER = "lint_dynamic_"


class SqlSyntaxError(Exception):
    """PostgreSQL's parser refused the file's SQL; `line` is where."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


@dataclasses.dataclass(frozen=True)
class Place:
    """How the runner runs the statement: which step, transactional or not, background or not."""

    file: str
    step: str  # the step's name; "routine" for a routine file
    transactional: bool
    background: bool
    body: str = TOP  # TOP, DO_BLOCK, FUNCTION_BODY or PROCEDURE_BODY
    dynamic: bool = False  # text of an EXECUTE

    @property
    def in_routine_body(self) -> bool:
        """Inside a function or procedure: it runs where it is called, not here."""
        return self.body in (FUNCTION_BODY, PROCEDURE_BODY)

    @property
    def in_transaction(self) -> bool:
        """Runs inside a transaction block (a DO block or function always does)."""
        return self.transactional or self.body != TOP


@dataclasses.dataclass(frozen=True)
class Stmt:
    """One SQL statement of a file, parsed, with its line in the file."""

    node: Any  # a pglast.ast node (the statement, without its RawStmt)
    text: str
    line: int
    place: Place


@dataclasses.dataclass(frozen=True)
class Hit:
    """What a rule found in one statement."""

    rule: str
    message: str
    hint: str


@dataclasses.dataclass(frozen=True)
class Finding:
    """A hit at a place in a file; `reason` is set when a suppression accepted it."""

    file: str
    line: int
    rule: str
    message: str
    hint: str
    step: str
    statement: str
    reason: str | None = None

    @property
    def suppressed(self) -> bool:
        return self.reason is not None

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "rule": self.rule,
            "message": self.message,
            "hint": self.hint,
            "step": self.step,
            "statement": self.statement,
            "suppressed": self.suppressed,
            "reason": self.reason,
        }


@dataclasses.dataclass(frozen=True)
class AppFacts:
    """What the application tells the linter: its live tables and what its code writes."""

    legacy_tables: frozenset[str] = frozenset()
    written_columns: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    # Procedures that distribute the table named by their first argument on Citus,
    # by the column given here (007's cex_migration.distribute_table: symbol_base).
    distributing_procedures: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Knowledge:
    """What the migration set has done so far, in order: tables, column types, constraints.

    `existing` is the set of tables that may hold rows while a migration runs:
    the legacy tables and every table an earlier file created. A table this
    file creates is new (empty) for the rest of the file.
    """

    facts: AppFacts
    existing: set[str] = dataclasses.field(default_factory=set)
    created_here: set[str] = dataclasses.field(default_factory=set)
    columns: dict[str, dict[str, tuple[str, tuple[int, ...]]]] = dataclasses.field(
        default_factory=dict
    )
    # (table, column) pairs covered by a validated CHECK (column IS NOT NULL)
    not_null_checks: dict[tuple[str, str], set[str]] = dataclasses.field(default_factory=dict)
    validated: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    committing_procedures: set[str] = dataclasses.field(default_factory=set)
    # Tables an earlier statement distributed on Citus, and their distribution column.
    distributed: dict[str, str] = dataclasses.field(default_factory=dict)
    # (file, step) where `SET citus.enable_unsafe_triggers = on` was last seen.
    unsafe_triggers: tuple[str, str] | None = None

    def is_live(self, table: str | None) -> bool:
        """Whether `table` may hold rows that writers use while this file runs."""
        return table is not None and table in self.existing and table not in self.created_here

    def start_file(self) -> None:
        """Tables created by the previous file are existing ones for the next."""
        self.existing |= self.created_here
        self.created_here = set()
