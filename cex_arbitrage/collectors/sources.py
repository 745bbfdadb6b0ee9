"""Where records come from: a protocol for live feeds, and a replay of a JSONL file.

A source yields records of one kind (book tickers or trades), the way an
exchange websocket delivers one channel. A collector may read several
sources (one per exchange) into one writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Generic, Literal, Protocol, TypeVar

from cex_arbitrage.collectors.records import BookTicker, RecordError, Trade, parse_record

__all__ = ["RecordKind", "ReplaySource", "Source"]

log = logging.getLogger("cex_arbitrage.collectors")

R = TypeVar("R", BookTicker, Trade)
R_co = TypeVar("R_co", covariant=True)

RecordKind = Literal["book_ticker", "trade"]
_KINDS: dict[type[BookTicker] | type[Trade], RecordKind] = {
    BookTicker: "book_ticker",
    Trade: "trade",
}


class Source(Protocol[R_co]):
    """A stream of records of one kind, e.g. one exchange websocket channel.

    `stream()` is an async iterator that ends when the feed ends (a replay
    file is exhausted); a live feed reconnects by itself and never ends.
    `close()` must make a running `stream()` finish promptly: the collector
    calls it on stop, then flushes what it has buffered.
    """

    @property
    def name(self) -> str: ...

    def stream(self) -> AsyncIterator[R_co]: ...

    async def close(self) -> None: ...


class ReplaySource(Generic[R]):
    """Records of one kind from a JSONL file of `{"type": ..., ...}` messages.

    Lines of the other kind are skipped, so one file can feed both the
    book-ticker and the trade collector. A malformed line is logged with its
    line number and skipped: one bad message must not stop ingestion. With
    `follow=True` the file is tailed like `tail -f` until `close()`.
    """

    def __init__(
        self,
        path: Path | str,
        record_type: type[R],
        *,
        follow: bool = False,
        poll_interval: float = 0.2,
    ) -> None:
        self.path = Path(path)
        self.record_type: type[R] = record_type
        self.kind: RecordKind = _KINDS[record_type]
        self.follow = follow
        self.poll_interval = poll_interval
        self.skipped = 0
        self._closed = asyncio.Event()

    @property
    def name(self) -> str:
        return f"replay:{self.path.name}:{self.kind}"

    async def close(self) -> None:
        self._closed.set()

    async def stream(self) -> AsyncIterator[R]:
        """Yield the file's records of this kind, in file order."""
        # Plain blocking reads: a replay file is local and read line by line,
        # each read far shorter than a batch flush interval.
        with self.path.open("r", encoding="utf-8") as handle:
            number = 0
            pending = ""
            while not self._closed.is_set():
                line = handle.readline()
                if not line:
                    if not self.follow:
                        break
                    await self._sleep()
                    continue
                if not line.endswith("\n") and self.follow:
                    # A writer is still appending this line: wait for the rest.
                    pending += line
                    await self._sleep()
                    continue
                line, pending = pending + line, ""
                number += 1
                record = self._parse(line, number)
                if record is not None:
                    yield record
                if number % 1000 == 0:
                    await asyncio.sleep(0)  # let the writer run between long stretches

    def _parse(self, line: str, number: int) -> R | None:
        text = line.strip()
        if not text:
            return None
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise RecordError("a line must be a JSON object")
            if data.get("type") != self.kind:
                if data.get("type") not in ("book_ticker", "trade"):
                    raise RecordError(f"unknown type {data.get('type')!r}")
                return None
            record = parse_record(data)
        except (ValueError, RecordError) as exc:
            self.skipped += 1
            log.warning("%s line %d skipped: %s", self.path, number, exc)
            return None
        assert isinstance(record, self.record_type)
        return record

    async def _sleep(self) -> None:
        # asyncio.TimeoutError: a class of its own before Python 3.11.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._closed.wait(), self.poll_interval)
