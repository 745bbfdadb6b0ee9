"""Run one statement of a `parallel` step on several sessions at once.

The statement shares its work out itself (the 001 backfill claims chunks
with FOR UPDATE SKIP LOCKED), so each session runs the same text; the step
goes on when all of them are done. The first failure cancels the others:
each rolls back its unfinished transaction only, and a re-run resumes at
this statement.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import asyncpg

from cex_arbitrage.db.migrator.connect import connect
from cex_arbitrage.db.migrator.failures import is_connection_lost, record_failure, wrap
from cex_arbitrage.db.migrator.model import Migration, Step
from cex_arbitrage.db.migrator.session import RunContext
from cex_arbitrage.db.migrator.statements import statement_with_retry
from cex_arbitrage.errors import ConnectError, MigrationError


async def parallel_statement(
    ctx: RunContext,
    m: Migration,
    step: Step,
    statement: str,
    *,
    index: int,
    background: bool,
    replay: Sequence[str],
) -> None:
    """`statement` on the runner's session and `parallel_sessions - 1` more, together."""
    async with _extra_sessions(ctx, m, step, background, replay) as extra:
        if ctx.verbose:
            ctx.say(
                f"{ctx.database}: {m.label}: step {step.name}: running on "
                f"{len(extra) + 1} sessions at once"
            )
        run = statement_with_retry
        tasks = [
            asyncio.create_task(run(ctx, m, step, statement, background=background, index=index))
        ] + [
            asyncio.create_task(
                run(
                    ctx,
                    m,
                    step,
                    statement,
                    background=background,
                    index=index,
                    conn=conn,
                    record=False,
                )
            )
            for conn in extra
        ]
        ctx.notices_once = set()
        try:
            await asyncio.gather(*tasks)
        except BaseException as exc:
            first = tasks[0]
            recorded = first.done() and not first.cancelled() and first.exception() is not None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            cause = exc.__cause__ or exc
            if isinstance(exc, MigrationError) and not recorded and not is_connection_lost(cause):
                # A failure on an extra session is recorded here, once the first
                # session is idle again (the first records its own).
                await record_failure(
                    ctx, m, cause, step, background=background, statement=statement
                )
            raise
        finally:
            ctx.notices_once = None


@contextlib.asynccontextmanager
async def _extra_sessions(
    ctx: RunContext, m: Migration, step: Step, background: bool, replay: Sequence[str]
) -> AsyncIterator[list[asyncpg.Connection]]:
    """Sessions 2..N, prepared like the first and with the step's session state replayed."""
    extra: list[asyncpg.Connection] = []
    wanted = ctx.settings.parallel_sessions
    try:
        for number in range(2, wanted + 1):  # the runner's own session is number 1
            try:
                conn = await connect(ctx.db)
                extra.append(conn)
                await ctx.prepare(conn)
            except Exception as exc:
                if is_connection_lost(exc) or isinstance(exc, ConnectError):
                    reason = exc.message if isinstance(exc, MigrationError) else str(exc)
                    raise ConnectError(
                        f"{ctx.database}: {m.label}: step {step.name}: could not open "
                        f"session {number} of the {wanted} this parallel step runs "
                        f"on ({reason}). Allow more connections, or lower "
                        "migrations.parallel_sessions; statements before it are done, run "
                        "again to resume here"
                    ) from exc
                raise wrap(ctx, exc, m, step, background=background) from exc
            for sql in replay:  # the step's session state, as on the first session
                await statement_with_retry(ctx, m, step, sql, background=background, conn=conn)
        yield extra
    finally:
        for conn in extra:
            ctx.release(conn)
            try:  # after a cancel, close() waits for the server to end the statement
                await asyncio.wait_for(conn.close(), timeout=10)
            except Exception:
                conn.terminate()
            except BaseException:
                conn.terminate()
                raise
