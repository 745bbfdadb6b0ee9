"""kill -9 of the CLI at the worst moment of a `transaction:false` statement, then a re-run.

The worst moment: the server has finished the statement, the client has not
recorded it. The test gets there for real: it waits until the runner's
session runs the statement, stops the CLI process (SIGSTOP: the server goes
on), waits until the server reports the session idle (the statement is done,
its result unread), then SIGKILLs the process. The re-run must leave the
effect of the statement exactly once (docs/resume.md).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from cex_arbitrage.db.structs import DatabaseConfig
from tests.support.cli import run_cli_process, write_migrations
from tests.support.databases import fetch, pg_env

_ACTIVE = (
    "SELECT pid, wait_event_type FROM pg_stat_activity WHERE datname = current_database() "
    "AND pid <> pg_backend_pid() AND state = 'active' AND query LIKE $1"
)


def start_cli(directory: Path, db: DatabaseConfig, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cex_arbitrage.db.migrate", "--migrations-dir", str(directory)],
        env=pg_env(db),
        cwd=str(cwd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def session_running(
    db: DatabaseConfig, fragment: str, process: subprocess.Popen[str], *, waiting: bool = False
) -> int:
    """The pid of the session running a query with `fragment` (waiting for a lock, if asked)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        for row in await fetch(db, _ACTIVE, f"%{fragment}%"):
            if not waiting or row["wait_event_type"] == "Lock":
                return int(row["pid"])
        await asyncio.sleep(0.02)
    raise AssertionError(f"no session ran {fragment!r}")


async def wait_idle(db: DatabaseConfig, pid: int) -> str:
    """Until session `pid` has finished its statement; its state then."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = await fetch(db, "SELECT state FROM pg_stat_activity WHERE pid = $1", pid)
        if rows and rows[0]["state"] != "active":
            return str(rows[0]["state"])
        await asyncio.sleep(0.02)
    raise AssertionError(f"session {pid} never finished its statement")


async def kill_when_finished(
    db: DatabaseConfig, process: subprocess.Popen[str], pid: int, release: asyncpg.Connection | None
) -> None:
    """SIGSTOP the CLI, let the server finish (ending `release`'s hold), SIGKILL the CLI."""
    os.kill(process.pid, signal.SIGSTOP)
    if release is not None:
        await release.execute("COMMIT")
    state = await wait_idle(db, pid)
    assert state == "idle", state  # finished and committed; the client never read the result
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)
    deadline = time.monotonic() + 30
    while await fetch(db, "SELECT 1 FROM pg_stat_activity WHERE pid = $1", pid):
        assert time.monotonic() < deadline, "the killed client's session stayed"
        await asyncio.sleep(0.05)


@pytest.fixture
async def holder(db: DatabaseConfig) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(**db.connect_kwargs())
    try:
        yield conn
    finally:
        await conn.close()


async def history(db: DatabaseConfig, version: str) -> tuple[str, int, int]:
    rows = await fetch(
        db,
        "SELECT state, steps_done, statements_done FROM migration_history WHERE version = $1",
        version,
    )
    return rows[0]["state"], rows[0]["steps_done"], rows[0]["statements_done"]


INSERT_ONCE = """-- migrate:description an insert in a transaction:false step
-- migrate:step work transaction:false
CREATE TABLE IF NOT EXISTS facts (n int);
INSERT INTO facts SELECT 1 FROM pg_sleep(1.5) AS kill_me_here;
"""


