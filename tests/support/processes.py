"""Runners and engines as child processes, and what the database says about them.

For tests that start a runner, kill it or let it finish, and look at the locks,
the sessions and migration_history meanwhile.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from cex_arbitrage.db.migrator.lock import LOCK_NAMESPACE
from cex_arbitrage.db.structs import DatabaseConfig
from tests.support.databases import fetch, has_table
from tests.support.paths import REPO


def start(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """A child process whose output goes to a file (read while it runs)."""
    with log.open("wb") as out:
        return subprocess.Popen(args, env=env, cwd=str(cwd), stdout=out, stderr=subprocess.STDOUT)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cex_arbitrage.db.migrate", *args]


async def until(check: Callable[[], Awaitable[object]], what: str, timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


async def lock_holder(db: DatabaseConfig, purpose: int) -> int | None:
    rows = await fetch(
        db,
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND classid = $1::int::oid AND objid = $2::int::oid AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())",
        LOCK_NAMESPACE,
        purpose,
    )
    return rows[0]["pid"] if rows else None


async def running_query(db: DatabaseConfig, fragment: str) -> bool:
    rows = await fetch(
        db,
        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND state = 'active' AND query LIKE $1",
        f"%{fragment}%",
    )
    return bool(rows)


async def state_of(db: DatabaseConfig, version: str) -> str | None:
    if not await has_table(db, "public.migration_history"):
        return None
    rows = await fetch(db, "SELECT state FROM migration_history WHERE version = $1", version)
    return rows[0]["state"] if rows else None


def kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


def shipped_plus(directory: Path, extra: dict[str, str]) -> Path:
    """The package's migrations (the engine's tables), and a test's own after them."""
    shutil.copytree(REPO / "cex_arbitrage" / "db" / "migrations", directory)
    for name in ("__init__.py", "run_migrations.py", "released.sum"):
        (directory / name).unlink()
    shutil.rmtree(directory / "__pycache__", ignore_errors=True)
    for name, sql in extra.items():
        (directory / name).write_text(sql)
    return directory


def engine(env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    feed = cwd / "feed.jsonl"
    if not feed.exists():
        shutil.copy(REPO / "cex_arbitrage" / "samples" / "replay.jsonl", feed)
    args = [sys.executable, "-m", "cex_arbitrage", "run", "--replay", str(feed), "--follow"]
    return start(args, env, cwd, log)


def said(log: Path, text: str) -> str | None:
    """The first line of a child's log that contains `text`."""
    return next((line for line in log.read_text().splitlines() if text in line), None)
