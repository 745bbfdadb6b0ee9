"""The collectors' writers on a real PostgreSQL: every batch lands exactly once.

Connections are killed the way production loses them (pg_terminate_backend
from another session), at chosen points of a batch and at random ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Generic, TypeVar

import asyncpg
import pytest

from cex_arbitrage.collectors import (
    BookTicker,
    BookTickerWriter,
    Collector,
    ReplaySource,
    Trade,
    TradeWriter,
    WriteError,
    WriteResult,
)
from cex_arbitrage.db.migrations import ensure_schema
from cex_arbitrage.db.structs import DatabaseConfig
from tests.support.paths import REPO

REPO = REPO
SAMPLE = REPO / "cex_arbitrage" / "samples" / "replay.jsonl"
WRITER_APP = "cex_test_writer"


@pytest.fixture
async def schema(db: DatabaseConfig) -> DatabaseConfig:
    """The test's database migrated by the shipped migrations, background work finished."""
    report = await ensure_schema(db, features={"trade_collection": True}, say=lambda _: None)
    if report.background is not None:
        await report.background.wait()
    return db


def writer_connect(db: DatabaseConfig) -> Callable[[], Awaitable[asyncpg.Connection]]:
    """A connect factory whose sessions the tests can find (and kill) by name."""
    kwargs = db.connect_kwargs()
    kwargs["server_settings"] = {"application_name": WRITER_APP}

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(**kwargs)

    return connect


@pytest.fixture
async def admin(schema: DatabaseConfig) -> AsyncIterator[asyncpg.Connection]:
    """A second session: to inspect, to hold locks, to kill the writer's backend."""
    conn = await asyncpg.connect(**schema.connect_kwargs())
    try:
        yield conn
    finally:
        await conn.close()


async def writer_pids(admin: asyncpg.Connection) -> list[int]:
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = "
        "current_database()",
        WRITER_APP,
    )
    return [r["pid"] for r in rows]


R = TypeVar("R", BookTicker, Trade)


class ListSource(Generic[R]):
    """An in-memory feed: yields its records, then ends (or idles until closed)."""

    def __init__(self, records: Sequence[R], *, stay_open: bool = False) -> None:
        self.records: list[R] = list(records)
        self.stay_open = stay_open
        self.closed = asyncio.Event()
        self.delivered = 0

    @property
    def name(self) -> str:
        return "list"

    async def stream(self) -> AsyncIterator[R]:
        for record in self.records:
            self.delivered += 1
            yield record
        if self.stay_open:
            await self.closed.wait()

    async def close(self) -> None:
        self.closed.set()


T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


def book_tickers(n: int, *, start: int = 0) -> list[BookTicker]:
    return [
        BookTicker(
            timestamp=T0 + dt.timedelta(milliseconds=i),
            exchange="MEXC" if i % 2 else "GATEIO",
            symbol_base=("BTC", "ETH", "SOL")[i % 3],
            symbol_quote="USDT",
            bid_price=Decimal("100.12345678") + i,
            bid_qty=Decimal("1.5"),
            ask_price=Decimal("100.22345678") + i,
            ask_qty=Decimal("2.25"),
        )
        for i in range(start, start + n)
    ]


def trades(n: int, *, start: int = 0) -> list[Trade]:
    return [
        Trade(
            timestamp=T0 + dt.timedelta(milliseconds=i),
            exchange="GATEIO",
            symbol_base="ETH",
            symbol_quote="USDT",
            symbol="ETH_USDT",
            price=Decimal("3000.5") + i,
            quantity=Decimal("0.01"),
            side="buy" if i % 2 else "sell",
            trade_id=str(i),
        )
        for i in range(start, start + n)
    ]


