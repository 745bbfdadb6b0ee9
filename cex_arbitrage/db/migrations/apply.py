"""Execute planned migrations on one connection.

Transactional steps travel as ONE simple-query message:
`BEGIN; <step SQL>; <history upsert>; COMMIT;` — one round trip, and the
history row commits atomically with the schema change it records.

Steps marked `transaction:false` run statement by statement in autocommit,
because PostgreSQL runs a multi-statement message as one implicit
transaction, where `CREATE INDEX CONCURRENTLY` or a procedure that COMMITs
is refused. After each statement the history row records how far the step
got, so a re-run resumes at the first statement that did not finish.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import asyncpg

from cex_arbitrage.db.migrations import history as hist
from cex_arbitrage.db.migrations.errors import (
    ConnectError,
    ConnectionLostError,
    LockTimeoutError,
    MigrationError,
    MigrationFailedError,
)
from cex_arbitrage.db.migrations.plan import PlannedMigration
from cex_arbitrage.db.migrations.script import Migration, Step, concurrent_index_name

if TYPE_CHECKING:  # config imports the error types of this package
    from cex_arbitrage.config import MigrationSettings

_LOCK_ERRORS = (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError)
_CONNECTION_SQLSTATES = ("57P01", "57P02", "57P03")
_ELAPSED_MS = "(extract(epoch FROM clock_timestamp() - now()) * 1000)::int"
_INVALID_INDEX = """
SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE c.relname = $1 AND NOT i.indisvalid AND pg_table_is_visible(c.oid)
"""


@dataclasses.dataclass
class Activity:
    """What the executor is doing right now, for progress lines while it works."""

    migration: str = "-"
    step: str = "-"
    started: float = dataclasses.field(default_factory=time.monotonic)


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


def session_settings(settings: MigrationSettings) -> dict[str, str]:
    """The `cex.*` settings migration SQL reads (docs/migration-files.md)."""
    return {
        "cex.app_role": settings.app_role,
        "cex.readonly_role": settings.readonly_role,
        "cex.backfill_batch_size": str(settings.backfill_batch_size),
        "cex.backfill_sleep_ms": str(settings.backfill_sleep_ms),
        "cex.parallel_sessions": str(settings.parallel_sessions),
    }


class Executor:
    """Runs the steps of planned migrations on one connection, recording each."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        *,
        database: str,
        settings: MigrationSettings,
        lock_timeout_ms: int,
        statement_timeout_ms: int,
        lock_retries: int,
        applied_from: str,
        say: Callable[[str], None],
        verbose: bool = False,
        activity: Activity | None = None,
        open_session: Callable[[], Awaitable[asyncpg.Connection]] | None = None,
    ) -> None:
        self.conn = conn
        # More sessions for `parallel` steps; without it they run on `conn` alone.
        self.open_session = open_session
        self.database = database
        self.settings = settings
        self.lock_timeout_ms = lock_timeout_ms
        self.statement_timeout_ms = statement_timeout_ms
        self.lock_retries = lock_retries
        self.applied_from = applied_from
        self.say = say
        self.verbose = verbose
        self.current: str = "-"
        self.activity = activity or Activity()

    async def prepare(self, conn: asyncpg.Connection | None = None) -> None:
        """Session settings for the whole run: timeouts, writeback, cex.* values."""
        conn = conn or self.conn
        values = {
            # The backfill dirties far more pages than shared_buffers holds, so
            # this session writes them out itself. Without writeback hints they
            # pile up in the OS page cache until a checkpoint fsyncs the file at
            # once, and every collector COMMIT waits behind that fsync (200-330 ms
            # stalls at 5M rows; 39 ms max with this, bench/bench_migration_001.py).
            "backend_flush_after": "256kB",
            "lock_timeout": f"{int(self.lock_timeout_ms)}ms",
            "statement_timeout": f"{int(self.statement_timeout_ms)}ms",
            **session_settings(self.settings),
        }
        names = list(values)
        await conn.execute(
            "SELECT "
            + ", ".join(
                f"set_config(${2 * i + 1}, ${2 * i + 2}, false)" for i in range(len(names))
            ),
            *[x for name in names for x in (name, values[name])],
        )
        conn.add_log_listener(self._on_notice)

    def close(self) -> None:
        if not self.conn.is_closed():
            self.conn.remove_log_listener(self._on_notice)

    def _on_notice(self, _conn: object, message: asyncpg.PostgresLogMessage) -> None:
        severity = getattr(message, "severity", "NOTICE")
        self.say(f"{self.database}: {self.current}: {severity}: {message.message}")

    def _record(
        self,
        m: Migration,
        *,
        state: str,
        steps_done: int,
        statements_done: int,
        execution_ms_sql: str = "NULL",
        step_name: str | None = None,
        step_ms_sql: str | None = None,
    ) -> str:
        """The history upsert for `m`, sent with the SQL it records."""
        return hist.record_statement(
            version=m.version,
            name=m.name,
            feature=m.feature,
            checksum=m.checksum,
            state=state,
            steps_done=steps_done,
            statements_done=statements_done,
            applied_from=self.applied_from,
            execution_ms_sql=execution_ms_sql,
            step_name=step_name,
            step_ms_sql=step_ms_sql,
        )

    # ---- foreground --------------------------------------------------------

    async def run_foreground(self, pm: PlannedMigration) -> int:
        """Apply the foreground steps of one migration; returns its duration in ms."""
        m = pm.migration
        self.current = m.label
        started = time.monotonic()
        self.activity.migration, self.activity.started = m.label, started
        if pm.checksum_changed:
            self.say(
                f"{self.database}: {m.label}: the file changed since the failed attempt; "
                "resuming with the new file"
            )
        if m.single_transaction and not pm.resuming:
            await self._single_transaction(m)
        else:
            await self._stepwise(pm, background=False, started=started)
        elapsed = int((time.monotonic() - started) * 1000)
        return elapsed

    async def _single_transaction(self, m: Migration) -> None:
        final = "background" if m.background_steps else "applied"
        body = "\n;\n".join(step.sql for step in m.foreground_steps)
        record = self._record(
            m,
            state=final,
            steps_done=len(m.foreground_steps),
            statements_done=0,
            execution_ms_sql=_ELAPSED_MS,
            step_name="all",
            step_ms_sql=_ELAPSED_MS,
        )
        message = (
            f"BEGIN;\nSET LOCAL standard_conforming_strings = on;\n{body}\n;\n{record}\nCOMMIT;"
        )
        self.activity.step = "all"
        await self._transaction_with_retry(m, message, step=None, background=False)

    async def _stepwise(self, pm: PlannedMigration, *, background: bool, started: float) -> None:
        m = pm.migration
        order = m.execution_order
        n_fg = len(m.foreground_steps)
        indices = range(n_fg, len(order)) if background else range(n_fg)
        if not background:
            await self._execute(
                self._record(
                    m,
                    state="running",
                    steps_done=pm.start_step,
                    statements_done=pm.start_statement,
                ),
                m,
                None,
            )
        for index in indices:
            if index < pm.start_step:
                continue
            step = order[index]
            first = pm.start_statement if index == pm.start_step else 0
            last_step = index == len(indices) - 1 + (n_fg if background else 0)
            if background:
                final = "applied" if last_step else "background"
            else:
                final = (
                    ("background" if m.background_steps else "applied") if last_step else "running"
                )
            self.activity.step = step.name
            step_started = time.monotonic()
            if self.verbose:
                self.say(f"{self.database}: {m.label}: step {step.name} starts")
            prior_ms = int((step_started - started) * 1000)
            if step.transactional:
                record = self._record(
                    m,
                    state=final,
                    steps_done=index + 1,
                    statements_done=0,
                    execution_ms_sql="NULL" if background else f"{prior_ms} + {_ELAPSED_MS}",
                    step_name=step.name,
                    step_ms_sql=_ELAPSED_MS,
                )
                message = (
                    "BEGIN;\nSET LOCAL standard_conforming_strings = on;\n"
                    f"{step.sql}\n;\n{record}\nCOMMIT;"
                )
                await self._transaction_with_retry(m, message, step=step, background=background)
            else:
                await self._autocommit_step(m, index, step, first, background)
                step_ms = int((time.monotonic() - step_started) * 1000)
                await self._execute(
                    self._record(
                        m,
                        state=final,
                        steps_done=index + 1,
                        statements_done=0,
                        execution_ms_sql="NULL" if background else str(prior_ms + step_ms),
                        step_name=step.name,
                        step_ms_sql=str(step_ms),
                    ),
                    m,
                    None,
                )
            if self.verbose:
                ms = int((time.monotonic() - step_started) * 1000)
                self.say(f"{self.database}: {m.label}: step {step.name} done in {ms} ms")

    async def _autocommit_step(
        self, m: Migration, index: int, step: Step, first: int, background: bool
    ) -> None:
        statements = step.statements
        for j in sorted(i for i in step.session_statements if i < first):
            # Resuming on a new connection: re-establish the step's session state.
            self.say(
                f"{self.database}: {m.label}: step {step.name}: re-running session statement "
                f"{j + 1} before resuming at statement {first + 1}"
            )
            await self._statement_with_retry(m, step, statements[j], background)
        for j in range(first, len(statements)):
            statement = statements[j]
            index_name = concurrent_index_name(statement)
            if index_name is not None:
                await self._drop_invalid_index(m, index_name)
            if step.parallel and self.settings.parallel_sessions > 1 and self.open_session:
                replay = [statements[k] for k in sorted(step.session_statements) if k < j]
                await self._parallel_statement(m, step, statement, background, replay)
            else:
                await self._statement_with_retry(m, step, statement, background)
            await self._execute(
                "UPDATE migration_history SET statements_done = "
                f"{j + 1} WHERE version = {hist.literal(m.version)}",
                m,
                None,
            )

    async def _parallel_statement(
        self, m: Migration, step: Step, statement: str, background: bool, replay: list[str]
    ) -> None:
        """Run `statement` on this session and `parallel_sessions - 1` more at once.

        The statement shares its work out itself (the 001 backfill claims
        chunks with FOR UPDATE SKIP LOCKED), so each session runs the same
        text; the step goes on when all of them are done. The first failure
        cancels the others: each rolls back its unfinished transaction only,
        and a re-run resumes at this statement.
        """
        extra: list[asyncpg.Connection] = []
        assert self.open_session is not None
        wanted = self.settings.parallel_sessions
        try:
            for number in range(2, wanted + 1):  # the runner's own session is number 1
                try:
                    conn = await self.open_session()
                    extra.append(conn)
                    await self.prepare(conn)
                except Exception as exc:
                    if is_connection_lost(exc) or isinstance(exc, ConnectError):
                        reason = exc.message if isinstance(exc, MigrationError) else str(exc)
                        raise ConnectError(
                            f"{self.database}: {m.label}: step {step.name}: could not open "
                            f"session {number} of the {wanted} this parallel step runs "
                            f"on ({reason}). Allow more connections, or lower "
                            "migrations.parallel_sessions; statements before it are done, run "
                            "again to resume here"
                        ) from exc
                    raise self._wrap(exc, m, step, background) from exc
                for sql in replay:  # the step's session state, as on the first session
                    await self._statement_with_retry(m, step, sql, background, conn)
            if self.verbose:
                self.say(
                    f"{self.database}: {m.label}: step {step.name}: running on "
                    f"{len(extra) + 1} sessions at once"
                )
            tasks = [
                asyncio.create_task(self._statement_with_retry(m, step, statement, background))
            ] + [
                asyncio.create_task(
                    self._statement_with_retry(m, step, statement, background, conn, record=False)
                )
                for conn in extra
            ]
            try:
                await asyncio.gather(*tasks)
            except BaseException as exc:
                first = tasks[0]
                recorded = first.done() and not first.cancelled() and first.exception() is not None
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                cause = exc.__cause__ or exc
                lost = is_connection_lost(cause)
                if isinstance(exc, MigrationError) and not recorded and not lost:
                    # A failure on an extra session is recorded here, once the
                    # first session is idle again (the first records its own).
                    await self._record_failure(m, cause, step, background, statement)
                raise
        finally:
            for conn in extra:
                conn.remove_log_listener(self._on_notice)
                try:  # after a cancel, close() waits for the server to end the statement
                    await asyncio.wait_for(conn.close(), timeout=10)
                except Exception:
                    conn.terminate()
                except BaseException:
                    conn.terminate()
                    raise

    async def _drop_invalid_index(self, m: Migration, name: str) -> None:
        """An interrupted CREATE INDEX CONCURRENTLY leaves an INVALID index; rebuild it."""
        try:
            found = await self.conn.fetchval(_INVALID_INDEX, name)
        except Exception as exc:
            raise self._wrap(exc, m, None, False) from exc
        if found:
            self.say(
                f"{self.database}: {m.label}: dropping INVALID index {name} left by an "
                "interrupted build, then building it again"
            )
            quoted = '"' + name.replace('"', '""') + '"'
            await self._execute(f"DROP INDEX CONCURRENTLY IF EXISTS {quoted}", m, None)

    # ---- background --------------------------------------------------------

    async def run_background(self, pm: PlannedMigration) -> int:
        """Run the background steps of one migration from where they stopped."""
        m = pm.migration
        self.current = m.label
        started = time.monotonic()
        await self._stepwise(pm, background=True, started=started)
        elapsed = int((time.monotonic() - started) * 1000)
        await self._execute(
            "UPDATE migration_history SET background_ms = coalesce(background_ms, 0) + "
            f"{elapsed} WHERE version = {hist.literal(m.version)}",
            m,
            None,
        )
        return elapsed

    # ---- execution with retries and error mapping --------------------------

    async def _transaction_with_retry(
        self, m: Migration, message: str, *, step: Step | None, background: bool
    ) -> None:
        attempt = 0
        while True:
            try:
                await self.conn.execute(message)
                return
            except _LOCK_ERRORS as exc:
                await self._rollback(m)
                attempt += 1
                if attempt > self.lock_retries:
                    await self._record_failure(m, exc, step, background)
                    raise LockTimeoutError(
                        f"{self.database}: {m.label}: could not get a table lock within "
                        f"{self.lock_timeout_ms} ms after {attempt} attempts ({exc}); the "
                        "migration was rolled back. Long transactions on the tables hold it "
                        "up; see `status --verbose` pre-flight warnings, then run again"
                    ) from exc
                await self._backoff(m, attempt, exc)
            except Exception as exc:
                if not is_connection_lost(exc):
                    await self._rollback(m)
                    await self._record_failure(m, exc, step, background)
                raise self._wrap(exc, m, step, background) from exc

    async def _statement_with_retry(
        self,
        m: Migration,
        step: Step,
        statement: str,
        background: bool,
        conn: asyncpg.Connection | None = None,
        *,
        record: bool = True,
    ) -> None:
        conn = conn or self.conn
        attempt = 0
        while True:
            try:
                await conn.execute(statement)
                return
            except _LOCK_ERRORS as exc:
                attempt += 1
                if attempt > self.lock_retries:
                    if record:
                        await self._record_failure(m, exc, step, background, statement)
                    raise LockTimeoutError(
                        f"{self.database}: {m.label}: step {step.name}: could not get a lock "
                        f"within {self.lock_timeout_ms} ms after {attempt} attempts: {exc}. "
                        "Statements before it are done; run again to resume here"
                    ) from exc
                index_name = concurrent_index_name(statement)
                if index_name is not None:
                    await self._drop_invalid_index(m, index_name)
                await self._backoff(m, attempt, exc)
            except Exception as exc:
                if record and not is_connection_lost(exc):
                    await self._record_failure(m, exc, step, background, statement)
                raise self._wrap(exc, m, step, background, statement) from exc

    async def _backoff(self, m: Migration, attempt: int, exc: BaseException) -> None:
        delay = min(5.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.5)
        self.say(
            f"{self.database}: {m.label}: lock not available ({type(exc).__name__}); "
            f"retry {attempt}/{self.lock_retries} in {delay:.2f}s"
        )
        await asyncio.sleep(delay)

    async def _rollback(self, m: Migration) -> None:
        try:
            await self.conn.execute("ROLLBACK")
        except Exception as exc:
            if not is_connection_lost(exc):
                raise self._wrap(exc, m, None, False) from exc

    async def _record_failure(
        self,
        m: Migration,
        exc: BaseException,
        step: Step | None,
        background: bool,
        statement: str | None = None,
    ) -> None:
        if statement is None and step is None and m.version == "000":
            return  # no history table to record into
        try:
            await hist.record_failure(
                self.conn,
                version=m.version,
                name=m.name,
                feature=m.feature,
                checksum=m.checksum,
                applied_from=self.applied_from,
                error=f"{type(exc).__name__}: {exc}",
                statement=statement or (step.name if step else None),
                background=background,
            )
        except asyncpg.UndefinedTableError:
            pass  # 000 itself failed; nothing to record into
        except Exception as inner:
            if not is_connection_lost(inner):
                raise

    async def _execute(self, sql: str, m: Migration, step: Step | None) -> None:
        try:
            await self.conn.execute(sql)
        except Exception as exc:
            raise self._wrap(exc, m, step, False) from exc

    def _wrap(
        self,
        exc: BaseException,
        m: Migration,
        step: Step | None,
        background: bool,
        statement: str | None = None,
    ) -> MigrationError:
        if isinstance(exc, MigrationError):
            return exc
        where = f"{self.database}: {m.label}"
        if step is not None:
            where += f": step {step.name}"
        if is_connection_lost(exc):
            return ConnectionLostError(
                f"{where}: the database connection was lost ({type(exc).__name__}: {exc}). "
                "A transactional step was rolled back by the server; statements of "
                "transaction:false steps that finished are recorded. Check that the server "
                "is up, then run again: it resumes where it stopped"
            )
        detail = f"{type(exc).__name__}: {exc}"
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate:
            detail += f" (SQLSTATE {sqlstate})"
        hint = getattr(exc, "hint", None)
        if hint:
            detail += f"; hint: {hint}"
        if statement is not None:
            first = " ".join(statement.split())[:300]
            return MigrationFailedError(
                f"{where} failed at statement: {first}\n  {detail}\n"
                "Statements before it are done and recorded. Fix the cause and run again: "
                "it resumes at this statement"
                + (" (the schema for new writes is in place)" if background else "")
            )
        return MigrationFailedError(
            f"{where} failed and was rolled back: {detail}\n"
            "Nothing of this step was applied. Fix the cause (or the file, if it is not "
            "applied anywhere yet) and run again"
        )


def _default_settings() -> MigrationSettings:
    from cex_arbitrage.config import MigrationSettings

    return MigrationSettings()
