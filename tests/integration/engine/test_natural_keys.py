"""Several engines on one feed store each fact once (issue 9 item 7, migration 005).

The natural keys (005's header): a book ticker is its exchange, pair,
timestamp and four values; a trade without an exchange trade id is its
exchange, raw symbol, timestamp, price, quantity and side. The writers store a key
once with or without 005's unique indexes, so these run both before 005
(`--target 004`) and after it, and while 005 runs under a live writer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from cex_arbitrage.collectors import (
    BookTicker,
    BookTickerWriter,
    Collector,
    ReplaySource,
    Trade,
    TradeWriter,
)
from cex_arbitrage.collectors.columns import BOOK_TICKER_COLUMNS
from cex_arbitrage.db.structs import DatabaseConfig
from tests.support.cli import run_cli_process
from tests.support.databases import pg_env
from tests.support.paths import REPO

SAMPLE = REPO / "cex_arbitrage" / "samples" / "replay.jsonl"
ENGINES = 16
BOOK_KEY = "exchange, symbol_base, symbol_quote, timestamp, bid_price, bid_qty, ask_price, ask_qty"
IDLESS_KEY = "exchange, symbol, timestamp, price, quantity, side"
INDEXES = ("uq_book_ticker_snapshots_natural_key", "uq_trades_natural_key")


def sample_facts() -> tuple[int, int, int]:
    """(book tickers, trades with an id, trades without) as distinct facts in the sample."""
    books: set[tuple[object, ...]] = set()
    with_id: set[tuple[object, ...]] = set()
    idless: set[tuple[object, ...]] = set()
    for line in SAMPLE.read_text().splitlines():
        data = json.loads(line)
        if data["type"] == "book_ticker":
            b = BookTicker.from_json(data)
            books.add((b.exchange, b.symbol_base, b.symbol_quote, b.timestamp, b.bid_price))
            continue
        t = Trade.from_json(data)
        if t.trade_id is None:
            idless.add((t.exchange, t.stored_symbol, t.timestamp, t.price, t.quantity, t.side))
        else:
            with_id.add((t.exchange, t.symbol_base, t.symbol_quote, t.trade_id, t.timestamp))
    return len(books), len(with_id), len(idless)


def migrate(db: DatabaseConfig, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_cli_process(list(args), pg_env(db), cwd, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


async def assert_each_fact_once(conn: asyncpg.Connection) -> None:
    books, with_id, idless = sample_facts()
    assert await conn.fetchval("SELECT count(*) FROM book_ticker_snapshots") == books
    assert (
        await conn.fetchval(f"SELECT count(DISTINCT ({BOOK_KEY})) FROM book_ticker_snapshots")
        == books
    )
    assert await conn.fetchval("SELECT count(*) FROM trades WHERE trade_id IS NOT NULL") == with_id
    assert await conn.fetchval("SELECT count(*) FROM trades WHERE trade_id IS NULL") == idless


@pytest.mark.parametrize("target", ["004", None], ids=["before-005", "after-005"])
async def test_sixteen_writers_replaying_one_sample_store_each_fact_once(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path, target: str | None
) -> None:
    """Before 005 no unique index holds book tickers or id-less trades: the writers' own
    path (a lock per feed, then only keys not stored) must do it alone."""
    migrate(db, tmp_path, *(["--target", target] if target else []))
    indexes = await conn.fetchval(
        "SELECT count(*) FROM pg_indexes WHERE indexname = ANY($1::text[])", list(INDEXES)
    )
    assert indexes == (0 if target else 2)

    async def one_engine(i: int) -> int:
        kwargs = db.connect_kwargs()
        books = BookTickerWriter(lambda: asyncpg.connect(**kwargs))
        trades = TradeWriter(lambda: asyncpg.connect(**kwargs))
        size = 5 + 3 * i  # batches cut the sample differently in each engine
        collectors = [
            Collector("book_tickers", [ReplaySource(SAMPLE, BookTicker)], books, batch_size=size),
            Collector("trades", [ReplaySource(SAMPLE, Trade)], trades, batch_size=size),
        ]
        try:
            await asyncio.gather(*(c.run() for c in collectors))
        finally:
            await books.close()
            await trades.close()
        return sum(c.stats.inserted for c in collectors)

    inserted = await asyncio.gather(*(one_engine(i) for i in range(ENGINES)))
    await assert_each_fact_once(conn)
    assert sum(inserted) == sum(sample_facts())


async def test_sixteen_engine_processes_replaying_the_sample_store_each_fact_once(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """The issue's reproduction: `python -m cex_arbitrage run --replay sample`, 16 at once,
    booting onto an empty database (one of them migrates, 005 included)."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "cex_arbitrage", "run", "--replay", "sample"],
            env=pg_env(db),
            cwd=str(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(ENGINES)
    ]
    try:
        outcomes = [p.communicate(timeout=300) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in processes] == [0] * ENGINES, outcomes[0][1]
    await assert_each_fact_once(conn)


