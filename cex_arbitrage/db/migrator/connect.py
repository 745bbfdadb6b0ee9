"""Open a connection, or say clearly why not; optionally wait for the server to come up."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shlex
import time
from collections.abc import AsyncIterator, Callable

import asyncpg

from cex_arbitrage.db.structs import DatabaseConfig
from cex_arbitrage.errors import ConnectError

# Errors that mean "not up yet" at boot: worth waiting for.
_TRANSIENT = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
)


def _ssl_refused(exc: BaseException) -> bool:
    """asyncpg's answer when sslmode requires SSL and the server says it has none."""
    return isinstance(exc, ConnectionError) and "rejected SSL upgrade" in str(exc)


def _explain(config: DatabaseConfig, exc: BaseException) -> ConnectError:
    where = config.display
    if isinstance(
        exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        return ConnectError(
            f"{where}: authentication failed for user {config.user!r} ({exc}). Check "
            "database.user / database.password in config.yaml, DATABASE_URL, or PGUSER / "
            "PGPASSWORD"
        )
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        origin = config.origin("database")
        return ConnectError(
            f"{where}: database {config.database!r} does not exist (the name comes from "
            f"{origin}). Create it (createdb {shlex.quote(config.database)}) or fix "
            + (origin if origin != "the default" else "database.database / PGDATABASE")
        )
    if _ssl_refused(exc):
        return ConnectError(
            f"{where}: the server does not accept SSL connections, and sslmode is "
            f"{config.sslmode!r} (from {config.origin('sslmode')}). Turn ssl on in the "
            "server's postgresql.conf, or use sslmode=prefer or disable (database.sslmode, "
            "?sslmode= in DATABASE_URL, or PGSSLMODE)"
        )
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return ConnectError(f"{where}: user {config.user!r} may not connect: {exc}")
    if isinstance(exc, asyncio.TimeoutError):
        return ConnectError(
            f"{where}: no answer within {config.connect_timeout:.0f}s "
            "(database.connect_timeout); is the host reachable?"
        )
    if isinstance(exc, OSError):
        return ConnectError(
            f"{where}: cannot reach the server ({exc.strerror or exc}). Is PostgreSQL "
            "running there? Check database.host / database.port, DATABASE_URL, or PGHOST / "
            "PGPORT"
        )
    return ConnectError(f"{where}: cannot connect: {type(exc).__name__}: {exc}")


async def connect(
    config: DatabaseConfig,
    *,
    wait: float = 0.0,
    say: Callable[[str], None] | None = None,
) -> asyncpg.Connection:
    """Connect; while the server is not up yet, retry with backoff for `wait` seconds."""
    deadline = time.monotonic() + wait
    delay, attempt = 0.2, 0
    while True:
        try:
            return await asyncpg.connect(**config.connect_kwargs())
        except _TRANSIENT as exc:
            if _ssl_refused(exc):  # a server without SSL will not grow it while we wait
                raise _explain(config, exc) from exc
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                error = _explain(config, exc)
                if wait > 0:
                    error = ConnectError(
                        f"{error.message} (gave up after waiting {wait:.0f}s, "
                        f"{attempt} attempts; migrations.boot_wait_timeout)"
                    )
                raise error from exc
            pause = min(delay * random.uniform(0.8, 1.2), remaining)
            if say is not None:
                say(
                    f"{config.display}: database not reachable yet ({type(exc).__name__}); "
                    f"retry {attempt} in {pause:.1f}s, giving up in {remaining:.0f}s"
                )
            await asyncio.sleep(pause)
            delay = min(delay * 2, 5.0)
        except Exception as exc:
            raise _explain(config, exc) from exc


@contextlib.asynccontextmanager
async def owned_connection(
    conn: asyncpg.Connection | None, config: DatabaseConfig
) -> AsyncIterator[asyncpg.Connection]:
    """The caller's connection as it is, or one opened here and closed on the way out."""
    if conn is not None:
        yield conn
        return
    own = await connect(config)
    try:
        yield own
    finally:
        await own.close()