def sample_trades() -> tuple[int, int, set[tuple[str, str, str, str, dt.datetime]]]:
    """(trade lines, lines without trade_id, distinct dedup keys) of the bundled sample."""
    lines = no_id = 0
    keys: set[tuple[str, str, str, str, dt.datetime]] = set()
    for line in SAMPLE.read_text().splitlines():
        data = json.loads(line)
        if data["type"] != "trade":
            continue
        lines += 1
        trade = Trade.from_json(data)
        if trade.trade_id is None:
            no_id += 1
        else:
            keys.add(
                (
                    trade.exchange,
                    trade.symbol_base,
                    trade.symbol_quote,
                    trade.trade_id,
                    trade.timestamp,
                )
            )
    return lines, no_id, keys


async def test_replayed_trades_with_duplicates_land_once(
    schema: DatabaseConfig, admin: asyncpg.Connection
) -> None:
    lines, no_id, keys = sample_trades()
    assert lines > len(keys) + no_id, "the sample must contain duplicate trades"
    writer = TradeWriter(writer_connect(schema))
    try:
        # Small batches so that replays fall both inside one batch and across batches.
        for _ in range(2):  # the whole file replayed twice, as after a reconnect storm
            collector = Collector(
                "trades", [ReplaySource(SAMPLE, Trade)], writer, batch_size=37, flush_interval=5
            )
            await collector.run()
            assert collector.stats.received == lines
    finally:
        await writer.close()

    with_id = await admin.fetchval("SELECT count(*) FROM trades WHERE trade_id IS NOT NULL")
    assert with_id == len(keys)
    distinct = await admin.fetchval(
        "SELECT count(DISTINCT (exchange, symbol_base, symbol_quote, trade_id, timestamp)) "
        "FROM trades WHERE trade_id IS NOT NULL"
    )
    assert distinct == len(keys)
    # Trades without an id: their natural key (exchange, pair, time, price, quantity, side).
    assert await admin.fetchval("SELECT count(*) FROM trades WHERE trade_id IS NULL") == no_id
    row = await admin.fetchrow(
        "SELECT symbol, symbol_base, symbol_quote FROM trades WHERE exchange = 'GATEIO' LIMIT 1"
    )
    assert row is not None and row["symbol"] == f"{row['symbol_base']}_{row['symbol_quote']}"
    logged = await admin.fetchval(
        "SELECT sum(rows) FROM ingest_batch_log WHERE table_name = 'trades'"
    )
    assert logged == len(keys) + no_id


async def test_trade_without_raw_symbol_is_stored_as_base_slash_quote(
    schema: DatabaseConfig, admin: asyncpg.Connection
) -> None:
    writer = TradeWriter(writer_connect(schema))
    try:
        trade = dataclasses.replace(trades(1)[0], symbol=None, quote_quantity=Decimal("30.005"))
        result = await writer.write([trade, trade])
    finally:
        await writer.close()
    assert (result.rows, result.inserted) == (2, 1)
    row = await admin.fetchrow("SELECT symbol, quote_quantity, price FROM trades")
    assert row is not None
    assert (row["symbol"], row["quote_quantity"], row["price"]) == (
        "ETH/USDT",
        Decimal("30.005"),
        trade.price,
    )


async def test_connection_killed_mid_batch_loses_and_doubles_nothing(
    schema: DatabaseConfig, admin: asyncpg.Connection
) -> None:
    """The backend dies after the rows are inserted, before COMMIT: the batch is sent again."""
    writer = BookTickerWriter(writer_connect(schema), retry_delay=0.01)
    try:
        await writer.write(book_tickers(10))  # the writer's session exists and is warm
        # Hold the batch log so the writer's next transaction stops at its last
        # statement: its rows are in, its commit is not.
        async with admin.transaction():
            await admin.execute("LOCK TABLE ingest_batch_log IN EXCLUSIVE MODE")
            pending = asyncio.create_task(writer.write(book_tickers(500, start=10)))
            pid = await wait_for_lock_waiter(admin)
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        result = await asyncio.wait_for(pending, 30)
    finally:
        await writer.close()
    assert result.retries == 1 and result.recovered == 0
    assert await admin.fetchval("SELECT count(*) FROM book_ticker_snapshots") == 510
    assert (
        await admin.fetchval("SELECT count(DISTINCT timestamp) FROM book_ticker_snapshots") == 510
    )
    assert await admin.fetchval("SELECT count(*) FROM ingest_batch_log") == 2


