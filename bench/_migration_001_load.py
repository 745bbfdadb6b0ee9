"""The load bench_migration_001 puts on a server: the legacy table, its floor, the writer.

A legacy `trades` table filled by the server itself, the one-UPDATE floor on
a copy of it, the collector that writes while 001 runs (with its latency per
migration step), and insert bursts for throughput before and after.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import re
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import asyncpg

from bench._common import (
    percentile_ms,
)
from cex_arbitrage.collectors import Trade, TradeWriter
from cex_arbitrage.db.migrator.source import PackageSource, load_catalog
from cex_arbitrage.db.migrator.split import split_statements
from cex_arbitrage.db.structs import DatabaseConfig

LEGACY_SCHEMA = Path(__file__).resolve().parent.parent / "tests" / "support" / "legacy-schema.sql"
WRITER_BATCH = 100
WRITER_RATE = 1000  # rows/s
SLOW_MS = 200.0

# The legacy table, made by the server: trade number k is row g, except that
# 1 in 100 rows replays the trade 40 rows earlier (a reconnect: same exchange,
# symbol, trade_id and time); 1 in 100 has no trade_id, 1 in 100 a symbol no
# rule splits. Spellings as the exchanges write them.
_FILL = """
INSERT INTO trades (timestamp, exchange, symbol, price, quantity, side, trade_id)
SELECT timestamptz '2024-01-01' + k * interval '1 second' * ($2::float8 * 86400 / $1),
       (ARRAY['MEXC','GATEIO','OKX','KRAKEN'])[1 + (k / 1000) % 4],
       CASE WHEN k % 100 = 7 THEN 'XYZ'
            ELSE (ARRAY['BTCUSDT','BTC_USDT','BTC-USDT','BTC/USDT','ethbtc','SOL_USDC',
                        'bnbfdusd','ADA-EUR'])[1 + (k / 1000) % 8] END,
       1 + (k % 1000) / 10.0, 0.001 + (k % 97) / 100.0,
       CASE WHEN k % 2 = 0 THEN 'buy' ELSE 'sell' END,
       CASE WHEN k % 100 = 3 THEN NULL ELSE k::text END
FROM (SELECT CASE WHEN g % 100 = 50 THEN g - 40 ELSE g END AS k
      FROM generate_series(1, $1) AS g) AS s
"""

# The legacy collector's insert: symbol only, no base/quote.
_LEGACY_INSERT = """
INSERT INTO trades (timestamp, exchange, symbol, price, quantity, side, trade_id)
SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::numeric[], $5::numeric[],
                     $6::text[], $7::text[])
"""
_LEGACY_COLUMNS = ("timestamp", "exchange", "symbol", "price", "quantity", "side", "trade_id")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


async def connect(db: DatabaseConfig) -> asyncpg.Connection:
    return await asyncpg.connect(**db.connect_kwargs())


async def copy_database(
    admin: DatabaseConfig, template: DatabaseConfig, suffix: str
) -> DatabaseConfig:
    """A file copy of `template` (its table, indexes and statistics as they are)."""
    name = f"{template.database}_{suffix}"
    conn = await connect(admin)
    try:
        major = int(await conn.fetchval("SHOW server_version_num")) // 10000
        strategy = " STRATEGY FILE_COPY" if major >= 15 else ""
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template.database}"{strategy}')
    finally:
        await conn.close()
    return admin.with_database(name)


async def fill_legacy(db: DatabaseConfig, rows: int) -> None:
    conn = await connect(db)
    try:
        await conn.execute(LEGACY_SCHEMA.read_text())
        await conn.execute(_FILL, rows, 60)
        await conn.execute("VACUUM ANALYZE trades")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


def split_function_sql() -> str:
    """CREATE FUNCTION cex_split_symbol as the routine 001 calls ships it."""
    catalog = load_catalog(PackageSource("cex_arbitrage.db.migrations"))
    for routine in catalog.routines:
        for statement in split_statements(routine.sql):
            if "FUNCTION cex_split_symbol" in statement:
                return statement
    raise RuntimeError("no routine creates the cex_split_symbol function")


async def measure_floor(db: DatabaseConfig) -> float:
    """One plain UPDATE of every row on the legacy copy: the least the split can cost."""
    conn = await connect(db)
    try:
        await conn.execute(
            "ALTER TABLE trades ADD COLUMN symbol_base VARCHAR(20), "
            "ADD COLUMN symbol_quote VARCHAR(20)"
        )
        await conn.execute(split_function_sql())
        await conn.execute("CHECKPOINT")
        started = time.perf_counter()
        # The fastest form measured: one call of the function per row (calling
        # it once per column is ~25% slower; a self-join slower still).
        await conn.execute(
            "UPDATE trades SET (symbol_base, symbol_quote) = "
            "(SELECT p[1], p[2] FROM cex_split_symbol(symbol) AS p)"
        )
        return time.perf_counter() - started
    finally:
        await conn.close()


# ---------------------------------------------------------------------------
# The live writer.


@dataclasses.dataclass
class Sample:
    at: float  # seconds since the writer started
    latency: float  # seconds
    phase: str
    step: str  # the migration step running when the batch started


class StepTracker:
    """Which step of which migration runs now, from the runner's verbose lines."""

    _STARTS = re.compile(r": (\d{3})_\w+: step (\w+) starts$")

    def __init__(self, echo: bool) -> None:
        self.step = "-"
        self.echo = echo

    def say(self, message: str) -> None:
        match = self._STARTS.search(message)
        if match:
            self.step = f"{match[1]} {match[2]}"
        if self.echo:
            log(message)


