"""The engine's lifecycle: startup hooks (schema first), then the collectors, then a clean stop.

Boot order matters: no collector may write before `ensure_schema()` has made
the schema current for the enabled features, so ensure_schema is the first
startup hook and a hook that raises stops the boot before any collector
starts. Stopping (SIGINT/SIGTERM, or the end of a replay) flushes every
buffered record, stops background migration work at a checkpoint it resumes
from, and closes the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg

from cex_arbitrage.collectors import (
    BookTicker,
    BookTickerWriter,
    Collector,
    ConnectFactory,
    ReplaySource,
    Source,
    Trade,
    TradeWriter,
)
from cex_arbitrage.config import AppConfig
from cex_arbitrage.db.migrations import SchemaReport, ensure_schema
from cex_arbitrage.db.migrations.source import MigrationSource

__all__ = [
    "TRADE_FEATURE",
    "Engine",
    "EngineSources",
    "StartupHook",
    "StartupHooks",
    "fetch_ohlcv",
]

log = logging.getLogger("cex_arbitrage.engine")

TRADE_FEATURE = "trade_collection"
BOOK_TICKERS = "book_tickers"
TRADES = "trades"

# The batch log only needs an id until its writer has seen the commit or
# retried; a day is generous. Pruning hourly keeps the table small.
_PRUNE_EVERY_S = 3600.0
_PRUNE_KEEP = dt.timedelta(days=1)

StartupHook = Callable[["Engine"], Awaitable[None]]
"""An async callable run at boot with the engine; raising stops the boot."""


class StartupHooks:
    """Named startup hooks run in order; plugins insert theirs relative to others.

    The engine registers `ensure_schema` then `open_pool`; a plugin usually
    appends (after the schema is current and `engine.pool` is open), and may
    place a hook `before=` or `after=` a named one.
    """

    def __init__(self) -> None:
        self._hooks: list[tuple[str, StartupHook]] = []

    def register(
        self,
        name: str,
        hook: StartupHook,
        *,
        before: str | None = None,
        after: str | None = None,
    ) -> None:
        """Add `hook` at the end, or just before/after the hook named so."""
        if name in self.names():
            raise ValueError(f"a startup hook named {name!r} is already registered")
        if before is not None and after is not None:
            raise ValueError("give before= or after=, not both")
        anchor = before if before is not None else after
        if anchor is None:
            self._hooks.append((name, hook))
            return
        if anchor not in self.names():
            raise ValueError(f"no startup hook named {anchor!r}; registered: {self.names()}")
        index = self.names().index(anchor) + (0 if before is not None else 1)
        self._hooks.insert(index, (name, hook))

    def names(self) -> list[str]:
        return [name for name, _ in self._hooks]

    def __iter__(self) -> Iterator[tuple[str, StartupHook]]:
        return iter(list(self._hooks))


@dataclasses.dataclass
class EngineSources:
    """The feeds the collectors read; a startup hook may add more before they start."""

    book_tickers: list[Source[BookTicker]] = dataclasses.field(default_factory=list)
    trades: list[Source[Trade]] = dataclasses.field(default_factory=list)

    @classmethod
    def replay(cls, path: Path | str, *, follow: bool = False) -> EngineSources:
        """Both collectors fed from one JSONL replay file."""
        return cls(
            book_tickers=[ReplaySource(path, BookTicker, follow=follow)],
            trades=[ReplaySource(path, Trade, follow=follow)],
        )


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

    @property
    def database(self) -> str:
        """The database as logs name it: never with the password."""
        return self.config.database.display

    @property
    def trade_collection(self) -> bool:
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
            try:
                await hook(self)
            except BaseException as exc:
                log.error("startup hook %s failed on %s: %s", name, self.database, _reason(exc))
                await self._release()
                raise
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
            await self.start()
            try:
                await self.wait()
            finally:
                await self.stop()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("%s received: stopping collectors on %s", sig.name, self.database)
        self.request_stop()

    async def _start_collectors(self) -> None:
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
        for name, collector in plan:
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
        log.info("background migration work running on %s", self.database)
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
        log.info("background migration work finished on %s", self.database)

    async def _prune_batch_log(self) -> None:
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


async def _ensure_schema(engine: Engine) -> None:
    """Startup hook 1: the schema is current for the enabled features, or boot stops."""
    report = await ensure_schema(
        engine.config.database,
        features=dict(engine.config.features),
        settings=engine.config.migrations,
        source=engine.migration_source,
    )
    engine.schema = report
    log.info(
        "schema current on %s: %s",
        engine.database,
        f"applied {', '.join(report.applied)}" if report.applied else "nothing to apply",
    )
    if report.background is not None:
        engine._supervisors.append(asyncio.create_task(engine._supervise_background()))


async def _open_pool(engine: Engine) -> None:
    """Startup hook 2: the pool the writers (and later hooks) share."""
    database = engine.config.database
    engine.pool = await asyncpg.create_pool(
        **database.connect_kwargs(),
        min_size=min(database.pool_min_size, database.pool_max_size),
        max_size=database.pool_max_size,
    )
    log.info(
        "connection pool open on %s (%d..%d connections)",
        engine.database,
        database.pool_min_size,
        database.pool_max_size,
    )


async def fetch_ohlcv(
    conn: asyncpg.Connection,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 10,
    view: str = "trades_ohlcv_1m",
) -> list[dict[str, object]]:
    """Rows of an OHLCV aggregate, refreshing it first over [since, until] if it is materialized.

    On TimescaleDB the view is a continuous aggregate that may not have
    materialized recent buckets yet; on plain PostgreSQL it may be a
    materialized view. A plain view needs nothing.
    """
    if view not in ("trades_ohlcv_1m", "trades_ohlcv_1h"):
        raise ValueError(f"unknown OHLCV view {view!r}")
    width = dt.timedelta(minutes=1) if view.endswith("1m") else dt.timedelta(hours=1)
    is_cagg = await conn.fetchval(
        "SELECT to_regclass('timescaledb_information.continuous_aggregates') IS NOT NULL"
    )
    if is_cagg:
        is_cagg = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM timescaledb_information.continuous_aggregates "
            "WHERE view_name = $1)",
            view,
        )
    if is_cagg:
        # A refresh window must cover whole buckets, or it refreshes nothing.
        await conn.execute(
            "CALL refresh_continuous_aggregate($1::regclass, $2::timestamptz, $3::timestamptz)",
            view,
            None if since is None else since - width,
            None if until is None else until + width,
        )
    elif await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_matviews WHERE matviewname = $1)", view
    ):
        await conn.execute(f"REFRESH MATERIALIZED VIEW {view}")
    rows = await conn.fetch(
        f"SELECT * FROM {view} "
        "WHERE ($1::timestamptz IS NULL OR bucket >= $1::timestamptz - $3::interval) "
        "  AND ($2::timestamptz IS NULL OR bucket <= $2::timestamptz) "
        "ORDER BY bucket, exchange, symbol_base, symbol_quote LIMIT $4",
        since,
        until,
        width,
        limit,
    )
    return [dict(row) for row in rows]


def _reason(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    return message if isinstance(message, str) else f"{type(exc).__name__}: {exc}"
