"""Pre-flight reads the database host's kernel writeback threshold on large tables.

The server in these tests runs on this machine, so what it reads through
pg_read_file must be what this process reads from /proc. Whether the
warning appears depends on how this host's kernel is set; the judgement
itself is table-tested in tests/unit/test_writeback.py.
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import asyncpg
import pytest

from cex_arbitrage.db.migrations.run_migrations import MigrationRunner
from cex_arbitrage.db.migrator.preflight import run_preflight
from cex_arbitrage.db.migrator.settings import RunnerSettings
from cex_arbitrage.db.migrator.source import DirectorySource
from cex_arbitrage.db.migrator.writeback import (
    KernelWriteback,
    mem_total_bytes,
    read_writeback,
    writeback_warning,
)
from cex_arbitrage.db.structs import DatabaseConfig
from tests.support.cli import write_migrations

VM = Path("/proc/sys/vm")


def this_host() -> KernelWriteback:
    total = mem_total_bytes(Path("/proc/meminfo").read_text())
    assert total is not None
    return KernelWriteback(
        int((VM / "dirty_background_bytes").read_text()),
        int((VM / "dirty_background_ratio").read_text()),
        total,
    )


@pytest.fixture
def local_server(db: DatabaseConfig) -> None:
    if not VM.is_dir():
        pytest.skip("not Linux: no /proc/sys/vm to compare with")
    if db.host not in ("127.0.0.1", "localhost", "::1") and not db.host.startswith("/"):
        pytest.skip(f"the test server {db.host} is not on this host")


async def big_table(conn: asyncpg.Connection, rows: int) -> None:
    await conn.execute(
        f"CREATE TABLE trades AS SELECT g AS id FROM generate_series(1, {rows}) g; ANALYZE trades"
    )


@pytest.mark.usefixtures("local_server")
async def test_the_server_hosts_settings_are_read_through_pg_read_file(
    conn: asyncpg.Connection,
) -> None:
    assert await read_writeback(conn) == this_host()


@pytest.mark.usefixtures("local_server")
async def test_a_run_with_pending_migrations_warns_exactly_when_the_host_needs_it(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await big_table(conn, 1000)
    d = write_migrations(tmp_path / "m", {"001_a.sql": "ALTER TABLE trades ADD COLUMN x int;"})
    settings = RunnerSettings(watched_tables=("trades",), writeback_check_rows=1000)
    said: list[str] = []
    runner = MigrationRunner(db, source=DirectorySource(d), settings=settings, say=said.append)

    result = await runner.migrate()

    expected = writeback_warning(db.display, 1000, this_host())
    assert [w for w in result.warnings if "vm.dirty_background" in w] == (
        [expected] if expected else []
    )
    assert result.applied == ["000", "001"]


async def test_tables_below_the_row_threshold_skip_the_check(
    db: DatabaseConfig, conn: asyncpg.Connection
) -> None:
    await big_table(conn, 1000)
    pre = await run_preflight(conn, db.display, ("trades",), writeback_check_rows=1001)
    assert not [w for w in pre.warnings if "vm.dirty_background" in w]


async def test_the_row_count_includes_the_partitions_of_a_partitioned_table(
    db: DatabaseConfig, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        "CREATE TABLE trades (id int) PARTITION BY RANGE (id);"
        "CREATE TABLE trades_a PARTITION OF trades FOR VALUES FROM (0) TO (500);"
        "CREATE TABLE trades_b PARTITION OF trades FOR VALUES FROM (500) TO (2000);"
        "INSERT INTO trades SELECT generate_series(1, 1000); ANALYZE trades_a, trades_b"
    )
    pre = await run_preflight(conn, db.display, ("trades",))
    assert pre.watched_rows == 1000


@pytest.mark.timescale
async def test_the_row_count_of_a_hypertable_is_the_rows_in_its_chunks(
    ts_db: DatabaseConfig,
) -> None:
    """A hypertable's own pg_class row estimates 0 rows: its chunks inherit from it."""
    conn = await asyncpg.connect(**ts_db.connect_kwargs())
    try:
        await conn.execute(
            "CREATE TABLE trades (ts timestamptz NOT NULL, id int);"
            "SELECT create_hypertable('trades', 'ts', chunk_time_interval => interval '1 day');"
            "INSERT INTO trades SELECT now() - g * interval '1 minute', g "
            "FROM generate_series(1, 5000) g; ANALYZE trades"
        )
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM timescaledb_information.chunks "
                "WHERE hypertable_name = 'trades'"
            )
            > 1
        )
        pre = await run_preflight(conn, ts_db.display, ("trades",))
        assert pre.watched_rows == 5000
    finally:
        await conn.close()


async def test_a_user_that_may_not_read_server_files_is_not_checked_and_not_refused(
    admin_config: DatabaseConfig, db: DatabaseConfig, conn: asyncpg.Connection
) -> None:
    """pg_read_file needs EXECUTE and pg_read_server_files: without either, no check."""
    role = f"cex_noread_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(**admin_config.connect_kwargs())
    await admin.execute(f'CREATE ROLE "{role}" LOGIN')
    as_role = await asyncpg.connect(**dataclasses.replace(db, user=role).connect_kwargs())
    try:
        await conn.execute(f'GRANT CREATE ON SCHEMA public TO "{role}"')
        await conn.execute(f'CREATE TABLE trades (id int); ALTER TABLE trades OWNER TO "{role}"')
        await conn.execute(
            f'GRANT EXECUTE ON FUNCTION pg_read_file(text, bigint, bigint, boolean) TO "{role}"'
        )
        pre = await run_preflight(as_role, db.display, ("trades",), writeback_check_rows=0)
        assert not [w for w in pre.warnings if "vm.dirty_background" in w]
        # Asked anyway, the server refuses the read (42501), which is no answer, not a failure.
        assert await read_writeback(as_role) is None
        assert await as_role.fetchval("SELECT 1") == 1

        await admin.execute(f'GRANT pg_read_server_files TO "{role}"')
        assert await read_writeback(as_role) is not None  # now it may
    finally:
        await as_role.close()
        await conn.execute("DROP TABLE trades")
        await conn.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()
