"""Work in progress against work nobody is doing: a runner killed with SIGKILL (no
handler runs) mid-migration or mid-backfill, what `status` says about it, and a
surviving engine that takes the background work over.

The runners' locks are session-level advisory locks: they die with the session, and
the runner's sessions notice a vanished client within seconds
(client_connection_check_interval), so no heartbeat row is needed.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import asyncpg

from cex_arbitrage.db.migrator.lock import BACKGROUND_LOCK, MIGRATE_LOCK
from cex_arbitrage.db.structs import DatabaseConfig
from cex_arbitrage.errors import ExitCode
from tests.support.cli import run_cli_process, write_migrations
from tests.support.databases import fetch, has_table, pg_env
from tests.support.processes import (
    cli,
    engine,
    kill,
    lock_holder,
    running_query,
    said,
    shipped_plus,
    start,
    state_of,
    until,
)

SLOW_SINGLE = """-- migrate:description one transaction, slow
CREATE TABLE single_done (id int);
SELECT pg_sleep(60);
"""

SLOW_STEPS = """-- migrate:description a quick step, then a slow one outside a transaction
CREATE TABLE steps_done (id int);
-- migrate:step slow transaction:false
SELECT pg_sleep(60);
INSERT INTO steps_done VALUES (1);
"""

SLOW_BACKGROUND = """-- migrate:description a table now, slow background work after it
CREATE TABLE marks (n int);
-- migrate:step fill transaction:false background
SELECT pg_sleep(2.5);
INSERT INTO marks VALUES (1);
SELECT pg_sleep(2.5);
INSERT INTO marks VALUES (2);
SELECT pg_sleep(2.5);
INSERT INTO marks VALUES (3);
"""


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def status_line(result: subprocess.CompletedProcess[str], version: str) -> list[str]:
    """The table row and the note lines of one version."""
    return [
        line
        for line in result.stdout.splitlines()
        if line.startswith(f"{version} ") or line.startswith(f"  {version} ")
    ]


# --------------------------------------------------------------------------
# item 17: being applied now, or interrupted


async def test_status_shows_a_single_transaction_migration_being_applied_then_not(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    d = write_migrations(tmp_path / "m", {"001_single.sql": SLOW_SINGLE})
    env = pg_env(db)
    first = run_cli_process(["--migrations-dir", str(d), "--target", "000"], env, tmp_path)
    assert first.returncode == 0, explain(first)
    runner = start(cli("--migrations-dir", str(d)), env, tmp_path, tmp_path / "apply.log")
    try:
        await until(lambda: running_query(db, "pg_sleep(60)"), "the migration runs")
        pid = await lock_holder(db, MIGRATE_LOCK)
        status = run_cli_process(["--migrations-dir", str(d), "status"], env, tmp_path)
        assert status.returncode == 0, explain(status)
        row, note = status_line(status, "001")
        assert row.split()[3] == "running"  # not "pending": it has no history row yet
        assert note.startswith(f"  001 being applied now by pid {pid} (user {db.user}")
        assert "since " in note
    finally:
        kill(runner)
    # The server ends the orphaned session within seconds; the transaction rolls back.
    await until(lambda: _no_holder(db, MIGRATE_LOCK), "the killed runner's session ends")
    status = run_cli_process(["--migrations-dir", str(d), "status", "--exit-code"], env, tmp_path)
    assert status.returncode == ExitCode.PENDING, explain(status)
    assert status_line(status, "001")[0].split()[3] == "pending"
    assert "being applied" not in status.stdout
    assert not await has_table(db, "public.single_done")


async def _no_holder(db: DatabaseConfig, purpose: int) -> bool:
    return await lock_holder(db, purpose) is None


async def test_status_tells_an_interrupted_migration_from_one_in_progress(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    d = write_migrations(tmp_path / "m", {"001_steps.sql": SLOW_STEPS})
    env = pg_env(db)
    runner = start(cli("--migrations-dir", str(d)), env, tmp_path, tmp_path / "apply.log")
    try:
        await until(lambda: running_query(db, "pg_sleep(60)"), "the slow step runs")
        pid = await lock_holder(db, MIGRATE_LOCK)
        status = run_cli_process(["--migrations-dir", str(d), "status"], env, tmp_path)
        assert f"001 being applied now by pid {pid}" in status.stdout, explain(status)
        assert "interrupted" not in status.stdout
    finally:
        kill(runner)
    await until(lambda: _no_holder(db, MIGRATE_LOCK), "the killed runner's session ends")
    status = run_cli_process(["--migrations-dir", str(d), "status", "--exit-code"], env, tmp_path)
    assert status.returncode == ExitCode.PENDING, explain(status)
    row, note = status_line(status, "001")
    assert row.split()[3] == "running"
    assert note == "  001 interrupted: no runner holds the migration lock; run again to resume"
    assert await state_of(db, "001") == "running"
    assert await has_table(db, "public.steps_done")  # the first step stays committed

    (d / "001_steps.sql").write_text(SLOW_STEPS.replace("pg_sleep(60)", "pg_sleep(0)"))
    again = run_cli_process(["--migrations-dir", str(d)], env, tmp_path)
    assert again.returncode == 0, explain(again)
    assert await state_of(db, "001") == "applied"
    assert [r["id"] for r in await fetch(db, "SELECT id FROM steps_done")] == [1]


# --------------------------------------------------------------------------
# item 3: background work nobody runs; a surviving engine takes it over


async def test_status_flags_background_work_whose_runner_was_killed(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    d = write_migrations(tmp_path / "m", {"001_bg.sql": SLOW_BACKGROUND})
    env = pg_env(db)
    runner = start(cli("--migrations-dir", str(d)), env, tmp_path, tmp_path / "apply.log")
    try:
        await until(lambda: running_query(db, "pg_sleep(2.5)"), "the background step runs")
        pid = await lock_holder(db, BACKGROUND_LOCK)
        status = run_cli_process(
            ["--migrations-dir", str(d), "status", "--exit-code"], env, tmp_path
        )
        # In hand: not something to act on.
        assert status.returncode == 0, explain(status)
        assert f"001 background steps being run now by pid {pid}" in status.stdout
        await until(lambda: _marked(db), "the first statements are done", 30)
    finally:
        kill(runner)
    await until(lambda: _no_holder(db, BACKGROUND_LOCK), "the killed runner's session ends")
    status = run_cli_process(["--migrations-dir", str(d), "status", "--exit-code"], env, tmp_path)
    assert status.returncode == ExitCode.PENDING, explain(status)
    row, note = status_line(status, "001")
    assert row.split()[3] == "background"
    assert note.startswith("  001 background steps unfinished and nobody is running them")
    json_status = run_cli_process(["--migrations-dir", str(d), "status", "--json"], env, tmp_path)
    assert '"activity": "background orphaned"' in json_status.stdout

    finish = run_cli_process(["--migrations-dir", str(d), "background"], env, tmp_path)
    assert finish.returncode == 0, explain(finish)
    assert "resume where they stopped" in finish.stderr
    assert "background steps finished for: 001" in finish.stdout
    again = run_cli_process(["--migrations-dir", str(d), "background"], env, tmp_path)
    assert again.returncode == 0 and "no background steps left to run" in again.stdout, explain(
        again
    )
    assert await state_of(db, "001") == "applied"
    assert sorted(r["n"] for r in await fetch(db, "SELECT DISTINCT n FROM marks")) == [1, 2, 3]
    status = run_cli_process(["--migrations-dir", str(d), "status", "--exit-code"], env, tmp_path)
    assert status.returncode == 0, explain(status)


async def _marked(db: DatabaseConfig) -> bool:
    return bool(await fetch(db, "SELECT 1 FROM marks"))


async def test_a_surviving_engine_takes_over_background_work_whose_engine_was_killed(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    d = shipped_plus(tmp_path / "m", {"090_slow_background.sql": SLOW_BACKGROUND})
    (tmp_path / "config.yaml").write_text("migrations:\n  background_retry_interval: 0.5\n")
    env = pg_env(db, {"CEX_MIGRATIONS_DIR": str(d)})
    logs = tmp_path / "a.log", tmp_path / "b.log"
    first = engine(env, tmp_path, logs[0])
    second: subprocess.Popen[bytes] | None = None
    try:
        await until(lambda: running_query(db, "pg_sleep(2.5)"), "engine A's backfill", 60)
        a_pid = await lock_holder(db, BACKGROUND_LOCK)
        second = engine(env, tmp_path, logs[1])
        await until(
            lambda: _said(logs[1], "takes the background migration work over"),
            "engine B watches the work",
            60,
        )
        assert f"being run by pid {a_pid}" in logs[1].read_text()
        status = run_cli_process(["status", "--exit-code"], env, tmp_path)
        assert status.returncode == 0, explain(status)
        assert f"090 background steps being run now by pid {a_pid}" in status.stdout

        # A server-side end of the watcher's session (a restart, a DBA) does not end the watch.
        await fetch(
            db,
            "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a "
            "WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() "
            "AND a.application_name = 'cex_arbitrage' AND a.state = 'idle' "
            "AND NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid "
            "AND l.locktype = 'advisory')",
        )
        await until(
            lambda: _said(logs[1], "connection lost while watching"), "engine B reconnects", 30
        )

        kill(first)
        await until(lambda: _state_is(db, "090", "applied"), "engine B finishes the work", 60)
        b_said = await until(
            lambda: _said(logs[1], "taken over from a runner that stopped"),
            "engine B reports the takeover",
        )
        assert "090" in str(b_said)
        assert second.poll() is None  # still collecting
        marks = [r["n"] for r in await fetch(db, "SELECT DISTINCT n FROM marks ORDER BY n")]
        assert marks == [1, 2, 3]
        status = run_cli_process(["status", "--exit-code"], env, tmp_path)
        assert status.returncode == 0, explain(status)
        assert "background steps" not in status.stdout
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
    assert second.returncode == 0, logs[1].read_text()


async def _said(log: Path, text: str) -> str | None:
    return await asyncio.to_thread(said, log, text)


async def _state_is(db: DatabaseConfig, version: str, state: str) -> bool:
    return await state_of(db, version) == state


# --------------------------------------------------------------------------
# item 20: no ERROR in the server's log from looking at a fresh database


async def test_boot_check_and_status_on_a_fresh_database_raise_no_server_error(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    """Every statement that fails ends its transaction in a rollback, which the server
    counts (pg_stat_database.xact_rollback): none may fail while looking at a fresh
    database, or each would be an ERROR line in the operator's server log."""
    from cex_arbitrage.db.migrations.run_migrations import MigrationRunner, ensure_schema
    from cex_arbitrage.db.migrator.source import DirectorySource

    d = write_migrations(tmp_path / "m", {"001_t.sql": "CREATE TABLE t (id int);"})
    source = DirectorySource(d)
    before = await _rollbacks(db)
    status = run_cli_process(["--migrations-dir", str(d), "status"], pg_env(db), tmp_path)
    assert status.returncode == 0 and "pending" in status.stdout, explain(status)
    plan = await MigrationRunner(db, source=source).plan()
    assert [pm.migration.version for pm in plan.foreground] == ["000", "001"]
    report = await ensure_schema(db, source=source)
    assert report.applied == ["000", "001"]
    again = await ensure_schema(db, source=source)
    assert again.applied == []
    assert await _rollbacks(db) == before
    assert await has_table(db, "public.t")


async def _rollbacks(db: DatabaseConfig) -> int:
    await asyncio.sleep(0.6)  # sessions that just ended have flushed their counters
    conn = await asyncpg.connect(**db.connect_kwargs())
    try:
        await conn.execute("SELECT pg_stat_force_next_flush()")
        value = await conn.fetchval(
            "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        )
        return int(value)
    finally:
        await conn.close()
