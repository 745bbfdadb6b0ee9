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
import json
import statistics
import time

from bench._common import (
    admin_config,
    create_database,
    drop_database,
    verdict,
)
from bench._migration_001_load import (
    SLOW_MS,
    WRITER_BATCH,
    WRITER_RATE,
    LiveWriter,
    StepTracker,
    WaitSampler,
    burst_legacy,
    burst_trades,
    burst_writer,
    connect,
    copy_database,
    fill_legacy,
    log,
    measure_floor,
)
from cex_arbitrage.config import MigrationSettings, database_from_url
from cex_arbitrage.db.migrations import MigrationRunner
from cex_arbitrage.db.structs import DatabaseConfig


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

        floor_s = float("nan")
        if not args.skip_floor:
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
        sampler = WaitSampler(legacy, writer) if args.sample_waits else None
        sampling = asyncio.create_task(sampler.run()) if sampler else None
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
            if sampler is not None and sampling is not None:
                sampler.stop.set()
                await sampling
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
                if sampler is not None:
                    print(f"        {sampler.during(s)}")
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
        print(f"migration total (MigrationRunner.migrate, all) {total_s:8.1f} s")
        if args.skip_floor:
            print("floor not measured (--skip-floor): no ratio")
        else:
            ratio = total_s / floor_s
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
    parser.add_argument(
        "--skip-floor",
        action="store_true",
        help="latency-only run: no floor, no ratio (a 50M floor takes ~13 min)",
    )
    parser.add_argument(
        "--sample-waits",
        action="store_true",
        help="sample the writer's wait events (and, for a local server, the dirty page "
        "cache) every 20 ms, and print them for each slow batch",
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
