"""The runner's session-level advisory lock, taken by polling.

Why polling `pg_try_advisory_lock` instead of a blocking `pg_advisory_lock`:
a session blocked in that call holds a snapshot, and `CREATE INDEX
CONCURRENTLY` in the lock holder waits for every such snapshot to go away,
so the holder and the waiter deadlock forever (a known trap of Flyway and
golang-migrate). A poll holds nothing between attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable

import asyncpg

from cex_arbitrage.errors import MigrationLockTimeoutError

# Two-key form: classid = namespace, objid = purpose (pg_locks shows both).
LOCK_NAMESPACE = 0x63657861  # 'ceXa'
MIGRATE_LOCK = 1  # applying migrations (foreground)
BACKGROUND_LOCK = 2  # running background steps

_HOLDER = """
SELECT a.pid, a.usename, a.application_name, a.client_addr::text AS client_addr,
       now() - a.backend_start AS connected_for
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::int::oid
  AND l.objid = $2::int::oid AND l.objsubid = 2 AND l.database = (
      SELECT oid FROM pg_database WHERE datname = current_database())
LIMIT 1
"""


async def try_lock(conn: asyncpg.Connection, purpose: int) -> bool:
    """One attempt; True when this session now holds the lock."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_NAMESPACE, purpose))


async def unlock(conn: asyncpg.Connection, purpose: int) -> None:
    if conn.is_closed():
        return
    try:
        await conn.fetchval("SELECT pg_advisory_unlock($1, $2)", LOCK_NAMESPACE, purpose)
    except asyncpg.InFailedSQLTransactionError:
        # A step cancelled mid-query (Ctrl-C, engine shutdown) leaves its aborted
        # transaction open; end it, or this error would hide the cancellation.
        await conn.execute("ROLLBACK")
        await conn.fetchval("SELECT pg_advisory_unlock($1, $2)", LOCK_NAMESPACE, purpose)


async def describe_holder(conn: asyncpg.Connection, purpose: int) -> str:
    """Who holds the lock, for the waiting message: pid, user, application, client."""
    row = await conn.fetchrow(_HOLDER, LOCK_NAMESPACE, purpose)
    if row is None:
        return "another session (it just released it)"
    app = f" application {row['application_name']!r}" if row["application_name"] else ""
    client = f" from {row['client_addr']}" if row["client_addr"] else ""
    return f"pid {row['pid']} (user {row['usename']}{app}{client})"


async def acquire(
    conn: asyncpg.Connection,
    purpose: int,
    timeout: float,
    database: str,
    say: Callable[[str], None],
    *,
    interval: float = 5.0,
) -> None:
    """Poll for the lock with jittered backoff; name the holder while waiting.

    Raises LockTimeoutError after `timeout` seconds.
    """
    if await try_lock(conn, purpose):
        return
    started = time.monotonic()
    holder = await describe_holder(conn, purpose)
    say(f"{database}: waiting for the migration lock held by {holder}")
    delay, next_report = 0.05, started + interval
    while True:
        await asyncio.sleep(delay * random.uniform(0.5, 1.5))
        if await try_lock(conn, purpose):
            return
        now = time.monotonic()
        if now - started >= timeout:
            holder = await describe_holder(conn, purpose)
            raise MigrationLockTimeoutError(
                f"{database}: the migration lock is still held by {holder} after "
                f"{timeout:.0f}s; another migration is running. Wait for it, or stop that "
                "session if it is stuck, then run again "
                "(migrations.lock_wait_timeout sets how long to wait)",
                holder=holder,
                waited_s=now - started,
            )
        if now >= next_report:
            holder = await describe_holder(conn, purpose)
            say(
                f"{database}: still waiting for the migration lock held by {holder} "
                f"({now - started:.0f}s)"
            )
            next_report = now + interval
        delay = min(delay * 1.6, 1.0)


@contextlib.asynccontextmanager
async def held(
    conn: asyncpg.Connection,
    purpose: int,
    timeout: float,
    database: str,
    say: Callable[[str], None],
) -> AsyncIterator[None]:
    """The lock for the duration of the block (polled for, as `acquire`), then released."""
    await acquire(conn, purpose, timeout, database, say)
    try:
        yield
    finally:
        await unlock(conn, purpose)
