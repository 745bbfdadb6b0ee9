"""Batch writers: each batch of records is committed exactly once.

A batch carries a UUID. The writer inserts the rows AND a row in
`ingest_batch_log` (migration 002) in one transaction. When the connection
dies mid-batch the writer cannot know whether COMMIT reached the server, so
the retry first asks whether the batch id is recorded: if so the commit
happened and only the acknowledgement was lost; otherwise nothing of the batch
is in the database and it is sent again. A transaction still in flight on a
half-dead connection cannot slip through either: the batch id is the log's
primary key, so a second insert of it waits for the first and then fails.

Rows travel by COPY (binary), the fastest way into PostgreSQL, into a
temporary staging table; one `INSERT ... SELECT` then moves the ones not
stored yet, so a fact is stored once however many engines collect its feed
and however often a reconnect replays it (statements.py: the natural keys,
and why the move needs no unique index to be correct).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import uuid
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

import asyncpg

from cex_arbitrage.collectors.columns import BATCH_LOG_COLUMNS, BOOK_TICKER_COLUMNS, TRADE_COLUMNS
from cex_arbitrage.collectors.connections import (
    BATCH_LOG_PKEY,
    ConnectFactory,
    Connections,
    is_bad_data,
    is_citus_switchover,
    is_connection_loss,
    retryable,
)
from cex_arbitrage.collectors.records import BookTicker, Trade
from cex_arbitrage.collectors.statements import (
    BOOK_TICKER_STAGE,
    CITUS_INSTALLED,
    DISTRIBUTED,
    MOVE_BOOK_TICKERS,
    MOVE_BOOK_TICKERS_DISTRIBUTED,
    MOVE_TRADES,
    MOVE_TRADES_DISTRIBUTED,
    TRADE_STAGE,
    create_stage,
)

__all__ = [
    "BatchWriter",
    "BookTickerWriter",
    "ConnectFactory",
    "TradeWriter",
    "WriteError",
    "WriteResult",
    "is_connection_loss",
]

log = logging.getLogger("cex_arbitrage.collectors")

R = TypeVar("R", BookTicker, Trade)
R_contra = TypeVar("R_contra", contravariant=True)


# --- named queries ---------------------------------------------------------

_BATCH_RECORDED = "SELECT rows FROM ingest_batch_log WHERE batch_id = $1"
_RECORD_BATCH = f"INSERT INTO ingest_batch_log ({', '.join(BATCH_LOG_COLUMNS)}) VALUES ($1, $2, $3)"


@dataclasses.dataclass(frozen=True)
class _Path:
    """How one table's rows travel: the staging table, its columns, the two moves."""

    stage: str
    columns: tuple[str, ...]
    create: str
    move: str  # local table: lock per feed and NOT EXISTS until 005's key index is valid
    move_distributed: str  # Citus distributed table (migration 007): the index alone


_BOOK_TICKER_PATH = _Path(
    BOOK_TICKER_STAGE,
    BOOK_TICKER_COLUMNS,
    create_stage(BOOK_TICKER_STAGE, "book_ticker_snapshots", BOOK_TICKER_COLUMNS),
    MOVE_BOOK_TICKERS,
    MOVE_BOOK_TICKERS_DISTRIBUTED,
)
_TRADE_PATH = _Path(
    TRADE_STAGE,
    TRADE_COLUMNS,
    create_stage(TRADE_STAGE, "trades", TRADE_COLUMNS),
    MOVE_TRADES,
    MOVE_TRADES_DISTRIBUTED,
)


class WriteError(Exception):
    """A batch could not be written: connection lost beyond the retry budget, or SQL failed."""


@dataclasses.dataclass
class WriteResult:
    """What became of one `write()` call.

    `inserted` can be smaller than `rows` for trades: duplicates are dropped.
    `recovered` counts batches found already committed on a retry (the commit
    happened; only its acknowledgement was lost). `rejected` counts records
    the database refused on their own (bad data), logged one by one.
    """

    rows: int = 0
    inserted: int = 0
    rejected: int = 0
    retries: int = 0
    recovered: int = 0
    batches: int = 0

    def add(self, other: WriteResult) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


