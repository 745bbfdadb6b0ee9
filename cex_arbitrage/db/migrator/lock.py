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
import dataclasses
import datetime as dt
import random
import time
from collections.abc import AsyncIterator, Callable

import asyncpg

from cex_arbitrage.errors import MigrationLockTimeoutError

# Two-key form: classid = namespace, objid = purpose (pg_locks shows both).
LOCK_NAMESPACE = 0x63657861  # 'ceXa'
MIGRATE_LOCK = 1  # applying migrations (foreground)
BACKGROUND_LOCK = 2  # running background steps

# Who holds each of the runner's locks in this database (objid = purpose).
_HOLDERS = """
SELECT l.objid::int AS purpose, a.pid, a.usename, a.application_name,
       a.client_addr::text AS client_addr, a.backend_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::int::oid
  AND l.objsubid = 2 AND l.database = (
      SELECT oid FROM pg_database WHERE datname = current_database())
"""


@dataclasses.dataclass(frozen=True)
class Holder:
    """The session holding one of the runner's locks, as pg_stat_activity shows it.

    A session-level advisory lock lives exactly as long as its session, so a
    holder listed here is a live backend; a runner that died has none.
    """

    pid: int
    user: str
    application: str
    client: str | None
    since: dt.datetime  # the session's start (the runner connects, then locks)

    def describe(self) -> str:
        parts = [f"user {self.user}"]
        if self.application:
            parts.append(f"application {self.application!r}")
        if self.client:
            parts.append(f"from {self.client}")
        parts.append(f"since {self.since.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%SZ}")
        return f"pid {self.pid} ({', '.join(parts)})"

    def to_json(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "user": self.user,
            "application": self.application,
            "client": self.client,
            "since": self.since.isoformat(),
        }


async def holders(conn: asyncpg.Connection) -> dict[int, Holder]:
    """The live holders of the runner's locks, by purpose (MIGRATE_LOCK, BACKGROUND_LOCK)."""
    rows = await conn.fetch(_HOLDERS, LOCK_NAMESPACE)
    return {
        r["purpose"]: Holder(
            r["pid"], r["usename"], r["application_name"], r["client_addr"], r["backend_start"]
        )
        for r in rows
    }


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
    holder = (await holders(conn)).get(purpose)
    if holder is None:
        return "another session (it just released it)"
    return holder.describe()


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
