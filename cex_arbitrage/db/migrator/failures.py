"""What a failure becomes: a typed error with its fields, and a history row that says where.

`wrap` turns a driver or server exception into the MigrationError an
operator reads; `record_failure` writes the error and the statement into
migration_history so that status shows it and a re-run resumes there.
"""

from __future__ import annotations

import asyncio

import asyncpg

from cex_arbitrage.db.migrator import history
from cex_arbitrage.db.migrator.model import Migration, Step
from cex_arbitrage.db.migrator.session import RunContext
from cex_arbitrage.errors import ConnectionLostError, MigrationError, MigrationFailedError

_CONNECTION_SQLSTATES = ("57P01", "57P02", "57P03")


def is_connection_lost(exc: BaseException) -> bool:
    """True when the error means the session is gone (killed, server down, network)."""
    if isinstance(
        exc,
        OSError
        | asyncpg.ConnectionDoesNotExistError
        | asyncpg.PostgresConnectionError
        | asyncpg.InterfaceError
        | asyncio.TimeoutError,
    ):
        return True
    sqlstate = getattr(exc, "sqlstate", None) or ""
    return sqlstate in _CONNECTION_SQLSTATES or sqlstate.startswith("08")


def file_line(
    m: Migration, sent: str | None, exc: BaseException, statement: str | None = None
) -> int | None:
    """The file line the server's error position points at, in the text `sent`.

    The position counts characters of what was sent (1-based): a step's SQL
    wrapped in BEGIN/record/COMMIT, the foreground steps joined into one
    transaction, or one statement of a `transaction:false` step. The step
    whose SQL holds that character maps it back through its line numbers.
    """
    position = getattr(exc, "position", None)
    if not sent or not position or not str(position).isdigit():
        return None
    index, cursor = int(position) - 1, 0
    if statement and statement != sent and statement in sent:  # sent with its record
        index -= sent.find(statement)
        sent = statement
    for step in m.steps:  # whole steps inside the message, in order
        start = sent.find(step.sql, cursor)
        if start < 0:
            continue
        if start <= index < start + len(step.sql):
            return step.file_line(index - start)
        cursor = start + len(step.sql)
    body, lead = sent.strip(), len(sent) - len(sent.lstrip())
    for step in m.steps:  # one statement of a step
        inner = step.sql.find(body) if body else -1
        if inner >= 0:
            return step.file_line(inner + index - lead)
    return None


def _detail(exc: BaseException, at: str | None) -> str:
    """The server's error, where in the file it points, its SQLSTATE and hint."""
    detail = f"{type(exc).__name__}: {exc}" + (f" ({at})" if at else "")
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        detail += f" (SQLSTATE {sqlstate})"
    hint = getattr(exc, "hint", None)
    if hint:
        detail += f"; hint: {hint}"
    return detail


def wrap(
    ctx: RunContext,
    exc: BaseException,
    m: Migration,
    step: Step | None,
    *,
    background: bool = False,
    statement: str | None = None,
    statement_index: int | None = None,
    sent: str | None = None,
) -> MigrationError:
    """The operator's error for `exc`, raised while running `m` (at `step`, `statement`)."""
    if isinstance(exc, MigrationError):
        return exc
    line = file_line(m, sent or statement, exc, statement)
    where = f"{ctx.database}: {m.label}" + (f": step {step.name}" if step is not None else "")
    step_name = step.name if step is not None else None
    if is_connection_lost(exc):
        return ConnectionLostError(
            f"{where}: the database connection was lost ({type(exc).__name__}: {exc}). "
            "A transactional step was rolled back by the server; statements of "
            "transaction:false steps that finished are recorded. Check that the server "
            "is up, then run again: it resumes where it stopped",
            version=m.version,
            step=step_name,
        )
    sqlstate = getattr(exc, "sqlstate", None)
    detail = _detail(exc, f"{m.filename}:{line}" if line is not None else None)
    if statement is not None:
        first = " ".join(statement.split())[:300]
        return MigrationFailedError(
            f"{where} failed at statement: {first}\n  {detail}\n"
            "Statements before it are done and recorded. Fix the cause and run again: "
            "it resumes at this statement"
            + (" (the schema for new writes is in place)" if background else ""),
            version=m.version,
            step=step_name,
            statement_index=statement_index,
            statement=statement,
            sqlstate=sqlstate,
            rolled_back=False,
            filename=m.filename if line is not None else None,
            line=line,
        )
    return MigrationFailedError(
        f"{where} failed and was rolled back: {detail}\n"
        "Nothing of this step was applied. Fix the cause (or the file, if it is not "
        "applied anywhere yet) and run again",
        version=m.version,
        step=step_name,
        sqlstate=sqlstate,
        rolled_back=True,
        filename=m.filename if line is not None else None,
        line=line,
    )


async def record_failure(
    ctx: RunContext,
    m: Migration,
    exc: BaseException,
    step: Step | None,
    *,
    background: bool,
    statement: str | None = None,
) -> None:
    """Write the failure into migration_history; a lost connection writes nothing."""
    if statement is None and step is None and m.is_infrastructure:
        return  # the history table itself failed to appear: nothing to record into
    try:
        await history.record_failure(
            ctx.conn,
            version=m.version,
            name=m.name,
            feature=m.feature,
            checksum=m.checksum,
            applied_from=ctx.applied_from,
            error=f"{type(exc).__name__}: {exc}",
            statement=statement or (step.name if step else None),
            background=background,
        )
    except asyncpg.UndefinedTableError:
        pass  # the infrastructure migration itself failed; nothing to record into
    except Exception as inner:
        if not is_connection_lost(inner):
            raise


async def rollback(ctx: RunContext, m: Migration) -> None:
    """End the failed transaction of a one-message step (a lost session needs nothing).

    A message the server refused whole (a syntax error is found before its
    BEGIN runs) left no transaction: a ROLLBACK then would only warn.
    """
    if not ctx.conn.is_in_transaction():
        return
    try:
        await ctx.conn.execute("ROLLBACK")
    except Exception as exc:
        if not is_connection_lost(exc):
            raise wrap(ctx, exc, m, None) from exc


async def execute(ctx: RunContext, sql: str, m: Migration) -> None:
    """The runner's own bookkeeping SQL, with its errors as the operator's errors."""
    try:
        await ctx.conn.execute(sql)
    except Exception as exc:
        raise wrap(ctx, exc, m, None) from exc
