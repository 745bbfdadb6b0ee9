"""Many migrators at once: each migration is applied exactly once, nobody deadlocks.

The migration sets here are deliberately not idempotent (plain CREATE TABLE,
INSERT of a counter row): a migration run twice would fail or count twice.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from cex_arbitrage.config import MigrationSettings
from cex_arbitrage.db.migrations.run_migrations import MigrationRunner, RunResult
from cex_arbitrage.db.migrator.source import DirectorySource
from cex_arbitrage.db.structs import DatabaseConfig
from cex_arbitrage.errors import ExitCode
from tests.support.cli import write_migrations
from tests.support.paths import shipped_versions

WORKERS = 16

# Each migration bumps a counter; a second application would fail on CREATE
# TABLE or leave a count above one.
COUNTED = {
    "001_counter.sql": """
CREATE TABLE applied_count (version TEXT PRIMARY KEY, times INTEGER NOT NULL);
INSERT INTO applied_count VALUES ('001', 1);
""",
    "002_slow_widgets.sql": """
CREATE TABLE widgets (id INTEGER PRIMARY KEY);
SELECT pg_sleep(0.3);  -- widen the window in which the others wait
INSERT INTO applied_count VALUES ('002', 1)
    ON CONFLICT (version) DO UPDATE SET times = applied_count.times + 1;
""",
    "003_stepwise.sql": """-- migrate:depends 002
-- migrate:step add_column
ALTER TABLE widgets ADD COLUMN name TEXT;
-- migrate:step count transaction:false
INSERT INTO applied_count VALUES ('003', 1)
    ON CONFLICT (version) DO UPDATE SET times = applied_count.times + 1;
""",
}


async def recorded(db: DatabaseConfig) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(**db.connect_kwargs())
    try:
        return list(
            await conn.fetch(
                "SELECT version, state, count(*) OVER (PARTITION BY version) AS n "
                "FROM migration_history WHERE version ~ '^[0-9]+$' ORDER BY version"
            )
        )
    finally:
        await conn.close()


async def counts(db: DatabaseConfig) -> dict[str, int]:
    conn = await asyncpg.connect(**db.connect_kwargs())
    try:
        rows = await conn.fetch("SELECT version, times FROM applied_count ORDER BY version")
        return {r["version"]: r["times"] for r in rows}
    finally:
        await conn.close()


def start_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cex_arbitrage.db.migrate", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_all(procs: list[subprocess.Popen[str]], timeout: float) -> list[tuple[int, str, str]]:
    deadline = time.monotonic() + timeout
    results: list[tuple[int, str, str]] = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


def applied_versions(stdout: str) -> list[str]:
    """Versions a CLI run says it applied: `...: applied 000 (12 ms), 001 (3 ms); total ...`."""
    match = re.search(r": applied (.*); total \d+ ms", stdout)
    if match is None:
        return []
    return re.findall(r"(\d{3,}) \(\d+ ms\)", match.group(1))


def assert_each_applied_once(applied_lists: list[list[str]], expected: list[str]) -> None:
    everything = [v for applied in applied_lists for v in applied]
    assert sorted(everything) == sorted(expected), applied_lists


async def test_sixteen_cli_processes_at_once_apply_each_migration_exactly_once(
    db: DatabaseConfig, cli_env: dict[str, str], tmp_path: Path
) -> None:
    migrations = write_migrations(tmp_path / "migrations", COUNTED)
    procs = [
        start_cli(["--migrations-dir", str(migrations)], cli_env, tmp_path) for _ in range(WORKERS)
    ]

    results = run_all(procs, timeout=90)

    for code, out, err in results:
        assert code == ExitCode.OK, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert_each_applied_once(
        [applied_versions(out) for _, out, _ in results], ["000", "001", "002", "003"]
    )
    nothing = [out for _, out, _ in results if "nothing to apply" in out]
    assert len(nothing) >= WORKERS - 3  # the others found the work done once they had the lock
    rows = await recorded(db)
    assert [r["version"] for r in rows] == ["000", "001", "002", "003"]
    assert all(r["n"] == 1 and r["state"] == "applied" for r in rows), rows
    assert await counts(db) == {"001": 1, "002": 1, "003": 1}


async def test_eight_cli_processes_with_the_shipped_migrations_apply_each_once(
    db: DatabaseConfig, cli_env: dict[str, str], tmp_path: Path
) -> None:
    procs = [start_cli([], cli_env, tmp_path) for _ in range(WORKERS // 2)]

    results = run_all(procs, timeout=120)

    for code, out, err in results:
        assert code == ExitCode.OK, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    expected = shipped_versions()
    assert_each_applied_once([applied_versions(out) for _, out, _ in results], expected)
    rows = await recorded(db)
    assert [r["version"] for r in rows] == expected
    assert all(r["n"] == 1 for r in rows), rows
    assert all(r["state"] == "applied" for r in rows), rows  # the CLI finishes background work


async def test_sixteen_runners_in_one_process_apply_each_migration_exactly_once(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    source = DirectorySource(write_migrations(tmp_path / "migrations", COUNTED))
    messages: list[str] = []
    runners = [
        MigrationRunner(db, source=source, say=messages.append, program=f"runner-{i}")
        for i in range(WORKERS)
    ]

    results: list[RunResult] = await asyncio.wait_for(
        asyncio.gather(*(runner.migrate() for runner in runners)), timeout=60
    )

    assert_each_applied_once([r.applied for r in results], ["000", "001", "002", "003"])
    assert sum(1 for r in results if r.applied) == 1  # one runner did all of it
    assert any("waiting for the migration lock" in m for m in messages), messages
    rows = await recorded(db)
    assert [r["version"] for r in rows] == ["000", "001", "002", "003"]
    assert all(r["n"] == 1 and r["state"] == "applied" for r in rows), rows
    assert await counts(db) == {"001": 1, "002": 1, "003": 1}
    # Everyone agrees the schema is current afterwards.
    statuses = await runners[0].get_migration_status()
    assert [s.state for s in statuses] == ["applied"] * 4


async def test_run_migrations_api_from_many_engines_returns_true_for_all(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    source = DirectorySource(write_migrations(tmp_path / "migrations", COUNTED))
    runners = [MigrationRunner(db, source=source, say=lambda _m: None) for _ in range(8)]

    outcomes = await asyncio.wait_for(
        asyncio.gather(*(r.run_migrations(target_version="002") for r in runners)), timeout=60
    )

    assert outcomes == [True] * 8, [r.last_error for r in runners]
    rows = await recorded(db)
    assert [r["version"] for r in rows] == ["000", "001", "002"]
    assert await counts(db) == {"001": 1, "002": 1}


# The holder builds an index concurrently while the others wait for the lock.
# A waiter blocked inside pg_advisory_lock() would hold a snapshot that CREATE
# INDEX CONCURRENTLY waits for, and the holder would wait for the waiter
# forever; a polling waiter holds nothing between attempts.
CONCURRENT_INDEX = {
    "001_events.sql": """
