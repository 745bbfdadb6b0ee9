-- Migration 001: trade collection support.
--
-- Upgrades `trades` from the legacy shape (tests/legacy-schema.sql: one
-- `symbol` string as each exchange spells it) to base/quote columns, removes
-- replayed duplicate trades (archiving them), adds the indexes and
-- constraints trade queries need, OHLCV aggregates at 1 minute and 1 hour,
-- and grants for an application role and a read-only role. On an empty
-- database it first creates both tables exactly as the legacy init script
-- did, so both starting points end with the same schema (docs/schema.md).
--
-- Live-database rules (PRODUCT.md part 9): the foreground steps only do what
-- new writes need (columns, the dedup index, the fill trigger, NOT VALID
-- constraints); every statement there holds a lock that blocks inserts for a
-- moment only, and the runner bounds lock waits (lock_timeout) and retries.
-- Work proportional to the table (backfill, validation, query indexes, the
-- first aggregate refresh) runs in background steps that commit as they go
-- and resume from a checkpoint.
--
-- TimescaleDB: written against the TimescaleDB 2.x documentation and checked
-- with TimescaleDB 2.28.3 on PostgreSQL 15; per-chunk unique index builds
-- need 2.22 or later (older versions fall back to one blocking build, with a
-- NOTICE), hierarchical aggregates need 2.9. Quirks: docs/timescaledb.md.
--
-- Symbol split rules, in one place: the function cex_split_symbol() in the
-- routine R__trade_symbols.sql.
--   1. trim white space, upper-case;
--   2. exactly one separator `_`, `-` or `/` with a non-empty alphanumeric
--      part on each side: BTC_USDT, btc-usdt, BTC/USDT -> BTC / USDT;
--   3. no separator, alphanumeric: the LONGEST known quote asset that is a
--      suffix and leaves a non-empty base: BTCUSDT -> BTC/USDT,
--      BTCFDUSD -> BTC/FDUSD (not FD... /USD), ETHBTC -> ETH/BTC.
--      Known quotes: FDUSD USDT USDC BUSD TUSD USDP USD EUR GBP TRY BRL DAI
--      BTC ETH BNB;
--   4. anything else (XYZ, ???, BTC__USDT, BTC_USDT_PERP, a part longer than
--      20 characters) is unsplittable: the row is kept as it is with NULL
--      base/quote, counted, reported by NOTICE and recorded in
--      migration_progress (version '001', task 'backfill_symbols', detail).
--      Nothing is guessed and no row is lost.
--
-- Dedup rule: rows with the same (exchange, symbol_base, symbol_quote,
-- trade_id), trade_id NOT NULL, are one trade replayed; the lowest id stays,
-- the others move to trades_duplicates_removed (with kept_id). Rows without
-- trade_id and unsplittable rows are all kept. New duplicates are kept out
-- by uq_trades_dedup, on which the writers' ON CONFLICT relies.
--
-- Functions and procedures this file calls live in the routines
-- R__trade_helpers.sql, R__trade_symbols.sql, R__trade_backfill.sql and
-- R__trade_maintenance.sql: the runner installs them before this file's
-- steps and re-installs them whenever they change (by hand: psql -f them
-- after 000 and before this file).
--
-- migrate:feature trade_collection
-- migrate:depends 000
-- migrate:replaces 300d1f099be0beb6195ba7e6cab0d89b0577584cd8d481a47bd2a4a16a0138e3 0.3.0's 001: same schema steps; its functions step moved to the R__trade_* routines, the archive table stays here as step archive_table
-- migrate:replaces fa432004001e4ca35eb48de0391f94c92087c8eb48898b1e595cfc6b2b560e98 001 as shipped with the migrator package: same steps and schema; the OHLCV definition moved to R__trade_aggregates and the constraint list to R__trade_helpers (one copy each)
-- migrate:description Trade collection: symbol_base/symbol_quote on trades, dedup, indexes, OHLCV aggregates, grants

-- migrate:step tables
-- The two tables exactly as the legacy init script created them (no-ops on a
-- legacy database), as hypertables where TimescaleDB is installed.

