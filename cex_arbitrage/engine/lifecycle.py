"""The Engine: startup hooks (schema first), then the collectors, then a clean stop.

Why the order matters is in the package docstring (`cex_arbitrage.engine`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
from typing import Any

import asyncpg

from cex_arbitrage.collectors import (
    BookTickerWriter,
    Collector,
    ConnectFactory,
    TradeWriter,
)
from cex_arbitrage.config import AppConfig
from cex_arbitrage.db.migrations import SchemaReport
from cex_arbitrage.db.migrator.source import MigrationSource
from cex_arbitrage.engine.hooks import StartupHooks, _ensure_schema, _open_pool
from cex_arbitrage.engine.sources import EngineSources
from cex_arbitrage.errors import RunInterruptedError

__all__ = ["BOOK_TICKERS", "TRADES", "TRADE_FEATURE", "Engine"]

log = logging.getLogger("cex_arbitrage.engine")

TRADE_FEATURE = "trade_collection"
BOOK_TICKERS = "book_tickers"
TRADES = "trades"

# The batch log only needs an id until its writer has seen the commit or
# retried; a day is generous. Pruning hourly keeps the table small.
_PRUNE_EVERY_S = 3600.0
_PRUNE_KEEP = dt.timedelta(days=1)


class Engine:
    """Boots the schema, runs the collectors, and stops them cleanly.

    `start()` runs the startup hooks then starts the collectors; `wait()`
    returns when a stop is requested, every source has ended, or a collector
    failed; `stop()` flushes and releases everything. `run()` is all three,
    with SIGINT/SIGTERM wired to a clean stop.
    """

    def __init__(
        self,
        config: AppConfig,
        sources: EngineSources | None = None,
        *,
        migration_source: MigrationSource | None = None,
    ) -> None:
        self.config = config
        self.sources = sources if sources is not None else EngineSources()
        self.migration_source = migration_source
        self.hooks = StartupHooks()
        self.hooks.register("ensure_schema", _ensure_schema)
        self.hooks.register("open_pool", _open_pool)
        self.schema: SchemaReport | None = None
        self.pool: asyncpg.Pool | None = None
        self.collectors: dict[str, Collector[Any]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._supervisors: list[asyncio.Task[None]] = []
        self._stop_requested = asyncio.Event()
        self._stopped = False
        self._failure: BaseException | None = None
        # While a startup hook runs under run(), a signal cancels it (see _start_stoppable).
        self._starting: asyncio.Future[None] | None = None
        self._hook_running: str | None = None
        self._signalled: str | None = None
        self._cancelled_hook: str | None = None

    @property
    def database(self) -> str:
        """The database as logs name it: never with the password."""
        return self.config.database.display

    @property
    def trade_collection(self) -> bool:
        """Whether the trades collector runs (features.trade_collection)."""
        return self.config.feature_enabled(TRADE_FEATURE)

    async def start(self) -> None:
        """Run the startup hooks in order, then start the collectors.

        A hook that raises (e.g. ensure_schema's MigrationError) ends the boot:
        what was opened is closed, no collector starts, the error propagates.
        """
        log.info(
            "engine starting on %s: startup hooks %s, trade collection %s",
            self.database,
            ", ".join(self.hooks.names()),
            "on" if self.trade_collection else "off",
        )
        for name, hook in self.hooks:
            self._hook_running = name
            try:
                await hook(self)
            except BaseException as exc:
                log.error("startup hook %s failed on %s: %s", name, self.database, _reason(exc))
                await self._release()
                raise
            finally:
                self._hook_running = None
        await self._start_collectors()

    def request_stop(self) -> None:
        """Ask `wait()`/`run()` to stop; safe from a signal handler."""
        self._stop_requested.set()

    async def wait(self) -> None:
        """Until a stop is requested, every collector has ended, or one failed."""
        stop = asyncio.create_task(self._stop_requested.wait())
        try:
            pending = {stop, *self._tasks.values()}
            while True:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    return
                for task in done:
                    if not task.cancelled() and task.exception() is not None:
                        return
                if pending == {stop}:
                    log.info("every source has ended on %s", self.database)
                    return
        finally:
            stop.cancel()

    async def stop(self) -> None:
        """Stop collectors (flushing their buffers), background work, and the pool.

        Raises the error that failed a collector, if one did, once all is closed.
        """
        if self._stopped:
            return
        self._stopped = True
        log.info("engine stopping on %s", self.database)
        # Both collectors stop reading at once, then each flushes its buffer.
        await asyncio.gather(*(c.stop() for c in self.collectors.values()))
        for name, collector in self.collectors.items():
            task = self._tasks[name]
            await asyncio.wait({task})  # done or failed; its error is read below, not raised
            if not task.cancelled() and task.exception() is not None:
                self._failure = self._failure or task.exception()
            await collector.writer.close()
            if collector.buffered:
                log.error(
                    "collector %s stopped on %s with %d received records not written",
                    name,
                    self.database,
                    collector.buffered,
                )
        await self._release()
        log.info("engine stopped on %s", self.database)
        if self._failure is not None:
            raise self._failure

    async def run(self, *, handle_signals: bool = True) -> None:
        """start(), wait(), stop(); SIGINT/SIGTERM request a clean stop."""
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, self._on_signal, sig)
                    installed.append(sig)
        try:
            await self._start_stoppable()
            try:
                await self.wait()
            finally:
                await self.stop()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        """SIGINT/SIGTERM: a clean stop, the same as request_stop().

        During a startup hook (ensure_schema may wait on a lock or run a long
        step) the boot is cancelled instead: asyncpg cancels the statement on
        the server, whose transaction rolls back; run() raises RunInterruptedError.
        """
        self._signalled = self._signalled or sig.name
        if self._hook_running is not None and self._starting is not None:
            log.info(
                "%s received during startup hook %s: cancelling the boot on %s",
                sig.name,
                self._hook_running,
                self.database,
            )
            self._cancelled_hook = self._hook_running
            self._starting.cancel()
            return
        log.info("%s received: stopping collectors on %s", sig.name, self.database)
        self.request_stop()

    async def _start_stoppable(self) -> None:
        """start(), cancelled by _on_signal while a startup hook runs."""
        starting = asyncio.ensure_future(self.start())
        self._starting = starting
        try:
            await starting
        except asyncio.CancelledError:
            if self._signalled is None or not starting.cancelled():
                raise
            stage = self._cancelled_hook
            raise RunInterruptedError(
                f"{self.database}: {self._signalled} received during startup hook "
                f"{stage}: the boot was cancelled, the statement running "
                "on the server was cancelled and its transaction rolled back; no collector "
                "started. Finished migration steps are recorded; start it again to resume",
                signal_name=self._signalled,
                stage=stage,
            ) from None
        finally:
            self._starting = None

    async def _start_collectors(self) -> None:
        """Start each planned collector as a task, and the batch-log pruning beside them."""
        for name, collector in self._collector_plan():
            self.collectors[name] = collector
            self._tasks[name] = asyncio.create_task(collector.run(), name=f"collector {name}")
            self._tasks[name].add_done_callback(self._collector_ended)
            log.info(
                "collector %s started on %s: sources %d, batch %d, flush every %.2fs",
                name,
                self.database,
                len(collector.sources),
                collector.batch_size,
                collector.flush_interval,
            )
        self._supervisors.append(asyncio.create_task(self._prune_batch_log()))
        await asyncio.sleep(0)  # let each collector task begin: start() returns with them running

    def _collector_plan(self) -> list[tuple[str, Collector[Any]]]:
        """The collectors to run: book tickers always, trades only with the feature on."""
        settings = self.config.collectors
        writer_args: dict[str, Any] = {
            "max_retries": settings.max_retries,
            "database": self.database,
        }
        plan: list[tuple[str, Collector[Any]]] = [
            (
                BOOK_TICKERS,
                Collector(
                    BOOK_TICKERS,
                    self.sources.book_tickers,
                    BookTickerWriter(self._writer_connect(BOOK_TICKERS), **writer_args),
                    batch_size=settings.batch_size,
                    flush_interval=settings.flush_interval,
                ),
            )
        ]
        if self.trade_collection:
            plan.append(
                (
                    TRADES,
                    Collector(
                        TRADES,
                        self.sources.trades,
                        TradeWriter(self._writer_connect(TRADES), **writer_args),
                        batch_size=settings.batch_size,
                        flush_interval=settings.flush_interval,
                    ),
                )
            )
        else:
            log.info(
                "trade collection is off (features.%s): trade collector not started on %s",
                TRADE_FEATURE,
                self.database,
            )
        return plan

    def _writer_connect(self, name: str) -> ConnectFactory:
        """A dedicated connection per writer, reopened after a loss.

        Not the pool: asyncpg can return a connection whose backend was
        terminated mid-transaction to its pool in a corrupted state
        (MagicStack/asyncpg#784); a writer that owns its connection discards
        it and reconnects, and its session shows in pg_stat_activity by name.
        """
        kwargs = self.config.database.connect_kwargs()
        app = f"{self.config.database.application_name} {name} writer"
        kwargs["server_settings"] = {**kwargs.get("server_settings", {}), "application_name": app}

        async def connect() -> asyncpg.Connection:
            return await asyncpg.connect(**kwargs)

        return connect

    def _collector_ended(self, task: asyncio.Task[None]) -> None:
        """A collector that failed stops the engine; its error is raised by stop()."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("%s failed on %s: %s", task.get_name(), self.database, task.exception())
        self._failure = self._failure or task.exception()
        self.request_stop()

    async def _supervise_background(self) -> None:
        """Background migration work must not stop ingestion: its failure is logged."""
        work = self.schema.background if self.schema is not None else None
        if work is None:
            return
        log.info(
            "background migration work pending on %s: running it here, or watching the "
            "runner that has it",
            self.database,
        )
        try:
            await work.wait()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            log.error(
                "background migration work failed on %s: %s; collectors keep running, "
                "see `python -m cex_arbitrage.db.migrate status`",
                self.database,
                _reason(exc),
            )
            return
        if not work.done:
            # wait() returned early: it swallowed this task's own cancellation.
            raise asyncio.CancelledError
        if work.finished:
            how = " (taken over from a runner that stopped)" if work.watched else ""
            log.info(
                "background migration work finished on %s%s: %s",
                self.database,
                how,
                ", ".join(work.finished),
            )
        else:
            log.info(
                "no background migration work left on %s: another runner finished it",
                self.database,
            )

    async def _prune_batch_log(self) -> None:
        """Hourly, drop batch-log rows older than a day; a failure is logged and retried."""
        while True:
            if self.pool is None:
                return
            try:
                removed = await self.pool.fetchval(
                    "SELECT ingest_batch_log_prune($1::interval)", _PRUNE_KEEP
                )
                if removed:
                    log.info("ingest_batch_log: %d old rows pruned on %s", removed, self.database)
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
                log.warning("ingest_batch_log pruning failed on %s: %s", self.database, exc)
            await asyncio.sleep(_PRUNE_EVERY_S)

    async def _release(self) -> None:
        """Cancel supervisors, pause background migration work, close the pool."""
        for task in self._supervisors:
            task.cancel()
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        self._supervisors.clear()
        work = self.schema.background if self.schema is not None else None
        if work is not None and not work.done:
            log.info(
                "stopping background migration work on %s (it resumes on the next start)",
                self.database,
            )
            await work.stop()
        if self.pool is not None:
            pool, self.pool = self.pool, None
            await pool.close()
            log.info("connection pool closed on %s", self.database)


def _reason(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    return message if isinstance(message, str) else f"{type(exc).__name__}: {exc}"