CREATE TABLE events (id BIGINT PRIMARY KEY, kind TEXT NOT NULL, at TIMESTAMPTZ NOT NULL);
INSERT INTO events
SELECT g, 'k' || (g % 50), now() - make_interval(secs => g) FROM generate_series(1, 20000) g;
""",
    "002_events_index.sql": """
-- migrate:step pause
SELECT pg_sleep(0.5);  -- the waiters are polling for the lock by now
-- migrate:step build transaction:false
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_events_kind_at ON events (kind, at);
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_events_at ON events (at);
""",
}


async def test_waiting_runners_do_not_block_create_index_concurrently_in_the_holder(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    source = DirectorySource(write_migrations(tmp_path / "migrations", CONCURRENT_INDEX))
    messages: list[str] = []
    settings = MigrationSettings(lock_wait_timeout=60)
    runners = [
        MigrationRunner(db, source=source, settings=settings, say=messages.append) for _ in range(5)
    ]

    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(runner.migrate() for runner in runners)), timeout=45
        )
    except asyncio.TimeoutError:
        pytest.fail(
            "the lock holder's CREATE INDEX CONCURRENTLY did not finish within 45 s while "
            "4 runners waited for the lock: deadlock\n" + "\n".join(messages)
        )

    assert_each_applied_once([r.applied for r in results], ["000", "001", "002"])
    waiting = [m for m in messages if "waiting for the migration lock" in m]
    assert len(waiting) >= 4, messages  # they really were waiting while the index was built
    conn = await asyncpg.connect(**db.connect_kwargs())
    try:
        indexes = await conn.fetch(
            "SELECT c.relname, i.indisvalid FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = 'events'::regclass AND NOT i.indisprimary ORDER BY c.relname"
        )
        rows = await conn.fetch(
            "SELECT version, state FROM migration_history "
            "WHERE version ~ '^[0-9]+$' ORDER BY version"
        )
    finally:
        await conn.close()
    assert [(r["relname"], r["indisvalid"]) for r in indexes] == [
        ("idx_events_at", True),
        ("idx_events_kind_at", True),
    ]
    assert [(r["version"], r["state"]) for r in rows] == [
        ("000", "applied"),
        ("001", "applied"),
        ("002", "applied"),
    ]


async def test_cli_processes_waiting_for_the_lock_do_not_block_create_index_concurrently(
    db: DatabaseConfig, cli_env: dict[str, str], tmp_path: Path
) -> None:
    migrations = write_migrations(tmp_path / "migrations", CONCURRENT_INDEX)
    procs = [start_cli(["--migrations-dir", str(migrations)], cli_env, tmp_path) for _ in range(5)]

    try:
        results = run_all(procs, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("CLI runs deadlocked on CREATE INDEX CONCURRENTLY while others waited")

    for code, out, err in results:
        assert code == ExitCode.OK, f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert_each_applied_once(
        [applied_versions(out) for _, out, _ in results], ["000", "001", "002"]
    )
    rows = await recorded(db)
    assert [(r["version"], r["n"]) for r in rows] == [("000", 1), ("001", 1), ("002", 1)]