CREATE TABLE IF NOT EXISTS book_ticker_snapshots (
    id            BIGSERIAL,
    timestamp     TIMESTAMPTZ   NOT NULL,
    exchange      VARCHAR(50)   NOT NULL,
    symbol_base   VARCHAR(20)   NOT NULL,
    symbol_quote  VARCHAR(20)   NOT NULL,
    bid_price     NUMERIC(20,8) NOT NULL,
    bid_qty       NUMERIC(20,8) NOT NULL,
    ask_price     NUMERIC(20,8) NOT NULL,
    ask_qty       NUMERIC(20,8) NOT NULL,
    created_at    TIMESTAMPTZ   DEFAULT NOW(),
    PRIMARY KEY (id, timestamp)
);
CREATE INDEX IF NOT EXISTS idx_bts_exchange_pair_time
    ON book_ticker_snapshots (exchange, symbol_base, symbol_quote, timestamp DESC);

CREATE TABLE IF NOT EXISTS trades (
    id          BIGSERIAL,
    timestamp   TIMESTAMPTZ   NOT NULL,
    exchange    VARCHAR(50)   NOT NULL,
    symbol      VARCHAR(50)   NOT NULL,
    price       NUMERIC(20,8) NOT NULL,
    quantity    NUMERIC(20,8) NOT NULL,
    side        VARCHAR(4)    NOT NULL,
    trade_id    VARCHAR(100),
    created_at  TIMESTAMPTZ   DEFAULT NOW(),
    PRIMARY KEY (id, timestamp)
);
CREATE INDEX IF NOT EXISTS idx_trades_exchange_symbol_time
    ON trades (exchange, symbol, timestamp DESC);

-- Same calls as the legacy script, in the same order (so hypertable ids, and
-- with them the aggregates' definitions, match a legacy database). Only an
-- EMPTY table is converted: making a filled plain table a hypertable
-- (migrate_data) copies every row under an exclusive lock, which a live
-- collector cannot wait for; such a table stays plain and gets the plain
-- views instead of continuous aggregates (docs/timescaledb.md).
DO $$
DECLARE
    t text;
    is_empty boolean;
BEGIN
    IF cex_migration.timescaledb_version() IS NULL THEN
        RETURN;
    END IF;
    FOREACH t IN ARRAY ARRAY['book_ticker_snapshots', 'trades'] LOOP
        CONTINUE WHEN cex_migration.is_hypertable(t::regclass);
        EXECUTE format('SELECT NOT EXISTS (SELECT 1 FROM %I)', t) INTO is_empty;
        IF is_empty THEN
            PERFORM create_hypertable(t::regclass, 'timestamp', if_not_exists => TRUE);
        ELSE
            RAISE NOTICE 'migration 001: % holds rows and is not a hypertable; it stays a plain table '
                         '(converting it would copy every row under an exclusive lock)', t;
        END IF;
    END LOOP;
END
$$;

-- migrate:step columns
-- Metadata-only column adds (no default, so no table rewrite): one brief
-- ACCESS EXCLUSIVE lock, whatever the table size. NULL base/quote means "not
-- split (yet)": old rows until the backfill reaches them, unsplittable ones
-- for good.

ALTER TABLE trades
    ADD COLUMN IF NOT EXISTS symbol_base    VARCHAR(20),
    ADD COLUMN IF NOT EXISTS symbol_quote   VARCHAR(20),
    ADD COLUMN IF NOT EXISTS quote_quantity NUMERIC(28,12),
    ADD COLUMN IF NOT EXISTS is_buyer       BOOLEAN,
    ADD COLUMN IF NOT EXISTS is_maker       BOOLEAN;

COMMENT ON COLUMN trades.symbol IS
    'The pair as the exchange spells it (BTCUSDT, BTC_USDT, ...); cex_split_symbol() reads it';
COMMENT ON COLUMN trades.symbol_base IS
    'Base asset, upper case (BTC); NULL with symbol_quote when no rule splits symbol';
COMMENT ON COLUMN trades.symbol_quote IS
    'Quote asset, upper case (USDT); NULL with symbol_base when no rule splits symbol';
COMMENT ON COLUMN trades.quote_quantity IS
    'price * quantity as the exchange reports it, when it does';
COMMENT ON COLUMN trades.is_buyer IS 'The exchange''s buyer flag, when it sends one';
COMMENT ON COLUMN trades.is_maker IS 'The exchange''s maker flag, when it sends one';

-- migrate:step archive_table

-- Removed replayed duplicates, kept so nothing is silently lost. kept_id is
-- the row of the same trade that stayed in trades.
CREATE TABLE IF NOT EXISTS trades_duplicates_removed (
    id              BIGINT        NOT NULL,
    "timestamp"     TIMESTAMPTZ   NOT NULL,
    exchange        VARCHAR(50)   NOT NULL,
    symbol          VARCHAR(50)   NOT NULL,
    symbol_base     VARCHAR(20),
    symbol_quote    VARCHAR(20),
    price           NUMERIC(20,8) NOT NULL,
    quantity        NUMERIC(20,8) NOT NULL,
    side            VARCHAR(4)    NOT NULL,
    trade_id        VARCHAR(100),
    created_at      TIMESTAMPTZ,
    quote_quantity  NUMERIC(28,12),
    is_buyer        BOOLEAN,
    is_maker        BOOLEAN,
    kept_id         BIGINT        NOT NULL,
    removed_at      TIMESTAMPTZ   NOT NULL DEFAULT now(),
    PRIMARY KEY (id, "timestamp")
);

COMMENT ON TABLE trades_duplicates_removed IS
    'Replayed duplicate trades removed by migration 001 (same exchange, pair and trade_id as row kept_id)';

-- migrate:step dedup_index transaction:false
-- The index the writers' ON CONFLICT (exchange, symbol_base, symbol_quote,
-- trade_id, "timestamp") WHERE trade_id IS NOT NULL relies on. Built before
-- the fill trigger exists, so every row it meets has NULL base/quote except
-- new writes, and no old duplicate can make the build fail. On a hypertable
-- it must include the time column (uniqueness is enforced per chunk).
--
-- TimescaleDB errors on any CREATE INDEX CONCURRENTLY that names a
-- hypertable, even with IF NOT EXISTS on an existing index, and the file
-- cannot branch around a statement. So on a hypertable, the procedure builds
-- the index per chunk, and for the CONCURRENTLY statement only, a session-
-- local empty temporary table `trades` shadows the hypertable (pg_temp comes
-- first in name lookup), is indexed instead, and is dropped right after. On a
-- plain table there is no temporary table and the statement builds the
-- index without blocking writes.
CALL cex_migration.create_hypertable_index('trades', 'uq_trades_dedup', true,
    '(exchange, symbol_base, symbol_quote, trade_id, "timestamp") WHERE trade_id IS NOT NULL');
