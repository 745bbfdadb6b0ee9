"""The feeds the engine's collectors read."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cex_arbitrage.collectors import BookTicker, ReplaySource, Source, Trade


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
