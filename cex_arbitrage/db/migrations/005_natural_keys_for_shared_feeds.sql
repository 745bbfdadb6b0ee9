-- Migration 005: natural keys for book tickers and trades without an exchange trade id.
--
-- Why: several engines may collect the same feed (the README invites any
-- number of engines). Exactly-once held per writer batch (002) and, for
-- trades with an exchange trade id, across writers (uq_trades_dedup, 001);
-- sixteen engines replaying one sample stored each book ticker and each
-- trade without an id sixteen times. A fact needs a key that says "the same
-- fact", so that every writer stores it once.
--
-- The natural keys, and why these columns:
--
-- * Book ticker: (exchange, symbol_base, symbol_quote, timestamp, bid_price,
--   bid_qty, ask_price, ask_qty). A book ticker is the state of the top of
--   one pair's book at one moment, as the exchange stamped it; the engines
--   store the exchange's timestamp (records.py), not when they received it,
--   so every engine on the feed stores the same value. Exchange, pair and
--   timestamp alone are NOT enough: an exchange sends several updates within
--   one millisecond (its timestamp resolution), each a different state, and a
--   key without the values would keep the first and drop the others, losing
--   data. With the values, two updates at one instant are two facts unless
--   they carry the same state, and then storing the state twice says nothing
--   more: a snapshot is a value, not an event to count.
-- * Trade without an exchange trade id: (exchange, symbol, timestamp, price,
--   quantity, side), WHERE trade_id IS NULL. Everything the exchange reported
--   about the trade, the pair as the exchange spells it (`symbol`, which every
--   engine on a feed stores alike, and from which base/quote follow). The
--   optional columns (quote_quantity, is_buyer, is_maker) follow from these or
--   are absent. The raw symbol rather than base/quote also lets the writers'
--   lookup use idx_trades_exchange_symbol_time, which every database has from
--   its first day, while 001's pair index is still to come. The cost, stated
--   plainly: two real trades at the same instant, same price, quantity and
--   side, with no id from the exchange to tell them apart, are stored as one.
--   Nothing in the data can tell them from one trade received twice (by two
--   engines, or replayed after a reconnect), which is the far more common
--   case; an exchange feed that matters trade by trade should give ids, and
--   then uq_trades_dedup applies.
-- * Trade with an id: unchanged, uq_trades_dedup (exchange, pair, trade_id,
--   timestamp).
-- On a hypertable a unique index must include the time column: both keys do.
--
-- Live and large tables (PRODUCT.md part 9):
-- * The foreground part creates the book-ticker archive table only: no lock
--   on the data tables beyond a moment.
-- * The writers are correct before, during and after this migration
--   (cex_arbitrage/collectors/statements.py): until the key's unique index
--   below is valid, each batch takes a transaction-level advisory lock per
--   feed and inserts only keys not stored yet (NOT EXISTS); once it is valid,
--   the index alone. ON CONFLICT DO NOTHING names no conflict target, so no
--   index is required. New rows therefore never repeat a key, whatever this
--   migration has done so far.
-- * Background step archive_duplicates: rows already stored twice are moved
--   (never deleted without a copy) to book_ticker_snapshots_duplicates_removed
--   and trades_duplicates_removed, with kept_id = the lowest id of the key, in
--   batches of cex.backfill_batch_size ids, each batch one transaction with
--   its checkpoint (routine R__natural_keys.sql). Resumable; safe to CALL again.
-- * Background step natural_key_indexes: the unique indexes, with CREATE UNIQUE
--   INDEX CONCURRENTLY on a plain table; on a TimescaleDB hypertable, where
--   CONCURRENTLY is refused, chunk by chunk and then ON ONLY the root, with the
--   same temporary-table arrangement as 001's dedup_index (see there).
-- * An engine of a release before this one does not take the advisory lock;
--   collecting a feed next to a current engine while this runs, it can store a
--   key twice after the archive, and the index build then fails on it (the
--   runner drops the INVALID index on the re-run). Upgrade every engine, then
--   `CALL cex_migration.archive_key_duplicates(...)` as below and run again. Once the
--   indexes exist, such an engine's repeated key is refused (unique violation),
--   logged and dropped by its writer.
--
-- migrate:feature trade_collection
-- migrate:depends 001, 003
-- migrate:description Natural keys for book tickers and id-less trades: archive duplicates, unique indexes

