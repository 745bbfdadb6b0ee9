"""Migration 001 on a live, large legacy table (PRODUCT.md part 9).

A legacy `trades` table of N rows (default 5,000,000) while a collector
inserts 1,000 trades/s in batches of 100 on its own connection. Printed:

- the writer's batch latency (p50/p99/max) for 10 s before and during the
  migration (MigrationRunner.migrate(): foreground, then the background
  steps to completion, as the CLI runs it), and whether any batch waited
  more than 200 ms (target: none);
- the migration's total time against the floor measured in the same run on
  an identical copy of the legacy table: the columns added, then ONE plain
  `UPDATE trades SET symbol_base = ..., symbol_quote = ...` of every row with
  the same split function (target: total <= 1.5x floor);
- the writer path's insert throughput into `trades` before 001 (legacy
  schema, legacy insert without base/quote) and after it (TradeWriter: new
  indexes, dedup ON CONFLICT, batch log), a burst of --burst rows.

    .venv/bin/python -m bench.bench_migration_001 [--rows N] [--dsn DSN]
        [--batch-size B] [--burst R] [--keep]

50M rows (--rows 50000000) needs about 10x the disk of 5M (three copies of
the table exist at once: ~1.4 GB per 10M rows each).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import re
import statistics
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import asyncpg

from bench._common import (
    admin_config,
    create_database,
    drop_database,
    percentile_ms,
    verdict,
)
from cex_arbitrage.collectors import Trade, TradeWriter
from cex_arbitrage.config import MigrationSettings, database_from_url
from cex_arbitrage.db.migrations import MigrationRunner
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
            started = time.perf_counter()
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


async def run(args: argparse.Namespace) -> None:
    admin = database_from_url(args.dsn) if args.dsn else admin_config()
    legacy = await create_database(admin, "cex_bench_m001")
    copies: list[DatabaseConfig] = []
    try:
        log(f"filling {args.rows:,} legacy rows into {legacy.display}")
        started = time.perf_counter()
        await fill_legacy(legacy, args.rows)
        log(f"filled in {time.perf_counter() - started:.0f}s")

        # Throughput before 001, on a copy (the burst's rows must not reach the migrated table).
        before_db = await copy_database(admin, legacy, "before")
        copies.append(before_db)
        burst = burst_trades(args.burst + args.burst_batch, 0)
        before_rate = await burst_legacy(before_db, burst, args.burst_batch)
        await drop_database(admin, before_db)
        copies.remove(before_db)
        log(f"legacy insert before 001: {before_rate:,.0f} rows/s")

        floor_db = await copy_database(admin, legacy, "floor")
        copies.append(floor_db)
        log("floor: one plain UPDATE of every row on an identical copy")
        floor_s = await measure_floor(floor_db)
        await drop_database(admin, floor_db)
        copies.remove(floor_db)
        log(f"floor: {floor_s:.1f}s")

        conn = await connect(legacy)
        await conn.execute("CHECKPOINT")
        steps = StepTracker(echo=args.verbose)
        writer = LiveWriter(legacy, args.rate, steps)
        writing = asyncio.create_task(writer.run())
        try:
            writer.phase = "before"
            await asyncio.sleep(args.idle)
            writer.phase = "during"
            log(
                f"migrating with backfill_batch_size {args.batch_size}, parallel_sessions "
                f"{args.sessions} while the writer writes"
            )
            settings = MigrationSettings(
                backfill_batch_size=args.batch_size,
                backfill_sleep_ms=args.sleep_ms,
                parallel_sessions=args.sessions,
            )
            started = time.perf_counter()
            result = await MigrationRunner(
                legacy, settings=settings, say=steps.say, verbose=True
            ).migrate()
            total_s = time.perf_counter() - started
            writer.phase = "after"
            await asyncio.sleep(2)
        finally:
            writer.stop.set()
            await writing
        history = await conn.fetchrow(
            "SELECT execution_ms, background_ms, step_timings FROM migration_history "
            "WHERE version = '001'"
        )
        invalid = await conn.fetchval("SELECT count(*) FROM pg_index WHERE NOT indisvalid")
        state = await conn.fetchval("SELECT state FROM migration_history WHERE version = '001'")
        await conn.close()
        log(f"migration done in {total_s:.1f}s: applied {result.applied}, 001 {state}")

        after_trades = burst_trades(args.burst + args.burst_batch, 10**9)
        after_rate = await burst_writer(legacy, after_trades, args.burst_batch)
        legacy_after = await burst_legacy(
            legacy, burst_trades(args.burst, 2 * 10**9), args.burst_batch
        )

        # ---- report ------------------------------------------------------
        print()
        print(f"server {admin.display}; legacy trades: {args.rows:,} rows")
        print(f"writer: {WRITER_BATCH}-row INSERTs at {args.rate} rows/s on its own connection")
        for phase in ("before", "during"):
            n, p50, p99, mx, slow = writer.stats(phase)
            print(
                f"  {phase:6} migration: {n:5} batches  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  "
                f"max {mx:7.1f} ms  >{SLOW_MS:.0f} ms: {len(slow)}"
            )
            for s in slow[:10]:
                print(
                    f"      slow batch at {s.at:7.1f}s: {s.latency * 1000:.0f} ms "
                    f"(during step {s.step})"
                )
        by_step: dict[str, list[float]] = {}
        for sample in writer.samples:
            if sample.phase == "during":
                by_step.setdefault(sample.step, []).append(sample.latency * 1000)
        print(
            "  writer max latency per migration step (ms): "
            + ", ".join(f"{k} {max(v):.0f}" for k, v in by_step.items())
        )
        steps = json.loads(history["step_timings"]) if history else {}
        fg = history["execution_ms"] if history else None
        bg = history["background_ms"] if history else None
        print(f"migration 001: foreground {fg} ms, background {bg} ms; steps (ms): {steps}")
        ratio = total_s / floor_s
        print(f"migration total (MigrationRunner.migrate, all) {total_s:8.1f} s")
        print(f"floor (one plain UPDATE on a copy)             {floor_s:8.1f} s")
        print(f"ratio total/floor {ratio:.2f}x {verdict(ratio, 1.5)}")
        _, _, _, _, slow = writer.stats("during")
        print(
            f"writer batches over {SLOW_MS:.0f} ms during the migration: {len(slow)} "
            f"({'OK' if not slow else 'OVER'}, target: none)"
        )
        print(f"INVALID indexes after: {invalid}")
        print(
            f"insert throughput, bursts of {args.burst:,} rows in {args.burst_batch}-row batches:"
        )
        print(f"  before 001, legacy COPY (symbol only)      {before_rate:10,.0f} rows/s")
        print(
            f"  after 001, TradeWriter (ON CONFLICT, log)  {after_rate:10,.0f} rows/s  "
            f"ratio {after_rate / before_rate:.2f}x of before"
        )
        print(
            f"  after 001, legacy COPY (trigger fills)     {legacy_after:10,.0f} rows/s  "
            f"ratio {legacy_after / before_rate:.2f}x of before"
        )
        if writer.samples:
            during = [s.latency for s in writer.samples if s.phase == "during"]
            if during:
                print(f"  (writer mean during migration {statistics.mean(during) * 1000:.1f} ms)")
    finally:
        for copy in copies:
            await drop_database(admin, copy)
        if args.keep:
            print(f"kept {legacy.display}")
        else:
            await drop_database(admin, legacy)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=5_000_000, help="legacy rows (default 5M)")
    parser.add_argument("--dsn", help="server (default: CEX_BENCH_DSN, CEX_TEST_DSN, local)")
    parser.add_argument("--batch-size", type=int, default=50_000, help="backfill_batch_size")
    parser.add_argument("--sleep-ms", type=int, default=0, help="backfill_sleep_ms")
    parser.add_argument(
        "--sessions",
        type=int,
        default=MigrationSettings().parallel_sessions,
        help="parallel_sessions: sessions the backfill runs on (default: the config default)",
    )
    parser.add_argument("--rate", type=int, default=WRITER_RATE, help="writer rows/s")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of writer before")
    parser.add_argument("--burst", type=int, default=200_000, help="rows per throughput burst")
    parser.add_argument("--burst-batch", type=int, default=1000, help="rows per burst batch")
    parser.add_argument("--keep", action="store_true", help="keep the migrated database")
    parser.add_argument("--verbose", action="store_true", help="print the runner's progress")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
