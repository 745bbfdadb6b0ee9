"""CLI start-up benchmark: whole `python -m cex_arbitrage.db.migrate` processes.

Against a database at head, interleaved runs of: the floor, one `psql -X -c
'select 1'` process (start, connect, one query, exit); `status`; a no-op
`apply` (no argument); and `--help`, which touches no database. Target: the
no-op and `status` at most 3x the psql process. A second floor is what any
asyncpg client pays: a Python process that imports asyncpg, connects, runs
one query and exits; the ratio against it is this project's own start-up.

PYTHONDONTWRITEBYTECODE is dropped from the processes' environment, so the
uncounted first round leaves compiled bytecode behind as an operator's first
run (or an installed wheel) does; otherwise every run compiles the package.

    .venv/bin/python -m bench.bench_cli [--repeat N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time

from bench._common import admin_config, create_database, drop_database, median_ms, verdict
from cex_arbitrage.db.migrations import MigrationRunner
from cex_arbitrage.db.structs import DatabaseConfig

CLI = [sys.executable, "-m", "cex_arbitrage.db.migrate"]
# The least an asyncpg-based command can do: connect (PG* variables), one query.
ASYNCPG_FLOOR = """
import asyncio, asyncpg
async def main():
    conn = await asyncpg.connect()
    await conn.fetchval("select 1")
    await conn.close()
asyncio.run(main())
"""


def quiet(_message: str) -> None:
    """Benchmarks measure work, not printing."""


def environment(db: DatabaseConfig) -> dict[str, str]:
    """Reach exactly `db`: PG* variables only, no config file, no DATABASE_URL."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PG", "CEX_")) and k not in ("DATABASE_URL", "PYTHONDONTWRITEBYTECODE")
    }
    env.update(PGHOST=db.host, PGPORT=str(db.port), PGDATABASE=db.database, PGUSER=db.user)
    if db.password:
        env["PGPASSWORD"] = db.password
    return env


def commands(admin: DatabaseConfig) -> dict[str, list[str]]:
    psql = shutil.which("psql")
    if psql is None:
        raise SystemExit("psql is not on PATH: it is the floor of this benchmark")
    return {
        "psql -c 'select 1'": [
            psql,
            "-X",
            "-q",
            "-h",
            admin.host,
            "-p",
            str(admin.port),
            "-U",
            admin.user,
            "-d",
            admin.database,
            "-c",
            "select 1",
        ],
        "python + asyncpg select 1": [sys.executable, "-c", ASYNCPG_FLOOR],
        "migrate (no-op apply)": CLI,
        "migrate status": [*CLI, "status"],
        "migrate --help": [*CLI, "--help"],
    }


def measure(
    cmds: dict[str, list[str]], env: dict[str, str], cwd: str, repeat: int
) -> dict[str, list[float]]:
    """Interleaved: each round runs every command once, so drift hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in cmds}
    for round_ in range(repeat + 1):
        for name, argv in cmds.items():
            start = time.perf_counter()
            done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=False)
            elapsed = time.perf_counter() - start
            if done.returncode != 0:
                raise SystemExit(f"{name} exited {done.returncode}: {done.stderr.decode()}")
            if round_:  # the first round warms caches and is not counted
                samples[name].append(elapsed)
    return samples


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    admin = admin_config()
    db = await create_database(admin)
    try:
        await MigrationRunner(db, say=quiet).migrate()  # the shipped set, all features
        with tempfile.TemporaryDirectory() as cwd:  # no ./config.yaml to pick up
            env = environment(db)
            samples = measure(commands(admin), env, cwd, args.repeat)
    finally:
        await drop_database(admin, db)
    medians = {name: median_ms(s) for name, s in samples.items()}
    (floor_name, floor), (asyncpg_name, asyncpg_floor) = list(medians.items())[:2]
    print(f"server {admin.display}, {args.repeat} interleaved runs each (whole processes)")
    print(f"{floor_name:<26} median {floor:7.1f} ms  (floor)")
    print(f"{asyncpg_name:<26} median {asyncpg_floor:7.1f} ms  ratio {asyncpg_floor / floor:5.2f}x "
          "(second floor: the same query from the least asyncpg script)")  # fmt: skip
    for name, ms in list(medians.items())[2:]:
        ratio = ms / floor
        bound = verdict(ratio, 3) if "help" not in name else "(information: no database)"
        print(
            f"{name:<26} median {ms:7.1f} ms  ratio {ratio:5.2f}x {bound}; "
            f"{ms / asyncpg_floor:4.2f}x the asyncpg script"
        )


if __name__ == "__main__":
    asyncio.run(main())
