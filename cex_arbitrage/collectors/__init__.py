"""Market-data collectors: sources of book tickers and trades, batching writers into the schema.

Names are loaded on first use, so `import cex_arbitrage.collectors.columns`
(the CLI's `lint` reads what the writers write) does not load asyncpg.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cex_arbitrage.collectors.collector import Collector as Collector
    from cex_arbitrage.collectors.collector import CollectorStats as CollectorStats
    from cex_arbitrage.collectors.records import BookTicker as BookTicker
    from cex_arbitrage.collectors.records import RecordError as RecordError
    from cex_arbitrage.collectors.records import Trade as Trade
    from cex_arbitrage.collectors.records import parse_record as parse_record
    from cex_arbitrage.collectors.sources import ReplaySource as ReplaySource
    from cex_arbitrage.collectors.sources import Source as Source
    from cex_arbitrage.collectors.writers import BatchWriter as BatchWriter
    from cex_arbitrage.collectors.writers import BookTickerWriter as BookTickerWriter
    from cex_arbitrage.collectors.writers import ConnectFactory as ConnectFactory
    from cex_arbitrage.collectors.writers import TradeWriter as TradeWriter
    from cex_arbitrage.collectors.writers import WriteError as WriteError
    from cex_arbitrage.collectors.writers import WriteResult as WriteResult

_EXPORTS = {
    "BatchWriter": "writers",
    "BookTicker": "records",
    "BookTickerWriter": "writers",
    "Collector": "collector",
    "CollectorStats": "collector",
    "ConnectFactory": "writers",
    "RecordError": "records",
    "ReplaySource": "sources",
    "Source": "sources",
    "Trade": "records",
    "TradeWriter": "writers",
    "WriteError": "writers",
    "WriteResult": "writers",
    "parse_record": "records",
}

__all__ = [
    "BatchWriter",
    "BookTicker",
    "BookTickerWriter",
    "Collector",
    "CollectorStats",
    "ConnectFactory",
    "RecordError",
    "ReplaySource",
    "Source",
    "Trade",
    "TradeWriter",
    "WriteError",
    "WriteResult",
    "parse_record",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
