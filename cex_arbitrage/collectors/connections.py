"""Connections for the batch writers: where they come from, and which failures a retry cures.

A writer leases a connection per batch, from a pool or a factory of its
own; a connection that saw an error it may not have cleaned up after is
discarded rather than returned.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg

# The batch log's primary key: a second insert of one batch id fails on it.
BATCH_LOG_PKEY = "ingest_batch_log_pkey"

ConnectFactory = Callable[[], Awaitable[asyncpg.Connection]]
"""Opens a new connection, e.g. `lambda: asyncpg.connect(**cfg.connect_kwargs())`."""


def is_connection_loss(exc: BaseException) -> bool:
    """True when retrying on a fresh connection may succeed.

    Covers a connection closed under us (server terminated the backend,
    restart, network cut), a server not accepting connections yet, too many
    connections, a timeout, and serialization/deadlock aborts.
    """
    return isinstance(
        exc,
        (
            OSError,
            asyncio.TimeoutError,
            asyncpg.exceptions.PostgresConnectionError,  # class 08
            asyncpg.exceptions.OperatorInterventionError,  # class 57: admin shutdown, cancel
            asyncpg.exceptions.TooManyConnectionsError,
            asyncpg.exceptions.TransactionRollbackError,  # class 40: retry is the cure
        ),
    )


# What Citus says to a statement caught at the switch-over of
# create_distributed_table_concurrently (migration 007; docs/citus.md): planned
# against the table's old placement, or as a local table that is now distributed.
_CITUS_SWITCHOVER = (
    "could not find valid entry for shard",  # XX000
    "direct joins between distributed and local tables",  # 0A000
)


def is_citus_switchover(exc: BaseException) -> bool:
    """A statement that met a table while Citus distributed it; it rolled back, a retry succeeds."""
    return isinstance(
        exc,
        (asyncpg.exceptions.InternalServerError, asyncpg.exceptions.FeatureNotSupportedError),
    ) and any(text in str(exc) for text in _CITUS_SWITCHOVER)


def retryable(exc: BaseException) -> bool:
    """Connection loss, a Citus switch-over, or a client-side state error a fresh connection cures.

    asyncpg reports a connection closed under a transaction, or left
    mid-operation by a terminated backend, as InterfaceError or
    InternalClientError rather than a connection error; the connection is
    discarded (see leaves_connection_clean), so a retry starts clean. A
    client-side DataError (a value asyncpg cannot encode) is not retried.
    """
    if (
        is_connection_loss(exc)
        or is_citus_switchover(exc)
        or isinstance(exc, asyncpg.exceptions.InternalClientError)
    ):
        return True
    return isinstance(exc, asyncpg.exceptions.InterfaceError) and not isinstance(exc, ValueError)


def is_bad_data(exc: BaseException) -> bool:
    """The database refused the rows themselves; resending the same batch cannot help."""
    if isinstance(exc, asyncpg.exceptions.UniqueViolationError):
        return bool(exc.constraint_name != BATCH_LOG_PKEY)
    return isinstance(
        exc,
        (asyncpg.exceptions.DataError, asyncpg.exceptions.IntegrityConstraintViolationError),
    )


def leaves_connection_clean(exc: BaseException) -> bool:
    """A server-side statement error: the transaction rolled back, the session is fine.

    Anything else (connection lost, a timeout, cancellation, asyncpg's own
    protocol errors) may leave the session mid-operation; asyncpg can even hand
    such a connection back to a pool in a corrupted state after a backend was
    terminated mid-transaction (MagicStack/asyncpg#784), so it is discarded.
    """
    return isinstance(exc, asyncpg.PostgresError) and not is_connection_loss(exc)


def discard(conn: asyncpg.Connection) -> None:
    # A pool detaches a connection the server closed; terminating it then fails.
    with contextlib.suppress(asyncpg.exceptions.InterfaceError):
        conn.terminate()


class Connections:
    """One connection at a time from a pool, or a dedicated one from a factory.

    A dedicated connection runs one operation at a time, so writes that
    overlap (two tasks calling one writer) take turns instead of colliding on
    it ("another operation is in progress") and discarding it under each other.
    """

    def __init__(self, target: asyncpg.Pool | ConnectFactory) -> None:
        self._pool = target if isinstance(target, asyncpg.Pool) else None
        self._factory = None if isinstance(target, asyncpg.Pool) else target
        self._conn: asyncpg.Connection | None = None
        self._turn = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[asyncpg.Connection]:
        if self._pool is not None:
            async with self._pool.acquire() as conn:
                try:
                    yield conn
                except BaseException as exc:
                    if not leaves_connection_clean(exc):
                        discard(conn)  # the pool opens a fresh one on the next acquire
                    raise
            return
        assert self._factory is not None
        async with self._turn:
            if self._conn is None or self._conn.is_closed():
                self._conn = await self._factory()
            conn = self._conn
            try:
                yield conn
            except BaseException as exc:
                if not leaves_connection_clean(exc):
                    discard(conn)
                    self._conn = None
                raise

    async def close(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close(timeout=5)
        self._conn = None
