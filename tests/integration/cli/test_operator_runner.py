"""What an operator meets when a run is stopped, refused or blocked: signals, read-only
targets, table locks held elsewhere, edited files, a backfill already running.

Every test starts the real CLI (or engine) in a child process against a database of
its own and checks the exit code, what the operator reads, and the database after.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import asyncpg
import pytest

from cex_arbitrage.db.migrator.lock import BACKGROUND_LOCK, LOCK_NAMESPACE
from cex_arbitrage.db.structs import DatabaseConfig
from cex_arbitrage.errors import ExitCode
from tests.support.cli import run_cli_process, write_migrations
from tests.support.databases import fetch, has_table, pg_env

SLOW_TRANSACTIONAL = """-- migrate:description a transactional step that is slow
SELECT pg_sleep(30);
CREATE TABLE slow_done (id int);
"""


def start_cli(args: list[str], env: Mapping[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cex_arbitrage.db.migrate", *args],
        env=dict(env),
        cwd=str(cwd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def explain(code: int | None, out: str, err: str) -> str:
    return f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"


async def history_states(db: DatabaseConfig) -> dict[str, str]:
    if not await has_table(db, "public.migration_history"):
        return {}
    rows = await fetch(db, "SELECT version, state FROM migration_history")
    return {r["version"]: r["state"] for r in rows}


async def wait_for_query(
    db: DatabaseConfig, fragment: str, process: subprocess.Popen[str], timeout: float = 20.0
) -> None:
    """Until a session of `db` other than ours runs a query containing `fragment`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(explain(process.returncode, out, err))
        rows = await fetch(
            db,
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state = 'active' AND query LIKE $1",
            f"%{fragment}%",
        )
        if rows:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no session ran {fragment!r} within {timeout}s")


# --------------------------------------------------------------------------
# 1. SIGTERM is Ctrl-C


