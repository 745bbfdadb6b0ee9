"""The columns each collector writer writes, by table: one declaration the writers use.

`migrate lint` reads `WRITTEN_COLUMNS` to refuse a migration that drops or
renames a table or column the current code still writes (the lint package
gets it from the CLI; it imports no collector).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

BOOK_TICKER_COLUMNS = (
    "timestamp",
    "exchange",
    "symbol_base",
    "symbol_quote",
    "bid_price",
    "bid_qty",
    "ask_price",
    "ask_qty",
)

TRADE_COLUMNS = (
    "timestamp",
    "exchange",
    "symbol",
    "symbol_base",
    "symbol_quote",
    "price",
    "quantity",
    "side",
    "trade_id",
    "quote_quantity",
    "is_buyer",
    "is_maker",
)

BATCH_LOG_COLUMNS = ("batch_id", "table_name", "rows")

WRITTEN_COLUMNS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "book_ticker_snapshots": BOOK_TICKER_COLUMNS,
        "trades": TRADE_COLUMNS,
        "ingest_batch_log": BATCH_LOG_COLUMNS,
    }
)
