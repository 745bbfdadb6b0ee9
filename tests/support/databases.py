"""Test databases on a real server: created per test, dropped after; the environment for psql."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import asyncpg

from cex_arbitrage.db.structs import DatabaseConfig

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
TIMESCALE_SKIP = (
    "TimescaleDB tests skipped: set CEX_TEST_TIMESCALE_DSN to a server with the "
    "timescaledb extension available"
)


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


async def fetch(db: DatabaseConfig, sql: str, *args: Any) -> list[asyncpg.Record]:
    """One query on a connection of its own."""
    conn = await asyncpg.connect(**db.connect_kwargs())
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def has_table(db: DatabaseConfig, name: str) -> bool:
    rows = await fetch(db, "SELECT to_regclass($1) IS NOT NULL AS present", name)
    return bool(rows[0]["present"])
