"""Writer throughput benchmark (issue: collectors' batching writers).

Sustained rows/s of BookTickerWriter and TradeWriter into the migrated schema
(indexes, the trades dedup index, the exactly-once batch log), against the
floor: a raw `copy_records_to_table` of the same rows, in the same batch
size, into a table of the same columns without any index. The ratio says what
exactly-once and deduplication cost on top of the fastest way in.

    .venv/bin/python -m bench.bench_writers [--rows N] [--rounds R] [--batch-size B]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import time
from collections.abc import Awaitable, Sequence
from decimal import Decimal

import asyncpg

from bench._common import admin_config, create_database, drop_database
from cex_arbitrage.collectors import BookTicker, BookTickerWriter, Trade, TradeWriter
from cex_arbitrage.collectors.columns import BOOK_TICKER_COLUMNS, TRADE_COLUMNS
from cex_arbitrage.collectors.writers import ConnectFactory
from cex_arbitrage.db.migrations import ensure_schema
from cex_arbitrage.db.structs import DatabaseConfig

T0 = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
PAIRS = [("BTC", "USDT"), ("ETH", "USDT"), ("SOL", "USDT"), ("XRP", "USDT"), ("ETH", "BTC")]
EXCHANGES = ["MEXC", "GATEIO"]

# Same column types as the migrated tables, no index, no key: the floor.
_FLOOR_TABLES = (
    "CREATE TABLE floor_book_tickers AS SELECT {} FROM book_ticker_snapshots WITH NO DATA".format(
        ", ".join(f'"{c}"' for c in BOOK_TICKER_COLUMNS)
    ),
    "CREATE TABLE floor_trades AS SELECT {} FROM trades WITH NO DATA".format(
        ", ".join(f'"{c}"' for c in TRADE_COLUMNS)
    ),
    # For information: the same COPY into copies of the migrated tables with all
    # their indexes and constraints, to split the cost between the schema's
    # indexes and the writers' protocol (batch log, staging, dedup).
    "CREATE TABLE indexed_book_tickers (LIKE book_ticker_snapshots INCLUDING ALL)",
    "CREATE TABLE indexed_trades (LIKE trades INCLUDING ALL)",
)


def quiet(_message: str) -> None:
    """Benchmarks measure work, not printing."""


def book_tickers(n: int, round_: int) -> list[BookTicker]:
    out = []
    for i in range(n):
        base, quote = PAIRS[i % len(PAIRS)]
        price = Decimal(1000 + (i % 977)) + Decimal(i % 100) / 100
        out.append(
            BookTicker(
                timestamp=T0 + dt.timedelta(seconds=round_ * 86400, microseconds=i * 1000),
                exchange=EXCHANGES[i % 2],
                symbol_base=base,
                symbol_quote=quote,
                bid_price=price,
                bid_qty=Decimal("1.25"),
                ask_price=price + Decimal("0.01"),
                ask_qty=Decimal("0.75"),
            )
        )
    return out


def trades(n: int, round_: int) -> list[Trade]:
    out = []
    for i in range(n):
        base, quote = PAIRS[i % len(PAIRS)]
        price = Decimal(1000 + (i % 977)) + Decimal(i % 100) / 100
        quantity = Decimal("0.015")
        out.append(
            Trade(
                timestamp=T0 + dt.timedelta(seconds=round_ * 86400, microseconds=i * 1000),
                exchange=EXCHANGES[i % 2],
                symbol_base=base,
                symbol_quote=quote,
                price=price,
                quantity=quantity,
                side="buy" if i % 3 else "sell",
                trade_id=f"{round_}-{i}",
                symbol=f"{base}_{quote}",
                quote_quantity=price * quantity,
                is_maker=bool(i % 2),
            )
        )
    return out


async def rate(work: Awaitable[object], rows: int) -> float:
    """Rows per second of `work` (a coroutine not started yet)."""
    start = time.perf_counter()
    await work
    return rows / (time.perf_counter() - start)


async def copy_floor(
    conn: asyncpg.Connection,
    table: str,
    rows: list[tuple[object, ...]],
    columns: Sequence[str],
    size: int,
) -> None:
    """The floor: plain binary COPY per batch, autocommit, into an index-free table."""
    for start in range(0, len(rows), size):
        await conn.copy_records_to_table(table, records=rows[start : start + size], columns=columns)


async def write_all(
    writer: BookTickerWriter | TradeWriter,
    records: Sequence[BookTicker] | Sequence[Trade],
    size: int,
) -> None:
    for start in range(0, len(records), size):
        await writer.write(records[start : start + size])  # type: ignore[arg-type]


def connector(db: DatabaseConfig) -> ConnectFactory:
    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(**db.connect_kwargs())

    return connect


async def measure(db: DatabaseConfig, rows: int, rounds: int, size: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {
        "book floor": [],
        "book indexed": [],
        "book writer": [],
        "trade floor": [],
        "trade indexed": [],
        "trade writer": [],
        "trade writer, replays": [],
    }
    conn = await asyncpg.connect(**db.connect_kwargs())
    book_writer = BookTickerWriter(connector(db))
    trade_writer = TradeWriter(connector(db))
    try:
        for statement in _FLOOR_TABLES:
            await conn.execute(statement)
        # Warm-up round (-1): connections, prepared statements, the staging table.
        for round_ in range(-1, rounds):
            books = book_tickers(rows, round_ + 1)
            fresh = trades(rows, round_ + 1)
            book_rows = [tuple(getattr(b, c) for c in BOOK_TICKER_COLUMNS) for b in books]
            trade_rows = [
                tuple(t.stored_symbol if c == "symbol" else getattr(t, c) for c in TRADE_COLUMNS)
                for t in fresh
            ]

            samples = {
                "book floor": await rate(
                    copy_floor(conn, "floor_book_tickers", book_rows, BOOK_TICKER_COLUMNS, size),
                    rows,
                ),
                "book indexed": await rate(
                    copy_floor(conn, "indexed_book_tickers", book_rows, BOOK_TICKER_COLUMNS, size),
                    rows,
                ),
                "book writer": await rate(write_all(book_writer, books, size), rows),
                "trade floor": await rate(
                    copy_floor(conn, "floor_trades", trade_rows, TRADE_COLUMNS, size), rows
                ),
                "trade indexed": await rate(
                    copy_floor(conn, "indexed_trades", trade_rows, TRADE_COLUMNS, size), rows
                ),
                "trade writer": await rate(write_all(trade_writer, fresh, size), rows),
                # A reconnect storm: the same trades replayed, every one dropped.
                "trade writer, replays": await rate(write_all(trade_writer, fresh, size), rows),
            }
            if round_ >= 0:
                for name, value in samples.items():
                    results[name].append(value)
        stored = await conn.fetchval("SELECT count(*) FROM trades")
        assert stored == rows * (rounds + 1), f"dedup lost or doubled trades: {stored}"
    finally:
        await book_writer.close()
        await trade_writer.close()
        await conn.close()
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=50_000, help="rows per round and kind")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    admin = admin_config()
    db = await create_database(admin)
    try:
        report = await ensure_schema(db, features={"trade_collection": True}, say=quiet)
        if report.background is not None:
            await report.background.wait()  # measure the finished schema, not a backfill
        results = await measure(db, args.rows, args.rounds, args.batch_size)
    finally:
        await drop_database(admin, db)
    med = {name: statistics.median(values) for name, values in results.items()}
    print(
        f"server {admin.display}; {args.rows} rows x {args.rounds} rounds per line, "
        f"batches of {args.batch_size}; median rows/s, ratio = writer / floor"
    )
    for kind in ("book", "trade"):
        floor = med[kind + " floor"]
        lines = [
            (f"{kind} floor: COPY, table without index", med[kind + " floor"]),
            (f"{kind} COPY into the migrated table's indexes", med[kind + " indexed"]),
            (f"{kind} writer: exactly once" + (", dedup" if kind == "trade" else ""),
             med[kind + " writer"]),
        ]  # fmt: skip
        if kind == "trade":
            lines.append(("trade writer: replay of stored trades", med["trade writer, replays"]))
        for label, value in lines:
            print(f"{label:48s} {value:>9,.0f} rows/s  {value / floor:5.2f}x of floor")


if __name__ == "__main__":
    asyncio.run(main())