-- migrate:step archive_table
-- Book tickers stored more than once, kept so nothing is silently lost; kept_id
-- is the row of the same fact that stayed in book_ticker_snapshots.
CREATE TABLE IF NOT EXISTS book_ticker_snapshots_duplicates_removed (
    id            BIGINT        NOT NULL,
    "timestamp"   TIMESTAMPTZ   NOT NULL,
    exchange      VARCHAR(50)   NOT NULL,
    symbol_base   VARCHAR(20)   NOT NULL,
    symbol_quote  VARCHAR(20)   NOT NULL,
    bid_price     NUMERIC(20,8) NOT NULL,
    bid_qty       NUMERIC(20,8) NOT NULL,
    ask_price     NUMERIC(20,8) NOT NULL,
    ask_qty       NUMERIC(20,8) NOT NULL,
    created_at    TIMESTAMPTZ,
    kept_id       BIGINT        NOT NULL,
    removed_at    TIMESTAMPTZ   NOT NULL DEFAULT now(),
    PRIMARY KEY (id, "timestamp")
);

COMMENT ON TABLE book_ticker_snapshots_duplicates_removed IS
    'Book tickers stored more than once, removed by migration 005 (same exchange, pair, '
    'timestamp and values as row kept_id)';
COMMENT ON TABLE trades_duplicates_removed IS
    'Replayed duplicate trades removed by migrations 001 and 005 (same exchange, pair and '
    'trade_id as row kept_id; without a trade_id: same symbol, timestamp, price, quantity and side)';

DO $$
DECLARE
    app_role TEXT := coalesce(nullif(current_setting('cex.app_role', true), ''), 'cex_app');
    readonly_role TEXT := coalesce(nullif(current_setting('cex.readonly_role', true), ''), 'cex_readonly');
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = app_role) THEN
        EXECUTE format('GRANT SELECT ON book_ticker_snapshots_duplicates_removed TO %I', app_role);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = readonly_role) THEN
        EXECUTE format('GRANT SELECT ON book_ticker_snapshots_duplicates_removed TO %I', readonly_role);
    END IF;
END
$$;

-- migrate:step archive_duplicates transaction:false background
CALL cex_migration.archive_key_duplicates('archive_book_tickers', 'book_ticker_snapshots',
    'book_ticker_snapshots_duplicates_removed',
    ARRAY['exchange', 'symbol_base', 'symbol_quote', 'timestamp',
          'bid_price', 'bid_qty', 'ask_price', 'ask_qty'],
    'true');
CALL cex_migration.archive_key_duplicates('archive_idless_trades', 'trades', 'trades_duplicates_removed',
    ARRAY['exchange', 'symbol', 'timestamp', 'price', 'quantity', 'side'],
    '%1$s.trade_id IS NULL');

-- migrate:step natural_key_indexes transaction:false background
-- After the archive: no key is stored twice, and the writers store none twice.
CALL cex_migration.create_hypertable_index('book_ticker_snapshots', 'uq_book_ticker_snapshots_natural_key', true,
    '(exchange, symbol_base, symbol_quote, "timestamp", bid_price, bid_qty, ask_price, ask_qty)');
CALL cex_migration.create_hypertable_index('trades', 'uq_trades_natural_key', true,
    '(exchange, symbol, "timestamp", price, quantity, side) WHERE trade_id IS NULL');
-- migrate:session
DO $$
BEGIN
    IF cex_migration.is_hypertable('book_ticker_snapshots') THEN
        CREATE TEMP TABLE IF NOT EXISTS book_ticker_snapshots (LIKE book_ticker_snapshots);
    END IF;
    IF cex_migration.is_hypertable('trades') THEN
        CREATE TEMP TABLE IF NOT EXISTS trades (LIKE trades);
    END IF;
END
$$;
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS uq_book_ticker_snapshots_natural_key
    ON book_ticker_snapshots (exchange, symbol_base, symbol_quote, "timestamp",
                              bid_price, bid_qty, ask_price, ask_qty);
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS uq_trades_natural_key
    ON trades (exchange, symbol, "timestamp", price, quantity, side)
    WHERE trade_id IS NULL;
DO $$
BEGIN
    IF to_regclass('pg_temp.book_ticker_snapshots') IS NOT NULL THEN
        DROP TABLE pg_temp.book_ticker_snapshots;
    END IF;
    IF to_regclass('pg_temp.trades') IS NOT NULL THEN
        DROP TABLE pg_temp.trades;
    END IF;
END
$$;

-- migrate:psql-only
SELECT migration_record_manual('005', 'natural_keys_for_shared_feeds', 'trade_collection');
