"""The runner against a real PostgreSQL: ordering, refusals, failures, resume, locks, status.

Every test has a database of its own (`db`) and a migration set of its own
(`write_migrations`, which copies 000 in). Each failure test checks three
things: the message (names the migration and the way out), the exit code, and
that nothing was half-applied (the schema and migration_history are queried).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest

from cex_arbitrage.config import MigrationSettings
from cex_arbitrage.db.migrations.run_migrations import MigrationRunner
from cex_arbitrage.db.migrator import lock
from cex_arbitrage.db.migrator.model import checksum_of
from cex_arbitrage.db.migrator.preflight import run_preflight
from cex_arbitrage.db.migrator.source import DirectorySource
from cex_arbitrage.db.migrator.status import format_table, to_json
from cex_arbitrage.db.structs import DatabaseConfig
from cex_arbitrage.errors import (
    AbandonedAttemptError,
    ChecksumMismatchError,
    ConnectError,
    ConnectionLostError,
    ExitCode,
    LockTimeoutError,
    MigrationError,
    MigrationFailedError,
    NotAppliedError,
    PreflightError,
    UnknownTargetError,
    ValidationError,
)
from tests.support.cli import write_migrations
from tests.support.databases import pg_env
from tests.support.paths import REPO

INFRA = REPO / "cex_arbitrage" / "db" / "migrations" / "000_create_migration_infrastructure.sql"
RUNNER_APP = "cex_runner_under_test"

# 001 makes a table; 002 needs an ACCESS EXCLUSIVE lock on it.
LOCKED = {
    "001_t.sql": "CREATE TABLE t (id int);",
    "002_alter.sql": "ALTER TABLE t ADD COLUMN extra int;\nCREATE TABLE side (id int);",
}


# ---- helpers -----------------------------------------------------------------------


def make_runner(
    db: DatabaseConfig,
    directory: Path,
    said: list[str] | None = None,
    *,
    features: dict[str, bool] | None = None,
    settings: MigrationSettings | None = None,
) -> MigrationRunner:
    say: Callable[[str], None] = said.append if said is not None else (lambda _m: None)
    return MigrationRunner(
        db,
        source=DirectorySource(directory),
        features=features or {},
        settings=settings or MigrationSettings(lock_wait_timeout=10),
        say=say,
    )


async def refusal(runner: MigrationRunner, kind: type[MigrationError], **kw: object) -> str:
    """Run, expect `kind`; return its message after checking the exit code matches."""
    with pytest.raises(kind) as info:
        await runner.migrate(**kw)  # type: ignore[arg-type]
    assert info.value.exit_code == kind.exit_code
    return info.value.message


async def tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


async def history(conn: asyncpg.Connection) -> dict[str, asyncpg.Record]:
    if "migration_history" not in await tables(conn):
        return {}
    rows = await conn.fetch("SELECT * FROM migration_history ORDER BY version")
    return {r["version"]: r for r in rows}


async def states(conn: asyncpg.Connection) -> dict[str, str]:
    return {v: r["state"] for v, r in (await history(conn)).items()}


async def columns(conn: asyncpg.Connection, table: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = $1", table
    )
    return {r["column_name"] for r in rows}


async def kill_backend_running(
    admin: asyncpg.Connection, marker: str, *, timeout: float = 10.0
) -> int:
    """Wait until the runner's backend is running a query containing `marker`; kill it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = await admin.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 "
            "AND state = 'active' AND position($2 in query) > 0 AND pid <> pg_backend_pid()",
            RUNNER_APP,
            marker,
        )
        if pid is not None:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            return int(pid)
        await asyncio.sleep(0.02)
    raise AssertionError(f"the runner never ran {marker!r}")


@pytest.fixture
async def other_session(db: DatabaseConfig) -> AsyncIterator[asyncpg.Connection]:
    """A second session on the test database: a collector, an operator, a stuck psql."""
    connection = await asyncpg.connect(
        **dataclasses.replace(db, application_name="other_session").connect_kwargs()
    )
    try:
        yield connection
    finally:
        await connection.close()


# ---- applying ----------------------------------------------------------------------


