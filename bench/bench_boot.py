"""Boot hook benchmark (issue: engine boot).

`ensure_schema()` when nothing is pending — every boot but the first —
against one bare `SELECT 1` round trip on the same connection. Target: at
most 3x. Also through a pool (acquire/release included), for information.

    .venv/bin/python -m bench.bench_boot [--repeat N]
"""

from __future__ import annotations

import argparse
import asyncio

import asyncpg

from bench._common import admin_config, create_database, drop_database, median_ms, timed, verdict
from cex_arbitrage.db.migrations import MigrationRunner, ensure_schema


def quiet(_message: str) -> None:
    """Benchmarks measure work, not printing."""


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=1000)
    args = parser.parse_args()
    admin = admin_config()
    db = await create_database(admin)
    try:
        await MigrationRunner(db, say=quiet).migrate()  # the shipped set, all features
        conn = await asyncpg.connect(**db.connect_kwargs())
        pool = await asyncpg.create_pool(**db.connect_kwargs(), min_size=1, max_size=1)
        try:
            for _ in range(50):
                await conn.fetchval("SELECT 1")
                await ensure_schema(conn, config=db, say=quiet)
                await ensure_schema(pool, config=db, say=quiet)
            floor = await timed(lambda: conn.fetchval("SELECT 1"), args.repeat)
            hook = await timed(lambda: ensure_schema(conn, config=db, say=quiet), args.repeat)
            pooled = await timed(lambda: ensure_schema(pool, config=db, say=quiet), args.repeat)
        finally:
            await pool.close()
            await conn.close()
    finally:
        await drop_database(admin, db)
    f, h, p = median_ms(floor), median_ms(hook), median_ms(pooled)
    print(f"server {admin.display}, {args.repeat} samples each")
    print(f"SELECT 1 round trip          median {f:7.3f} ms")
    print(
        f"ensure_schema(conn), no-op   median {h:7.3f} ms  ratio {h / f:5.2f}x {verdict(h / f, 3)}"
    )
    print(
        f"ensure_schema(pool), no-op   median {p:7.3f} ms  ratio {p / f:5.2f}x (information: "
        "includes pool acquire/release)"
    )


if __name__ == "__main__":
    asyncio.run(main())
