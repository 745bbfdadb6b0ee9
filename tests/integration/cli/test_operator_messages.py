"""What the operator reads when something is wrong, or when nothing is: items 5 and 19 of
the operator issue. Each test runs the CLI (or the engine) as an operator does and
checks the exit code, the message and the database after.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from cex_arbitrage.db.migrator.lock import BACKGROUND_LOCK
from cex_arbitrage.db.structs import DatabaseConfig
from cex_arbitrage.errors import ExitCode, MigrationFailedError
from tests.support.cli import run_cli_process, write_migrations
from tests.support.databases import fetch, has_table, pg_env
from tests.support.processes import (
    engine,
    lock_holder,
    running_query,
    said,
    shipped_plus,
    start,
    state_of,
    until,
)


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


# --------------------------------------------------------------------------
# 19: connection messages


async def test_sslmode_require_against_a_server_without_ssl_says_so(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(**db.connect_kwargs())
    try:
        ssl = await conn.fetchval("SHOW ssl")
    finally:
        await conn.close()
    if ssl != "off":
        pytest.skip("the test server accepts SSL")
    result = run_cli_process(["status"], pg_env(db, {"PGSSLMODE": "require"}), tmp_path)
    assert result.returncode == ExitCode.CONNECT, explain(result)
    assert "the server does not accept SSL connections, and sslmode is 'require' " in (
        result.stderr
    )
    assert "(from PGSSLMODE)" in result.stderr
    assert "Is PostgreSQL running" not in result.stderr
    assert not await has_table(db, "public.migration_history")


@pytest.mark.parametrize(
    ("how", "origin"),
    [("PGDATABASE", "PGDATABASE"), ("config", "database.database in config.yaml")],
)
async def test_a_missing_database_names_where_its_name_came_from_shell_quoted(
    db: DatabaseConfig, tmp_path: Path, how: str, origin: str
) -> None:
    name = "no such db's"
    env = pg_env(db)
    if how == "PGDATABASE":
        env["PGDATABASE"] = name
    else:
        (tmp_path / "config.yaml").write_text(f'database:\n  database: "{name}"\n')
    result = run_cli_process(["status"], env, tmp_path)
    assert result.returncode == ExitCode.CONNECT, explain(result)
    assert f"(the name comes from {origin})" in result.stderr
    assert "(createdb 'no such db'\"'\"'s')" in result.stderr
    assert result.stderr.rstrip().endswith(f"or fix {origin}")
    rows = await fetch(db, "SELECT 1 FROM pg_database WHERE datname = $1", name)
    assert not rows


# --------------------------------------------------------------------------
# 19: a failing statement: file:line, and no warning before it

SYNTAX = """-- migrate:description a syntax error on line 5
CREATE TABLE first_table (id int);

-- the error is on the next line
CREATE TABLE second_table (id int,,);
"""

MISSING = """-- migrate:description a missing table on line 7, in a transaction:false step
CREATE TABLE kept_table (id int);
-- migrate:step later transaction:false
SELECT 1;
SELECT *
FROM
  no_such_table;
