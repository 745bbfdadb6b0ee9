"""ensure_schema(): the boot hook — cheap when current, exactly-once under concurrency,
feature toggles, follower mode, background work handed to a supervised task."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest

from cex_arbitrage.config import MigrationSettings
from cex_arbitrage.db.migrations import DirectorySource, ensure_schema
from cex_arbitrage.db.migrator.lock import LOCK_NAMESPACE, MIGRATE_LOCK
from cex_arbitrage.db.structs import DatabaseConfig
from cex_arbitrage.errors import ConnectError, ExitCode, SchemaNotReadyError
from tests.support.cli import write_migrations

FEATURE_SET = {
    "001_feature_a_table.sql": "-- migrate:feature alpha\nCREATE TABLE alpha_t (id int);\n",
    "002_core_table.sql": "CREATE TABLE core_t (id int);\n",
    "003_feature_b_table.sql": "-- migrate:feature beta\nCREATE TABLE beta_t (id int);\n",
}


async def versions(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT version FROM migration_history WHERE version ~ '^[0-9]+$' ORDER BY version"
    )
    return [r["version"] for r in rows]


async def table_exists(conn: asyncpg.Connection, name: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name))


async def test_first_boot_applies_and_second_boot_is_a_noop(
    conn: asyncpg.Connection, db: DatabaseConfig, tmp_path: Path
) -> None:
    source = DirectorySource(write_migrations(tmp_path / "m", FEATURE_SET))
    features = {"alpha": True, "beta": True}
    first = await ensure_schema(conn, features=features, source=source, config=db)
    assert first.applied == ["000", "001", "002", "003"]
    second = await ensure_schema(conn, features=features, source=source, config=db)
    assert second.applied == [] and second.background is None


async def test_boot_check_takes_no_lock_when_nothing_is_pending(
    conn: asyncpg.Connection, db: DatabaseConfig, tmp_path: Path
) -> None:
    source = DirectorySource(write_migrations(tmp_path / "m", FEATURE_SET))
    features = {"alpha": True, "beta": True}
    await ensure_schema(conn, features=features, source=source, config=db)
    holder = await asyncpg.connect(**db.connect_kwargs())
    try:
        await holder.execute("SELECT pg_advisory_lock($1, $2)", LOCK_NAMESPACE, MIGRATE_LOCK)
        settings = MigrationSettings(lock_wait_timeout=0.5)
        started = time.monotonic()
        report = await ensure_schema(
            conn, features=features, source=source, config=db, settings=settings
        )
        assert report.applied == []
        assert time.monotonic() - started < 0.4  # never waited for the held lock
    finally:
        await holder.close()


async def test_boot_accepts_a_pool_and_a_config(db: DatabaseConfig, tmp_path: Path) -> None:
    source = DirectorySource(write_migrations(tmp_path / "m", FEATURE_SET))
    pool = await asyncpg.create_pool(**db.connect_kwargs(), min_size=1, max_size=2)
    try:
        report = await ensure_schema(pool, features={"alpha": True}, source=source)
        assert report.applied == ["000", "001", "002"]
        assert report.disabled == ["003"]
    finally:
        await pool.close()
    again = await ensure_schema(db, features={"alpha": True, "beta": True}, source=source)
    assert again.applied == ["003"]


async def test_feature_turned_on_later_applies_below_newer_versions(
    conn: asyncpg.Connection, db: DatabaseConfig, tmp_path: Path
) -> None:
    directory = write_migrations(tmp_path / "m", FEATURE_SET)
    source = DirectorySource(directory)
    report = await ensure_schema(conn, features={"alpha": True}, source=source, config=db)
    assert "003" in report.disabled and not await table_exists(conn, "beta_t")
    # A newer core migration lands and is applied while beta stays off.
    (directory / "004_core_later.sql").write_text("CREATE TABLE later_t (id int);\n")
    source = DirectorySource(directory)
    await ensure_schema(conn, features={"alpha": True}, source=source, config=db)
    assert await versions(conn) == ["000", "001", "002", "004"]
    # Beta turned on: 003 is applied now, although 004 is above it.
    report = await ensure_schema(
        conn, features={"alpha": True, "beta": True}, source=source, config=db
    )
    assert report.applied == ["003"]
    assert await table_exists(conn, "beta_t")


async def test_sixteen_engines_booting_at_once_apply_each_migration_once(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    source = DirectorySource(write_migrations(tmp_path / "m", FEATURE_SET))
    features = {"alpha": True, "beta": True}
    reports = await asyncio.gather(
        *(ensure_schema(db, features=features, source=source) for _ in range(16))
    )
    applied = sorted(v for r in reports for v in r.applied)
    assert applied == ["000", "001", "002", "003"]
    conn = await asyncpg.connect(**db.connect_kwargs())
    try:
        assert await versions(conn) == ["000", "001", "002", "003"]
    finally:
        await conn.close()


async def test_follower_waits_until_another_instance_migrated(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    source = DirectorySource(write_migrations(tmp_path / "m", FEATURE_SET))
    features = {"alpha": True, "beta": True}
    lines: list[str] = []
    follower = asyncio.create_task(
        ensure_schema(
            db,
            features=features,
            source=source,
            say=lines.append,
            settings=MigrationSettings(mode="wait", wait_timeout=20, progress_interval=0.2),
        )
    )
    await asyncio.sleep(1.0)
    assert not follower.done()
    assert any("waiting for the schema" in line for line in lines)
    await ensure_schema(db, features=features, source=source)
    report = await asyncio.wait_for(follower, 10)
    assert report.applied == []


async def test_follower_gives_up_with_a_clear_error(db: DatabaseConfig, tmp_path: Path) -> None:
    source = DirectorySource(write_migrations(tmp_path / "m", FEATURE_SET))
    with pytest.raises(SchemaNotReadyError) as info:
        await ensure_schema(
            db, source=source, settings=MigrationSettings(mode="wait", wait_timeout=1.0)
        )
    assert "000_create_migration_infrastructure.sql" in info.value.message
    assert "mode is 'wait'" in info.value.message
    assert info.value.exit_code == ExitCode.PENDING


async def test_background_steps_do_not_hold_up_boot(
    conn: asyncpg.Connection, db: DatabaseConfig, tmp_path: Path
) -> None:
    source = DirectorySource(
        write_migrations(
            tmp_path / "m",
            {
                "001_slow_backfill.sql": (
                    "-- migrate:step schema\nCREATE TABLE bf (id int, done bool);\n"
                    "-- migrate:step backfill background\n"
                    "SELECT pg_sleep(1.5);\nINSERT INTO bf VALUES (1, true);\n"
                ),
            },
        )
    )
    started = time.monotonic()
    report = await ensure_schema(conn, source=source, config=db)
    assert time.monotonic() - started < 1.2
    assert report.applied == ["000", "001"] and report.background is not None
    state = await conn.fetchval("SELECT state FROM migration_history WHERE version = '001'")
    assert state == "background"
    await asyncio.wait_for(report.background.wait(), 20)
    assert report.background.done
    assert await conn.fetchval("SELECT count(*) FROM bf") == 1
    row = await conn.fetchrow(
        "SELECT state, finished_at FROM migration_history WHERE version='001'"
    )
    assert row is not None and row["state"] == "applied" and row["finished_at"] is not None


async def test_background_work_stops_cleanly_and_resumes(
    conn: asyncpg.Connection, db: DatabaseConfig, tmp_path: Path
) -> None:
    # The sleep lasts while the gate table has a row, so the test decides when
    # the step may finish without editing the (applied) file.
    source = DirectorySource(
        write_migrations(
            tmp_path / "m",
            {
                "001_two_phase.sql": (
                    "CREATE TABLE marks (n int);\nCREATE TABLE gate (closed bool);\n"
                    "INSERT INTO gate VALUES (true);\n"
                    "-- migrate:step first background transaction:false\n"
                    "INSERT INTO marks VALUES (1);\n"
                    "SELECT pg_sleep(CASE WHEN EXISTS (SELECT 1 FROM gate) THEN 30 ELSE 0 END);\n"
                    "INSERT INTO marks VALUES (2);\n"
                ),
            },
        )
    )
    report = await ensure_schema(conn, source=source, config=db)
    assert report.background is not None
    for _ in range(100):
        if await conn.fetchval("SELECT count(*) FROM marks") == 1:
            break
        await asyncio.sleep(0.05)
    started = time.monotonic()
    await asyncio.wait_for(report.background.stop(), 10)
    assert report.background.done and time.monotonic() - started < 5
    # Shutdown mid-step: statement 1 is recorded, the sleep was cancelled.
    row = await conn.fetchrow(
        "SELECT state, statements_done FROM migration_history WHERE version = '001'"
    )
    assert row is not None and row["state"] == "background" and row["statements_done"] == 1
    await conn.execute("DELETE FROM gate")
    again = await ensure_schema(conn, source=source, config=db)
    assert again.applied == [] and again.background is not None
    await asyncio.wait_for(again.background.wait(), 20)
    # Resumed at the sleep: the first insert was not replayed.
    assert [r["n"] for r in await conn.fetch("SELECT n FROM marks ORDER BY n")] == [1, 2]
    assert await conn.fetchval("SELECT state FROM migration_history WHERE version='001'") == (
        "applied"
    )


async def test_progress_is_logged_while_a_long_migration_runs(
    conn: asyncpg.Connection, db: DatabaseConfig, tmp_path: Path
) -> None:
    source = DirectorySource(
        write_migrations(tmp_path / "m", {"001_slow.sql": "SELECT pg_sleep(1.2);\n"})
    )
    lines: list[str] = []
    await ensure_schema(
        conn,
        source=source,
        config=db,
        say=lines.append,
        settings=MigrationSettings(progress_interval=0.3),
    )
    progress = [line for line in lines if "still migrating" in line]
    assert len(progress) >= 2
    assert "001_slow" in progress[0] and db.database in progress[0]


async def test_unreachable_database_at_boot_fails_after_the_wait(tmp_path: Path) -> None:
    config = DatabaseConfig(host="127.0.0.1", port=1, database="nowhere")
    lines: list[str] = []
    started = time.monotonic()
    with pytest.raises(ConnectError) as info:
        await ensure_schema(
            config, settings=MigrationSettings(boot_wait_timeout=1.0), say=lines.append
        )
    assert 0.9 <= time.monotonic() - started < 5
    assert "127.0.0.1:1" in info.value.message and "boot_wait_timeout" in info.value.message
    assert any("not reachable yet" in line for line in lines)
    assert info.value.exit_code == ExitCode.CONNECT


async def test_boot_records_the_fingerprint_after_applying_and_after_background_only(
    conn: asyncpg.Connection, db: DatabaseConfig
) -> None:
    """The shipped set: the foreground records, the background task records again (its
    indexes are schema too), and a boot with nothing to do records nothing."""
    first = await ensure_schema(conn, features={"trade_collection": True}, config=db)
    assert "006" in first.applied and first.background is not None
    recorded = "SELECT max(recorded_at) AS at, count(*) AS n FROM migration_schema_fingerprint"
    after_foreground = await conn.fetchrow(recorded)
    index = (
        "SELECT count(*) FROM migration_schema_fingerprint "
        "WHERE name = 'public.idx_trades_pair_time'"
    )
    await first.background.wait()
    after_background = await conn.fetchrow(recorded)
    assert after_background["at"] > after_foreground["at"]
    assert await conn.fetchval(index) == 1  # built by a background step, recorded after it
    again = await ensure_schema(conn, features={"trade_collection": True}, config=db)
    assert again.applied == [] and again.background is None
    assert await conn.fetchrow(recorded) == after_background
