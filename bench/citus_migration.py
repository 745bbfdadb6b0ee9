"""The whole migration set on a Citus coordinator while a collector writes (issue 11, part 3).

Not part of the test suite; the numbers go into docs/citus.md. Needs an
empty Citus-enabled database named by CEX_CITUS_DSN (citus-newdb.sh makes
one on every node), and no other distribution running on the cluster:

    CEX_CITUS_DSN=postgresql://USER:PASSWORD@COORDINATOR:5440/bench \\
        .venv/bin/python -m bench.citus_migration [--rows N] [--dsn SINGLE_NODE_ADMIN]

1. The floor, on a single-node server (--dsn, default as bench_migration_001)
   in the same run: the legacy table of N rows, then ONE plain UPDATE of
   every row with the split function (bench_migration_001's floor).
2. The same N legacy rows, local on the coordinator. The runner applies the
   foreground steps (as an engine's boot does), then a collector starts:
   the project's TradeWriter, 100 trades every 100 ms (1,000/s) over six
   bases, exactly as the engine writes. The runner then runs the background
   steps: 001's backfill and the rest on the local tables, then 007 moves
   the unsplittable rows aside, swaps the keys and distributes both tables
   with create_distributed_table_concurrently.

Printed: the writer's batch latency per step (bounds: 1 s during the two
distribute steps, 200 ms elsewhere), whether every trade sent is stored
exactly once, and 001's total time on the cluster against the single-node
floor.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import os
import time
from decimal import Decimal

from bench._common import admin_config, create_database, drop_database, percentile_ms
from bench._migration_001_load import (
    WRITER_BATCH,
    WRITER_RATE,
    Sample,
    StepTracker,
    connect,
    copy_database,
    fill_legacy,
    log,
    measure_floor,
)
from cex_arbitrage.collectors import Trade, TradeWriter, WriteResult
from cex_arbitrage.config import MigrationSettings, database_from_url
from cex_arbitrage.db.migrations import MigrationRunner
from cex_arbitrage.db.structs import DatabaseConfig

BASES = ("BTC", "ETH", "SOL", "XRP", "DOGE", "ADA")
DISTRIBUTE_STEPS = ("007 distribute_trades", "007 distribute_book_tickers")
BOUND_MS = {"distribute": 1000.0, "elsewhere": 200.0}


class Collector:
    """The engine's trade writer at a fixed rate; every batch's latency and step."""

    def __init__(self, db: DatabaseConfig, rate: int, steps: StepTracker) -> None:
        self.writer = TradeWriter(lambda: connect(db))
        self.interval = WRITER_BATCH / rate
        self.steps = steps
        self.samples: list[Sample] = []
        self.result = WriteResult()
        self.sent = 0
        self.stop = asyncio.Event()

    def _batch(self, ids: itertools.count[int]) -> list[Trade]:
        now = dt.datetime.now(dt.timezone.utc)
        return [
            Trade(
                timestamp=now,
                exchange="binance",
                symbol_base=BASES[i % len(BASES)],
                symbol_quote="USDT",
                price=Decimal(100 + i % 50),
                quantity=Decimal("0.25"),
                side="buy" if i % 2 else "sell",
                trade_id=f"live-{i}",
            )
            for i in itertools.islice(ids, WRITER_BATCH)
        ]

    async def run(self) -> None:
        ids = itertools.count()
        started = time.perf_counter()
        n = 0
        try:
            while not self.stop.is_set():
                delay = started + n * self.interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                step = self.steps.step
                t0 = time.perf_counter()
                self.result.add(await self.writer.write(self._batch(ids)))
                self.samples.append(Sample(t0 - started, time.perf_counter() - t0, "during", step))
                self.sent += WRITER_BATCH
                n += 1
        finally:
            await self.writer.close()


def report_writer(collector: Collector) -> bool:
    """Latency per step against its bound; True when every bound held."""
    by_step: dict[str, list[float]] = {}
    for sample in collector.samples:
        by_step.setdefault(sample.step, []).append(sample.latency)
    held = True
    print(f"writer: TradeWriter, {WRITER_BATCH} trades per batch, {collector.sent:,} trades sent")
    for step, latencies in by_step.items():
        kind = "distribute" if step in DISTRIBUTE_STEPS else "elsewhere"
        bound = BOUND_MS[kind]
        over = sum(1 for lat in latencies if lat * 1000 > bound)
        held = held and over == 0
        print(
            f"  {step:32} {len(latencies):5} batches  p50 {percentile_ms(latencies, 0.5):7.1f} ms"
            f"  p99 {percentile_ms(latencies, 0.99):7.1f} ms  max {max(latencies) * 1000:7.1f} ms"
            f"  >{bound:.0f} ms: {over}"
        )
    print(f"  retried batches (Citus switch-over): {collector.result.retries}")
    return held


async def run(args: argparse.Namespace) -> None:
    citus_dsn = args.citus_dsn or os.environ.get("CEX_CITUS_DSN")
    if not citus_dsn:
        raise SystemExit("set CEX_CITUS_DSN (or --citus-dsn) to an empty Citus database")
    citus = database_from_url(citus_dsn)
    admin = database_from_url(args.dsn) if args.dsn else admin_config()

    single = await create_database(admin, "cex_bench_citus_floor")
    try:
        log(f"floor: {args.rows:,} legacy rows on the single node {admin.display}")
        await fill_legacy(single, args.rows)
        floor_copy = await copy_database(admin, single, "floor")
        floor_s = await measure_floor(floor_copy)
        await drop_database(admin, floor_copy)
        log(f"floor: {floor_s:.1f}s")
    finally:
        await drop_database(admin, single)

    log(f"citus: {args.rows:,} legacy rows, local on the coordinator {citus.display}")
    await fill_legacy(citus, args.rows)
    steps = StepTracker(echo=args.verbose)
    settings = MigrationSettings(backfill_batch_size=args.batch_size)
    runner = MigrationRunner(citus, settings=settings, say=steps.say, verbose=True)
    started = time.perf_counter()
    await runner.migrate(background=False)  # the engine's boot: foreground only
    steps.step = "before the background"
    collector = Collector(citus, args.rate, steps)
    writing = asyncio.create_task(collector.run())
    try:
        await asyncio.sleep(args.idle)
        await runner.migrate()  # the background steps, 001's backfill to 007's distribution
        total_s = time.perf_counter() - started
        steps.step = "after"
        await asyncio.sleep(2)
    finally:
        collector.stop.set()
        await writing

    conn = await connect(citus)
    try:
        stored, distinct = await conn.fetchrow(
            "SELECT count(*), count(DISTINCT trade_id) FROM trades WHERE trade_id LIKE 'live-%'"
        )
        timings = {
            r["version"]: (r["execution_ms"], r["background_ms"], r["step_timings"])
            for r in await conn.fetch(
                "SELECT version, execution_ms, background_ms, step_timings "
                "FROM migration_history WHERE version IN ('001', '007')"
            )
        }
        tables = await conn.fetch(
            "SELECT table_name::text, citus_table_type, shard_count FROM citus_tables ORDER BY 1"
        )
    finally:
        await conn.close()

    print()
    print(f"legacy trades: {args.rows:,}; cluster {citus.display}")
    held = report_writer(collector)
    lost = collector.sent - stored
    print(
        f"trades sent {collector.sent:,}, stored {stored:,} ({distinct:,} distinct), "
        f"counted inserted {collector.result.inserted:,}: "
        f"{'none lost or doubled' if lost == 0 and distinct == stored else 'MISMATCH'}"
    )
    print("tables: " + ", ".join(f"{t} {kind} ({n} shards)" for t, kind, n in tables))
    fg, bg, step_ms = timings["001"]
    total_001 = (fg + (bg or 0)) / 1000
    print(f"001 on the cluster: foreground {fg} ms, background {bg} ms; steps (ms): {step_ms}")
    fg7, bg7, step_ms7 = timings["007"]
    print(f"007 on the cluster: foreground {fg7} ms, background {bg7} ms; steps (ms): {step_ms7}")
    print(f"001 total on the cluster {total_001:8.1f} s")
    print(f"single-node floor        {floor_s:8.1f} s (one plain UPDATE, same rows)")
    print(f"ratio 001/floor {total_001 / floor_s:.2f}x; whole run {total_s:.1f} s")
    print(
        f"writer bounds (1 s at the switch-over, 200 ms elsewhere): {'held' if held else 'MISSED'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="legacy rows (default 1M)")
    parser.add_argument("--citus-dsn", help="an empty Citus database (default: CEX_CITUS_DSN)")
    parser.add_argument("--dsn", help="single-node server for the floor (as bench_migration_001)")
    parser.add_argument("--batch-size", type=int, default=50_000, help="backfill_batch_size")
    parser.add_argument("--rate", type=int, default=WRITER_RATE, help="writer trades/s")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of writer first")
    parser.add_argument("--verbose", action="store_true", help="print the runner's progress")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