class LiveWriter:
    """The legacy collector: 100-row INSERTs at a fixed rate, one transaction each.

    Legacy-style rows (symbol only) work on every schema the migration passes
    through: before 001, during it (the fill trigger appears in its
    foreground part), after it.
    """

    def __init__(self, db: DatabaseConfig, rate: int, steps: StepTracker) -> None:
        self.db = db
        self.steps = steps
        self.interval = WRITER_BATCH / rate
        self.phase = "idle"
        self.samples: list[Sample] = []
        self.stop = asyncio.Event()
        self.rows = 0
        self.pid: int | None = None  # the writer's backend, for WaitSampler
        self.connected = asyncio.Event()
        self.started = 0.0  # perf_counter when it started: Sample.at counts from here

    def _batch(self, n: int) -> list[list[object]]:
        now = dt.datetime.now(dt.timezone.utc)
        columns: list[list[object]] = [[] for _ in _LEGACY_COLUMNS]
        for i in range(WRITER_BATCH):
            row = (
                now + dt.timedelta(microseconds=i),
                "MEXC",
                ("BTCUSDT", "ETH_BTC", "sol-usdc")[i % 3],
                Decimal(100 + i % 50),
                Decimal("0.25"),
                "buy" if i % 2 else "sell",
                f"live-{n}-{i}",
            )
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        return columns

    async def run(self) -> None:
        conn = await connect(self.db)
        try:
            await conn.execute("SELECT 1")
            self.pid = conn.get_server_pid()
            started = self.started = time.perf_counter()
            self.connected.set()
            n = 0
            while not self.stop.is_set():
                due = started + n * self.interval
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                batch = self._batch(n)
                step = self.steps.step
                t0 = time.perf_counter()
                await conn.execute(_LEGACY_INSERT, *batch)
                t1 = time.perf_counter()
                self.samples.append(Sample(t0 - started, t1 - t0, self.phase, step))
                self.rows += WRITER_BATCH
                n += 1
        finally:
            await conn.close()

    def stats(self, phase: str) -> tuple[int, float, float, float, list[Sample]]:
        chosen = [s for s in self.samples if s.phase == phase]
        latencies = [s.latency for s in chosen]
        slow = [s for s in chosen if s.latency * 1000 > SLOW_MS]
        return (
            len(latencies),
            percentile_ms(latencies, 0.50),
            percentile_ms(latencies, 0.99),
            max(latencies, default=float("nan")) * 1000,
            slow,
        )


