"""Runner benchmarks (issue: runner/CLI).

1. No-op run (`MigrationRunner.migrate`), nothing pending, in-process, against one bare `SELECT 1`
   round trip on the same connection. Target: at most 3x.
2. Applying 100 generated small migrations with the runner, against
   `psql -X -q -1 -f` of the same SQL on a fresh database. Target: at most 1.2x.

    .venv/bin/python -m bench.bench_runner [--repeat N]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
import time
from pathlib import Path

import asyncpg

from bench._common import admin_config, create_database, drop_database, median_ms, timed, verdict
from cex_arbitrage.db.migrations import DirectorySource, MigrationRunner
from cex_arbitrage.db.structs import DatabaseConfig

INFRA = Path(__file__).resolve().parent.parent / "cex_arbitrage/db/migrations"
INFRA_FILE = INFRA / "000_create_migration_infrastructure.sql"


def quiet(_message: str) -> None:
    """Benchmarks measure work, not printing."""


def generate(directory: Path, count: int) -> str:
    """`count` small migrations (a table, an index, a row each); returns their SQL joined."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / INFRA_FILE.name).write_text(INFRA_FILE.read_text())
    parts = [INFRA_FILE.read_text().split("-- migrate:psql-only")[0]]
    for i in range(1, count + 1):
        sql = (
            f"CREATE TABLE bench_t{i} (id bigserial PRIMARY KEY, v text NOT NULL, "
            f"created_at timestamptz NOT NULL DEFAULT now());\n"
            f"CREATE INDEX bench_t{i}_v ON bench_t{i} (v);\n"
            f"INSERT INTO bench_t{i} (v) VALUES ('row {i}');\n"
        )
        (directory / f"{i:03d}_bench_table_{i}.sql").write_text(sql)
        parts.append(sql)
    return "\n".join(parts)


async def noop(admin: DatabaseConfig, repeat: int) -> None:
    db = await create_database(admin)
    try:
        runner = MigrationRunner(db, say=quiet)
        await runner.migrate()
        conn = await asyncpg.connect(**db.connect_kwargs())
        try:
            for _ in range(20):  # warm both paths (statement cache, parsed files)
                await conn.fetchval("SELECT 1")
                await runner.migrate(conn=conn)
            floor = await timed(lambda: conn.fetchval("SELECT 1"), repeat)
            api = await timed(lambda: runner.migrate(conn=conn), repeat)
        finally:
            await conn.close()
    finally:
        await drop_database(admin, db)
    f, a = median_ms(floor), median_ms(api)
    print(f"no-op   SELECT 1 round trip        median {f:8.3f} ms")
    print(
        f"no-op   runner.migrate(conn=conn)  median {a:8.3f} ms  ratio {a / f:5.2f}x "
        f"{verdict(a / f, 3.0)}"
    )


async def apply_many(admin: DatabaseConfig, count: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "migrations"
        sql_file = Path(tmp) / "all.sql"
        sql_file.write_text(generate(directory, count))
        runner_times: list[float] = []
        psql_times: list[float] = []
        for _ in range(repeat):
            db = await create_database(admin)
            try:
                start = time.perf_counter()
                subprocess.run(
                    [
                        "psql",
                        "-X",
                        "-q",
                        "-1",
                        "-v",
                        "ON_ERROR_STOP=1",
                        "-f",
                        str(sql_file),
                        "-h",
                        db.host,
                        "-p",
                        str(db.port),
                        "-U",
                        db.user,
                        "-d",
                        db.database,
                    ],
                    check=True,
                    capture_output=True,
                )
                psql_times.append(time.perf_counter() - start)
            finally:
                await drop_database(admin, db)
            db = await create_database(admin)
            try:
                runner = MigrationRunner(db, source=DirectorySource(directory), say=quiet)
                start = time.perf_counter()
                await runner.migrate()
                runner_times.append(time.perf_counter() - start)
            finally:
                await drop_database(admin, db)
    p, r = median_ms(psql_times), median_ms(runner_times)
    print(f"apply   psql -X -q -1 -f ({count} migrations)  median {p:8.1f} ms")
    print(
        f"apply   MigrationRunner.migrate()        median {r:8.1f} ms  ratio {r / p:5.2f}x "
        f"{verdict(r / p, 1.2)}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=500, help="no-op samples")
    parser.add_argument("--apply-repeat", type=int, default=7, help="apply runs of each kind")
    parser.add_argument("--count", type=int, default=100, help="generated migrations")
    args = parser.parse_args()
    admin = admin_config()
    print(f"server {admin.display}")
    await noop(admin, args.repeat)
    await apply_many(admin, args.count, args.apply_repeat)


if __name__ == "__main__":
    asyncio.run(main())