async def test_pending_migrations_are_applied_in_version_order(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(
        tmp_path / "m",
        {
            "010_third.sql": "INSERT INTO applied_log (v) VALUES ('010');",
            "002_second.sql": "-- migrate:depends 001\nINSERT INTO applied_log (v) VALUES ('002');",
            "001_first.sql": "CREATE TABLE applied_log (id serial, v text);\n"
            "INSERT INTO applied_log (v) VALUES ('001');",
        },
    )
    said: list[str] = []
    result = await make_runner(db, d, said).migrate()

    assert result.applied == ["000", "001", "002", "010"]
    log = await conn.fetch("SELECT v FROM applied_log ORDER BY id")
    assert [r["v"] for r in log] == ["001", "002", "010"]
    rows = await history(conn)
    assert list(rows) == ["000", "001", "002", "010"]
    for version, row in rows.items():
        text = next(d.glob(f"{version}_*.sql")).read_text()
        assert row["state"] == "applied"
        assert row["checksum"] == checksum_of(text)
        assert row["execution_ms"] is not None and row["execution_ms"] >= 0
        assert row["applied_by"] == "postgres"
        assert row["finished_at"] is not None
    assert any("applied 010_third.sql" in line for line in said)


async def test_rerun_with_nothing_pending_changes_nothing(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(tmp_path / "m", {"001_t.sql": "CREATE TABLE t (id int);"})
    runner = make_runner(db, d)
    await runner.migrate()
    before = await history(conn)

    said: list[str] = []
    again = make_runner(db, d, said)
    result = await again.migrate()
    assert await again.run_migrations() is True

    assert result.applied == []
    assert result.plan.empty
    assert any("nothing to apply" in line for line in said)
    assert await history(conn) == before


async def test_run_migrations_returns_false_and_keeps_the_error(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(tmp_path / "m", {"001_bad.sql": "SELECT * FROM no_such_table;"})
    runner = make_runner(db, d)
    assert await runner.run_migrations() is False
    error = runner.last_error
    assert isinstance(error, MigrationFailedError)
    assert (error.version, error.sqlstate, error.rolled_back) == ("001", "42P01", True)
    assert "001_bad" in error.message
    assert (await states(conn))["001"] == "failed"


async def test_target_version_applies_up_to_it_and_no_further(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(
        tmp_path / "m",
        {
            "001_a.sql": "CREATE TABLE a (id int);",
            "002_b.sql": "CREATE TABLE b (id int);",
            "003_c.sql": "CREATE TABLE c (id int);",
        },
    )
    runner = make_runner(db, d)
    result = await runner.migrate(target_version="002")

    assert result.applied == ["000", "001", "002"]
    assert {"a", "b"} <= await tables(conn)
    assert "c" not in await tables(conn)
    status = {s.version: s.state for s in await runner.get_migration_status()}
    assert status["003"] == "pending"
    plan = await runner.plan()
    assert [pm.migration.version for pm in plan.foreground] == ["003"]


async def test_unknown_target_is_refused_before_anything_runs(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(tmp_path / "m", {"001_a.sql": "CREATE TABLE a (id int);"})
    message = await refusal(make_runner(db, d), ValidationError, target_version="999")

    assert "unknown target version '999'" in message
    assert "known versions: 000, 001" in message
    assert await tables(conn) == set()  # not even the history table


async def test_target_below_what_is_applied_is_refused(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(
        tmp_path / "m",
        {"001_a.sql": "CREATE TABLE a (id int);", "002_b.sql": "CREATE TABLE b (id int);"},
    )
    runner = make_runner(db, d)
    await runner.migrate()
    before = await history(conn)

    message = await refusal(runner, ValidationError, target_version="001")
    assert "target 001 is below what is applied already (002)" in message
    assert "down --target 001" in message
    assert "restore a backup" in message
    assert await history(conn) == before
    assert {"a", "b"} <= await tables(conn)


@pytest.mark.parametrize("second", ["001_b.sql", "0001_b.sql"])
async def test_two_files_with_one_version_are_refused(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path, second: str
) -> None:
    d = write_migrations(
        tmp_path / "m",
        {"001_a.sql": "CREATE TABLE a (id int);", second: "CREATE TABLE b (id int);"},
    )
    message = await refusal(make_runner(db, d), ValidationError)

    assert "001_a.sql" in message and second in message
    assert "renumber one of them" in message
    assert await tables(conn) == set()


async def test_dependency_on_a_version_without_file_is_refused(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(
        tmp_path / "m",
        {
            "001_a.sql": "CREATE TABLE a (id int);",
            "003_c.sql": "-- migrate:depends 000, 002\nCREATE TABLE c (id int);",
        },
    )
    message = await refusal(make_runner(db, d), ValidationError)

    assert "003_c.sql depends on version 002" in message
    assert "no migration file has that version" in message
    assert await tables(conn) == set()


async def test_dependency_on_a_disabled_feature_migration_is_refused(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(
        tmp_path / "m",
        {
            "001_trades.sql": "-- migrate:feature trade_collection\nCREATE TABLE tr (id int);",
            "002_uses.sql": "-- migrate:depends 001\nCREATE VIEW v AS SELECT * FROM tr;",
        },
    )
    runner = make_runner(db, d, features={"trade_collection": False})
    message = await refusal(runner, ValidationError)

    assert "002_uses.sql depends on 001_trades.sql" in message
    assert "feature trade_collection, which is disabled" in message
    assert await tables(conn) == set()

    # The way out: enable the feature; both apply.
    await make_runner(db, d, features={"trade_collection": True}).migrate()
    assert await states(conn) == {"000": "applied", "001": "applied", "002": "applied"}


async def test_edited_applied_migration_is_refused(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(tmp_path / "m", {"001_a.sql": "CREATE TABLE a (id int);"})
    await make_runner(db, d).migrate()
    before = await history(conn)
    write_migrations(
        d,
        {
            "001_a.sql": "CREATE TABLE a (id int, extra int);",
            "002_b.sql": "CREATE TABLE b (id int);",
        },
    )

    message = await refusal(make_runner(db, d), ValidationError)
    with pytest.raises(ChecksumMismatchError) as mismatch:
        await make_runner(db, d).migrate()
    assert mismatch.value.version == "001" and mismatch.value.recorded != mismatch.value.current

    assert "001_a.sql was edited after it was applied" in message
    assert "Restore the file" in message
    assert "accept-checksum 001" in message
    assert await history(conn) == before  # 002 did not run either
    assert "b" not in await tables(conn)
    assert "extra" not in await columns(conn, "a")


async def test_accept_checksum_is_the_way_out_of_a_deliberate_edit(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(tmp_path / "m", {"001_a.sql": "CREATE TABLE a (id int);"})
    await make_runner(db, d).migrate()
    edited = "-- Creates table a.\nCREATE TABLE a (id int);"
    write_migrations(d, {"001_a.sql": edited})
    runner = make_runner(db, d)
    with pytest.raises(ChecksumMismatchError):
        await runner.migrate()

    old = await runner.accept_checksum("001")

    assert old == checksum_of("CREATE TABLE a (id int);")
    assert (await history(conn))["001"]["checksum"] == checksum_of(edited)
    result = await runner.migrate()
    assert result.applied == []
    [row] = [s for s in await runner.get_migration_status() if s.version == "001"]
    assert row.checksum_ok is True


async def test_accept_checksum_of_an_unapplied_migration_is_refused(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    d = write_migrations(tmp_path / "m", {"001_a.sql": "CREATE TABLE a (id int);"})
    runner = make_runner(db, d)
    await runner.migrate(target_version="000")
    with pytest.raises(NotAppliedError) as not_applied:
        await runner.accept_checksum("001")
    assert not_applied.value.version == "001"
    assert "001_a.sql is not applied" in not_applied.value.message
    with pytest.raises(UnknownTargetError) as unknown:
        await runner.accept_checksum("042")
    assert unknown.value.target == "042"
    assert "'042'" in unknown.value.message


async def test_database_ahead_of_the_code_is_refused(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    newer = write_migrations(
        tmp_path / "newer",
        {"001_a.sql": "CREATE TABLE a (id int);", "002_b.sql": "CREATE TABLE b (id int);"},
    )
    await make_runner(db, newer).migrate()
    before = await history(conn)
    older = write_migrations(tmp_path / "older", {"001_a.sql": "CREATE TABLE a (id int);"})

    runner = make_runner(db, older)
    message = await refusal(runner, ValidationError)

    assert "002 are recorded in migration_history but this code has no file" in message
    assert "migrated by a newer version" in message
    assert await history(conn) == before
    status = {s.version: s.state for s in await runner.get_migration_status()}
    assert status["002"] == "unknown"


async def test_failed_attempt_whose_file_was_deleted_is_refused_with_the_way_out(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(tmp_path / "m", {"001_bad.sql": "SELECT * FROM nowhere;"})
    with pytest.raises(MigrationFailedError):
        await make_runner(db, d).migrate()
    (d / "001_bad.sql").unlink()
    write_migrations(d, {"002_good.sql": "CREATE TABLE good (id int);"})
    with pytest.raises(AbandonedAttemptError) as abandoned:
        await make_runner(db, d).migrate()
    assert abandoned.value.versions == ("001",)

    message = await refusal(make_runner(db, d), ValidationError)

    assert "unfinished attempt of version 001 (failed)" in message
    assert "newer version" not in message
    assert "DELETE FROM migration_history WHERE version IN ('001')" in message
    assert "good" not in await tables(conn)
    await conn.execute("DELETE FROM migration_history WHERE version IN ('001')")
    assert (await make_runner(db, d).migrate()).applied == ["002"]


# ---- SQL that fails ----------------------------------------------------------------


async def test_sql_error_in_a_transactional_migration_rolls_it_back_entirely(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(
        tmp_path / "m",
        {
            "001_ok.sql": "CREATE TABLE keep (id int);",
            "002_half.sql": (
                "CREATE TABLE first_half (id int);\n"
                "INSERT INTO keep VALUES (1);\n"
                "-- migrate:step second\n"
                "ALTER TABLE keep ADD COLUMN extra int;\n"
                "INSERT INTO no_such_table VALUES (1);\n"
                "CREATE TABLE never (id int);\n"
            ),
            "003_after.sql": "CREATE TABLE after (id int);",
        },
    )
    message = await refusal(make_runner(db, d), MigrationFailedError)

    assert "002_half" in message
    assert "no_such_table" in message and "42P01" in message
    assert "rolled back" in message and "run again" in message
    assert await tables(conn) == {"migration_history", "migration_progress", "keep"}
    assert await conn.fetchval("SELECT count(*) FROM keep") == 0
    assert "extra" not in await columns(conn, "keep")
    rows = await history(conn)
    assert rows["001"]["state"] == "applied"
    assert rows["002"]["state"] == "failed"
    assert "no_such_table" in rows["002"]["last_error"]
    assert rows["002"]["steps_done"] == 0
    assert "003" not in rows  # the run stops at the first failure

    # Fixed, the whole migration applies from the start, then the next one.
    write_migrations(d, {"002_half.sql": "CREATE TABLE first_half (id int);"})
    result = await make_runner(db, d).migrate()
    assert result.applied == ["002", "003"]
    assert {"first_half", "after"} <= await tables(conn)
    rows = await history(conn)
    assert rows["002"]["state"] == "applied" and rows["002"]["last_error"] is None


COUNTED_STEPS = (
    "CREATE TABLE counter (n int);\n"
    "-- migrate:step work transaction:false\n"
    "INSERT INTO counter VALUES (1);\n"
    "INSERT INTO counter VALUES (2);\n"
    "{third};\n"
    "INSERT INTO counter VALUES (4);\n"
)


async def test_failed_statement_of_a_non_transactional_step_is_recorded(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(
        tmp_path / "m",
        {"001_steps.sql": COUNTED_STEPS.format(third="INSERT INTO missing VALUES (3)")},
    )
    message = await refusal(make_runner(db, d), MigrationFailedError)

    assert "001_steps: step work failed at statement: INSERT INTO missing VALUES (3)" in message
    assert "resumes at this statement" in message
    row = (await history(conn))["001"]
    assert row["state"] == "failed"
    assert row["steps_done"] == 1
    assert row["statements_done"] == 2
    assert row["failed_statement"] == "INSERT INTO missing VALUES (3);"
    assert "missing" in row["last_error"]
    assert [r["n"] for r in await conn.fetch("SELECT n FROM counter ORDER BY n")] == [1, 2]
    status = {s.version: s for s in await make_runner(db, d).get_migration_status()}
    assert status["001"].state == "failed"
    assert status["001"].error is not None and "INSERT INTO missing" in status["001"].error


async def test_fixed_non_transactional_step_resumes_without_replaying_what_succeeded(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(
        tmp_path / "m",
        {"001_steps.sql": COUNTED_STEPS.format(third="INSERT INTO missing VALUES (3)")},
    )
    with pytest.raises(MigrationFailedError) as failed:
        await make_runner(db, d).migrate()
    assert (failed.value.version, failed.value.sqlstate) == ("001", "42P01")
    assert failed.value.statement is not None and "missing" in failed.value.statement
    fixed = COUNTED_STEPS.format(third="INSERT INTO counter VALUES (3)")
    write_migrations(d, {"001_steps.sql": fixed})

    said: list[str] = []
    runner = make_runner(db, d, said)
    plan = await runner.plan()
    assert "resuming at step 2, statement 3" in plan.describe()
    await runner.migrate()

    assert [r["n"] for r in await conn.fetch("SELECT n FROM counter ORDER BY n")] == [1, 2, 3, 4]
    row = (await history(conn))["001"]
    assert row["state"] == "applied"
    assert row["checksum"] == checksum_of(fixed)
    assert row["last_error"] is None and row["failed_statement"] is None
    assert any("resuming 001_steps.sql" in line for line in said)
    assert any("file changed since the failed attempt" in line for line in said)


SESSION_STEP = """CREATE SCHEMA side;
CREATE TABLE gate (ok boolean);
INSERT INTO gate VALUES ({ok});
-- migrate:step placed transaction:false
-- migrate:session
SET search_path TO side, public;
SELECT 1 / (SELECT CASE WHEN ok THEN 1 ELSE 0 END FROM public.gate);
CREATE TABLE placed (v int);
"""


async def test_session_statements_are_replayed_when_a_step_resumes(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(tmp_path / "m", {"001_session.sql": SESSION_STEP.format(ok="false")})
    with pytest.raises(MigrationFailedError):
        await make_runner(db, d).migrate()
    assert (await history(conn))["001"]["statements_done"] == 1
    await conn.execute("UPDATE gate SET ok = true")
    said: list[str] = []
    await make_runner(db, d, said).migrate()
    # The SET ran again on the new connection, so the table landed in `side`.
    assert await conn.fetchval("SELECT to_regclass('side.placed') IS NOT NULL")
    assert await conn.fetchval("SELECT to_regclass('public.placed') IS NULL")
    assert any("re-running session statement 1" in line for line in said)


async def test_failed_transactional_step_after_a_non_transactional_one_resumes_at_it(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    steps = (
        "CREATE TABLE counter (n int);\n"
        "-- migrate:step once transaction:false\n"
        "INSERT INTO counter VALUES (1);\n"
        "-- migrate:step last\n"
        "INSERT INTO counter VALUES (2);\n"
        "{bad}\n"
    )
    d = write_migrations(tmp_path / "m", {"001_mixed.sql": steps.format(bad="SELECT 1/0;")})
    message = await refusal(make_runner(db, d), MigrationFailedError)

    assert "001_mixed: step last failed and was rolled back" in message
    assert "division by zero" in message
    row = (await history(conn))["001"]
    assert (row["state"], row["steps_done"]) == ("failed", 2)
    assert [r["n"] for r in await conn.fetch("SELECT n FROM counter")] == [1]

    write_migrations(d, {"001_mixed.sql": steps.format(bad="")})
    await make_runner(db, d).migrate()
    assert [r["n"] for r in await conn.fetch("SELECT n FROM counter ORDER BY n")] == [1, 2]
    assert (await states(conn))["001"] == "applied"


async def test_lock_timeout_in_a_non_transactional_step_is_resumable(
    db: DatabaseConfig,
    conn: asyncpg.Connection,
    other_session: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    d = write_migrations(tmp_path / "m", {"001_t.sql": LOCKED["001_t.sql"]})
    await make_runner(db, d).migrate()
    write_migrations(
        d,
        {
            "002_cols.sql": (
                "-- migrate:step cols transaction:false\n"
                "CREATE TABLE IF NOT EXISTS side (id int);\n"
                "ALTER TABLE t ADD COLUMN IF NOT EXISTS extra int;\n"
            )
        },
    )
    await other_session.execute("BEGIN; LOCK TABLE t IN ACCESS SHARE MODE")
    fast = dataclasses.replace(db, lock_timeout_ms=50, lock_retries=1)
    message = await refusal(make_runner(fast, d), LockTimeoutError)

    assert "002_cols: step cols: could not get a lock within 50 ms after 2 attempts" in message
    assert "run again to resume here" in message
    row = (await history(conn))["002"]
    assert (row["state"], row["steps_done"], row["statements_done"]) == ("failed", 0, 1)
    assert row["failed_statement"].startswith("ALTER TABLE t ADD COLUMN")
    assert "side" in await tables(conn)
    assert "extra" not in await columns(conn, "t")

    await other_session.execute("ROLLBACK")
    await make_runner(fast, d).migrate()
    assert "extra" in await columns(conn, "t")
    assert (await states(conn))["002"] == "applied"


async def test_create_index_concurrently_works_in_a_non_transactional_step(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(
        tmp_path / "m",
        {
            "001_idx.sql": (
                "CREATE TABLE t (a int);\n"
                "INSERT INTO t SELECT generate_series(1, 1000);\n"
                "-- migrate:step index transaction:false\n"
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_a_idx ON t (a);\n"
            )
        },
    )
    await make_runner(db, d).migrate()

    valid = await conn.fetchval(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 't_a_idx'::regclass"
    )
    assert valid is True
    assert (await states(conn))["001"] == "applied"


async def test_create_index_concurrently_in_a_transactional_step_fails_cleanly(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(
        tmp_path / "m",
        {"001_idx.sql": "CREATE TABLE t (a int);\nCREATE INDEX CONCURRENTLY t_a_idx ON t (a);\n"},
    )
    message = await refusal(make_runner(db, d), MigrationFailedError)

    assert "001_idx" in message
    assert "cannot run inside a transaction block" in message
    assert "25001" in message
    assert "t" not in await tables(conn)
    assert (await states(conn))["001"] == "failed"


async def test_invalid_index_of_an_interrupted_concurrent_build_is_rebuilt_on_resume(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(
        tmp_path / "m",
        {
            "001_uniq.sql": (
                "CREATE TABLE t (a int);\n"
                "INSERT INTO t VALUES (1), (1), (2);\n"
                "-- migrate:step unique_a transaction:false\n"
                "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS t_a_uniq ON t (a);\n"
            )
        },
    )
    message = await refusal(make_runner(db, d), MigrationFailedError)
    assert "23505" in message and "t_a_uniq" in message
    invalid = "SELECT indisvalid FROM pg_index WHERE indexrelid = 't_a_uniq'::regclass"
    assert await conn.fetchval(invalid) is False  # left behind, INVALID, by PostgreSQL
    assert (await history(conn))["001"]["statements_done"] == 0

    # Fix the data; IF NOT EXISTS alone would keep the INVALID index: the runner drops it.
    await conn.execute(
        "DELETE FROM t WHERE ctid <> (SELECT min(ctid) FROM t WHERE a = 1) AND a = 1"
    )
    said: list[str] = []
    await make_runner(db, d, said).migrate()

    assert await conn.fetchval(invalid) is True
    assert any("INVALID index(es) left by an interrupted build: t_a_uniq" in s for s in said)
    assert any("dropping INVALID index t_a_uniq" in s for s in said)
    assert (await states(conn))["001"] == "applied"


# ---- locks -------------------------------------------------------------------------


async def test_table_lock_held_past_lock_timeout_fails_after_retries(
    db: DatabaseConfig,
    conn: asyncpg.Connection,
    other_session: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    d = write_migrations(tmp_path / "m", {"001_t.sql": LOCKED["001_t.sql"]})
    await make_runner(db, d).migrate()
    write_migrations(d, LOCKED)
    await other_session.execute("BEGIN; LOCK TABLE t IN ACCESS SHARE MODE")

    fast = dataclasses.replace(db, lock_timeout_ms=100, lock_retries=3)
    said: list[str] = []
    started = time.monotonic()
    message = await refusal(make_runner(fast, d, said), LockTimeoutError)

    assert time.monotonic() - started < 10
    assert "002_alter: could not get a table lock within 100 ms after 4 attempts" in message
    assert "rolled back" in message and "run again" in message
    retries = [s for s in said if "002_alter: lock not available" in s]
    assert [r.split("; ")[1].split(" in ")[0] for r in retries] == [
        "retry 1/3",
        "retry 2/3",
        "retry 3/3",
    ]
    assert "extra" not in await columns(conn, "t")
    assert "side" not in await tables(conn)
    rows = await history(conn)
    assert rows["002"]["state"] == "failed"
    assert "LockNotAvailable" in rows["002"]["last_error"]


async def test_table_lock_released_during_the_retries_lets_the_migration_through(
    db: DatabaseConfig,
    conn: asyncpg.Connection,
    other_session: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    d = write_migrations(tmp_path / "m", {"001_t.sql": LOCKED["001_t.sql"]})
    await make_runner(db, d).migrate()
    write_migrations(d, LOCKED)
    await other_session.execute("BEGIN; LOCK TABLE t IN ACCESS SHARE MODE")

    fast = dataclasses.replace(db, lock_timeout_ms=100, lock_retries=5)
    said: list[str] = []
    task = asyncio.create_task(make_runner(fast, d, said).migrate())
    while not any("lock not available" in s for s in said):
        assert not task.done(), task
        await asyncio.sleep(0.02)
    await other_session.execute("ROLLBACK")
    result = await asyncio.wait_for(task, 20)

    assert result.applied == ["002"]
    assert "extra" in await columns(conn, "t")
    assert (await states(conn))["002"] == "applied"


async def test_advisory_lock_held_past_the_wait_timeout_names_the_holder(
    db: DatabaseConfig,
    conn: asyncpg.Connection,
    other_session: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    d = write_migrations(tmp_path / "m", {"001_a.sql": "CREATE TABLE a (id int);"})
    holder_pid = await other_session.fetchval("SELECT pg_backend_pid()")
    await other_session.execute(
        f"SELECT pg_advisory_lock({lock.LOCK_NAMESPACE}, {lock.MIGRATE_LOCK})"
    )

    said: list[str] = []
    runner = make_runner(db, d, said, settings=MigrationSettings(lock_wait_timeout=1))
    started = time.monotonic()
    message = await refusal(runner, LockTimeoutError)

    assert 1 <= time.monotonic() - started < 5
    assert f"the migration lock is still held by pid {holder_pid}" in message
    assert "'other_session'" in message
    assert "another migration is running" in message
    assert "lock_wait_timeout" in message
    assert any(f"waiting for the migration lock held by pid {holder_pid}" in s for s in said)
    assert await tables(conn) == set()

    # Released, the next run goes through.
    await other_session.execute("SELECT pg_advisory_unlock_all()")
    assert (await make_runner(db, d).migrate()).applied == ["000", "001"]


# ---- the connection cut mid-migration ----------------------------------------------


async def test_connection_killed_in_a_transactional_step_leaves_nothing_applied(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(tmp_path / "m", {"001_ok.sql": "CREATE TABLE ok (id int);"})
    await make_runner(db, d).migrate()
    slow = "CREATE TABLE slow_a (id int);\nSELECT pg_sleep(5);\nCREATE TABLE slow_b (id int);\n"
    write_migrations(d, {"002_slow.sql": slow})

    runner_db = dataclasses.replace(db, application_name=RUNNER_APP)
    task = asyncio.create_task(make_runner(runner_db, d).migrate())
    await kill_backend_running(conn, "pg_sleep(5)")
    with pytest.raises(ConnectionLostError) as info:
        await asyncio.wait_for(task, 10)

    assert info.value.exit_code == ExitCode.INTERRUPTED == 8
    assert "002_slow" in info.value.message
    assert "connection was lost" in info.value.message
    assert "run again" in info.value.message
    assert "slow_a" not in await tables(conn)
    assert "002" not in await history(conn)

    write_migrations(d, {"002_slow.sql": slow.replace("pg_sleep(5)", "pg_sleep(0)")})
    assert (await make_runner(db, d).migrate()).applied == ["002"]
    assert {"slow_a", "slow_b"} <= await tables(conn)


async def test_connection_killed_in_a_non_transactional_step_resumes_where_it_stopped(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    slow = (
        "CREATE TABLE counter (n int);\n"
        "-- migrate:step work transaction:false\n"
        "INSERT INTO counter VALUES (1);\n"
        "SELECT pg_sleep(5);\n"
        "INSERT INTO counter VALUES (2);\n"
    )
    d = write_migrations(tmp_path / "m", {"001_slow.sql": slow})
    runner_db = dataclasses.replace(db, application_name=RUNNER_APP)
    task = asyncio.create_task(make_runner(runner_db, d).migrate())
    await kill_backend_running(conn, "pg_sleep(5)")
    with pytest.raises(ConnectionLostError) as info:
        await asyncio.wait_for(task, 10)

    assert info.value.exit_code == 8
    assert "001_slow: step work" in info.value.message
    row = (await history(conn))["001"]
    assert row["state"] == "running"  # nobody could record the failure: interrupted
    assert (row["steps_done"], row["statements_done"]) == (1, 1)
    assert [r["n"] for r in await conn.fetch("SELECT n FROM counter")] == [1]
    status = {s.version: s for s in await make_runner(db, d).get_migration_status()}
    assert status["001"].state == "running" and status["001"].needs_attention

    write_migrations(d, {"001_slow.sql": slow.replace("pg_sleep(5)", "pg_sleep(0)")})
    said: list[str] = []
    await make_runner(db, d, said).migrate()
    assert [r["n"] for r in await conn.fetch("SELECT n FROM counter ORDER BY n")] == [1, 2]
    assert (await states(conn))["001"] == "applied"
    assert any("resuming 001_slow.sql" in s for s in said)


async def test_cancelled_run_rolls_back_and_releases_the_lock(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    # Ctrl-C on the CLI, or an engine shut down while it migrates: the task is cancelled.
    d = write_migrations(
        tmp_path / "m",
        {"001_slow.sql": "CREATE TABLE slow (id int);\nSELECT pg_sleep(5);\n"},
    )
    own = await asyncpg.connect(
        **dataclasses.replace(db, application_name=RUNNER_APP).connect_kwargs()
    )
    try:
        task = asyncio.create_task(make_runner(db, d).migrate(conn=own))
        while not await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
            "AND state = 'active' AND position('pg_sleep(5)' in query) > 0",
            RUNNER_APP,
        ):
            assert not task.done(), task
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)

        # The caller's connection is usable, out of any transaction, and holds no lock.
        assert await own.fetchval("SELECT 1") == 1
        assert not own.is_in_transaction()
        held = await own.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        assert held == 0
    finally:
        await own.close()
    assert "slow" not in await tables(conn)
    assert list(await history(conn)) == ["000"]


async def test_explicit_commit_in_a_migration_is_refused_before_anything_runs(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(
        tmp_path / "m",
        {
            "001_psql_style.sql": (
                "BEGIN;\nCREATE TABLE a (id int);\nCOMMIT;\nCREATE TABLE b (id int);\n"
            )
        },
    )
    message = await refusal(make_runner(db, d), ValidationError)
    assert message.startswith("001_psql_style.sql:1: BEGIN is not allowed in a migration")
    assert await tables(conn) == set()


# ---- background steps --------------------------------------------------------------

BACKGROUND = {
    "001_bg.sql": (
        "CREATE TABLE t (a int, b int);\n"
        "INSERT INTO t SELECT generate_series(1, 100);\n"
        "-- migrate:step backfill background\n"
        "UPDATE t SET b = a * 2 WHERE b IS NULL;\n"
        "-- migrate:step index background transaction:false\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_b_idx ON t (b);\n"
    ),
    "002_after.sql": "-- migrate:depends 001\nCREATE TABLE after (id int);",
}


async def test_background_steps_wait_and_run_background_completes_them(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(tmp_path / "m", BACKGROUND)
    runner = make_runner(db, d)
    result = await runner.migrate(background=False)

    assert result.applied == ["000", "001", "002"]  # a background migration counts as applied
    assert result.background_pending == ["001"]
    assert await states(conn) == {"000": "applied", "001": "background", "002": "applied"}
    assert await conn.fetchval("SELECT count(*) FROM t WHERE b IS NULL") == 100
    assert "after" in await tables(conn)
    status = {s.version: s.state for s in await runner.get_migration_status()}
    assert status["001"] == "background"

    assert await runner.run_background() == ["001"]

    assert await conn.fetchval("SELECT count(*) FROM t WHERE b IS NULL") == 0
    row = (await history(conn))["001"]
    assert row["state"] == "applied"
    assert row["background_ms"] is not None
    assert set(json.loads(row["step_timings"])) >= {"backfill", "index"}
    assert await runner.run_background() == []


async def test_background_step_cut_off_resumes_where_it_stopped(
    db: DatabaseConfig,
    conn: asyncpg.Connection,
    other_session: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    d = write_migrations(
        tmp_path / "m",
        {
            "001_bg.sql": (
                "CREATE TABLE c (n int);\n"
                "-- migrate:step fill background transaction:false\n"
                "INSERT INTO c VALUES (1);\n"
                "SELECT pg_advisory_xact_lock(4242);\n"  # blocks while the test holds it
                "INSERT INTO c VALUES (2);\n"
                "-- migrate:step more background\n"
                "INSERT INTO c VALUES (3);\n"
            )
        },
    )
    await make_runner(db, d).migrate(background=False)
    await other_session.execute("SELECT pg_advisory_lock(4242)")
    runner_db = dataclasses.replace(db, application_name=RUNNER_APP)
    task = asyncio.create_task(make_runner(runner_db, d).run_background())
    await kill_backend_running(conn, "pg_advisory_xact_lock(4242)")
    with pytest.raises(ConnectionLostError) as info:
        await asyncio.wait_for(task, 10)

    assert info.value.exit_code == 8
    assert "001_bg: step fill" in info.value.message
    row = (await history(conn))["001"]
    assert (row["state"], row["steps_done"], row["statements_done"]) == ("background", 1, 1)
    assert [r["n"] for r in await conn.fetch("SELECT n FROM c")] == [1]

    await other_session.execute("SELECT pg_advisory_unlock(4242)")
    said: list[str] = []
    assert await make_runner(db, d, said).run_background() == ["001"]
    assert [r["n"] for r in await conn.fetch("SELECT n FROM c ORDER BY n")] == [1, 2, 3]
    assert (await states(conn))["001"] == "applied"
    assert any("background steps of 001_bg.sql resume where they stopped" in s for s in said)


_PARALLEL_DRAIN = """
CREATE TABLE work (n int PRIMARY KEY, done_by int, tag text, runs int NOT NULL DEFAULT 0);
INSERT INTO work (n) SELECT generate_series(1, 40);
CREATE TABLE poison (n int);
-- Claims one item at a time, as the 001 backfill claims chunks.
CREATE PROCEDURE drain() LANGUAGE plpgsql AS $$
DECLARE
    item int;
BEGIN
    LOOP
        item := NULL;
        SELECT n INTO item FROM work WHERE done_by IS NULL ORDER BY n LIMIT 1
        FOR UPDATE SKIP LOCKED;
        EXIT WHEN item IS NULL;
        PERFORM pg_sleep(0.02);
        IF EXISTS (SELECT 1 FROM poison p WHERE p.n = item) THEN
            RAISE EXCEPTION 'poisoned item %', item;
        END IF;
        UPDATE work SET done_by = pg_backend_pid(), runs = runs + 1,
                        tag = current_setting('cex.worker_tag', true)
        WHERE n = item;
        COMMIT;
    END LOOP;
END
$$;
-- migrate:step drain background transaction:false parallel
-- migrate:session
SELECT set_config('cex.worker_tag', 'drainer', false);
CALL drain();
"""


async def other_sessions_gone(conn: asyncpg.Connection) -> bool:
    """True once no session but `conn` is on the test database (the server ends a
    cancelled or closed session a moment after the client lets go)."""
    for _ in range(50):
        left = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        if not left:
            return True
        await asyncio.sleep(0.1)
    return False


async def assert_every_item_done_once(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch("SELECT runs FROM work")
    assert len(rows) == 40 and all(r["runs"] == 1 for r in rows)


@pytest.mark.parametrize("sessions", [1, 3])
async def test_parallel_step_runs_on_the_configured_number_of_sessions(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path, sessions: int
) -> None:
    d = write_migrations(tmp_path / "m", {"001_drain.sql": _PARALLEL_DRAIN})
    settings = MigrationSettings(lock_wait_timeout=10, parallel_sessions=sessions)
    said: list[str] = []
    runner = MigrationRunner(
        db, source=DirectorySource(d), settings=settings, say=said.append, verbose=True
    )
    await runner.migrate()

    await assert_every_item_done_once(conn)
    rows = await conn.fetch("SELECT done_by, tag FROM work")
    # the session statement ran on every session before the shared statement
    assert {r["tag"] for r in rows} == {"drainer"}
    assert len({r["done_by"] for r in rows}) == sessions
    assert (await states(conn))["001"] == "applied"
    on_many = [s for s in said if "running on 3 sessions at once" in s]
    assert len(on_many) == (2 if sessions == 3 else 0)  # both statements of the step
    assert await other_sessions_gone(conn)  # no session of the runner is left behind


async def test_parallel_step_failing_on_one_session_stops_all_and_resumes(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(tmp_path / "m", {"001_drain.sql": _PARALLEL_DRAIN})
    settings = MigrationSettings(lock_wait_timeout=10, parallel_sessions=2)
    await make_runner(db, d, settings=settings).migrate(background=False)
    await conn.execute("INSERT INTO poison VALUES (20)")

    with pytest.raises(MigrationFailedError) as info:
        await make_runner(db, d, settings=settings).run_background()
    assert info.value.exit_code == 1
    assert "poisoned item 20" in info.value.message
    assert "001_drain: step drain" in info.value.message
    row = (await history(conn))["001"]
    assert row["state"] == "background" and "poisoned item 20" in row["last_error"]
    assert row["statements_done"] == 1  # the session statement; the CALL resumes
    # the other session was stopped: nothing runs on, and item 20 is not done
    assert await other_sessions_gone(conn)
    done = await conn.fetchval("SELECT count(*) FROM work WHERE done_by IS NOT NULL")
    assert 0 < done < 40
    assert await conn.fetchval("SELECT done_by FROM work WHERE n = 20") is None

    await conn.execute("DELETE FROM poison")
    assert await make_runner(db, d, settings=settings).run_background() == ["001"]
    await assert_every_item_done_once(conn)
    row = (await history(conn))["001"]
    assert row["state"] == "applied" and row["last_error"] is None


async def test_parallel_step_losing_a_session_is_a_connection_error_and_resumes(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(tmp_path / "m", {"001_drain.sql": _PARALLEL_DRAIN})
    settings = MigrationSettings(lock_wait_timeout=10, parallel_sessions=2)
    await make_runner(db, d, settings=settings).migrate(background=False)
    task = asyncio.create_task(make_runner(db, d, settings=settings).run_background())
    for _ in range(200):
        pids = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND query = 'CALL drain();' AND state = 'active'"
        )
        if len(pids) == 2:
            break
        await asyncio.sleep(0.01)
    assert len(pids) == 2, "both sessions should be draining"
    await conn.execute("SELECT pg_terminate_backend($1)", pids[1]["pid"])

    with pytest.raises(ConnectionLostError) as info:
        await asyncio.wait_for(task, 30)
    assert info.value.exit_code == 8
    assert "001_drain: step drain" in info.value.message
    row = (await history(conn))["001"]
    assert (row["state"], row["statements_done"]) == ("background", 1)

    assert await make_runner(db, d, settings=settings).run_background() == ["001"]
    await assert_every_item_done_once(conn)
    assert (await states(conn))["001"] == "applied"


async def test_parallel_step_that_cannot_open_its_sessions_says_so_and_resumes(
    admin_config: DatabaseConfig, db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """A role allowed one connection: the runner's own works, the parallel step's second
    session is refused by the server."""
    role = f"cex_onecon_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(**admin_config.connect_kwargs())
    await admin.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 1')
    try:
        await conn.execute(f'GRANT CREATE ON SCHEMA public TO "{role}"')
        d = write_migrations(tmp_path / "m", {"001_drain.sql": _PARALLEL_DRAIN})
        settings = MigrationSettings(lock_wait_timeout=10, parallel_sessions=2)
        as_role = dataclasses.replace(db, user=role)
        await make_runner(as_role, d, settings=settings).migrate(background=False)

        with pytest.raises(ConnectError) as info:
            await make_runner(as_role, d, settings=settings).run_background()
        assert info.value.exit_code == 3
        assert "001_drain: step drain: could not open session 2 of the 2" in info.value.message
        assert "too many connections" in info.value.message
        assert "migrations.parallel_sessions" in info.value.message
        row = (await history(conn))["001"]
        # the foreground step is done; the parallel step has not started a statement
        assert (row["state"], row["steps_done"], row["statements_done"]) == ("background", 1, 0)
        assert await conn.fetchval("SELECT count(*) FROM work WHERE runs > 0") == 0

        # The ways out the message names: more connections (or fewer sessions).
        await admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT 2')
        assert await make_runner(as_role, d, settings=settings).run_background() == ["001"]
        await assert_every_item_done_once(conn)
    finally:
        await conn.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


async def test_migrate_runs_background_steps_by_default(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(tmp_path / "m", BACKGROUND)
    result = await make_runner(db, d).migrate()
    assert result.background_done == ["001"]
    assert result.background_pending == []
    assert set((await states(conn)).values()) == {"applied"}


async def test_concurrent_runners_apply_each_migration_exactly_once(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(
        tmp_path / "m",
        {
            # Not idempotent on purpose: a second application would fail.
            "001_a.sql": "CREATE TABLE a (id int);\nSELECT pg_sleep(0.2);",
            "002_b.sql": "CREATE TABLE b (id int);\nINSERT INTO a VALUES (2);",
        },
    )
    results = await asyncio.gather(*(make_runner(db, d).migrate() for _ in range(4)))

    applied = sorted(v for r in results for v in r.applied)
    assert applied == ["000", "001", "002"]
    assert await conn.fetchval("SELECT count(*) FROM a") == 1
    assert set((await states(conn)).values()) == {"applied"}


async def test_dry_run_plan_changes_nothing(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(
        tmp_path / "m",
        {
            "001_a.sql": "CREATE TABLE a (id int);\n-- migrate:step idx transaction:false\n"
            "CREATE INDEX CONCURRENTLY a_id ON a (id);",
            "002_f.sql": "-- migrate:feature trade_collection\nCREATE TABLE f (id int);",
        },
    )
    plan = await make_runner(db, d, features={"trade_collection": False}).plan()

    text = plan.describe(sql=True)
    assert "apply 000_create_migration_infrastructure.sql" in text
    assert "apply 001_a.sql" in text
    assert "step idx: statement by statement, no transaction" in text
    assert "CREATE INDEX CONCURRENTLY a_id ON a (id);" in text
    assert "skip 002_f.sql: feature trade_collection is disabled" in text
    assert await tables(conn) == set()


TWO_BACKGROUND = {
    "001_a.sql": "CREATE TABLE a (id int);\n-- migrate:step fill background\n"
    "INSERT INTO a VALUES (1);\n",
    "002_b.sql": "CREATE TABLE b (id int);\n-- migrate:step fill background\n"
    "INSERT INTO b VALUES (1);\n",
}


async def test_target_does_not_run_background_steps_of_migrations_above_it(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(tmp_path / "m", TWO_BACKGROUND)
    result = await make_runner(db, d).migrate(target_version="001")

    assert result.applied == ["000", "001"]
    assert result.background_done == ["001"]
    assert await states(conn) == {"000": "applied", "001": "applied"}
    assert "b" not in await tables(conn)


async def test_background_run_leaves_a_migration_whose_foreground_failed_alone(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    broken = dict(TWO_BACKGROUND)
    broken["002_b.sql"] = broken["002_b.sql"].replace(
        "CREATE TABLE b (id int);", "CREATE TABLE b (id int);\nSELECT * FROM nowhere;"
    )
    d = write_migrations(tmp_path / "m", broken)
    runner = make_runner(db, d)
    with pytest.raises(MigrationFailedError) as failed:
        await runner.migrate()
    assert failed.value.version == "002"
    assert await states(conn) == {"000": "applied", "001": "background", "002": "failed"}

    assert await runner.run_background() == ["001"]

    # 002 must not be marked applied by running only its background steps.
    assert await states(conn) == {"000": "applied", "001": "applied", "002": "failed"}
    assert "b" not in await tables(conn)


# ---- what the operator sees --------------------------------------------------------


async def test_notices_from_sql_are_passed_on_as_they_arrive(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    d = write_migrations(
        tmp_path / "m",
        {
            "001_talk.sql": (
                "DO $$ BEGIN RAISE NOTICE 'backfilled % rows', 42; END $$;\nSELECT pg_sleep(0.5);\n"
            )
        },
    )
    said: list[tuple[float, str]] = []
    runner = MigrationRunner(
        db,
        source=DirectorySource(d),
        features={},
        settings=MigrationSettings(lock_wait_timeout=10),
        say=lambda m: said.append((time.monotonic(), m)),
    )
    await runner.migrate()

    [(noticed, notice)] = [(t, m) for t, m in said if "NOTICE" in m]
    assert "001_talk: NOTICE: backfilled 42 rows" in notice
    [done] = [t for t, m in said if "applied 001_talk.sql" in m]
    assert done - noticed >= 0.4  # printed before the statement after it finished


async def test_step_timings_and_execution_time_are_recorded(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(
        tmp_path / "m",
        {
            "001_timed.sql": (
                "CREATE TABLE t (a int);\n"
                "-- migrate:step slow\n"
                "SELECT pg_sleep(0.2);\n"
                "-- migrate:step index transaction:false\n"
                "CREATE INDEX CONCURRENTLY t_a ON t (a);\n"
            ),
            "002_single.sql": "SELECT pg_sleep(0.1);",
        },
    )
    runner = make_runner(db, d)
    await runner.migrate()

    rows = await history(conn)
    timed = json.loads(rows["001"]["step_timings"])
    assert set(timed) == {"main", "slow", "index"}
    assert timed["slow"] >= 200
    assert rows["001"]["execution_ms"] >= 200
    assert json.loads(rows["002"]["step_timings"])["all"] >= 100
    assert rows["002"]["execution_ms"] >= 100
    status = {s.version: s for s in await runner.get_migration_status()}
    assert status["001"].step_timings["slow"] >= 200
    assert "001 steps: main" in format_table(list(status.values()), verbose=True)


async def test_status_shows_every_state_and_a_changed_checksum(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(
        tmp_path / "m",
        {
            "001_core.sql": "CREATE TABLE core (id int);",
            "002_feature.sql": "-- migrate:feature trade_collection\nCREATE TABLE f (id int);",
            "003_bg.sql": (
                "CREATE TABLE bg (id int);\n-- migrate:step fill background\nSELECT 1;\n"
            ),
            "004_broken.sql": "SELECT * FROM nowhere;",
            "005_later.sql": "CREATE TABLE later (id int);",
        },
    )
    runner = make_runner(db, d)
    with pytest.raises(MigrationFailedError):
        await runner.migrate(background=False)
    await conn.execute(
        "INSERT INTO migration_history (version, name, checksum) VALUES ('099', 'future', 'x')"
    )
    write_migrations(d, {"001_core.sql": "CREATE TABLE core (id bigint);"})

    rows = await runner.get_migration_status()

    by_version = {r.version: r for r in rows}
    assert {v: r.state for v, r in by_version.items()} == {
        "000": "applied",
        "001": "applied",
        "002": "disabled",
        "003": "background",
        "004": "failed",
        "005": "pending",
        "099": "unknown",
    }
    assert by_version["000"].checksum_ok is True
    assert by_version["001"].checksum_ok is False
    assert by_version["004"].error is not None and "nowhere" in by_version["004"].error
    table = format_table(rows)
    assert "CHANGED" in table
    assert "004 error:" in table
    for state in ("disabled", "background", "failed", "pending", "unknown"):
        assert state in table
    payload = json.loads(to_json(rows))
    assert payload["needs_attention"] is True
    assert {m["version"]: m["state"] for m in payload["migrations"]}["002"] == "disabled"


async def test_feature_enabled_later_applies_its_migration_after_higher_versions(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    d = write_migrations(
        tmp_path / "m",
        {
            "001_trades.sql": "-- migrate:feature trade_collection\nCREATE TABLE trades (id int);",
            "002_core.sql": "CREATE TABLE core (id int);",
            "003_core.sql": "CREATE TABLE core2 (id int);",
        },
    )
    off = await make_runner(db, d, features={"trade_collection": False}).migrate()
    assert off.applied == ["000", "002", "003"]
    assert [m.version for m in off.plan.disabled] == ["001"]
    assert "trades" not in await tables(conn)

    said: list[str] = []
    on = await make_runner(db, d, said, features={"trade_collection": True}).migrate()

    assert on.applied == ["001"]
    assert "trades" in await tables(conn)
    rows = await history(conn)
    assert rows["001"]["state"] == "applied"
    assert rows["001"]["feature"] == "trade_collection"
    assert any("applying 001_trades.sql" in s for s in said)


async def test_manual_psql_run_of_000_is_adopted_with_its_checksum(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    proc = subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(INFRA)],
        env=pg_env(db),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    row = (await history(conn))["000"]
    assert (row["state"], row["checksum"], row["applied_from"]) == ("applied", None, "psql")

    d = write_migrations(tmp_path / "m", {"001_a.sql": "CREATE TABLE a (id int);"})
    runner = make_runner(db, d)
    [infra] = [s for s in await runner.get_migration_status() if s.version == "000"]
    assert infra.state == "applied" and infra.checksum_ok is None
    said: list[str] = []
    result = await make_runner(db, d, said).migrate()

    assert result.applied == ["001"]
    assert any(
        "000_create_migration_infrastructure.sql was applied by hand with psql; "
        "recorded its checksum" in s
        for s in said
    )
    row = (await history(conn))["000"]
    assert row["checksum"] == checksum_of(INFRA.read_text())
    assert row["applied_from"] == "psql"
    [infra] = [s for s in await runner.get_migration_status() if s.version == "000"]
    assert infra.checksum_ok is True


# ---- the database refuses us -------------------------------------------------------


async def test_missing_privilege_is_refused_by_preflight(
    admin_config: DatabaseConfig, db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    role = f"cex_norights_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(**admin_config.connect_kwargs())
    await admin.execute(f'CREATE ROLE "{role}" LOGIN')
    # PostgreSQL 15's default; before 15 every role may create in public
    # (docs/postgresql-versions.md).
    await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    try:
        d = write_migrations(tmp_path / "m", {"001_a.sql": "CREATE TABLE a (id int);"})
        as_role = dataclasses.replace(db, user=role)
        message = await refusal(make_runner(as_role, d), PreflightError)

        assert f"user {role!r} may not create objects in schema public" in message
        assert f"GRANT CREATE ON SCHEMA public TO {role}" in message
        assert await tables(conn) == set()

        # The way out the message names.
        await conn.execute(f'GRANT CREATE ON SCHEMA public TO "{role}"')
        assert (await make_runner(as_role, d).migrate()).applied == ["000", "001"]
        assert (await history(conn))["001"]["applied_by"] == role
    finally:
        await conn.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


async def test_long_open_transaction_is_warned_about_with_its_pid(
    db: DatabaseConfig, conn: asyncpg.Connection, other_session: asyncpg.Connection
) -> None:
    await other_session.execute("BEGIN; SELECT 1")
    pid = await other_session.fetchval("SELECT pg_backend_pid()")
    await asyncio.sleep(1.1)

    pre = await run_preflight(conn, db.display, long_transaction_seconds=1)

    [warning] = [w for w in pre.warnings if "transaction open for" in w]
    assert f"pid {pid}" in warning
    assert "'other_session'" in warning
    assert "lock_timeout" in warning
    await other_session.execute("ROLLBACK")


async def test_unreachable_server_is_a_connect_error(db: DatabaseConfig, tmp_path: Path) -> None:
    d = write_migrations(tmp_path / "m", {"001_a.sql": "CREATE TABLE a (id int);"})
    nowhere = dataclasses.replace(db, port=1, connect_timeout=2)
    message = await refusal(make_runner(nowhere, d), ConnectError)
    assert "cannot reach the server" in message
    assert "PGHOST" in message


async def test_unknown_user_is_a_connect_error_naming_the_user(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    # The test server trusts every connection, so a wrong password cannot be shown
    # here; an unknown role takes the same authentication-failure path.
    d = write_migrations(tmp_path / "m", {"001_a.sql": "CREATE TABLE a (id int);"})
    stranger = dataclasses.replace(db, user="cex_nobody_here", password="secret-pw")
    message = await refusal(make_runner(stranger, d), ConnectError)
    assert "authentication failed for user 'cex_nobody_here'" in message
    assert "secret-pw" not in message
    assert await tables(conn) == set()


async def test_missing_database_is_a_connect_error_naming_it(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    d = write_migrations(tmp_path / "m", {"001_a.sql": "CREATE TABLE a (id int);"})
    missing = dataclasses.replace(db, database="cex_no_such_db")
    message = await refusal(make_runner(missing, d), ConnectError)
    assert "database 'cex_no_such_db' does not exist" in message