class BatchWriter(Protocol[R_contra]):
    """Writes batches of one kind of record; what a collector drives."""

    @property
    def table(self) -> str: ...

    async def write(self, batch: Sequence[R_contra]) -> WriteResult: ...

    async def close(self) -> None: ...


class _Writer(Generic[R]):
    """The exactly-once batch protocol; subclasses say how rows reach their table."""

    table = ""
    path: _Path

    def __init__(
        self,
        target: asyncpg.Pool | ConnectFactory,
        *,
        max_retries: int = 5,
        retry_delay: float = 0.2,
        max_retry_delay: float = 10.0,
        timeout: float = 60.0,
        database: str = "",
    ) -> None:
        self._connections = Connections(target)
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.timeout = timeout
        self.database = database or "database"
        # Whether the table is distributed (Citus, migration 007); None: ask on the next batch.
        self._distributed: bool | None = None

    async def close(self) -> None:
        """Close a dedicated connection (a pool is the caller's to close)."""
        await self._connections.close()

    async def write(self, batch: Sequence[R]) -> WriteResult:
        """Commit `batch` exactly once, retrying on connection loss with backoff.

        Raises WriteError after `max_retries` failed retries, or at once on an
        error that a retry cannot fix. Records the database refuses on their
        own (bad data) are isolated by splitting the batch, logged, dropped,
        and counted in `rejected`, so one bad tick does not stop ingestion.
        """
        if not batch:
            return WriteResult()
        rows = [self._row(record) for record in batch]
        try:
            return await self._write_exactly_once(rows)
        except WriteError as exc:
            if exc.__cause__ is None or not is_bad_data(exc.__cause__):
                raise
            if len(batch) == 1:
                log.error(
                    "%s: record rejected by %s and dropped: %s (%s)",
                    self.table,
                    self.database,
                    batch[0],
                    exc.__cause__,
                )
                return WriteResult(rows=1, rejected=1)
        middle = len(batch) // 2
        result = await self.write(batch[:middle])
        result.add(await self.write(batch[middle:]))
        return result

    async def _write_exactly_once(self, rows: list[tuple[object, ...]]) -> WriteResult:
        batch_id = uuid.uuid4()
        result = WriteResult(rows=len(rows), batches=1)
        attempt = 0
        while True:
            try:
                recorded = await self._attempt(batch_id, rows, check_first=attempt > 0)
            except Exception as exc:
                if (
                    isinstance(exc, asyncpg.exceptions.UniqueViolationError)
                    and exc.constraint_name == BATCH_LOG_PKEY
                ):
                    # An earlier attempt's transaction committed while this one
                    # waited on its batch id: the next check will find it.
                    attempt += 1
                    continue
                if is_bad_data(exc):
                    raise WriteError(
                        f"{self.table}: batch refused by {self.database}: {exc}"
                    ) from exc
                if not retryable(exc):
                    raise WriteError(
                        f"{self.table}: batch of {len(rows)} failed on {self.database}: {exc!r}"
                    ) from exc
                if attempt >= self.max_retries:
                    raise WriteError(
                        f"{self.table}: batch {batch_id} of {len(rows)} rows not written to "
                        f"{self.database} after {attempt + 1} attempts (connection lost: "
                        f"{exc!r}); check the server, then restart the collector"
                    ) from exc
                delay = min(self.max_retry_delay, self.retry_delay * 2**attempt)
                delay *= random.uniform(0.5, 1.0)  # spread the reconnects of many engines
                attempt += 1
                result.retries = attempt
                # Citus may have distributed the table meanwhile (migration 007): ask again.
                self._distributed = None
                self._log_retry(batch_id, exc, attempt, delay)
                await asyncio.sleep(delay)
                continue
            inserted, already = recorded
            result.inserted = inserted
            if already:
                result.recovered = 1
                log.info(
                    "%s: batch %s was committed before the connection to %s was lost; "
                    "not resending",
                    self.table,
                    batch_id,
                    self.database,
                )
            return result

    def _log_retry(
        self, batch_id: uuid.UUID, exc: BaseException, attempt: int, delay: float
    ) -> None:
        cause = (
            f"Citus distributed {self.table} on {self.database}"
            if is_citus_switchover(exc)
            else f"connection to {self.database} lost"
        )
        log.warning(
            "%s: %s during batch %s (%r); retry %d/%d in %.2fs",
            self.table,
            cause,
            batch_id,
            exc,
            attempt,
            self.max_retries,
            delay,
        )

    async def _attempt(
        self, batch_id: uuid.UUID, rows: list[tuple[object, ...]], *, check_first: bool
    ) -> tuple[int, bool]:
        """One try on one connection: (rows inserted, whether it was already committed)."""
        async with self._connections.lease() as conn:
            if check_first:
                done = await conn.fetchval(_BATCH_RECORDED, batch_id, timeout=self.timeout)
                if done is not None:
                    return int(done), True
            return await self._send(conn, batch_id, rows), False

    async def _send(
        self, conn: asyncpg.Connection, batch_id: uuid.UUID, rows: list[tuple[object, ...]]
    ) -> int:
        async with conn.transaction():
            if self._distributed is None:
                self._distributed = await _is_distributed(conn, self.table, self.timeout)
            inserted = await _stage_and_move(
                conn, rows, self.path, distributed=self._distributed, timeout=self.timeout
            )
            await conn.execute(_RECORD_BATCH, batch_id, self.table, inserted, timeout=self.timeout)
        return inserted

    def _row(self, record: R) -> tuple[object, ...]:
        raise NotImplementedError


