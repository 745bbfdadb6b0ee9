"""Statements inside DO blocks and function/procedure bodies, and EXECUTE'd literals.

001 keeps its constraint, trigger and role DDL in DO blocks, and the routines
keep their work in PL/pgSQL procedures: a linter that reads only top-level
statements sees none of it. PL/pgSQL is read with PostgreSQL's own PL/pgSQL
parser (pglast.parse_plpgsql), SQL-language bodies with its SQL parser. An
EXECUTE of a string literal, or of format() with a literal template, is read
too, each placeholder standing in as an identifier (`model.PLACEHOLDER`); any
other dynamic SQL is built at run time and cannot be read here.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from typing import Any

import pglast
from pglast import parser

from cex_arbitrage.db.lint.model import (
    DO_BLOCK,
    FUNCTION_BODY,
    PLACEHOLDER,
    PROCEDURE_BODY,
    SqlSyntaxError,
    Stmt,
)
from cex_arbitrage.db.lint.tree import names as names_of

_FORMAT_SPEC_RE = re.compile(r"%(?:\d+\$)?-?(?:\d+|\*)?([sIL%])")


@dataclasses.dataclass(frozen=True)
class PlpgsqlControl:
    """A COMMIT or ROLLBACK inside a PL/pgSQL body (a node for the rules, like pglast's)."""

    word: str


def nested_statements(stmt: Stmt) -> Iterator[Stmt]:
    """The statements a DO block or a CREATE FUNCTION/PROCEDURE carries, with file lines."""
    node = stmt.node
    if isinstance(node, pglast.ast.DoStmt):
        if _option(node.args, "language") in (None, "plpgsql"):
            body = _option(node.args, "as")
            yield from _plpgsql(stmt, DO_BLOCK, body)
    elif isinstance(node, pglast.ast.CreateFunctionStmt):
        kind = PROCEDURE_BODY if node.is_procedure else FUNCTION_BODY
        place = dataclasses.replace(stmt.place, body=kind)
        if node.sql_body:
            for group in node.sql_body:
                for inner in group if isinstance(group, tuple | list) else (group,):
                    yield Stmt(inner, stmt.text, stmt.line, place)
            return
        language = _option(node.options, "language")
        body = _option(node.options, "as")
        if language == "plpgsql":
            yield from _plpgsql(stmt, kind, body)
        elif language == "sql" and body:
            yield from _sql_body(stmt, kind, body)


def _option(options: Any, name: str) -> str | None:
    """The string value of DefElem `name` (the first string of a list: a body)."""
    for item in options or ():
        if isinstance(item, pglast.ast.DefElem) and item.defname == name:
            arg = item.arg
            if isinstance(arg, tuple | list):
                arg = arg[0] if arg else None
            return str(arg.sval) if isinstance(arg, pglast.ast.String) else None
    return None


def _body_line(stmt: Stmt, body: str | None) -> int:
    """The file line the body's first line is on (where its opening quote is)."""
    if not body:
        return stmt.line
    at = stmt.text.find(body)
    return stmt.line + (stmt.text.count("\n", 0, at) if at >= 0 else 0)


def _sql_body(stmt: Stmt, kind: str, body: str) -> Iterator[Stmt]:
    first = _body_line(stmt, body)
    place = dataclasses.replace(stmt.place, body=kind)
    try:
        raw = pglast.parse_sql(body)
    except pglast.parser.ParseError as exc:
        raise _refused(stmt, "SQL", exc) from None
    for item in raw:  # pglast's offsets count characters, not bytes
        line = first + body.count("\n", 0, item.stmt_location)
        yield Stmt(item.stmt, body, line, place)


def _plpgsql(stmt: Stmt, kind: str, body: str | None) -> Iterator[Stmt]:
    """Walk the PL/pgSQL tree: SQL statements, EXECUTEs, COMMIT/ROLLBACK."""
    first = _body_line(stmt, body)
    place = dataclasses.replace(stmt.place, body=kind)
    try:
        tree = json.loads(parser.parse_plpgsql_json(stmt.text))
    except pglast.parser.ParseError as exc:
        raise _refused(stmt, "PL/pgSQL", exc) from None
    for key, value in _walk(tree):
        line = first + int(value.get("lineno", 1)) - 1
        if key in ("PLpgSQL_stmt_commit", "PLpgSQL_stmt_rollback"):
            word = "COMMIT" if key.endswith("commit") else "ROLLBACK"
            yield Stmt(PlpgsqlControl(word), word, line, place)
        elif key in ("PLpgSQL_stmt_execsql", "PLpgSQL_stmt_call"):
            field = "sqlstmt" if key.endswith("execsql") else "expr"
            query = value.get(field, {}).get("PLpgSQL_expr", {}).get("query", "")
            yield from _parsed(query, line, place)
        elif key == "PLpgSQL_stmt_dynexecute":
            query = value.get("query", {}).get("PLpgSQL_expr", {}).get("query", "")
            literal = dynamic_sql(query)
            if literal is not None:
                yield from _parsed(literal, line, dataclasses.replace(place, dynamic=True))


def _refused(stmt: Stmt, language: str, exc: Exception) -> SqlSyntaxError:
    """PostgreSQL checks a body when the function is created (a DO block when it runs)."""
    return SqlSyntaxError(f"{language} body: {exc.args[0] if exc.args else exc}", stmt.line)


def _walk(tree: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every PL/pgSQL statement node, depth first, in source order."""
    if isinstance(tree, list):
        for item in tree:
            yield from _walk(item)
    elif isinstance(tree, dict):
        for key, value in tree.items():
            if key.startswith("PLpgSQL_stmt_") and isinstance(value, dict):
                yield key, value
            yield from _walk(value)


def _parsed(sql: str, line: int, place: Any) -> Iterator[Stmt]:
    try:
        raw = pglast.parse_sql(sql)
    except pglast.parser.ParseError:
        return
    for item in raw:
        yield Stmt(item.stmt, sql.strip(), line, place)


def dynamic_sql(expression: str) -> str | None:
    """The SQL an EXECUTE runs, when it is a literal or format() of a literal template."""
    try:
        (raw,) = pglast.parse_sql(f"SELECT {expression}")
    except (pglast.parser.ParseError, ValueError):
        return None
    select: Any = raw.stmt
    target: Any = select.targetList[0].val if select.targetList else None
    if isinstance(target, pglast.ast.A_Const) and isinstance(target.val, pglast.ast.String):
        return str(target.val.sval)
    if (
        isinstance(target, pglast.ast.FuncCall)
        and names_of(target.funcname)[-1:] == ["format"]
        and target.args
        and isinstance(target.args[0], pglast.ast.A_Const)
        and isinstance(target.args[0].val, pglast.ast.String)
    ):
        return fill_template(str(target.args[0].val.sval))
    return None


def fill_template(template: str) -> str:
    """format()'s template with each %I/%s as a stand-in identifier, %L as a literal."""
    count = 0

    def stand_in(match: re.Match[str]) -> str:
        nonlocal count
        if match[1] == "%":
            return "%"
        count += 1
        name = f"{PLACEHOLDER}{count}"
        return f"'{name}'" if match[1] == "L" else name

    return _FORMAT_SPEC_RE.sub(stand_in, template)