-- migrate:session
DO $$
BEGIN
    IF cex_migration.is_hypertable('trades') THEN
        CREATE TEMP TABLE IF NOT EXISTS trades (LIKE trades);
    END IF;
END
$$;
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS uq_trades_dedup
    ON trades (exchange, symbol_base, symbol_quote, trade_id, "timestamp")
    WHERE trade_id IS NOT NULL;
DO $$
BEGIN
    IF to_regclass('pg_temp.trades') IS NOT NULL THEN
        DROP TABLE pg_temp.trades;
    END IF;
END
$$;

-- migrate:step write_path
-- Constraints first (they take ACCESS EXCLUSIVE for a moment, covering the
-- trigger's lock too), NOT VALID: new rows are checked at once, old rows are
-- validated in the background. Their one list is cex_migration.trade_constraints() in
-- R__trade_helpers.sql. Then the trigger for legacy writers.
DO $$
DECLARE
    missing text;
BEGIN
    SELECT string_agg(format('ADD CONSTRAINT %I %s NOT VALID', v.name, v.definition), ', ')
    INTO missing
    FROM cex_migration.trade_constraints() AS v
    WHERE NOT EXISTS (SELECT 1 FROM pg_constraint
                      WHERE conrelid = 'trades'::regclass AND conname = v.name);
    IF missing IS NOT NULL THEN
        EXECUTE 'ALTER TABLE trades ' || missing;
    END IF;

    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = 'trades'::regclass AND tgname = 'trades_fill_symbol_parts') THEN
        CREATE TRIGGER trades_fill_symbol_parts
            BEFORE INSERT ON trades
            FOR EACH ROW
            WHEN (NEW.symbol_base IS NULL OR NEW.symbol_quote IS NULL OR NEW.symbol IS NULL)
            EXECUTE FUNCTION cex_trades_fill_symbol_parts();
    END IF;
END
$$;

