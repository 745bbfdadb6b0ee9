"""Send SQL with bounded lock waits: a lock timeout is retried with backoff, then reported.

A DDL statement waiting for a table lock blocks every insert queued behind
it, so each wait is bounded by `lock_timeout` (the collectors stall at most
that long) and retried `lock_retries` times with jittered backoff.
"""

from __future__ import annotations

import asyncio
import random

import asyncpg

from cex_arbitrage.db.migrator.blockers import find_blockers
from cex_arbitrage.db.migrator.failures import is_connection_lost, record_failure, rollback, wrap
from cex_arbitrage.db.migrator.invalid_index import drop_invalid_index
from cex_arbitrage.db.migrator.model import Migration, Step
from cex_arbitrage.db.migrator.session import RunContext
from cex_arbitrage.db.migrator.split import concurrent_index_name
from cex_arbitrage.errors import TableLockTimeoutError

LOCK_ERRORS = (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError)


async def transaction_with_retry(
    ctx: RunContext, m: Migration, message: str, *, step: Step | None, background: bool
) -> None:
    """One `BEGIN; ...; COMMIT;` message; rolled back and retried while a lock is not had."""
    attempt = 0
    while True:
        try:
            await ctx.conn.execute(message)
            return
        except LOCK_ERRORS as exc:
            await rollback(ctx, m)
            attempt += 1
            if attempt > ctx.db.lock_retries:
                await record_failure(ctx, m, exc, step, background=background)
                pids, blockers = await find_blockers(ctx.conn)
                raise TableLockTimeoutError(
                    f"{ctx.database}: {m.label}: could not get a table lock within "
                    f"{ctx.db.lock_timeout_ms} ms after {attempt} attempts ({exc}); the "
                    "migration was rolled back."
                    + (
                        blockers
                        or " Long transactions on "
                        "the tables hold it up; see `status --verbose` pre-flight warnings."
                    )
                    + " Then run again",
                    version=m.version,
                    step=step.name if step else None,
                    statement_index=None,
                    attempts=attempt,
                    blocking_pids=pids,
                ) from exc
            await backoff(ctx, m, attempt, exc)
        except Exception as exc:
            if not is_connection_lost(exc):
                await rollback(ctx, m)
                await record_failure(ctx, m, exc, step, background=background)
            raise wrap(ctx, exc, m, step, background=background, sent=message) from exc


async def statement_with_retry(
    ctx: RunContext,
    m: Migration,
    step: Step,
    statement: str,
    *,
    background: bool,
    index: int | None = None,
    conn: asyncpg.Connection | None = None,
    record: bool = True,
    progress_sql: str | None = None,
) -> bool:
    """One statement of a `transaction:false` step, retried on lock timeouts.

    With `progress_sql` (its record of completion) both go in one transaction
    (repeat.py); a statement refused in a transaction block goes alone.
    Returns whether the record went with it (else the caller records it).
    """
    conn = conn or ctx.conn
    attempt = 0
    while True:
        together = progress_sql is not None
        sent = statement if progress_sql is None else _together(statement, progress_sql)
        try:
            await conn.execute(sent)
            return together
        except LOCK_ERRORS as exc:
            if together:
                await rollback(ctx, m)
            attempt += 1
            if attempt > ctx.db.lock_retries:
                if record:
                    await record_failure(
                        ctx, m, exc, step, background=background, statement=statement
                    )
                raise await _lock_timeout(ctx, m, step, conn, exc, attempt, index) from exc
            index_name = concurrent_index_name(statement)
            if index_name is not None:
                await drop_invalid_index(ctx, m, index_name)
            await backoff(ctx, m, attempt, exc)
        except Exception as exc:
            lost = is_connection_lost(exc)
            if together and not lost:
                await rollback(ctx, m)
            if together and isinstance(exc, asyncpg.ActiveSQLTransactionError):
                progress_sql = None  # refused in a block before it ran: send it alone
                continue
            if record and not lost:
                await record_failure(ctx, m, exc, step, background=background, statement=statement)
            raise wrap(
                ctx,
                exc,
                m,
                step,
                background=background,
                statement=statement,
                statement_index=index,
                sent=sent,
            ) from exc


async def _lock_timeout(
    ctx: RunContext,
    m: Migration,
    step: Step,
    conn: asyncpg.Connection,
    exc: BaseException,
    attempt: int,
    index: int | None,
) -> TableLockTimeoutError:
    pids, blockers = await find_blockers(conn)
    return TableLockTimeoutError(
        f"{ctx.database}: {m.label}: step {step.name}: could not get a lock "
        f"within {ctx.db.lock_timeout_ms} ms after {attempt} attempts: {exc}."
        f"{blockers} Statements before it are done; run again to resume here",
        version=m.version,
        step=step.name,
        statement_index=index,
        attempts=attempt,
        blocking_pids=pids,
    )


def _together(statement: str, progress_sql: str) -> str:
    """The statement and its progress record as one transaction, in one message."""
    return (
        "BEGIN;\nSET LOCAL standard_conforming_strings = on;\n"
        f"{statement}\n;\n{progress_sql};\nCOMMIT;"
    )


async def backoff(ctx: RunContext, m: Migration, attempt: int, exc: BaseException) -> None:
    delay = min(5.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.5)
    ctx.say(
        f"{ctx.database}: {m.label}: lock not available ({type(exc).__name__}); "
        f"retry {attempt}/{ctx.db.lock_retries} in {delay:.2f}s"
    )
    await asyncio.sleep(delay)
