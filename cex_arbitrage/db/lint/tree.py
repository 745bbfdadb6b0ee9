"""Small readers of pglast's syntax tree that the rules share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pglast
from pglast.enums import AlterTableType

from cex_arbitrage.db.lint.model import PLACEHOLDER

ast = pglast.ast


def table_of(relation: Any) -> str | None:
    """The table a RangeVar names, as the knowledge keys it; None for a temporary table."""
    if not isinstance(relation, ast.RangeVar) or relation.relpersistence == "t":
        return None
    schema = relation.schemaname
    if schema == "pg_temp":
        return None
    name = str(relation.relname)
    return name if schema in (None, "public") else f"{schema}.{name}"


def names(items: Any) -> list[str]:
    """The strings of a name list (`(String, String)` -> ['schema', 'name'])."""
    return [str(item.sval) for item in items or () if isinstance(item, ast.String)]


def qualified(items: Any) -> str:
    """A qualified name list as the knowledge keys it (public. dropped)."""
    parts = names(items)
    if len(parts) == 2 and parts[0] == "public":
        parts = parts[1:]
    return ".".join(parts)


def alter_commands(node: Any, *subtypes: AlterTableType) -> Iterator[tuple[str, Any]]:
    """(table, command) for each ALTER TABLE command of the given kinds on a regular table."""
    if not isinstance(node, ast.AlterTableStmt):
        return
    table = table_of(node.relation)
    if table is None:
        return
    for cmd in node.cmds or ():
        if isinstance(cmd, ast.AlterTableCmd) and cmd.subtype in subtypes:
            yield table, cmd


def walk(node: Any) -> Iterator[Any]:
    """Every node under `node`, itself included, depth first."""
    if isinstance(node, tuple | list):
        for item in node:
            yield from walk(item)
    elif isinstance(node, ast.Node):
        yield node
        slots: Any = getattr(node, "__slots__", ())
        for attr in slots:
            value = getattr(node, attr, None)
            if isinstance(value, ast.Node | tuple | list):
                yield from walk(value)


def is_placeholder(name: str | None) -> bool:
    """A stand-in for a format() placeholder of dynamic SQL: a value chosen at run time."""
    return name is not None and name.startswith(PLACEHOLDER)


def type_of(type_name: Any) -> tuple[str, tuple[int, ...]]:
    """('varchar', (20,)) for VARCHAR(20): the type's last name and integer modifiers."""
    parts = names(getattr(type_name, "names", ()))
    modifiers: Any = getattr(type_name, "typmods", None) or ()
    mods = tuple(
        int(m.val.ival or 0)
        for m in modifiers
        if isinstance(m, ast.A_Const) and isinstance(m.val, ast.Integer)
    )
    return (parts[-1] if parts else "", mods)


def function_names(expression: Any) -> set[str]:
    """Names of the functions an expression calls (last part, lower case)."""
    return {
        names(node.funcname)[-1].lower()
        for node in walk(expression)
        if isinstance(node, ast.FuncCall) and names(node.funcname)
    }


def short(text: str, width: int = 100) -> str:
    """A statement on one line, cut to `width` characters, for messages and baselines."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
