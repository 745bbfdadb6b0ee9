"""Rules about locks and rewrites: what a statement does to a table writers are using.

A live table is one that may hold rows while the migration runs: a legacy
table, or one an earlier file created (`Knowledge.is_live`). Each rule is one
function from a statement and the knowledge so far to its hits.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pglast.enums import AlterTableType, ConstrType

from cex_arbitrage.db.lint.model import Hit, Knowledge, Stmt
from cex_arbitrage.db.lint.tree import alter_commands, ast, function_names, table_of, type_of

_VOLATILE = {
    "random",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v1mc",
    "uuid_generate_v4",
    "uuidv4",
    "uuidv7",
    "clock_timestamp",
    "timeofday",
    "nextval",
    "txid_current",
    "pg_current_xact_id",
}
_SERIAL = {"serial", "serial4", "bigserial", "serial8", "smallserial", "serial2"}
_STEP_HINT = "put it in a `-- migrate:step NAME transaction:false` step"


def index_not_concurrent(stmt: Stmt, know: Knowledge) -> Iterator[Hit]:
    """CREATE INDEX / REINDEX without CONCURRENTLY on a live table blocks its writes."""
    node = stmt.node
    if isinstance(node, ast.IndexStmt) and not node.concurrent:
        table = table_of(node.relation)
        if know.is_live(table):
            yield Hit(
                "index-not-concurrent",
                f"CREATE INDEX on {table} without CONCURRENTLY blocks every insert and update "
                "of the table until the whole index is built",
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS ...; {_STEP_HINT} (a concurrent "
                "build cannot run in a transaction)",
            )
    if isinstance(node, ast.ReindexStmt) and not _concurrently(node.params):
        table = table_of(node.relation)
        if know.is_live(table):
            yield Hit(
                "index-not-concurrent",
                f"REINDEX of {table} without CONCURRENTLY blocks its writes until it is done",
                f"REINDEX (CONCURRENTLY) ...; {_STEP_HINT}",
            )


def _concurrently(params: Any) -> bool:
    return any(isinstance(p, ast.DefElem) and p.defname == "concurrently" for p in params or ())


def concurrent_in_transaction(stmt: Stmt, know: Knowledge) -> Iterator[Hit]:
    """CONCURRENTLY (and VACUUM) cannot run inside a transaction block: the step would fail."""
    if not stmt.place.in_transaction:
        return
    node = stmt.node
    what = None
    if isinstance(node, ast.IndexStmt) and node.concurrent:
        what = "CREATE INDEX CONCURRENTLY"
    elif isinstance(node, ast.DropStmt) and node.concurrent:
        what = "DROP INDEX CONCURRENTLY"
    elif isinstance(node, ast.ReindexStmt) and _concurrently(node.params):
        what = "REINDEX CONCURRENTLY"
    elif isinstance(node, ast.VacuumStmt):
        what = "VACUUM" if node.is_vacuumcmd else None
    elif isinstance(node, ast.AlterTableStmt):
        for _, cmd in alter_commands(node, AlterTableType.AT_DetachPartition):
            if getattr(cmd.def_, "concurrent", False):
                what = "DETACH PARTITION CONCURRENTLY"
    if what is None:
        return
    where = {
        "do": "a DO block",
        "function": "a function body",
        "procedure": "a procedure body",
    }.get(stmt.place.body, f"the transactional step {stmt.place.step!r}")
    yield Hit(
        "concurrent-in-transaction",
        f"{what} cannot run inside a transaction block, and it is in {where}: "
        "the migration fails when it gets there",
        f"write it as a top-level statement; {_STEP_HINT}",
    )


def add_column_volatile_default(stmt: Stmt, know: Knowledge) -> Iterator[Hit]:
    """ADD COLUMN with a volatile default (or serial, identity, stored generated) rewrites."""
    for table, cmd in alter_commands(stmt.node, AlterTableType.AT_AddColumn):
        if not know.is_live(table):
            continue
        column = cmd.def_
        why = None
        if type_of(column.typeName)[0] in _SERIAL:
            why = "a serial type (its default is nextval(), volatile)"
        elif _flag(column.identity):
            why = "an identity column (every row gets a value)"
        elif _flag(column.generated):
            why = "a stored generated column"
        for constraint in column.constraints or ():
            if constraint.contype == ConstrType.CONSTR_DEFAULT:
                volatile = function_names(constraint.raw_expr) & _VOLATILE
                why = f"a volatile default ({', '.join(sorted(volatile))})" if volatile else why
            elif constraint.contype in (ConstrType.CONSTR_IDENTITY, ConstrType.CONSTR_GENERATED):
                why = why or "an identity or generated column (every row gets a value)"
        if why:
            yield Hit(
                "add-column-volatile-default",
                f"ADD COLUMN {column.colname} to {table} with {why} rewrites the whole table "
                "under ACCESS EXCLUSIVE: no reads or writes until it is done",
                "add the column without a default (or with a constant one, no rewrite), set "
                "the default for new rows, and fill old rows in a background step",
            )


def _flag(value: object) -> bool:
    """pglast gives an unset char field as '\\x00'."""
    return bool(value) and value != "\x00"


def add_column_not_null(stmt: Stmt, know: Knowledge) -> Iterator[Hit]:
    """ADD COLUMN ... NOT NULL without a default fails on a table that has rows."""
    for table, cmd in alter_commands(stmt.node, AlterTableType.AT_AddColumn):
        column = cmd.def_
        kinds = {c.contype for c in column.constraints or ()}
        not_null = column.is_not_null or ConstrType.CONSTR_NOTNULL in kinds
        has_value = kinds & {
            ConstrType.CONSTR_DEFAULT,
            ConstrType.CONSTR_IDENTITY,
            ConstrType.CONSTR_GENERATED,
        }
        if know.is_live(table) and not_null and not has_value:
            yield Hit(
                "add-column-not-null",
                f"ADD COLUMN {column.colname} NOT NULL without a default on {table}: it fails "
                "on a table that holds rows, and old writers that leave it out fail after it",
                "add it nullable (or with a constant default), backfill in a background step, "
                "then a validated CHECK (col IS NOT NULL) before SET NOT NULL",
            )


def set_not_null(stmt: Stmt, know: Knowledge) -> Iterator[Hit]:
    """SET NOT NULL scans the table under ACCESS EXCLUSIVE, unless a validated CHECK proves it."""
    for table, cmd in alter_commands(stmt.node, AlterTableType.AT_SetNotNull):
        if not know.is_live(table):
            continue
        checks = know.not_null_checks.get((table, str(cmd.name)), set())
        if any((table, name) in know.validated for name in checks):
            continue
        yield Hit(
            "set-not-null",
            f"ALTER COLUMN {cmd.name} SET NOT NULL on {table} scans every row under ACCESS "
            "EXCLUSIVE (no reads or writes meanwhile): no validated CHECK "
            f"({cmd.name} IS NOT NULL) comes before it",
            f"ADD CONSTRAINT c CHECK ({cmd.name} IS NOT NULL) NOT VALID, VALIDATE CONSTRAINT c "
            "(in a background step), then SET NOT NULL uses it and skips the scan",
        )


def constraint_not_valid(stmt: Stmt, know: Knowledge) -> Iterator[Hit]:
    """CHECK and FOREIGN KEY constraints added to a live table without NOT VALID scan it locked."""
    for table, constraint in _added_constraints(stmt.node):
        if not know.is_live(table):
            continue
        if constraint.contype in (ConstrType.CONSTR_CHECK, ConstrType.CONSTR_FOREIGN):
            if not constraint.skip_validation:
                kind = "CHECK" if constraint.contype == ConstrType.CONSTR_CHECK else "FOREIGN KEY"
                yield Hit(
                    "constraint-not-valid",
                    f"{kind} constraint {constraint.conname or ''} on {table} without NOT VALID "
                    "checks every row while holding a lock that blocks writes",
                    "add it NOT VALID (new rows are checked at once), then VALIDATE CONSTRAINT "
                    "in a background step (SHARE UPDATE EXCLUSIVE: writes go on)",
                )
        elif (
            constraint.contype
            in (
                ConstrType.CONSTR_UNIQUE,
                ConstrType.CONSTR_PRIMARY,
                ConstrType.CONSTR_EXCLUSION,
            )
            and not constraint.indexname
        ):
            yield Hit(
                "constraint-builds-index",
                f"a UNIQUE/PRIMARY KEY/EXCLUDE constraint on {table} builds its index under "
                "ACCESS EXCLUSIVE: no reads or writes until it is built",
                "CREATE UNIQUE INDEX CONCURRENTLY in a transaction:false step, then ADD "
                "CONSTRAINT ... USING INDEX",
            )


def _added_constraints(node: Any) -> Iterator[tuple[str, Any]]:
    for table, cmd in alter_commands(
        node, AlterTableType.AT_AddConstraint, AlterTableType.AT_AddColumn
    ):
        if isinstance(cmd.def_, ast.Constraint):
            yield table, cmd.def_
        elif isinstance(cmd.def_, ast.ColumnDef):
            for constraint in cmd.def_.constraints or ():
                yield table, constraint


def column_type_change(stmt: Stmt, know: Knowledge) -> Iterator[Hit]:
    """ALTER COLUMN TYPE rewrites the table (and its indexes) unless the types are compatible."""
    for table, cmd in alter_commands(stmt.node, AlterTableType.AT_AlterColumnType):
        if not know.is_live(table):
            continue
        old = know.columns.get(table, {}).get(str(cmd.name))
        new = type_of(cmd.def_.typeName)
        if cmd.def_.raw_default is None and old is not None and _no_rewrite(old, new):
            continue
        known = f"from {_shown(old)} " if old else ""
        yield Hit(
            "column-type-change",
            f"ALTER COLUMN {cmd.name} TYPE {_shown(new)} {known}on {table} rewrites the table "
            "and its indexes under ACCESS EXCLUSIVE: no reads or writes until it is done",
            "add a new column, fill it in a background step, switch the writers, drop the old "
            "one later (varchar(n) to a longer varchar or to text needs no rewrite)",
        )


def _shown(kind: tuple[str, tuple[int, ...]]) -> str:
    name, mods = kind
    return f"{name}({','.join(map(str, mods))})" if mods else name


def _no_rewrite(old: tuple[str, tuple[int, ...]], new: tuple[str, tuple[int, ...]]) -> bool:
    """Binary-compatible changes PostgreSQL makes without a rewrite or a scan."""
    (old_name, old_mods), (new_name, new_mods) = old, new
    text_like = {"varchar", "text"}
    if new_name == "text" or (new_name == "varchar" and not new_mods):
        return old_name in text_like
    if new_name == "varchar" and old_name == "varchar" and old_mods:
        return new_mods[0] >= old_mods[0]
    if new_name == old_name == "numeric":
        if not new_mods:
            return True
        return len(old_mods) == len(new_mods) == 2 and (
            new_mods[1] == old_mods[1] and new_mods[0] >= old_mods[0]
        )
    return False


def lock_table(stmt: Stmt, know: Knowledge) -> Iterator[Hit]:
    """An explicit LOCK TABLE holds its lock to the end of the transaction."""
    if isinstance(stmt.node, ast.LockStmt):
        yield Hit(
            "lock-table",
            "LOCK TABLE holds the lock until the transaction ends, and while it waits for "
            "it every later writer queues behind it",
            "let each statement take the lock it needs (the runner bounds lock waits and "
            "retries); if the lock is really needed, say why in a suppression",
        )
