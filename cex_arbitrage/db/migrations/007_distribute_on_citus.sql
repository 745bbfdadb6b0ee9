-- Migration 007: on a Citus coordinator, distribute trades and book tickers.
--
-- For Citus only (`migrate:extension citus`): where the extension is not
-- installed the runner neither runs nor records this migration, so a
-- single-node database that is later restored onto a Citus coordinator finds
-- it pending there. Under plain `psql -f` every statement is a no-op without
-- Citus (each checks cex_migration.on_citus(), or builds its index on an
-- empty temporary stand-in), so the file runs on plain PostgreSQL,
-- TimescaleDB and Citus alike. On Citus it takes the tables
-- 000 to 006 built as local tables on the coordinator, full of data and
-- written to, to hash-distributed tables co-located by symbol_base, while
-- the collectors keep writing. The same steps serve a fresh database, a
-- legacy one upgraded on the coordinator (001 ran first, on local tables)
-- and a single-node database restored onto the coordinator after 001 to 006
-- (only 007 is pending there): the distribution lives here, not in 001.
-- Design, measurements and every Citus difference: docs/citus.md.
--
-- Why symbol_base: Citus accepts a unique key only if it holds the
-- distribution column. uq_trades_dedup and the book-ticker natural key hold
-- it already; one pair across exchanges and one exchange's pair over time
-- are one-shard queries; the OHLCV views group by it, so each shard computes
-- its own groups.
--
-- Steps (the background ones run in the engine's background task or in the
-- CLI, and resume where they stopped):
-- * unsplit_table: trades_unsplit, a local table for the trades whose pair
--   no rule splits (NULL symbol_base, which Citus refuses), and the CHECK
--   trades_symbol_base_not_null NOT VALID, so no new such row arrives
--   (ACCESS EXCLUSIVE for a moment, no scan; the runner bounds the wait).
--   The collectors always send base and quote (collectors/records.py); a
--   legacy writer that sends only an unsplittable `symbol` is refused from
--   here on, by name of the constraint.
-- * move_unsplit (background): those rows move, in batches, to trades_unsplit.
-- * validate_not_null (background): VALIDATE the CHECK (SHARE UPDATE
--   EXCLUSIVE: writes go on), so SET NOT NULL below needs no scan.
-- * distribution_keys (background): the unique indexes with symbol_base,
--   built CONCURRENTLY: the new primary key (id, "timestamp", symbol_base)
--   of both tables and 005's id-less trade key with symbol_base added.
-- * adopt_keys (background, one short transaction): SET NOT NULL, the
--   primary keys swapped with ADD PRIMARY KEY USING INDEX, 005's key
--   replaced under its own name (the writers look it up by name).
-- * distribute_trades, distribute_book_tickers (background):
--   create_distributed_table_concurrently, one at a time, book tickers
--   co-located with trades. Outside a transaction block (Citus refuses
--   one); each returns at once when its table is distributed already, so a
--   retry after a timeout or a lost connection starts from that check.
--
-- migrate:feature trade_collection
-- migrate:extension citus
-- migrate:depends 001, 003, 005
-- migrate:description On Citus: move unsplittable trades aside, keys with symbol_base, distribute

-- migrate:step unsplit_table
DO $$
DECLARE
    app_role TEXT := coalesce(nullif(current_setting('cex.app_role', true), ''), 'cex_app');
    readonly_role TEXT := coalesce(nullif(current_setting('cex.readonly_role', true), ''), 'cex_readonly');
BEGIN
    IF NOT cex_migration.on_citus() OR cex_migration.is_distributed('public.trades') THEN
        RETURN;
    END IF;
    -- Created before the CHECK below, so it does not copy it.
    CREATE TABLE IF NOT EXISTS public.trades_unsplit (
        LIKE public.trades INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
        PRIMARY KEY (id, "timestamp"));
    COMMENT ON TABLE public.trades_unsplit IS
        'Trades whose symbol no rule splits into base and quote, moved out of trades by '
        'migration 007 before Citus distributed it by symbol_base (which cannot be NULL)';
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = app_role) THEN
        EXECUTE format('GRANT SELECT, INSERT ON public.trades_unsplit TO %I', app_role);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = readonly_role) THEN
        EXECUTE format('GRANT SELECT ON public.trades_unsplit TO %I', readonly_role);
    END IF;
    IF NOT cex_migration.primary_key_has_symbol_base('public.trades')
       AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'public.trades'::regclass
                       AND conname = 'trades_symbol_base_not_null') THEN
        ALTER TABLE public.trades ADD CONSTRAINT trades_symbol_base_not_null
            CHECK (symbol_base IS NOT NULL) NOT VALID;
    END IF;
END
$$;

-- migrate:step move_unsplit transaction:false background
CALL cex_migration.move_unsplit_trades();

-- migrate:step validate_not_null transaction:false background
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'public.trades'::regclass
               AND conname = 'trades_symbol_base_not_null' AND NOT convalidated) THEN
        ALTER TABLE public.trades VALIDATE CONSTRAINT trades_symbol_base_not_null;
    END IF;
END
$$;

-- migrate:step distribution_keys transaction:false background
-- CREATE INDEX CONCURRENTLY cannot run in a function or a DO block, so where
-- no key is to be built (no Citus, or the keys were adopted already) each
-- build goes to an empty temporary table of the same name, which the
-- session's search path finds first, and is dropped with it.
-- migrate:session
DO $$
BEGIN
    IF NOT cex_migration.on_citus() OR cex_migration.primary_key_has_symbol_base('public.trades') THEN
        CREATE TEMP TABLE IF NOT EXISTS trades (LIKE public.trades);
    END IF;
    IF NOT cex_migration.on_citus()
       OR cex_migration.primary_key_has_symbol_base('public.book_ticker_snapshots') THEN
        CREATE TEMP TABLE IF NOT EXISTS book_ticker_snapshots (LIKE public.book_ticker_snapshots);
    END IF;
END
$$;
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS trades_dist_pkey
    ON trades (id, "timestamp", symbol_base);
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS uq_trades_natural_key_dist
    ON trades (exchange, symbol, "timestamp", price, quantity, side, symbol_base)
    WHERE trade_id IS NULL;
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS book_ticker_snapshots_dist_pkey
    ON book_ticker_snapshots (id, "timestamp", symbol_base);
DO $$
BEGIN
    IF to_regclass('pg_temp.trades') IS NOT NULL THEN
        DROP TABLE pg_temp.trades;
    END IF;
    IF to_regclass('pg_temp.book_ticker_snapshots') IS NOT NULL THEN
        DROP TABLE pg_temp.book_ticker_snapshots;
    END IF;
END
$$;

-- migrate:step adopt_keys background
CALL cex_migration.adopt_distribution_key('public.trades', 'trades_dist_pkey',
                                          'trades_symbol_base_not_null');
CALL cex_migration.adopt_distribution_key('public.book_ticker_snapshots',
                                          'book_ticker_snapshots_dist_pkey', NULL);
CALL cex_migration.adopt_natural_key_with_symbol_base();

-- migrate:step distribute_trades transaction:false background
CALL cex_migration.distribute_table('public.trades');

-- migrate:step distribute_book_tickers transaction:false background
CALL cex_migration.distribute_table('public.book_ticker_snapshots', 'public.trades');

-- migrate:psql-only
-- Recorded only on Citus, as the runner does: a database that later moves
-- onto a coordinator must find 007 pending there.
SELECT migration_record_manual('007', 'distribute_on_citus', 'trade_collection')
WHERE cex_migration.on_citus();