# --------------------------------------------------------------------------
# 005 on tables holding duplicates, with a writer running throughout


@pytest.fixture(params=["plain", "timescaledb"])
def server(request: pytest.FixtureRequest) -> DatabaseConfig:
    config: DatabaseConfig = request.getfixturevalue("db" if request.param == "plain" else "ts_db")
    return config


T0 = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)


def book(i: int) -> BookTicker:
    return BookTicker(
        timestamp=T0 + dt.timedelta(milliseconds=i // 2),  # two states share each instant
        exchange=("MEXC", "GATEIO")[i % 2],
        symbol_base="BTC",
        symbol_quote="USDT",
        bid_price=Decimal(60000 + i % 7),
        bid_qty=Decimal(i % 5 + 1),
        ask_price=Decimal(60001 + i % 7),
        ask_qty=Decimal("0.5"),
    )


def idless_trade(i: int) -> Trade:
    return Trade(
        timestamp=T0 + dt.timedelta(milliseconds=i // 3),
        exchange="MEXC",
        symbol_base="ETH",
        symbol_quote="USDT",
        symbol="ETHUSDT",
        price=Decimal(3000 + i % 11),
        quantity=Decimal(i % 4 + 1),
        side=("buy", "sell")[i % 2],
    )


async def store_with_duplicates(conn: asyncpg.Connection, n: int) -> None:
    """n facts of each kind, each stored 1 to 3 times the way a pre-005 fleet left them."""
    rng = random.Random(5)
    book_rows: list[tuple[object, ...]] = []
    trade_rows: list[tuple[object, ...]] = []
    for i in range(n):
        b, t = book(i), idless_trade(i)
        book_rows += [
            (b.timestamp, b.exchange, "BTC", "USDT", b.bid_price, b.bid_qty, b.ask_price, b.ask_qty)
        ] * rng.randint(1, 3)
        trade_rows += [
            (t.timestamp, "MEXC", "ETHUSDT", "ETH", "USDT", t.price, t.quantity, t.side)
        ] * rng.randint(1, 3)
    rng.shuffle(book_rows)
    rng.shuffle(trade_rows)
    await conn.copy_records_to_table(
        "book_ticker_snapshots",
        records=book_rows,
        columns=list(BOOK_TICKER_COLUMNS),  # the writers' declaration, in its order
    )
    await conn.copy_records_to_table(
        "trades",
        records=trade_rows,
        columns=[
            "timestamp",
            "exchange",
            "symbol",
            "symbol_base",
            "symbol_quote",
            "price",
            "quantity",
            "side",
        ],
    )


async def live_writer(
    db: DatabaseConfig, n: int, stop: asyncio.Event, during: asyncio.Event
) -> tuple[int, int]:
    """New facts and replays of stored ones, batch after batch, until `stop`."""
    kwargs = db.connect_kwargs()
    books = BookTickerWriter(lambda: asyncpg.connect(**kwargs))
    trades = TradeWriter(lambda: asyncpg.connect(**kwargs))
    rng = random.Random(9)
    inserted = batches_during = 0
    i = n
    try:
        while not stop.is_set():
            replay = [rng.randrange(n) for _ in range(20)]
            fresh = list(range(i, i + 20))
            i += 20
            result = await books.write([book(k) for k in replay + fresh])
            result.add(await trades.write([idless_trade(k) for k in replay + fresh]))
            inserted += result.inserted
            batches_during += during.is_set()
            await asyncio.sleep(0.01)
    finally:
        await books.close()
        await trades.close()
    return inserted, batches_during


async def test_005_on_tables_with_duplicates_and_a_live_writer_loses_nothing(
    server: DatabaseConfig, tmp_path: Path
) -> None:
    db = server
    migrate(db, tmp_path, "--target", "004")
    conn = await asyncpg.connect(**db.connect_kwargs())
    try:
        hypertables = await conn.fetchval(
            "SELECT count(*) FILTER (WHERE cex_migration.is_hypertable(t::regclass)) "
            "FROM unnest(ARRAY['book_ticker_snapshots', 'trades']) AS t"
        )
        timescale = await conn.fetchval(
            "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"
        )
        assert hypertables == 2 * timescale  # hypertables where TimescaleDB is installed
        n = 3000
        await store_with_duplicates(conn, n)
        before = await conn.fetchval(
            "SELECT (SELECT count(*) FROM book_ticker_snapshots) + (SELECT count(*) FROM trades)"
        )
        config = tmp_path / "config.yaml"
        config.write_text("migrations:\n  backfill_batch_size: 200\n  backfill_sleep_ms: 20\n")
        stop, during = asyncio.Event(), asyncio.Event()
        writer = asyncio.create_task(live_writer(db, n, stop, during))
        await asyncio.sleep(0.3)
        during.set()
        cli = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cex_arbitrage.db.migrate",
            "--config",
            str(config),
            env=pg_env(db),
            cwd=str(tmp_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(cli.communicate(), 300)
        during.clear()
        await asyncio.sleep(0.3)  # and on after 005, against its indexes
        stop.set()
        inserted, batches_during = await writer
        assert cli.returncode == 0, err.decode()
        assert batches_during > 5, "the writer did not run while 005 did"

        after = await conn.fetchval(
            "SELECT (SELECT count(*) FROM book_ticker_snapshots) + (SELECT count(*) FROM trades)"
        )
        archived = await conn.fetchval(
            "SELECT (SELECT count(*) FROM book_ticker_snapshots_duplicates_removed) "
            "+ (SELECT count(*) FROM trades_duplicates_removed)"
        )
        assert archived > 0
        assert after + archived == before + inserted  # every row is somewhere, none twice
        for table, key in (("book_ticker_snapshots", BOOK_KEY), ("trades", IDLESS_KEY)):
            assert (
                await conn.fetchval(f"SELECT count(*) - count(DISTINCT ({key})) FROM {table}") == 0
            ), table
        # Every archived row names a stored row of the same fact.
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM book_ticker_snapshots_duplicates_removed a "
                "LEFT JOIN book_ticker_snapshots b ON b.id = a.kept_id AND "
                + " AND ".join(f'b."{c.strip()}" = a."{c.strip()}"' for c in BOOK_KEY.split(","))
                + " WHERE b.id IS NULL"
            )
            == 0
        )
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM trades_duplicates_removed a "
                "LEFT JOIN trades t ON t.id = a.kept_id AND "
                + " AND ".join(f't."{c.strip()}" = a."{c.strip()}"' for c in IDLESS_KEY.split(","))
                + " WHERE t.id IS NULL"
            )
            == 0
        )
        valid = await conn.fetch(
            "SELECT c.relname, i.indisvalid, i.indisunique FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = ANY($1::text[])",
            list(INDEXES),
        )
        assert sorted((r["relname"], r["indisvalid"], r["indisunique"]) for r in valid) == sorted(
            (name, True, True) for name in INDEXES
        )
        state = await conn.fetchval("SELECT state FROM migration_history WHERE version = '005'")
        assert state == "applied"
    finally:
        await conn.close()
    assert "duplicates moved" in (out + err).decode()


