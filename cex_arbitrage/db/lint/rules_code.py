"""Rules about data, the code that writes it, transactions and roles.

Each rule is one function from a statement and the knowledge so far to its hits.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pglast.enums import AlterTableType, ObjectType, RoleSpecType

from cex_arbitrage.db.lint.bodies import PlpgsqlControl
from cex_arbitrage.db.lint.model import (
    DO_BLOCK,
    FUNCTION_BODY,
    PROCEDURE_BODY,
    TOP,
    Hit,
    Knowledge,
    Stmt,
)
from cex_arbitrage.db.lint.tree import (
    alter_commands,
    ast,
    is_placeholder,
    names,
    qualified,
    table_of,
    walk,
)

_FIXED_ROLES = {"public", "current_user", "session_user", "current_role"}


def whole_table_dml(stmt: Stmt, know: Knowledge) -> Iterator[Hit]:
    """UPDATE/DELETE without WHERE, or TRUNCATE, of a live table in a foreground step."""
    if stmt.place.background or stmt.place.in_routine_body:
        return
    node = stmt.node
    tables: list[str | None] = []
    if isinstance(node, ast.UpdateStmt | ast.DeleteStmt) and node.whereClause is None:
        tables = [table_of(node.relation)]
    elif isinstance(node, ast.TruncateStmt):
        tables = [table_of(r) for r in node.relations or ()]
    for table in tables:
        if know.is_live(table):
            verb = type(node).__name__.removesuffix("Stmt").upper()
            yield Hit(
                "whole-table-dml",
                f"{verb} of every row of {table} in the foreground step {stmt.place.step!r}: "
                "one transaction that locks every row it touches while writers wait, and "
                "holds the whole migration up for as long as the table is large",
                "do it in a `-- migrate:step NAME transaction:false background` step, in "
                "batches that commit (a procedure that COMMITs per batch, as 001's backfill)",
            )


def drop_written(stmt: Stmt, know: Knowledge) -> Iterator[Hit]:
    """DROP or RENAME of a table or column the current code still writes."""
    written = know.facts.written_columns
    node = stmt.node
    gone: list[str] = []
    if isinstance(node, ast.DropStmt) and node.removeType == ObjectType.OBJECT_TABLE:
        gone = [qualified(obj) for obj in node.objects or () if qualified(obj) in written]
    for table, cmd in alter_commands(node, AlterTableType.AT_DropColumn):
        if str(cmd.name) in written.get(table, ()):
            gone.append(f"{table}.{cmd.name}")
    if isinstance(node, ast.RenameStmt):
        renamed = table_of(node.relation) or ""
        if node.renameType == ObjectType.OBJECT_TABLE and renamed in written:
            gone.append(renamed)
        elif node.renameType == ObjectType.OBJECT_COLUMN and node.subname in written.get(
            renamed, ()
        ):
            gone.append(f"{renamed}.{node.subname}")
    for what in gone:
        verb = "RENAME" if isinstance(node, ast.RenameStmt) else "DROP"
        yield Hit(
            "drop-written",
            f"{verb} of {what}, which the current collectors still write "
            "(cex_arbitrage/collectors/columns.py): every batch fails from then on",
            "release code that no longer writes it first; drop it in a later migration",
        )


def transaction_control(stmt: Stmt, know: Knowledge) -> Iterator[Hit]:
    """COMMIT/ROLLBACK/SAVEPOINT in a step, and transaction control where it cannot run.

    PL/pgSQL may COMMIT in a procedure, and in a DO block run outside a
    transaction block (a `transaction:false` step); in a function, or in a DO
    block of a transactional step, it fails with invalid transaction termination.
    """
    node, place = stmt.node, stmt.place
    if isinstance(node, ast.TransactionStmt) and place.body != PROCEDURE_BODY:
        yield Hit(
            "transaction-control",
            "transaction control in a step: the runner owns the transactions (one per "
            "transactional step, one per statement otherwise)",
            "remove it; split the work into steps, `transaction:false` where it must commit "
            "on its own",
        )
        return
    fails = place.body == FUNCTION_BODY or (place.transactional and place.body in (TOP, DO_BLOCK))
    if isinstance(node, PlpgsqlControl) and fails:
        where = "a DO block of a transactional step" if place.body == DO_BLOCK else "a function"
        yield Hit(
            "transaction-control",
            f"{node.word} inside {where}: it fails there (invalid transaction termination)",
            "move the batches into a procedure CALLed from a transaction:false step",
        )
    elif isinstance(node, ast.CallStmt) and fails:
        name = names(node.funccall.funcname)[-1] if node.funccall else ""
        if name in know.committing_procedures:
            yield Hit(
                "transaction-control",
                f"CALL {name}() runs a procedure that COMMITs, inside a transaction block "
                f"(step {place.step!r}): it fails with invalid transaction termination",
                "CALL it from a `-- migrate:step NAME transaction:false` step",
            )


def role_literal(stmt: Stmt, know: Knowledge) -> Iterator[Hit]:
    """A role named in the SQL: deployments name their roles (cex.app_role, ...)."""
    found = sorted({name for name in _role_names(stmt.node) if not is_placeholder(name)})
    if found:
        yield Hit(
            "role-literal",
            f"role {', '.join(found)} is written into the migration; deployments choose their "
            "role names (the settings' app and read-only roles, sent as session settings)",
            "read the name with current_setting(SETTING, true) in a DO block and EXECUTE "
            "format('GRANT ... TO %I', role), as 001's grants step does",
        )


def _role_names(node: Any) -> Iterator[str]:
    if isinstance(node, ast.CreateRoleStmt):
        yield str(node.role)
    for item in walk(node):
        if isinstance(item, ast.RoleSpec) and item.roletype == RoleSpecType.ROLESPEC_CSTRING:
            if str(item.rolename).lower() not in _FIXED_ROLES:
                yield str(item.rolename)
        elif isinstance(item, ast.GrantRoleStmt):
            for granted in item.granted_roles or ():
                if isinstance(granted, ast.AccessPriv) and granted.priv_name:
                    yield str(granted.priv_name)
