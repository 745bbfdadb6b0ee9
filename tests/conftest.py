"""Fixtures: every test gets a database of its own on a real PostgreSQL server.

The server is the one named by CEX_TEST_DSN (default: the local PostgreSQL on
127.0.0.1:5432), or an embedded PostgreSQL started for the session when
CEX_TEST_EMBEDDED=1, or a throwaway server of major N (13 to 18, npm binaries;
see tests/support/pg_servers.py) when CEX_TEST_PG_MAJOR=N. TimescaleDB tests
use CEX_TEST_TIMESCALE_DSN and are skipped, visibly, without it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import asyncpg
import pytest

from cex_arbitrage.config import database_from_url
from cex_arbitrage.db.structs import DatabaseConfig
from tests.support.cli import CliRunner, run_cli_process
from tests.support.databases import (
    DEFAULT_DSN,
    TIMESCALE_SKIP,
    fresh_database,
    pg_env,
    timescale_database,
)


def _admin_from_env(tmp_factory: pytest.TempPathFactory) -> tuple[DatabaseConfig, object]:
    major = os.environ.get("CEX_TEST_PG_MAJOR")
    if major:
        from tests.support.pg_servers import start_server

        server = start_server(int(major), tmp_factory.mktemp("pg-matrix") / "data")
        return server.config, server
    if os.environ.get("CEX_TEST_EMBEDDED") == "1":
        from cex_arbitrage.embedded import start_embedded

        server = start_embedded(tmp_factory.mktemp("embedded-pg"))
        return server.config, server
    return database_from_url(os.environ.get("CEX_TEST_DSN", DEFAULT_DSN)), None


@pytest.fixture(scope="session")
def admin_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseConfig]:
    """A superuser connection to the test server's maintenance database."""
    config, server = _admin_from_env(tmp_path_factory)
    try:
        yield config
    finally:
        if server is not None:
            server.stop()  # type: ignore[attr-defined]
            if os.environ.get("CEX_TEST_PG_MAJOR"):  # a throwaway cluster: remove it
                shutil.rmtree(server.data_dir, ignore_errors=True)  # type: ignore[attr-defined]


_ROLES = "SELECT rolname FROM pg_roles WHERE rolname LIKE 'cex%'"


@pytest.fixture(scope="session", autouse=True)
def _drop_roles_the_suite_created(admin_config: DatabaseConfig) -> Iterator[None]:
    """Roles are cluster-wide: the ones 001 created for the tests (cex_app, ...) go at the end."""

    async def names() -> set[str]:
        conn = await asyncpg.connect(**admin_config.connect_kwargs())
        try:
            return {r["rolname"] for r in await conn.fetch(_ROLES)}
        finally:
            await conn.close()

    async def drop(roles: set[str]) -> None:
        conn = await asyncpg.connect(**admin_config.connect_kwargs())
        try:
            for role in sorted(roles):
                try:
                    await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
                except asyncpg.PostgresError as exc:  # still granted in a database left behind
                    print(f"role {role} kept: {exc}")
        finally:
            await conn.close()

    before = asyncio.run(names())
    yield
    asyncio.run(drop(asyncio.run(names()) - before))


@pytest.fixture
async def db(admin_config: DatabaseConfig) -> AsyncIterator[DatabaseConfig]:
    """A fresh, empty database, dropped after the test."""
    async for config in fresh_database(admin_config):
        yield config


@pytest.fixture
async def conn(db: DatabaseConfig) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(**db.connect_kwargs())
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def timescale_admin() -> DatabaseConfig:
    dsn = os.environ.get("CEX_TEST_TIMESCALE_DSN")
    if not dsn:
        pytest.skip(TIMESCALE_SKIP)
    return database_from_url(dsn)


@pytest.fixture
async def ts_db(timescale_admin: DatabaseConfig) -> AsyncIterator[DatabaseConfig]:
    async for config in timescale_database(timescale_admin):
        yield config


@pytest.fixture
def cli_env(db: DatabaseConfig) -> dict[str, str]:
    return pg_env(db)


@pytest.fixture
def run_cli(cli_env: dict[str, str], tmp_path: Path) -> CliRunner:
    def run(
        *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_cli_process(list(args), env if env is not None else cli_env, cwd or tmp_path)

    return run


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the version-matrix subset (tests/support/matrix.py) `matrix`.

    A listed test missing from a module that was collected is an error: a
    rename must not drop it from the matrix unnoticed.
    """
    from tests.support.matrix import MATRIX_TESTS

    modules: dict[str, object] = {}
    for item in items:
        path = item.nodeid.split("::", 1)[0]
        modules.setdefault(path, getattr(item, "module", None))
        if getattr(item, "originalname", item.name) in MATRIX_TESTS.get(path, ()):
            item.add_marker(pytest.mark.matrix)
    missing = [
        f"{path}::{name}"
        for path, module in modules.items()
        if module is not None
        for name in MATRIX_TESTS.get(path, ())
        if not hasattr(module, name)
    ]
    if missing:
        raise pytest.UsageError(
            "tests/support/matrix.py lists tests that do not exist: " + ", ".join(missing)
        )
