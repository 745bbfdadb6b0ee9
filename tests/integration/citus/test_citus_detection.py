"""Citus: pre-flight and `status --verbose` know the node; a worker is refused (issue 11, part 1).

Run when CEX_TEST_CITUS_DSN names a Citus-enabled coordinator database; each
test makes its database on every node (tests/support/citus.py).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from cex_arbitrage.db.structs import DatabaseConfig
from cex_arbitrage.errors import ExitCode
from tests.support.citus import citus_admin, citus_database, citus_workers, on_node
from tests.support.cli import run_cli_process
from tests.support.databases import pg_env

pytestmark = pytest.mark.citus


@pytest.fixture
async def citus_db() -> AsyncIterator[DatabaseConfig]:
    async for config in citus_database(citus_admin()):
        yield config


async def test_status_verbose_names_the_coordinator_and_its_workers(
    citus_db: DatabaseConfig, tmp_path: Path
) -> None:
    workers = await citus_workers(citus_db)

    result = run_cli_process(["status", "--verbose"], pg_env(citus_db), tmp_path)

    assert result.returncode == ExitCode.OK, result.stderr
    line = re.search(r"^cluster:\s+(.*)$", result.stdout, re.M)
    assert line is not None, result.stdout
    assert re.fullmatch(
        rf"Citus \S+ coordinator, {len(workers)} active worker nodes", line.group(1)
    ), line.group(1)


async def test_a_worker_node_is_refused_naming_the_coordinator(
    citus_db: DatabaseConfig, tmp_path: Path
) -> None:
    host, port = (await citus_workers(citus_db))[0]
    worker = on_node(citus_db, host, port, citus_db.database)

    result = run_cli_process([], pg_env(worker), tmp_path)

    assert result.returncode == ExitCode.PERMISSION, result.stdout + result.stderr
    assert "is a Citus worker node" in result.stderr
    assert f"the coordinator is {citus_db.host}:{citus_db.port}" in result.stderr
    assert "Nothing was changed" in result.stderr
    conn = await asyncpg.connect(**worker.connect_kwargs())
    try:
        assert await conn.fetchval("SELECT to_regclass('migration_history')") is None
    finally:
        await conn.close()
    status = run_cli_process(["status", "--verbose"], pg_env(worker), tmp_path)
    assert status.returncode == ExitCode.PERMISSION, status.stdout + status.stderr
