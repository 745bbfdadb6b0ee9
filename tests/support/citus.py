"""Citus test databases: one database on every node of the cluster, registered, dropped after.

A plain CREATE DATABASE on the coordinator is not enough: every node needs
the database and the extension, and the coordinator needs its workers (and
itself) registered. CEX_TEST_CITUS_DSN names a Citus-enabled database on the
coordinator; the workers are read from its pg_dist_node.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from cex_arbitrage.config import database_from_url
from cex_arbitrage.db.structs import DatabaseConfig

CITUS_SKIP = (
    "Citus tests skipped: set CEX_TEST_CITUS_DSN to a Citus-enabled database on a "
    "coordinator with its workers registered"
)


def citus_admin() -> DatabaseConfig:
    """The coordinator database the environment names; the test is skipped without one."""
    dsn = os.environ.get("CEX_TEST_CITUS_DSN")
    if not dsn:
        pytest.skip(CITUS_SKIP)
    return database_from_url(dsn)


async def citus_workers(admin: DatabaseConfig) -> list[tuple[str, int]]:
    conn = await asyncpg.connect(**admin.connect_kwargs())
    try:
        rows = await conn.fetch(
            "SELECT nodename, nodeport FROM pg_dist_node "
            "WHERE groupid <> 0 AND noderole = 'primary' ORDER BY nodeid"
        )
    finally:
        await conn.close()
    return [(r["nodename"], r["nodeport"]) for r in rows]


def on_node(config: DatabaseConfig, host: str, port: int, database: str) -> DatabaseConfig:
    return dataclasses.replace(config, host=host, port=port, database=database)


async def _execute(config: DatabaseConfig, *statements: str) -> None:
    conn = await asyncpg.connect(**config.connect_kwargs())
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def citus_database(
    admin: DatabaseConfig, *, shard_count: int = 4
) -> AsyncIterator[DatabaseConfig]:
    """A new database on the coordinator and every worker, with citus, nodes registered.

    `shard_count` (citus.shard_count for the database): 4 keeps a concurrent
    distribution in a test to a few seconds; production keeps Citus' 32.
    """
    workers = await citus_workers(admin)
    assert workers, "the Citus coordinator has no worker registered"
    name = f"cex_citus_test_{uuid.uuid4().hex[:12]}"
    coordinator = admin.with_database(name)
    nodes = [(admin.host, admin.port), *workers]
    try:
        for host, port in nodes:
            await _execute(
                on_node(admin, host, port, "postgres"),
                "SET citus.enable_create_database_propagation = off",
                f'CREATE DATABASE "{name}"',
            )
            await _execute(on_node(admin, host, port, name), "CREATE EXTENSION citus")
        await _execute(
            on_node(admin, admin.host, admin.port, "postgres"),
            f'ALTER DATABASE "{name}" SET citus.shard_count = {int(shard_count)}',
        )
        await _execute(
            coordinator,
            f"SELECT citus_set_coordinator_host('{admin.host}', {admin.port})",
            *(f"SELECT citus_add_node('{host}', {port})" for host, port in workers),
        )
        yield coordinator
    finally:
        for host, port in reversed(nodes):  # workers first: the coordinator holds connections
            await _execute(
                on_node(admin, host, port, "postgres"),
                f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
            )