"""


async def test_a_failing_statement_names_the_file_and_line_the_server_points_at(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    d = write_migrations(tmp_path / "m", {"001_syntax.sql": SYNTAX})
    env = pg_env(db)
    result = run_cli_process(["--migrations-dir", str(d)], env, tmp_path)
    assert result.returncode == ExitCode.MIGRATION_FAILED, explain(result)
    assert 'syntax error at or near "," (001_syntax.sql:5)' in result.stderr
    assert "no transaction in progress" not in result.stderr
    assert "WARNING" not in result.stderr
    assert not await has_table(db, "public.first_table")
    assert await state_of(db, "001") == "failed"

    (d / "001_syntax.sql").unlink()
    (d / "001_missing.sql").write_text(MISSING)
    result = run_cli_process(["--migrations-dir", str(d)], env, tmp_path)
    assert result.returncode == ExitCode.MIGRATION_FAILED, explain(result)
    assert 'relation "no_such_table" does not exist (001_missing.sql:7)' in result.stderr
    assert "WARNING" not in result.stderr
    assert await has_table(db, "public.kept_table")  # the first step is done and stays


async def test_the_error_carries_file_and_line_as_fields(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    from cex_arbitrage.db.migrations.run_migrations import MigrationRunner
    from cex_arbitrage.db.migrator.source import DirectorySource

    d = write_migrations(tmp_path / "m", {"001_syntax.sql": SYNTAX})
    with pytest.raises(MigrationFailedError) as info:
        await MigrationRunner(db, source=DirectorySource(d)).migrate()
    assert (info.value.filename, info.value.line) == ("001_syntax.sql", 5)
    assert info.value.rolled_back and info.value.sqlstate == "42601"


# --------------------------------------------------------------------------
# 19: notices on a fresh database


async def test_a_fresh_database_shows_no_skip_notices_and_the_backfill_report_once(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    result = run_cli_process([], pg_env(db), tmp_path)
    assert result.returncode == 0, explain(result)
    assert "skipping" not in result.stderr
    assert result.stderr.count("backfill_symbols: done") == 1, result.stderr
    assert "nothing to apply" not in result.stderr
    assert await has_table(db, "public.book_ticker_snapshots")
    assert await state_of(db, "003") == "applied"


# --------------------------------------------------------------------------
# 5: what a runner says about background work another runner did

SLOW_BACKGROUND = """-- migrate:description slow background work
CREATE TABLE marks (n int);
-- migrate:step fill transaction:false background
SELECT pg_sleep(1.5);
INSERT INTO marks VALUES (1);
SELECT pg_sleep(1.5);
INSERT INTO marks VALUES (2);
"""


async def test_runners_that_find_the_background_work_finished_by_another_say_so(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    """A --wait-background run and a watching engine both find the work done by the CLI
    that held it: neither reports it pending, nor claims to have finished it."""
    d = shipped_plus(tmp_path / "m", {"090_slow_background.sql": SLOW_BACKGROUND})
    (tmp_path / "config.yaml").write_text("migrations:\n  background_retry_interval: 0.5\n")
    env = pg_env(db, {"CEX_MIGRATIONS_DIR": str(d)})
    cli = [sys.executable, "-m", "cex_arbitrage.db.migrate"]
    first = start(cli, env, tmp_path, tmp_path / "first.log")
    watcher: subprocess.Popen[bytes] | None = None
    try:
        await until(lambda: running_query(db, "pg_sleep(1.5)"), "the background step", 60)
        holder = await lock_holder(db, BACKGROUND_LOCK)
        assert holder is not None
        waiting = start([*cli, "--wait-background"], env, tmp_path, tmp_path / "second.log")
        watcher = engine(env, tmp_path, tmp_path / "engine.log")
        await until(
            lambda: asyncio.to_thread(said, tmp_path / "engine.log", "takes the background"),
            "the engine watches",
            60,
        )
        assert first.wait(timeout=60) == 0, (tmp_path / "first.log").read_text()
        assert waiting.wait(timeout=60) == 0, (tmp_path / "second.log").read_text()
        await until(
            lambda: asyncio.to_thread(said, tmp_path / "engine.log", "no background migration"),
            "the engine's verdict",
            30,
        )
    finally:
        for process in (first, watcher):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
    second = (tmp_path / "second.log").read_text()
    assert "nothing to apply" in second
    assert "still pending" not in second and "background steps finished" not in second
    engine_log = (tmp_path / "engine.log").read_text()
    assert "another runner finished it" in engine_log
    assert "background migration work finished on" not in engine_log
    assert await state_of(db, "090") == "applied"
    assert [r["n"] for r in await fetch(db, "SELECT n FROM marks ORDER BY n")] == [1, 2]
