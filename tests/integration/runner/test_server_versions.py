"""What differs between PostgreSQL majors: the floor, refused for real, and date_bin on 13.

The PostgreSQL 12 test runs once per version matrix, in its PostgreSQL 13 run
(`python -m tests.support.pg_matrix`): it fetches and starts a 12 of its own.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import asyncpg
import pytest

from cex_arbitrage.db.structs import DatabaseConfig
from cex_arbitrage.errors import ExitCode
from tests.support.cli import run_cli_process
from tests.support.databases import has_table, pg_env
from tests.support.legacy_data import MIGRATION_000, MIGRATIONS, run_psql
from tests.support.pg_servers import start_server


@pytest.mark.slow
async def test_postgresql_12_is_refused_with_exit_7_and_nothing_is_created(
    tmp_path: Path,
) -> None:
    if os.environ.get("CEX_TEST_PG_MAJOR") != "13":
        pytest.skip("runs in the version matrix's PostgreSQL 13 run (tests.support.pg_matrix)")
    server = start_server(12, tmp_path / "pg12")
    try:
        result = run_cli_process([], pg_env(server.config), tmp_path)
        assert result.returncode == ExitCode.PERMISSION == 7, result.stderr
        assert "(major 12) is not supported (supported: PostgreSQL 13 to 18)" in result.stderr
        assert "nothing was changed" in result.stderr
        assert "Traceback" not in result.stderr
        assert not await has_table(server.config, "public.migration_history")
    finally:
        server.stop()


ORIGIN = dt.datetime(2000, 1, 3, tzinfo=dt.timezone.utc)
SOURCES = [
    dt.datetime(2024, 3, 10, 12, 34, 56, 789012, tzinfo=dt.timezone.utc),
    dt.datetime(2000, 1, 3, tzinfo=dt.timezone.utc),  # the origin itself
    dt.datetime(2000, 1, 2, 23, 59, 59, 999999, tzinfo=dt.timezone.utc),  # just before it
    dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc),  # long before it
    dt.datetime(2262, 1, 1, 0, 0, 0, 1, tzinfo=dt.timezone.utc),  # far after it
]
STRIDES = [
    dt.timedelta(microseconds=1),
    dt.timedelta(minutes=1),
    dt.timedelta(minutes=15),
    dt.timedelta(hours=1),
    dt.timedelta(days=1, hours=2),
    dt.timedelta(days=7),
]


def expected_bin(stride: dt.timedelta, source: dt.datetime) -> dt.datetime:
    """date_bin's definition: the origin plus the whole strides before the source."""
    stride_us = stride // dt.timedelta(microseconds=1)
    offset_us = (source - ORIGIN) // dt.timedelta(microseconds=1)
    return ORIGIN + dt.timedelta(microseconds=offset_us - offset_us % stride_us)


async def test_date_bin_is_the_same_on_every_major_built_in_or_from_the_routine(
    db: DatabaseConfig,
) -> None:
    """On 13 R__compat_date_bin supplies it; from 14 on the built-in answers. Same results."""
    for path in (MIGRATION_000, MIGRATIONS / "R__compat_date_bin.sql"):
        result = await run_psql(db, file=path)
        assert result.returncode == 0, result.stderr
    conn = await asyncpg.connect(**db.connect_kwargs())
    try:
        major = int(await conn.fetchval("SHOW server_version_num")) // 10000
        shim = await conn.fetchval(
            "SELECT count(*) FROM pg_proc WHERE proname = 'date_bin' "
            "AND pronamespace = 'public'::regnamespace"
        )
        assert shim == (1 if major < 14 else 0)
        for stride in STRIDES:
            for source in SOURCES:
                got = await conn.fetchval("SELECT date_bin($1, $2, $3)", stride, source, ORIGIN)
                assert got == expected_bin(stride, source), (stride, source)
        with pytest.raises(asyncpg.FeatureNotSupportedError):
            await conn.fetchval("SELECT date_bin('1 month', now(), $1)", ORIGIN)
    finally:
        await conn.close()
