"""Rules for tables an earlier migration distributed on Citus (007; docs/citus.md, section 8).

The linter learns which tables are distributed, and by which column, from
the statements before (learn.py): a `create_distributed_table[_concurrently]`
call, or a CALL of one of the application's distributing procedures. Each
rule is a statement Citus refuses on a distributed table, found before it
fails on a cluster. (A serial or identity `ADD COLUMN`, which Citus refuses
too, is already `add-column-volatile-default` on every live table.)
"""

from __future__ import annotations

from collections.abc import Iterator

from pglast.enums import AlterTableType, ConstrType

from cex_arbitrage.db.lint.model import Hit, Knowledge, Stmt
from cex_arbitrage.db.lint.tree import alter_commands, ast, names, table_of


def unique_without_distribution_column(stmt: Stmt, know: Knowledge) -> Iterator[Hit]:
    """A unique index or key on a distributed table must hold its distribution column."""
    node = stmt.node
    if isinstance(node, ast.IndexStmt) and node.unique:
        table = table_of(node.relation)
        column = know.distributed.get(table or "")
        columns = [e.name for e in node.indexParams or () if isinstance(e, ast.IndexElem)]
        if column and column not in columns:
            yield _unique_hit(str(table), column)
    for table, cmd in alter_commands(node, AlterTableType.AT_AddConstraint):
        constraint, column = cmd.def_, know.distributed.get(table)
        if (
            column
            and isinstance(constraint, ast.Constraint)
            and constraint.contype in (ConstrType.CONSTR_PRIMARY, ConstrType.CONSTR_UNIQUE)
            and not constraint.indexname
            and column not in names(constraint.keys)
        ):
            yield _unique_hit(table, column)


def _unique_hit(table: str, column: str) -> Hit:
    return Hit(
        "citus-unique-key",
        f"{table} is distributed by {column} on Citus, which refuses a unique index or key "
        f"without {column}",
        f"add {column} to the key's columns (the same rows stay unique when {column} follows "
        "from the others, as 007 did for 005's key)",
    )


def add_constraint_with_others(stmt: Stmt, know: Knowledge) -> Iterator[Hit]:
    """Citus refuses ADD CONSTRAINT together with other subcommands on a distributed table."""
    node = stmt.node
    if not isinstance(node, ast.AlterTableStmt):
        return
    table = table_of(node.relation)
    if table not in know.distributed or len(node.cmds or ()) < 2:
        return
    if any(
        isinstance(cmd, ast.AlterTableCmd) and cmd.subtype == AlterTableType.AT_AddConstraint
        for cmd in node.cmds or ()
    ):
        yield Hit(
            "citus-add-constraint-alone",
            f"ALTER TABLE {table} adds a constraint together with other subcommands; Citus "
            "refuses that on a distributed table (0A000)",
            "one ADD CONSTRAINT per ALTER TABLE statement",
        )


def trigger_without_setting(stmt: Stmt, know: Knowledge) -> Iterator[Hit]:
    """CREATE TRIGGER on a distributed table needs citus.enable_unsafe_triggers in its step."""
    node = stmt.node
    if not isinstance(node, ast.CreateTrigStmt):
        return
    table = table_of(node.relation)
    if table in know.distributed and know.unsafe_triggers != (stmt.place.file, stmt.place.step):
        yield Hit(
            "citus-trigger",
            f"a trigger on {table}, distributed on Citus, fails (`triggers are not supported "
            "on distributed tables`) unless citus.enable_unsafe_triggers is on",
            "SET LOCAL citus.enable_unsafe_triggers = on earlier in the same step; the trigger "
            "then runs on the shards, so its function must be a distributed object (any "
            "function a routine creates in a Citus database is)",
        )