async def test_sigterm_cancels_the_running_step_rolls_back_and_exits_8(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    d = write_migrations(tmp_path / "m", {"001_slow.sql": SLOW_TRANSACTIONAL})
    env = pg_env(db)
    process = start_cli(["--migrations-dir", str(d)], env, tmp_path)
    try:
        await wait_for_query(db, "pg_sleep(30)", process)
        await asyncio.sleep(1.0)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == ExitCode.INTERRUPTED == 8, explain(process.returncode, out, err)
    assert time.monotonic() - started < 10, "the server statement was not cancelled"
    assert "interrupted by SIGTERM" in err and "run again to resume" in err
    assert "Traceback" not in err
    # The statement was cancelled on the server and the step rolled back: nothing of it stays.
    await asyncio.sleep(0.5)
    assert not await has_table(db, "public.slow_done")
    assert history_states_applied(await history_states(db)) == {"000"}
    assert not await fetch(
        db,
        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
        "AND query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()",
    )

    (d / "001_slow.sql").write_text(SLOW_TRANSACTIONAL.replace("pg_sleep(30)", "pg_sleep(0)"))
    again = run_cli_process(["--migrations-dir", str(d)], env, tmp_path)
    assert again.returncode == 0, explain(again.returncode, again.stdout, again.stderr)
    assert await has_table(db, "public.slow_done")
    assert history_states_applied(await history_states(db)) == {"000", "001"}


def history_states_applied(states: Mapping[str, str]) -> set[str]:
    """Applied migration versions (routines, R__ rows, left out)."""
    return {v for v, s in states.items() if s == "applied" and v.isdigit()}


def start_engine(db: DatabaseConfig, cwd: Path, extra: Mapping[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cex_arbitrage", "run", "--replay", "sample"],
        env=pg_env(db, extra),
        cwd=str(cwd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_sigterm_during_the_engines_schema_boot_cancels_it_and_exits_8(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    """The engine's ensure_schema is blocked on the server (a lock on the history table);
    SIGTERM cancels that statement and the boot instead of waiting for it."""
    first = run_cli_process(["--target", "000"], pg_env(db), tmp_path)
    assert first.returncode == 0, explain(first.returncode, first.stdout, first.stderr)
    holder = await asyncpg.connect(**db.connect_kwargs())
    try:
        await holder.execute("BEGIN; LOCK TABLE migration_history IN ACCESS EXCLUSIVE MODE")
        process = start_engine(db, tmp_path, {})
        try:
            await wait_for_waiter(db)
            await asyncio.sleep(1.0)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
        assert time.monotonic() - started < 10, "the boot did not stop on SIGTERM"
        # The engine's session is gone: its blocked statement was cancelled, not left queued.
        assert not await holder.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        await holder.execute("ROLLBACK")
    finally:
        await holder.close()
    assert process.returncode == ExitCode.INTERRUPTED, explain(process.returncode, out, err)
    assert "SIGTERM" in err and "start it again" in err, err
    assert "Traceback" not in err
    assert history_states_applied(await history_states(db)) == {"000"}
    assert not await has_table(db, "public.book_ticker_snapshots")


async def wait_for_waiter(db: DatabaseConfig, timeout: float = 30.0) -> None:
    """Until a session of `db` waits for a lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = await fetch(
            db,
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'",
        )
        if rows:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no session of {db.database} waited for a lock within {timeout}s")


# --------------------------------------------------------------------------
# 2. read-only targets are refused before anything runs


async def test_read_only_database_is_refused_with_exit_7_naming_the_setting(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    d = write_migrations(tmp_path / "m", {"001_t.sql": "CREATE TABLE t (id int);"})
    admin = await asyncpg.connect(**db.connect_kwargs())
    try:
        await admin.execute(
            f'ALTER DATABASE "{db.database}" SET default_transaction_read_only = on'
        )
    finally:
        await admin.close()
    env = pg_env(db)
    result = run_cli_process(["--migrations-dir", str(d)], env, tmp_path)
    assert result.returncode == ExitCode.PERMISSION == 7, explain(
        result.returncode, result.stdout, result.stderr
    )
    assert "read-only" in result.stderr
    assert "default_transaction_read_only = on, set by: database" in result.stderr
    assert f"ALTER DATABASE {db.database} SET default_transaction_read_only = off" in result.stderr
    assert "Traceback" not in result.stderr
    assert not await has_table(db, "public.migration_history")
    assert not await has_table(db, "public.t")

    admin = await asyncpg.connect(**db.connect_kwargs())
    try:
        await admin.execute("SET default_transaction_read_only = off")
        await admin.execute(f'ALTER DATABASE "{db.database}" RESET default_transaction_read_only')
    finally:
        await admin.close()
    again = run_cli_process(["--migrations-dir", str(d)], env, tmp_path)
    assert again.returncode == 0, explain(again.returncode, again.stdout, again.stderr)
    assert await has_table(db, "public.t")


# --------------------------------------------------------------------------
# 3. a table lock timeout names the session that holds the lock

HOLDER_APP = "nightly-report-holder"


async def test_table_lock_timeout_names_the_blocking_session(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    d = write_migrations(tmp_path / "m", {"001_t.sql": "CREATE TABLE t (id int);"})
    env = pg_env(db)
    first = run_cli_process(["--migrations-dir", str(d)], env, tmp_path)
    assert first.returncode == 0, explain(first.returncode, first.stdout, first.stderr)
    write_migrations(d, {"002_alter.sql": "ALTER TABLE t ADD COLUMN note text;"})
    config = tmp_path / "config.yaml"
    config.write_text("database:\n  lock_timeout_ms: 200\n  lock_retries: 1\n")

    kwargs = db.connect_kwargs()
    kwargs["server_settings"] = {"application_name": HOLDER_APP}
    holder = await asyncpg.connect(**kwargs)
    try:
        holder_pid = await holder.fetchval("SELECT pg_backend_pid()")
        await holder.execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        result = run_cli_process(
            ["--migrations-dir", str(d), "--config", str(config)], env, tmp_path, timeout=60
        )
        await holder.execute("ROLLBACK")
    finally:
        await holder.close()
    err = result.stderr
    assert result.returncode == ExitCode.LOCK_TIMEOUT == 5, explain(
        result.returncode, result.stdout, err
    )
    assert "002_alter" in err and "could not get a table lock within 200 ms" in err
    assert f"pid {holder_pid} " in err and repr(HOLDER_APP) in err
    assert "idle in transaction" in err and "LOCK TABLE t IN ACCESS EXCLUSIVE MODE" in err
    assert f"pg_terminate_backend({holder_pid})" in err
    assert "Traceback" not in err
    columns = await fetch(
        db, "SELECT column_name FROM information_schema.columns WHERE table_name = 't'"
    )
    assert [c["column_name"] for c in columns] == ["id"]
    assert "002" not in history_states_applied(await history_states(db))

    again = run_cli_process(["--migrations-dir", str(d), "--config", str(config)], env, tmp_path)
    assert again.returncode == 0, explain(again.returncode, again.stdout, again.stderr)
    assert "002" in history_states_applied(await history_states(db))


# --------------------------------------------------------------------------
# 4. the checksum way out carries this run's options; accepting twice changes nothing


async def test_checksum_way_out_runs_literally_with_this_runs_options(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    d = write_migrations(tmp_path / "my migrations", {"001_t.sql": "CREATE TABLE t (id int);"})
    config = tmp_path / "ops config.yaml"
    config.write_text("database:\n  lock_timeout_ms: 2000\n")
    env = pg_env(db)
    options = ["--migrations-dir", str(d), "--config", str(config)]
    first = run_cli_process(options, env, tmp_path)
    assert first.returncode == 0, explain(first.returncode, first.stdout, first.stderr)
    edited = d / "001_t.sql"
    edited.write_text("CREATE TABLE t (id int);\n-- a comment added afterwards\n")

    refused = run_cli_process(options, env, tmp_path)
    assert refused.returncode == ExitCode.REFUSED, explain(
        refused.returncode, refused.stdout, refused.stderr
    )
    suggested = refused.stderr.split("`python -m cex_arbitrage.db.migrate ", 1)[1].split("`")[0]
    argv = shlex.split(suggested)
    assert argv == ["accept-checksum", "001", *options], refused.stderr

    accepted = run_cli_process(argv, env, tmp_path)  # exactly as the message says
    assert accepted.returncode == 0, explain(accepted.returncode, accepted.stdout, accepted.stderr)
    assert "recorded the current checksum of version 001" in accepted.stdout
    recorded = await fetch(db, "SELECT checksum FROM migration_history WHERE version = '001'")
    assert recorded[0]["checksum"] == hashlib.sha256(edited.read_bytes()).hexdigest()

    twice = run_cli_process(argv, env, tmp_path)
    assert twice.returncode == 0, explain(twice.returncode, twice.stdout, twice.stderr)
    assert "already matches the file; nothing changed" in twice.stdout
    again = await fetch(db, "SELECT checksum FROM migration_history WHERE version = '001'")
    assert again[0]["checksum"] == recorded[0]["checksum"]
    current = run_cli_process(options, env, tmp_path)
    assert current.returncode == 0 and "nothing to apply" in current.stdout


# --------------------------------------------------------------------------
# 5. a second apply while another runner does the background work: it does not wait

SLOW_BACKGROUND = """CREATE TABLE bg (id int);
-- migrate:step slow background transaction:false
INSERT INTO migration_progress (version, task, rows_done, rows_total) VALUES ('001', 'fill', 3, 10);
SELECT pg_sleep(20);
INSERT INTO bg VALUES (1);
"""


async def test_second_apply_names_the_background_runner_and_does_not_wait(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    d = write_migrations(tmp_path / "m", {"001_bg.sql": SLOW_BACKGROUND})
    env = pg_env(db)
    first = start_cli(["--migrations-dir", str(d)], env, tmp_path)
    try:
        await wait_for_query(db, "pg_sleep(20)", first)
        await asyncio.sleep(1.0)
        holder = await fetch(
            db,
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid = $1::int::oid AND objid = $2::int::oid AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())",
            LOCK_NAMESPACE,
            BACKGROUND_LOCK,
        )
        assert len(holder) == 1
        holder_pid = holder[0]["pid"]

        started = time.monotonic()
        second = run_cli_process(["--migrations-dir", str(d)], env, tmp_path, timeout=30)
        assert time.monotonic() - started < 10, "the second apply waited for the lock"
        assert second.returncode == 0, explain(second.returncode, second.stdout, second.stderr)
        assert "nothing to apply" in second.stdout
        line = next(x for x in second.stdout.splitlines() if "being run by" in x)
        assert f"background steps of 001 are being run by pid {holder_pid} " in line
        assert "application 'cex_arbitrage'" in line
        assert "progress: 001 fill 3/10 (30.0%)" in line
        assert "--wait-background waits" in line
        states = await history_states(db)
        assert states["001"] == "background"

        # --wait-background waits as before: here up to a short lock_wait_timeout, then exit 5.
        config = tmp_path / "config.yaml"
        config.write_text("migrations:\n  lock_wait_timeout: 2\n")
        waited = run_cli_process(
            ["--migrations-dir", str(d), "--config", str(config), "--wait-background"],
            env,
            tmp_path,
            timeout=30,
        )
        assert waited.returncode == ExitCode.LOCK_TIMEOUT, explain(
            waited.returncode, waited.stdout, waited.stderr
        )
        assert f"pid {holder_pid}" in waited.stderr
        assert first.poll() is None  # the first runner was left alone throughout
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=30)
    assert first.returncode == ExitCode.INTERRUPTED, explain(first.returncode, out, err)
    assert (await history_states(db))["001"] == "background"
    assert not await fetch(db, "SELECT * FROM bg")


async def test_table_lock_timeout_error_carries_the_blocking_pids(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    """The API's error has the holder in `blocking_pids` (the CLI prints the message)."""
    from cex_arbitrage.db.migrations.run_migrations import MigrationRunner
    from cex_arbitrage.db.migrator.source import DirectorySource
    from cex_arbitrage.errors import TableLockTimeoutError

    d = write_migrations(tmp_path / "m", {"001_t.sql": "CREATE TABLE t (id int);"})
    quick = dataclasses.replace(db, lock_timeout_ms=100, lock_retries=0)
    await MigrationRunner(quick, source=DirectorySource(d)).migrate()
    write_migrations(d, {"002_alter.sql": "ALTER TABLE t ADD COLUMN note text;"})
    holder = await asyncpg.connect(**db.connect_kwargs())
    try:
        holder_pid = await holder.fetchval("SELECT pg_backend_pid()")
        await holder.execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(TableLockTimeoutError) as info:
            await MigrationRunner(quick, source=DirectorySource(d)).migrate()
        await holder.execute("ROLLBACK")
    finally:
        await holder.close()
    assert info.value.blocking_pids == (holder_pid,)
    assert info.value.version == "002" and info.value.exit_code == ExitCode.LOCK_TIMEOUT