class BookTickerWriter(_Writer[BookTicker]):
    """Writes book tickers into `book_ticker_snapshots`, each one once (its natural key)."""

    table = "book_ticker_snapshots"
    path = _BOOK_TICKER_PATH

    def _row(self, record: BookTicker) -> tuple[object, ...]:
        return (
            record.timestamp,
            record.exchange,
            record.symbol_base,
            record.symbol_quote,
            record.bid_price,
            record.bid_qty,
            record.ask_price,
            record.ask_qty,
        )


class TradeWriter(_Writer[Trade]):
    """Writes trades into `trades`, dropping ones already stored (trade id, or natural key)."""

    table = "trades"
    path = _TRADE_PATH

    def _row(self, record: Trade) -> tuple[object, ...]:
        return (
            record.timestamp,
            record.exchange,
            record.stored_symbol,
            record.symbol_base,
            record.symbol_quote,
            record.price,
            record.quantity,
            record.side,
            record.trade_id,
            record.quote_quantity,
            record.is_buyer,
            record.is_maker,
        )


async def _is_distributed(conn: asyncpg.Connection, table: str, timeout: float) -> bool:
    """Whether `table` is a Citus distributed table (asked once per writer, and after a retry)."""
    if not await conn.fetchval(CITUS_INSTALLED, timeout=timeout):
        return False
    return bool(await conn.fetchval(DISTRIBUTED, table, timeout=timeout))


async def _stage_and_move(
    conn: asyncpg.Connection,
    rows: list[tuple[object, ...]],
    path: _Path,
    *,
    distributed: bool,
    timeout: float,
) -> int:
    """COPY the rows into the staging table, move the new ones; how many were new."""
    await conn.execute(path.create, timeout=timeout)
    await conn.copy_records_to_table(
        path.stage, records=rows, columns=path.columns, timeout=timeout
    )
    status = await conn.execute(
        path.move_distributed if distributed else path.move, timeout=timeout
    )
    return int(status.rsplit(" ", 1)[1])  # "INSERT 0 <n>", the message's last command
