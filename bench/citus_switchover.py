"""A writer's insert latency while a filled local `trades` becomes distributed.

Not part of the test suite; the numbers go into docs/citus.md. Needs a
Citus-enabled database named by CEX_CITUS_DSN, and NO other distribution
running on the cluster (a second create_distributed_table_concurrently waits
forever):

    CEX_CITUS_DSN=postgresql://USER:PASSWORD@COORDINATOR:5440/sw \\
        .venv/bin/python -m bench.citus_switchover [rows] [concurrently|blocking]

Builds `trades` in its post-001 shape with the primary key moved to
(id, "timestamp", symbol_base), fills it with `rows` rows (default 1M), then
runs create_distributed_table_concurrently (or the blocking
create_distributed_table) by symbol_base while a writer inserts 100 trades
every 100 ms (1,000/s) as the collectors do (one multi-row INSERT ... ON
CONFLICT DO NOTHING per batch; CEX_BENCH_GROUP=1: one INSERT per base, in
one transaction). Prints the batch latency before, during and
after, the slowest batch and when it happened, and checks no row was lost.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time

import asyncpg

SCHEMA = """
DROP TABLE IF EXISTS trades;
CREATE TABLE trades (
    id BIGSERIAL, "timestamp" TIMESTAMPTZ NOT NULL, exchange VARCHAR(50) NOT NULL,
    symbol VARCHAR(50) NOT NULL, price NUMERIC(20,8) NOT NULL, quantity NUMERIC(20,8) NOT NULL,
    side VARCHAR(4) NOT NULL, trade_id VARCHAR(100), created_at TIMESTAMPTZ DEFAULT now(),
    symbol_base VARCHAR(20) NOT NULL, symbol_quote VARCHAR(20) NOT NULL,
    PRIMARY KEY (id, "timestamp", symbol_base));
CREATE UNIQUE INDEX uq_trades_dedup
    ON trades (exchange, symbol_base, symbol_quote, trade_id, "timestamp")
    WHERE trade_id IS NOT NULL;
"""
FILL = """
INSERT INTO trades ("timestamp", exchange, symbol, price, quantity, side, trade_id,
                    symbol_base, symbol_quote)
SELECT now() - g * interval '1 ms', 'EX' || g % 5, b || 'USDT', 100 + g % 7, 1, 'buy',
       'f' || g, b, 'USDT'
FROM generate_series(1, $1) g,
     LATERAL (SELECT (ARRAY['BTC','ETH','SOL','XRP','DOGE','BNB','ALT1','ALT2','ALT3','ALT4'])
                     [1 + g % 10] AS b) s
"""
INSERT = """
INSERT INTO trades ("timestamp", exchange, symbol, price, quantity, side, trade_id,
                    symbol_base, symbol_quote)
SELECT now(), 'LIVE', b || 'USDT', 100, 1, 'sell', t, b, 'USDT'
FROM unnest($1::text[], $2::text[]) AS u(t, b)
ON CONFLICT (exchange, symbol_base, symbol_quote, trade_id, "timestamp")
    WHERE trade_id IS NOT NULL DO NOTHING
"""
BASES = ["BTC", "ETH", "SOL", "XRP", "DOGE", "BNB", "ALT1", "ALT2", "ALT3", "ALT4"]


async def insert_batch(conn: asyncpg.Connection, ids: list[str], bases: list[str]) -> None:
    """One batch in one transaction; CEX_BENCH_GROUP=1 sends one INSERT per base.

    Grouped, each INSERT names one distribution value, so Citus can route it
    to one shard instead of pulling the rows to the coordinator first.
    """
    if not os.environ.get("CEX_BENCH_GROUP"):
        await conn.execute(INSERT, ids, bases)
        return
    groups: dict[str, list[str]] = {}
    for trade_id, base in zip(ids, bases, strict=True):
        groups.setdefault(base, []).append(trade_id)
    async with conn.transaction():
        for base, group in groups.items():
            await conn.execute(INSERT, group, [base] * len(group))


async def writer(
    dsn: str, stop: asyncio.Event, out: list[tuple[float, float]], errors: list[tuple[float, str]]
) -> int:
    # CEX_BENCH_NO_PREPARE=1: no named prepared statements (asyncpg caches them by default).
    cache = 0 if os.environ.get("CEX_BENCH_NO_PREPARE") else 100
    conn = await asyncpg.connect(dsn, statement_cache_size=cache)
    sent = 0
    try:
        while not stop.is_set():
            ids = [f"live{sent + i}" for i in range(100)]
            start = time.perf_counter()
            try:
                await insert_batch(conn, ids, [BASES[(sent + i) % 10] for i in range(100)])
            except asyncpg.PostgresError as exc:
                errors.append((start, str(exc)))  # the batch is retried, as a collector would
                continue
            took = time.perf_counter() - start
            out.append((start, took))
            sent += 100
            await asyncio.sleep(max(0.0, 0.1 - took))
    finally:
        await conn.close()
    return sent


def summary(label: str, lat: list[float]) -> str:
    if not lat:
        return f"{label}: no batch"
    return (
        f"{label}: {len(lat)} batches, p50 {statistics.median(lat) * 1000:.0f} ms, "
        f"max {max(lat) * 1000:.0f} ms"
    )


async def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    mode = sys.argv[2] if len(sys.argv) > 2 else "concurrently"
    dsn = os.environ["CEX_CITUS_DSN"]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SCHEMA)
        await conn.execute(FILL, rows)
        await conn.execute("ANALYZE trades")
        stop = asyncio.Event()
        lat: list[tuple[float, float]] = []
        errors: list[tuple[float, str]] = []
        task = asyncio.create_task(writer(dsn, stop, lat, errors))
        await asyncio.sleep(3)
        fn = (
            "create_distributed_table_concurrently"
            if mode == "concurrently"
            else "create_distributed_table"
        )
        t0 = time.perf_counter()
        await conn.execute(f"SELECT {fn}('trades', 'symbol_base')")
        t1 = time.perf_counter()
        await asyncio.sleep(3)
        stop.set()
        sent = await task
        before = [d for s, d in lat if s + d < t0]
        during = [d for s, d in lat if s + d >= t0 and s <= t1]
        after = [d for s, d in lat if s > t1]
        worst_start, worst = max(lat, key=lambda x: x[1])
        print(f"{fn} of {rows} rows took {t1 - t0:.1f} s")
        for label, part in (("before", before), ("during", during), ("after", after)):
            print("  " + summary(label, part))
        print(
            f"  slowest batch {worst * 1000:.0f} ms, "
            f"began {worst_start - t0:+.1f} s from the call's start"
        )
        for when, text in errors[:3]:
            print(f"  writer error {when - t0:+.1f} s from the call's start: {text}")
        print(f"  writer errors: {len(errors)}")
        live = await conn.fetchval("SELECT count(*) FROM trades WHERE exchange = 'LIVE'")
        total = await conn.fetchval("SELECT count(*) FROM trades")
        dist = await conn.fetchval(
            "SELECT count(*) FROM citus_tables WHERE table_name = 'trades'::regclass"
        )
        print(
            f"  writer sent {sent}, table has {live} of them ({total} rows in all); "
            f"distributed: {dist == 1}"
        )
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