async def wait_for_lock_waiter(admin: asyncpg.Connection) -> int:
    for _ in range(500):
        pid = await admin.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 "
            "AND wait_event_type = 'Lock' AND datname = current_database()",
            WRITER_APP,
        )
        if pid is not None:
            return int(pid)
        await asyncio.sleep(0.01)
    raise AssertionError("the writer never reached the batch log insert")


class AckLostWriter(TradeWriter):
    """Commits, then loses its connection before it can hear that it did."""

    def __init__(self, admin: asyncpg.Connection, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.admin = admin
        self.kills = 0

    async def _send(
        self, conn: asyncpg.Connection, batch_id: uuid.UUID, rows: list[tuple[object, ...]]
    ) -> int:
        inserted = await super()._send(conn, batch_id, rows)
        if self.kills == 0:
            self.kills += 1
            await self.admin.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
            await conn.fetchval("SELECT 1")  # the server is gone: raises like a lost ack would
        return inserted


async def test_batch_committed_before_the_connection_died_is_not_sent_again(
    schema: DatabaseConfig, admin: asyncpg.Connection
) -> None:
    writer = AckLostWriter(admin, writer_connect(schema), retry_delay=0.01)
    try:
        batch = trades(300)
        result = await writer.write(batch)
    finally:
        await writer.close()
    assert writer.kills == 1
    assert (result.retries, result.recovered, result.inserted) == (1, 1, 300)
    assert await admin.fetchval("SELECT count(*) FROM trades") == 300
    assert await admin.fetchval("SELECT count(*) FROM ingest_batch_log") == 1


async def test_connections_killed_at_random_lose_and_double_nothing(
    schema: DatabaseConfig, admin: asyncpg.Connection
) -> None:
    """Book tickers have no dedup key: any batch written twice would show in the count."""
    pool = await asyncpg.create_pool(
        **{**schema.connect_kwargs(), "server_settings": {"application_name": WRITER_APP}},
        min_size=1,
        max_size=2,
    )
    total = 30_000
    kills = 0
    writer = BookTickerWriter(pool, retry_delay=0.01, max_retries=20)
    collector = Collector("book_tickers", [ListSource(book_tickers(total))], writer, batch_size=500)
    try:
        run = asyncio.create_task(collector.run())
        rng = random.Random(7)
        while not run.done() and kills < 8:
            await asyncio.sleep(rng.uniform(0.005, 0.05))
            for pid in await writer_pids(admin):
                kills += bool(await admin.fetchval("SELECT pg_terminate_backend($1)", pid))
        await asyncio.wait_for(run, 120)
    finally:
        await pool.close()
    assert kills > 0
    assert collector.stats.retries > 0
    assert collector.stats.inserted == total
    assert await admin.fetchval("SELECT count(*) FROM book_ticker_snapshots") == total
    assert (
        await admin.fetchval("SELECT count(DISTINCT timestamp) FROM book_ticker_snapshots") == total
    )
    assert await admin.fetchval("SELECT sum(rows) FROM ingest_batch_log") == total


async def test_book_tickers_are_written_in_batches_of_batch_size(
    schema: DatabaseConfig, admin: asyncpg.Connection
) -> None:
    records = book_tickers(1050)
    writer = BookTickerWriter(writer_connect(schema))
    collector = Collector("book_tickers", [ListSource(records)], writer, batch_size=100)
    try:
        await collector.run()
    finally:
        await writer.close()
    sizes = [
        r["rows"]
        for r in await admin.fetch(
            "SELECT rows FROM ingest_batch_log WHERE table_name = 'book_ticker_snapshots' "
            "ORDER BY written_at, rows DESC"
        )
    ]
    assert sorted(sizes, reverse=True) == [100] * 10 + [50]
    assert collector.stats.batches == 11
    stored = await admin.fetch(
        "SELECT timestamp, exchange, symbol_base, symbol_quote, bid_price, bid_qty, "
        "ask_price, ask_qty FROM book_ticker_snapshots ORDER BY timestamp"
    )
    assert [BookTicker(**dict(r)) for r in stored] == records


async def test_a_partial_batch_is_flushed_after_flush_interval(
    schema: DatabaseConfig, admin: asyncpg.Connection
) -> None:
    source = ListSource(book_tickers(3), stay_open=True)
    writer = BookTickerWriter(writer_connect(schema))
    collector = Collector("book_tickers", [source], writer, batch_size=500, flush_interval=0.2)
    run = asyncio.create_task(collector.run())
    try:
        for _ in range(100):
            if await admin.fetchval("SELECT count(*) FROM book_ticker_snapshots") == 3:
                break
            await asyncio.sleep(0.05)
        assert await admin.fetchval("SELECT count(*) FROM book_ticker_snapshots") == 3
        assert collector.running
    finally:
        await collector.stop()
        await run
        await writer.close()


async def test_stop_flushes_what_is_buffered(
    schema: DatabaseConfig, admin: asyncpg.Connection
) -> None:
    source = ListSource(trades(250), stay_open=True)
    writer = TradeWriter(writer_connect(schema))
    # Neither the size nor the interval would flush these 250 in this test's lifetime.
    collector = Collector("trades", [source], writer, batch_size=10_000, flush_interval=3600)
    run = asyncio.create_task(collector.run())
    try:
        for _ in range(100):
            if source.delivered == 250:
                break
            await asyncio.sleep(0.01)
        assert source.delivered == 250
        assert await admin.fetchval("SELECT count(*) FROM trades") == 0
        await collector.stop()
        await asyncio.wait_for(run, 10)
    finally:
        await writer.close()
    assert not collector.running and source.closed.is_set()
    assert await admin.fetchval("SELECT count(*) FROM trades") == 250
    assert collector.stats.inserted == 250


async def test_a_record_the_database_refuses_is_dropped_alone(
    schema: DatabaseConfig, admin: asyncpg.Connection
) -> None:
    await admin.execute(
        "ALTER TABLE book_ticker_snapshots ADD CONSTRAINT book_not_crossed "
        "CHECK (bid_price <= ask_price)"
    )
    records = book_tickers(100)
    records[41] = dataclasses.replace(records[41], bid_price=records[41].ask_price + 1)
    writer = BookTickerWriter(writer_connect(schema))
    try:
        result = await writer.write(records)
    finally:
        await writer.close()
    assert (result.rows, result.inserted, result.rejected) == (100, 99, 1)
    assert await admin.fetchval("SELECT count(*) FROM book_ticker_snapshots") == 99
    assert (
        await admin.fetchval(
            "SELECT count(*) FROM book_ticker_snapshots WHERE timestamp = $1", records[41].timestamp
        )
        == 0
    )


async def test_writer_gives_up_after_max_retries(schema: DatabaseConfig) -> None:
    unreachable = dataclasses.replace(schema, port=free_port(), connect_timeout=1)
    writer = BookTickerWriter(
        lambda: asyncpg.connect(**unreachable.connect_kwargs()),
        max_retries=3,
        retry_delay=0.01,
        database=unreachable.display,
    )
    with pytest.raises(WriteError, match=r"after 4 attempts"):
        await writer.write(book_tickers(5))


async def test_write_result_of_an_empty_batch_is_empty(schema: DatabaseConfig) -> None:
    writer = TradeWriter(writer_connect(schema))
    assert await writer.write([]) == WriteResult()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
