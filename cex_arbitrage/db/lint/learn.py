"""What each statement teaches the linter about the schema: tables, column types, checks.

The rules judge a statement by what the files before it did: a table created
earlier in the set is live; a column's type decides whether a type change
rewrites; a validated CHECK (col IS NOT NULL) makes SET NOT NULL cheap.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pglast
from pglast.enums import AlterTableType, ConstrType, NullTestType

from cex_arbitrage.db.lint.bodies import PlpgsqlControl
from cex_arbitrage.db.lint.model import PROCEDURE_BODY, Knowledge, Stmt
from cex_arbitrage.db.lint.tree import alter_commands, ast, names, table_of, type_of, walk


def learn(stmt: Stmt, know: Knowledge) -> None:
    """Record what `stmt` creates; statements inside routine bodies run later, elsewhere."""
    if stmt.place.in_routine_body:
        return
    node = stmt.node
    if isinstance(node, ast.CreateStmt):
        table = table_of(node.relation)
        if table is None:
            return
        if table not in know.existing:
            know.created_here.add(table)
        columns = know.columns.setdefault(table, {})
        for element in node.tableElts or ():
            if isinstance(element, ast.ColumnDef):
                columns.setdefault(str(element.colname), type_of(element.typeName))
    for table, cmd in alter_commands(node, AlterTableType.AT_AddColumn):
        know.columns.setdefault(table, {})[str(cmd.def_.colname)] = type_of(cmd.def_.typeName)
    for table, cmd in alter_commands(node, AlterTableType.AT_AlterColumnType):
        know.columns.setdefault(table, {})[str(cmd.name)] = type_of(cmd.def_.typeName)
    for table, cmd in alter_commands(node, AlterTableType.AT_AddConstraint):
        _learn_check(table, cmd.def_, know)
    for table, cmd in alter_commands(node, AlterTableType.AT_ValidateConstraint):
        know.validated.add((table, str(cmd.name)))
    _learn_distribution(stmt, know)


_CITUS_DISTRIBUTE = {"create_distributed_table", "create_distributed_table_concurrently"}


def _learn_distribution(stmt: Stmt, know: Knowledge) -> None:
    """Tables distributed on Citus from here on (a Citus call, or one of the app's procedures),
    and where `citus.enable_unsafe_triggers` is set."""
    node = stmt.node
    if isinstance(node, ast.VariableSetStmt) and node.name == "citus.enable_unsafe_triggers":
        know.unsafe_triggers = (stmt.place.file, stmt.place.step)
    procedures = know.facts.distributing_procedures
    if isinstance(node, ast.CallStmt) and node.funccall is not None:
        name = names(node.funccall.funcname)[-1]
        table = _string_argument(node.funccall, 0)
        if name in procedures and table is not None:
            know.distributed[_unqualified(table)] = procedures[name]
    for call in walk(node):
        if isinstance(call, ast.FuncCall) and names(call.funcname)[-1] in _CITUS_DISTRIBUTE:
            table, column = _string_argument(call, 0), _string_argument(call, 1)
            if table is not None and column is not None:
                know.distributed[_unqualified(table)] = column


def _string_argument(call: Any, index: int) -> str | None:
    args = list(call.args or ())
    if index < len(args) and isinstance(args[index], ast.A_Const):
        value = args[index].val
        if isinstance(value, ast.String):
            return str(value.sval)
    return None


def _unqualified(table: str) -> str:
    return table.removeprefix("public.")


def _learn_check(table: str, constraint: Any, know: Knowledge) -> None:
    """A CHECK (col IS NOT NULL): noted, and validated unless NOT VALID."""
    if not isinstance(constraint, ast.Constraint) or constraint.contype != ConstrType.CONSTR_CHECK:
        return
    expr = constraint.raw_expr
    if not (
        isinstance(expr, ast.NullTest)
        and expr.nulltesttype == NullTestType.IS_NOT_NULL
        and isinstance(expr.arg, ast.ColumnRef)
    ):
        return
    column = names(expr.arg.fields)[-1]
    name = str(constraint.conname or f"{table}_{column}_check")
    know.not_null_checks.setdefault((table, column), set()).add(name)
    if not constraint.skip_validation:
        know.validated.add((table, name))


def committing_procedures(statements: Iterable[Stmt]) -> set[str]:
    """Procedures whose bodies COMMIT or ROLLBACK, or CALL one that does (to a fixed point)."""
    commits: set[str] = set()
    calls: dict[str, set[str]] = {}
    current = ""
    for stmt in statements:
        node = stmt.node
        if isinstance(node, ast.CreateFunctionStmt) and node.is_procedure:
            current = names(node.funcname)[-1]
            calls.setdefault(current, set())
        elif stmt.place.body != PROCEDURE_BODY:
            current = ""
        elif isinstance(node, PlpgsqlControl | ast.TransactionStmt):
            commits.add(current)
        elif isinstance(node, pglast.ast.CallStmt) and node.funccall:
            calls[current].add(names(node.funccall.funcname)[-1])
    changed = True
    while changed:
        more = {p for p, called in calls.items() if called & commits} - commits
        commits |= more
        changed = bool(more)
    return commits