-- migrate:step aggregates
-- OHLCV per exchange and pair at 1 minute and 1 hour: continuous aggregates
-- with TimescaleDB (created empty, filled by the background step
-- refresh_aggregates), views with the same names, columns and answers on
-- plain PostgreSQL. The one definition of their columns is in the routine
-- R__trade_aggregates.sql.
CALL cex_migration.create_trade_aggregates();

-- migrate:step grants
-- cex.app_role writes, cex.readonly_role reads (docs/migration-files.md,
-- settings). Missing roles are created NOLOGIN when the current user may
-- create roles; otherwise that role's grants are skipped with a NOTICE.
DO $$
DECLARE
    app CONSTANT text := coalesce(nullif(current_setting('cex.app_role', true), ''), 'cex_app');
    ro  CONSTANT text := coalesce(nullif(current_setting('cex.readonly_role', true), ''), 'cex_readonly');
    may_create boolean;
    r text;
BEGIN
    SELECT rolsuper OR rolcreaterole INTO may_create FROM pg_roles WHERE rolname = current_user;
    FOREACH r IN ARRAY ARRAY[app, ro] LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r);
        IF may_create THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
                RAISE NOTICE 'migration 001: created role % (NOLOGIN)', r;
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created meanwhile by a migration of another database
            END;
        ELSE
            RAISE NOTICE 'migration 001: role % does not exist and % may not create roles; its grants '
                         'are skipped (create the role, then grant as docs/schema.md shows)', r, current_user;
        END IF;
    END LOOP;

    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = app) THEN
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON trades, book_ticker_snapshots TO %I', app);
        EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %s, %s TO %I',
                       pg_get_serial_sequence('trades', 'id'),
                       pg_get_serial_sequence('book_ticker_snapshots', 'id'), app);
        EXECUTE format('GRANT SELECT ON trades_duplicates_removed, trades_ohlcv_1m, trades_ohlcv_1h TO %I', app);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = ro) THEN
        EXECUTE format('GRANT SELECT ON trades, book_ticker_snapshots, trades_duplicates_removed, '
                       'trades_ohlcv_1m, trades_ohlcv_1h TO %I', ro);
    END IF;
END
$$;

-- migrate:step backfill transaction:false background parallel
-- Every session of the step CALLs it; they share out the chunks.
CALL cex_migration.backfill_trade_symbols();

-- migrate:step validate_constraints transaction:false background
ANALYZE trades;
CALL cex_migration.validate_trade_constraints();

-- migrate:step query_indexes transaction:false background
-- Over the backfilled columns, so built after the backfill (once, and without
-- slowing its updates). Same hypertable/plain arrangement as dedup_index.
-- A build keeps at most cex.parallel_sessions processes busy (the leader and
-- its parallel workers), as the backfill does, so the collectors keep the
-- server's other cores; PostgreSQL's default is a leader and two workers.
-- migrate:session
SELECT set_config('max_parallel_maintenance_workers', least(
    current_setting('max_parallel_maintenance_workers')::integer,
    greatest(coalesce(nullif(current_setting('cex.parallel_sessions', true), ''), '2')::integer - 1, 0)
)::text, false);
CALL cex_migration.create_hypertable_index('trades', 'idx_trades_pair_time', false,
    '(symbol_base, symbol_quote, "timestamp" DESC)');
CALL cex_migration.create_hypertable_index('trades', 'idx_trades_exchange_time', false,
    '(exchange, "timestamp" DESC)');
-- migrate:session
DO $$
BEGIN
    IF cex_migration.is_hypertable('trades') THEN
        CREATE TEMP TABLE IF NOT EXISTS trades (LIKE trades);
    END IF;
END
$$;
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_trades_pair_time
    ON trades (symbol_base, symbol_quote, "timestamp" DESC);
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_trades_exchange_time
    ON trades (exchange, "timestamp" DESC);
DO $$
BEGIN
    IF to_regclass('pg_temp.trades') IS NOT NULL THEN
        DROP TABLE pg_temp.trades;
    END IF;
END
$$;
RESET max_parallel_maintenance_workers;

-- migrate:step refresh_aggregates transaction:false background
CALL cex_migration.refresh_trade_aggregates();

-- migrate:psql-only
SELECT migration_record_manual('001', 'add_trade_collection_support', 'trade_collection');