class WaitSampler:
    """What the writer's backend waits on, sampled every `every` seconds (--sample-waits).

    pg_stat_activity's wait_event of the writer's session while it is active,
    and (for a server on this machine) the kernel's dirty and writeback page
    cache from /proc/meminfo: a slow batch is then explained by a lock, a WAL
    flush, or the disk busy with something else.
    """

    def __init__(self, db: DatabaseConfig, writer: LiveWriter, every: float = 0.02) -> None:
        self.db, self.writer, self.every = db, writer, every
        self.events: list[tuple[float, str]] = []  # (seconds since the writer started, what)
        self.dirty: list[tuple[float, int, int]] = []  # (at, Dirty kB, Writeback kB)
        self.stop = asyncio.Event()

    async def run(self) -> None:
        await self.writer.connected.wait()
        conn = await connect(self.db)
        n = 0
        try:
            while not self.stop.is_set():
                row = await conn.fetchrow(
                    "SELECT wait_event_type, wait_event FROM pg_stat_activity "
                    "WHERE pid = $1 AND state = 'active'",
                    self.writer.pid,
                )
                at = time.perf_counter() - self.writer.started
                if row is not None and row["wait_event"] is not None:
                    self.events.append((at, f"{row['wait_event_type']}:{row['wait_event']}"))
                if n % 5 == 0:
                    self.dirty.append((at, *_dirty_kb()))
                n += 1
                await asyncio.sleep(self.every)
        finally:
            await conn.close()

    def during(self, sample: Sample) -> str:
        """The wait events seen during one batch, and the most dirty page cache then."""
        end = sample.at + sample.latency
        seen: dict[str, int] = {}
        for at, what in self.events:
            if sample.at <= at <= end:
                seen[what] = seen.get(what, 0) + 1
        dirty = [d for at, d, _ in self.dirty if sample.at - 1 <= at <= end]
        waits = ", ".join(f"{k} x{v}" for k, v in sorted(seen.items(), key=lambda kv: -kv[1]))
        most = max(dirty, default=0) // 1024
        return f"waits: {waits or 'none sampled'}; dirty page cache up to {most} MB"


def _dirty_kb() -> tuple[int, int]:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return (0, 0)
    values = dict(
        (line.split(":")[0], int(line.split()[1])) for line in text.splitlines() if line.split()
    )
    return (values.get("Dirty", 0), values.get("Writeback", 0))


# ---------------------------------------------------------------------------
# Insert throughput of the writer path, before and after 001.


def burst_trades(n: int, offset: int) -> list[Trade]:
    t0 = dt.datetime(2025, 6, 1, tzinfo=dt.timezone.utc)
    pairs = (("BTC", "USDT", "BTCUSDT"), ("ETH", "BTC", "ETH_BTC"), ("SOL", "USDC", "SOL-USDC"))
    out = []
    for i in range(n):
        base, quote, symbol = pairs[i % 3]
        out.append(
            Trade(
                timestamp=t0 + dt.timedelta(milliseconds=offset + i),
                exchange=("MEXC", "GATEIO")[i % 2],
                symbol_base=base,
                symbol_quote=quote,
                symbol=symbol,
                price=Decimal(1000 + i % 977),
                quantity=Decimal("0.015"),
                side="buy" if i % 3 else "sell",
                trade_id=f"burst-{offset}-{i}",
            )
        )
    return out


def legacy_rows(trades: Sequence[Trade]) -> list[tuple[object, ...]]:
    return [
        (t.timestamp, t.exchange, t.stored_symbol, t.price, t.quantity, t.side, t.trade_id)
        for t in trades
    ]


async def burst_legacy(db: DatabaseConfig, trades: Sequence[Trade], size: int) -> float:
    """The legacy collector's path: COPY of each batch (symbol only), one transaction each."""
    rows = legacy_rows(trades)
    conn = await connect(db)
    try:
        started = time.perf_counter()
        for start in range(0, len(rows), size):
            await conn.copy_records_to_table(
                "trades", records=rows[start : start + size], columns=_LEGACY_COLUMNS
            )
        return len(rows) / (time.perf_counter() - started)
    finally:
        await conn.close()


async def burst_writer(db: DatabaseConfig, trades: Sequence[Trade], size: int) -> float:
    """The new collector's path: TradeWriter (staging COPY, INSERT ... ON CONFLICT, batch log)."""
    writer = TradeWriter(lambda: connect(db), database=db.display)
    try:
        await writer.write(list(trades[:size]))  # connection and staging table, not timed
        started = time.perf_counter()
        for start in range(size, len(trades), size):
            await writer.write(list(trades[start : start + size]))
        return (len(trades) - size) / (time.perf_counter() - started)
    finally:
        await writer.close()


# ---------------------------------------------------------------------------
