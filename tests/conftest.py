"""Fixtures: every test gets a database of its own on a real PostgreSQL server.

The server is the one named by CEX_TEST_DSN (default: the local PostgreSQL on
127.0.0.1:5432), or an embedded PostgreSQL started for the session when
CEX_TEST_EMBEDDED=1. TimescaleDB tests use CEX_TEST_TIMESCALE_DSN and are
skipped, visibly, without it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path

import asyncpg
import pytest

from cex_arbitrage.config import database_from_url
from cex_arbitrage.db.structs import DatabaseConfig

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
TIMESCALE_SKIP = (
    "TimescaleDB tests skipped: set CEX_TEST_TIMESCALE_DSN to a server with the "
    "timescaledb extension available"
)


def _admin_from_env(tmp_factory: pytest.TempPathFactory) -> tuple[DatabaseConfig, object]:
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


async def create_database(admin: DatabaseConfig, prefix: str = "cex_test") -> DatabaseConfig:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(**admin.connect_kwargs())
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return admin.with_database(name)


async def drop_database(admin: DatabaseConfig, config: DatabaseConfig) -> None:
    conn = await asyncpg.connect(**admin.connect_kwargs())
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{config.database}" WITH (FORCE)')
    finally:
        await conn.close()


async def fresh_database(admin: DatabaseConfig) -> AsyncIterator[DatabaseConfig]:
    """A fresh, empty database, dropped afterwards."""
    config = await create_database(admin)
    try:
        yield config
    finally:
        await drop_database(admin, config)


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


async def timescale_database(admin: DatabaseConfig) -> AsyncIterator[DatabaseConfig]:
    """A fresh database with the timescaledb extension created, dropped afterwards."""
    config = await create_database(admin, "cex_ts_test")
    try:
        connection = await asyncpg.connect(**config.connect_kwargs())
        try:
            await connection.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        finally:
            await connection.close()
        yield config
    finally:
        await drop_database(admin, config)


@pytest.fixture
async def ts_db(timescale_admin: DatabaseConfig) -> AsyncIterator[DatabaseConfig]:
    async for config in timescale_database(timescale_admin):
        yield config


def pg_env(config: DatabaseConfig, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a subprocess that must reach exactly `config` (no config file)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PG") and k not in ("DATABASE_URL", "CEX_CONFIG")
    }
    env.update(
        PGHOST=config.host,
        PGPORT=str(config.port),
        PGDATABASE=config.database,
        PGUSER=config.user,
    )
    if config.password:
        env["PGPASSWORD"] = config.password
    if extra:
        env.update(extra)
    return env


@pytest.fixture
def cli_env(db: DatabaseConfig) -> dict[str, str]:
    return pg_env(db)


CliRunner = Callable[..., subprocess.CompletedProcess[str]]


def run_cli_process(
    args: list[str],
    env: Mapping[str, str],
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m cex_arbitrage.db.migrate ARGS` the way an operator does."""
    return subprocess.run(
        [sys.executable, "-m", "cex_arbitrage.db.migrate", *args],
        env=dict(env),
        cwd=str(cwd) if cwd else None,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def run_cli(cli_env: dict[str, str], tmp_path: Path) -> CliRunner:
    def run(
        *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_cli_process(list(args), env if env is not None else cli_env, cwd or tmp_path)

    return run


def write_migrations(directory: Path, files: Mapping[str, str]) -> Path:
    """A migration set of the test's own: {'003_x.sql': sql}. 000 is copied in unless given."""
    directory.mkdir(parents=True, exist_ok=True)
    infra = "000_create_migration_infrastructure.sql"
    if not any(name.startswith("000_") for name in files):
        src = REPO / "cex_arbitrage" / "db" / "migrations" / infra
        (directory / infra).write_text(src.read_text())
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory
