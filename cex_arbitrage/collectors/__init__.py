"""Market-data collectors: sources of book tickers and trades, batching writers into the schema."""

from cex_arbitrage.collectors.collector import Collector, CollectorStats
from cex_arbitrage.collectors.records import BookTicker, RecordError, Trade, parse_record
from cex_arbitrage.collectors.sources import ReplaySource, Source
from cex_arbitrage.collectors.writers import (
    BatchWriter,
    BookTickerWriter,
    ConnectFactory,
    TradeWriter,
    WriteError,
    WriteResult,
)

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
