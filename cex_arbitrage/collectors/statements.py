"""The writers' SQL: rows COPYed into a staging table, then moved so each fact is stored once.

Several engines may collect the same feed (same exchange and pair); each
fact must still be stored once. The natural keys (migration 005 explains the
choice):

- a book ticker: exchange, pair, timestamp and the four values;
- a trade with an exchange trade id: exchange, pair, trade id, timestamp
  (uq_trades_dedup, migration 001);
- a trade without one: exchange, raw symbol, timestamp, price, quantity, side.

The move is correct whether or not the unique indexes of 005 exist yet (a
writer runs before, during and after 005's background build):

- Once 005's index on the key is valid (it holds every stored row), the
  insert's `ON CONFLICT DO NOTHING` does the work: no lock, no lookup. The
  index is looked up in the catalog by each batch, in the same statements.
- Until then: take a transaction-level advisory lock per feed in the batch,
  in sorted order (no deadlock between two batches; writers of one feed
  commit one after another, writers of different feeds do not wait), and
  insert only rows whose key is not stored yet (NOT EXISTS, in a snapshot
  taken after the lock, so it includes every earlier batch of the feed).
  A unique index being built but not yet valid does not hold every stored
  row, so it cannot be relied on.

On a Citus coordinator whose tables migration 007 distributed, Citus cannot
plan the NOT EXISTS lookup (a join of a local staging table with a
distributed table), and needs none: 007 distributes only after 005's key
indexes are valid, and a distributed table keeps them. The writers ask once
whether their table is distributed (DISTRIBUTED) and then send the plain
insert (MOVE_*_DISTRIBUTED). Its `RETURNING 1` is what makes the count
right: for `INSERT ... SELECT ... ON CONFLICT` into a distributed table
Citus reports the rows it sent, not the rows inserted, unless the statement
returns rows (docs/citus.md, measured).

Either way DISTINCT drops repeats inside the batch, and `ON CONFLICT DO
NOTHING` has no conflict target: it uses whatever unique indexes exist
(uq_trades_dedup, 005's) and needs none; a targeted one would fail while
005's index is missing. The index makes the key hold against any other
writer (psql, an older engine). Lock and insert go in one simple-query
message: one round trip, one statement snapshot each.
"""

from __future__ import annotations

from cex_arbitrage.collectors.columns import BOOK_TICKER_COLUMNS, TRADE_COLUMNS

BOOK_TICKER_STAGE = "cex_stage_book_tickers"
TRADE_STAGE = "cex_stage_trades"

_BOOK_TICKER_KEY = BOOK_TICKER_COLUMNS
_IDLESS_TRADE_KEY = ("exchange", "symbol", "timestamp", "price", "quantity", "side")


def _names(columns: tuple[str, ...], prefix: str = "") -> str:
    return ", ".join(f'{prefix}"{column}"' for column in columns)


def _same(columns: tuple[str, ...]) -> str:
    return " AND ".join(f'stored."{c}" = staged."{c}"' for c in columns)


def create_stage(stage: str, table: str, columns: tuple[str, ...]) -> str:
    """The staging table takes its column types from the table, so it follows the schema.

    ON COMMIT DELETE ROWS empties it at each commit; IF NOT EXISTS makes it a
    no-op after a connection's first batch.
    """
    return (
        f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
        f"SELECT {_names(columns)} FROM {table} WITH NO DATA"
    )


def _key_index_valid(index: str) -> str:
    """Whether 005's unique index on the key is built and valid (every stored row is in it)."""
    return (
        f"EXISTS (SELECT 1 FROM pg_index WHERE indexrelid = to_regclass('{index}') AND indisvalid)"
    )


def _lock_feeds(stage: str, table: str, index: str, feed: str) -> str:
    """Lock each feed of the batch (`feed` names it) unless the key index is valid.

    JIT off: the planner's guess for a staging table without statistics can
    cross jit_above_cost, and compiling then takes a second per batch.
    """
    return (
        "SET LOCAL jit = off;\n"
        f"SELECT pg_advisory_xact_lock(hashtext('{table}'), feed.k) FROM ("
        f"SELECT DISTINCT hashtext({feed}) AS k "
        f"FROM {stage} ORDER BY 1) AS feed WHERE NOT {_key_index_valid(index)};\n"
    )


_BOOK_TICKER_INDEX = "uq_book_ticker_snapshots_natural_key"
_IDLESS_TRADE_INDEX = "uq_trades_natural_key"

MOVE_BOOK_TICKERS = _lock_feeds(
    BOOK_TICKER_STAGE,
    "book_ticker_snapshots",
    _BOOK_TICKER_INDEX,
    "exchange || '/' || symbol_base || '/' || symbol_quote",
) + (
    f"INSERT INTO book_ticker_snapshots ({_names(BOOK_TICKER_COLUMNS)}) "
    f"SELECT DISTINCT {_names(BOOK_TICKER_COLUMNS, 'staged.')} FROM {BOOK_TICKER_STAGE} staged "
    f"WHERE {_key_index_valid(_BOOK_TICKER_INDEX)} "
    "OR NOT EXISTS (SELECT 1 FROM book_ticker_snapshots stored "
    f"WHERE {_same(_BOOK_TICKER_KEY)}) "
    "ON CONFLICT DO NOTHING"
)

MOVE_TRADES = _lock_feeds(
    TRADE_STAGE, "trades", _IDLESS_TRADE_INDEX, "exchange || '/' || symbol"
) + (
    f"INSERT INTO trades ({_names(TRADE_COLUMNS)}) "
    f"SELECT DISTINCT ON ({_names(_IDLESS_TRADE_KEY, 'staged.')}, staged.symbol_base, "
    "staged.symbol_quote, staged.trade_id) "
    f"{_names(TRADE_COLUMNS, 'staged.')} FROM {TRADE_STAGE} staged "
    # A trade with an id meets uq_trades_dedup (001); one without, the lookup or 005's index.
    f"WHERE staged.trade_id IS NOT NULL OR {_key_index_valid(_IDLESS_TRADE_INDEX)} "
    "OR NOT EXISTS (SELECT 1 FROM trades stored "
    f"WHERE stored.trade_id IS NULL AND {_same(_IDLESS_TRADE_KEY)}) "
    "ON CONFLICT DO NOTHING"
)


# Whether Citus is installed, then whether `$1` is one of its distributed tables.
CITUS_INSTALLED = "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"
DISTRIBUTED = "SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = to_regclass($1))"

MOVE_BOOK_TICKERS_DISTRIBUTED = (
    f"INSERT INTO book_ticker_snapshots ({_names(BOOK_TICKER_COLUMNS)}) "
    f"SELECT DISTINCT {_names(BOOK_TICKER_COLUMNS)} FROM {BOOK_TICKER_STAGE} "
    "ON CONFLICT DO NOTHING RETURNING 1"
)

MOVE_TRADES_DISTRIBUTED = (
    f"INSERT INTO trades ({_names(TRADE_COLUMNS)}) "
    f"SELECT DISTINCT ON ({_names(_IDLESS_TRADE_KEY)}, symbol_base, symbol_quote, trade_id) "
    f"{_names(TRADE_COLUMNS)} FROM {TRADE_STAGE} "
    "ON CONFLICT DO NOTHING RETURNING 1"
)
