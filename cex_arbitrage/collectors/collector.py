"""A collector: records from its sources, in batches, into one writer.

A batch is flushed when it reaches `batch_size` records or when its oldest
record has waited `flush_interval` seconds, whichever comes first, so a quiet
pair still reaches the database promptly and a busy one in large batches.
Sources feed a bounded queue: when the database stalls (a retry with backoff)
readers wait instead of buffering without limit. Stopping flushes everything
already received before `stop()` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Sequence
from typing import Generic, TypeVar

from cex_arbitrage.collectors.records import BookTicker, Trade
from cex_arbitrage.collectors.sources import Source
from cex_arbitrage.collectors.writers import BatchWriter, WriteResult

__all__ = ["Collector", "CollectorStats"]

log = logging.getLogger("cex_arbitrage.collectors")

R = TypeVar("R", BookTicker, Trade)

# Records the queue may hold per batch_size before readers must wait: room for
# the next batches while one is written or retried, not for minutes of data.
_QUEUE_BATCHES = 8


class _End:
    """Queue marker: every source has ended, or the collector is stopping."""


_END = _End()


@dataclasses.dataclass
class CollectorStats:
    """Counters since the collector started; `inserted < rows` means duplicates were dropped."""

    received: int = 0
    rows: int = 0
    inserted: int = 0
    rejected: int = 0
    batches: int = 0
    retries: int = 0
    recovered: int = 0
    source_errors: int = 0
    last_flush: float | None = None  # time.time() of the last successful flush
    earliest: dt.datetime | None = None  # record time range written, e.g. to query it back
    latest: dt.datetime | None = None

    def add(self, result: WriteResult, first: dt.datetime, last: dt.datetime) -> None:
        self.earliest = first if self.earliest is None else min(self.earliest, first)
        self.latest = last if self.latest is None else max(self.latest, last)
        self.rows += result.rows
        self.inserted += result.inserted
        self.rejected += result.rejected
        self.batches += result.batches
        self.retries += result.retries
        self.recovered += result.recovered
        self.last_flush = time.time()


class Collector(Generic[R]):
    """Moves records of one kind from its sources into its writer until stopped.

    `run()` returns when every source has ended (a replay file is done) or
    after `stop()`, in both cases once everything received is flushed; with
    no sources at all it idles until `stop()`. It
    raises the writer's WriteError when a batch cannot be written; the
    engine then stops the other collectors.
    """

    def __init__(
        self,
        name: str,
        sources: Sequence[Source[R]],
        writer: BatchWriter[R],
        *,
        batch_size: int = 500,
        flush_interval: float = 0.5,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if flush_interval <= 0:
            raise ValueError(f"flush_interval must be positive, got {flush_interval}")
        self.name = name
        self.sources: list[Source[R]] = list(sources)
        self.writer: BatchWriter[R] = writer
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.stats = CollectorStats()
        self._queue: asyncio.Queue[R | _End] = asyncio.Queue(batch_size * _QUEUE_BATCHES)
        self._readers: list[asyncio.Task[None]] = []
        self._started = False
        self._running = False
        self._stopping = False
        self._finished = asyncio.Event()

    @property
    def running(self) -> bool:
        """True from `run()` until it has flushed and returned."""
        return self._running

    @property
    def buffered(self) -> int:
        """Records received but not yet handed to the writer."""
        return self._queue.qsize()

    async def run(self) -> None:
        """Collect until the sources end or `stop()`; flush; return."""
        if self._started:
            raise RuntimeError(f"collector {self.name} runs only once")
        self._started = True
        if self._stopping:
            self._finished.set()  # stopped before it ever ran: nothing to flush
            return
        self._running = True
        self._readers = [
            asyncio.create_task(self._read(source), name=f"{self.name}:{source.name}")
            for source in self.sources
        ]
        watcher = asyncio.create_task(self._end_when_sources_end(), name=f"{self.name}:end")
        try:
            await self._write_batches()
        finally:
            watcher.cancel()
            await self._cancel_readers()
            self._running = False
            self._finished.set()
            log.info(
                "%s collector stopped: %d received, %d inserted, %d duplicates, %d rejected, "
                "%d batches",
                self.name,
                self.stats.received,
                self.stats.inserted,
                self.stats.rows - self.stats.inserted - self.stats.rejected,
                self.stats.rejected,
                self.stats.batches,
            )

    async def stop(self) -> None:
        """Stop reading, flush what is buffered, and return when it is written."""
        if self._stopping:
            await self._finished.wait()
            return
        self._stopping = True
        if not self._running:
            if not self._started:
                self._finished.set()
            await self._finished.wait()
            return
        await self._cancel_readers()
        # The marker goes behind what is buffered; if the writer has already
        # failed nobody drains the queue, so do not wait for room in it.
        putter = asyncio.ensure_future(self._queue.put(_END))
        try:
            await self._finished.wait()
        finally:
            putter.cancel()

    async def _read(self, source: Source[R]) -> None:
        try:
            async for record in source.stream():
                self.stats.received += 1
                await self._queue.put(record)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A feed is expected to reconnect by itself; one that raises has a
            # bug, and must not take the other exchanges' feeds down with it.
            self.stats.source_errors += 1
            log.exception("%s collector: source %s failed", self.name, source.name)
        finally:
            with contextlib.suppress(Exception):
                await source.close()

    async def _end_when_sources_end(self) -> None:
        if not self._readers:
            return  # nothing to end: idle until stop(), e.g. feeds not configured yet
        await asyncio.gather(*self._readers, return_exceptions=True)
        if not self._stopping:
            log.info("%s collector: all sources ended", self.name)
            await self._queue.put(_END)

    async def _cancel_readers(self) -> None:
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)

    async def _write_batches(self) -> None:
        while True:
            batch, ended = await self._next_batch()
            if batch:
                result = await self.writer.write(batch)
                stamps = [record.timestamp for record in batch]
                self.stats.add(result, min(stamps), max(stamps))
            if ended:
                return

    async def _next_batch(self) -> tuple[list[R], bool]:
        """Up to batch_size records, waiting at most flush_interval after the first."""
        first = await self._queue.get()
        if isinstance(first, _End):
            return [], True
        batch = [first]
        deadline = asyncio.get_running_loop().time() + self.flush_interval
        while len(batch) < self.batch_size:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if isinstance(item, _End):
                return batch, True
            batch.append(item)
        return batch, False