async def test_a_statement_allowed_in_a_transaction_runs_once_with_its_record(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    """Sent with its progress record in one transaction: killed after it committed, the
    resume finds it recorded and does not insert again (before: two rows)."""
    d = write_migrations(tmp_path / "m", {"001_insert.sql": INSERT_ONCE})
    process = start_cli(d, db, tmp_path)
    try:
        pid = await session_running(db, "kill_me_here", process)
        await kill_when_finished(db, process, pid, None)
    finally:
        if process.poll() is None:
            process.kill()
    assert (await history(db, "001"))[2] == 2  # recorded with the insert, by the server

    again = run_cli_process(["--migrations-dir", str(d)], pg_env(db), tmp_path)
    assert again.returncode == 0, again.stderr
    assert [r["n"] for r in await fetch(db, "SELECT n FROM facts")] == [1]
    assert (await history(db, "001"))[0] == "applied"


TABLE = """-- migrate:description the table
CREATE TABLE big (a int);
INSERT INTO big SELECT g FROM generate_series(1, 1000) g;
CREATE INDEX big_b ON big (a);
"""
CREATE_INDEX = """-- migrate:description a concurrent index build without IF NOT EXISTS
-- migrate:step build transaction:false
CREATE INDEX CONCURRENTLY big_a ON big (a);
"""
DROP_INDEX = """-- migrate:description a concurrent index drop without IF EXISTS
-- migrate:step drop transaction:false
DROP INDEX CONCURRENTLY big_b;
"""


@pytest.mark.parametrize(
    ("sql", "fragment", "index", "valid_after", "said"),
    [
        (CREATE_INDEX, "CREATE INDEX CONCURRENTLY big_a", "big_a", [True], "exists and is valid"),
        (DROP_INDEX, "DROP INDEX CONCURRENTLY big_b", "big_b", [], "is already gone"),
    ],
    ids=["create-index-concurrently", "drop-index-concurrently"],
)
async def test_a_finished_concurrent_index_command_is_recorded_on_resume_not_run_again(
    db: DatabaseConfig,
    tmp_path: Path,
    holder: asyncpg.Connection,
    sql: str,
    fragment: str,
    index: str,
    valid_after: list[bool],
    said: str,
) -> None:
    """Run twice they fail ("already exists" / "does not exist"): the resume reads the catalog."""
    d = write_migrations(tmp_path / "m", {"001_table.sql": TABLE, "002_index.sql": sql})
    first = run_cli_process(["--migrations-dir", str(d), "--target", "001"], pg_env(db), tmp_path)
    assert first.returncode == 0, first.stderr
    # The concurrent command waits for this transaction on the table: the test sees it
    # waiting, stops the CLI, and only then lets the server finish the command.
    await holder.execute("BEGIN; LOCK TABLE big IN ROW EXCLUSIVE MODE")
    process = start_cli(d, db, tmp_path)
    try:
        pid = await session_running(db, fragment, process, waiting=True)
        await kill_when_finished(db, process, pid, holder)
    finally:
        if process.poll() is None:
            process.kill()
    valid = (
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = $1"
    )
    assert [r["indisvalid"] for r in await fetch(db, valid, index)] == valid_after
    assert (await history(db, "002"))[1:] == (0, 0)  # the client never recorded it

    again = run_cli_process(["--migrations-dir", str(d)], pg_env(db), tmp_path)
    assert again.returncode == 0, again.stderr
    assert said in again.stdout + again.stderr
    assert "recorded as done" in again.stdout + again.stderr
    assert [r["indisvalid"] for r in await fetch(db, valid, index)] == valid_after
    assert await history(db, "002") == ("applied", 1, 0)


RESUMABLE_CALL = """-- migrate:description a resumable procedure CALLed in a transaction:false step
-- migrate:step code
CREATE TABLE items (n int PRIMARY KEY, done boolean NOT NULL DEFAULT false);
INSERT INTO items SELECT g FROM generate_series(1, 3) g;
CREATE TABLE effects (n int);
CREATE PROCEDURE work_items() LANGUAGE plpgsql AS $$
DECLARE
    item int;
BEGIN
    LOOP
        SELECT n INTO item FROM items WHERE NOT done ORDER BY n LIMIT 1 FOR UPDATE SKIP LOCKED;
        EXIT WHEN item IS NULL;
        INSERT INTO effects VALUES (item);          -- the work and its checkpoint
        UPDATE items SET done = true WHERE n = item; -- commit together
        COMMIT;
    END LOOP;
    PERFORM pg_sleep(1.5);
END
$$;
-- migrate:step work transaction:false
CALL work_items();
"""


async def test_a_resumable_procedure_called_again_does_its_work_once(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    """CALL may COMMIT, so it cannot go in a transaction with its record: it runs again on
    resume, and a procedure that checkpoints each item with the item finds nothing left."""
    d = write_migrations(tmp_path / "m", {"001_call.sql": RESUMABLE_CALL})
    process = start_cli(d, db, tmp_path)
    try:
        pid = await session_running(db, "CALL work_items()", process)
        await kill_when_finished(db, process, pid, None)
    finally:
        if process.poll() is None:
            process.kill()
    assert (await history(db, "001"))[2] == 0

    again = run_cli_process(["--migrations-dir", str(d)], pg_env(db), tmp_path)
    assert again.returncode == 0, again.stderr
    assert [r["n"] for r in await fetch(db, "SELECT n FROM effects ORDER BY n")] == [1, 2, 3]
    assert (await history(db, "001"))[0] == "applied"


DETACH_CONCURRENTLY = """-- migrate:description refused in a block, not in the runner's list
-- migrate:step table
CREATE TABLE parted (a int) PARTITION BY RANGE (a);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10);
-- migrate:step detach transaction:false
ALTER TABLE parted DETACH PARTITION parted_1 CONCURRENTLY;
"""


async def test_a_statement_the_server_refuses_in_a_block_is_sent_alone(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    d = write_migrations(tmp_path / "m", {"001_detach.sql": DETACH_CONCURRENTLY})
    result = run_cli_process(["--migrations-dir", str(d)], pg_env(db), tmp_path)
    assert result.returncode == 0, result.stderr
    rows = await fetch(db, "SELECT count(*) AS n FROM pg_inherits")
    assert rows[0]["n"] == 0
    assert await history(db, "001") == ("applied", 2, 0)