async def test_005_archive_killed_mid_way_resumes_and_loses_nothing(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    """The CLI and its session die while the archive is between batches; the re-run goes on
    from the checkpoint: every row once in the table or the archive, every move counted once."""
    migrate(db, tmp_path, "--target", "004")
    conn = await asyncpg.connect(**db.connect_kwargs())
    try:
        await store_with_duplicates(conn, 3000)
        before = await conn.fetchval(
            "SELECT (SELECT count(*) FROM book_ticker_snapshots) + (SELECT count(*) FROM trades)"
        )
        config = tmp_path / "config.yaml"
        config.write_text("migrations:\n  backfill_batch_size: 100\n  backfill_sleep_ms: 30\n")
        cli = subprocess.Popen(
            [sys.executable, "-m", "cex_arbitrage.db.migrate", "--config", str(config)],
            env=pg_env(db),
            cwd=str(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            for _ in range(600):
                position = await conn.fetchval(
                    "SELECT position::bigint FROM migration_progress "
                    "WHERE version = '005' AND task = 'archive_book_tickers'"
                )
                if position is not None and position > 1000:
                    break
                await asyncio.sleep(0.02)
            assert position is not None and position > 1000
            cli.kill()
            cli.communicate(timeout=30)
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            if cli.poll() is None:
                cli.kill()
        half = await conn.fetchrow(
            "SELECT done, position::bigint AS position FROM migration_progress "
            "WHERE version = '005' AND task = 'archive_book_tickers'"
        )
        assert not half["done"] and half["position"] > 0

        again = migrate(db, tmp_path, "--config", str(config))
        assert "resume" in again.stdout + again.stderr
        after = await conn.fetchval(
            "SELECT (SELECT count(*) FROM book_ticker_snapshots) + (SELECT count(*) FROM trades)"
        )
        counted = await conn.fetch(
            "SELECT task, (detail ->> 'duplicates_archived')::bigint AS n, done "
            "FROM migration_progress WHERE version = '005' ORDER BY task"
        )
        archived = {
            "archive_book_tickers": await conn.fetchval(
                "SELECT count(*) FROM book_ticker_snapshots_duplicates_removed"
            ),
            "archive_idless_trades": await conn.fetchval(
                "SELECT count(*) FROM trades_duplicates_removed"
            ),
        }
        assert {r["task"]: (r["n"], r["done"]) for r in counted} == {
            task: (n, True) for task, n in archived.items()
        }
        assert after + sum(archived.values()) == before
        for table, key in (("book_ticker_snapshots", BOOK_KEY), ("trades", IDLESS_KEY)):
            assert (
                await conn.fetchval(f"SELECT count(*) - count(DISTINCT ({key})) FROM {table}") == 0
            )
        assert (
            await conn.fetchval(
                "SELECT count(DISTINCT (" + BOOK_KEY + ")) FROM book_ticker_snapshots"
            )
            == 3000
        )
    finally:
        await conn.close()
