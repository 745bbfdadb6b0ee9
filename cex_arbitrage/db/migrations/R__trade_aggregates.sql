-- Routine trade_aggregates (repeatable): the one definition of the OHLCV aggregates
-- trades_ohlcv_1m and trades_ohlcv_1h, and the procedure 001's `aggregates` step CALLs.
--
-- A routine is code that is replaced, not migrated: the runner runs this
-- whole file again, in one transaction with its history row
-- (migration_history.version 'R__trade_aggregates'), whenever its checksum differs
-- from the recorded one, before any pending step that may call it. Edit it
-- freely; the next run or engine boot installs the new bodies
-- (docs/migration-files.md, "Routines"). By hand: `psql -v ON_ERROR_STOP=1
-- -f` after 000 and before 001 (README, "Manual SQL execution").
--
-- Editing the measures here does not change aggregates that already exist
-- (a continuous aggregate cannot be altered in place): a change of the
-- columns is a new versioned migration that drops and re-creates them.
--
-- migrate:feature trade_collection
-- migrate:description The OHLCV definition (1 minute, 1 hour) and its creation for 001

-- 001's helpers live in the schema cex_migration, out of the application's
-- way (docs/schema.md, "Helper functions and procedures").
CREATE SCHEMA IF NOT EXISTS cex_migration;

-- The OHLCV measures, once, in column order: each with its expression over
-- trades rows and its roll-up from rows of a finer bucket (the 1 hour
-- continuous aggregate is built on the 1 minute one). open/close are the
-- first/last price by time: how to pick them differs between a continuous
-- aggregate (first(), last()) and a plain view, so the caller supplies them.
-- notional = sum(price * quantity) makes the hourly vwap exact from the
-- minute rows.
CREATE OR REPLACE FUNCTION cex_migration.ohlcv_measures(
    OUT ord integer, OUT name text, OUT over_trades text, OUT rollup text)
RETURNS SETOF record
LANGUAGE sql IMMUTABLE AS $$
    VALUES
        (1,  'open',         NULL,                                                      NULL),
        (2,  'high',         'max(price)',                                              'max(high)'),
        (3,  'low',          'min(price)',                                              'min(low)'),
        (4,  'close',        NULL,                                                      NULL),
        (5,  'volume',       'sum(quantity)',                                           'sum(volume)'),
        (6,  'quote_volume', 'sum(coalesce(quote_quantity, price * quantity))',         'sum(quote_volume)'),
        (7,  'notional',     'sum(price * quantity)',                                   'sum(notional)'),
        (8,  'trade_count',  'count(*)',                                                'sum(trade_count)::bigint'),
        (9,  'buy_volume',   $q$coalesce(sum(quantity) FILTER (WHERE side = 'buy'), 0)$q$,  'sum(buy_volume)'),
        (10, 'sell_volume',  $q$coalesce(sum(quantity) FILTER (WHERE side = 'sell'), 0)$q$, 'sum(sell_volume)'),
        (11, 'vwap',         'sum(price * quantity) / nullif(sum(quantity), 0)',        'sum(notional) / nullif(sum(volume), 0)')
$$;

-- The SELECT of one OHLCV aggregate: P_BUCKET as `bucket`, the pair, the
-- measures over trades (or rolled up from P_SOURCE's rows when P_ROLLUP),
-- with P_OPEN and P_CLOSE for open and close. (Parameters are prefixed:
-- in a SQL function a column of the same name would win over them.)
CREATE OR REPLACE FUNCTION cex_migration.ohlcv_query(
    p_bucket text, p_source text, p_rollup boolean, p_open text, p_close text)
RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT format(
        'SELECT %s AS bucket, exchange, symbol_base, symbol_quote, %s FROM %s %s '
        'GROUP BY 1, exchange, symbol_base, symbol_quote',
        p_bucket,
        string_agg(format('%s AS %I',
                          CASE m.name WHEN 'open' THEN p_open
                                      WHEN 'close' THEN p_close
                                      ELSE CASE WHEN p_rollup THEN m.rollup ELSE m.over_trades END
                          END,
                          m.name), ', ' ORDER BY m.ord),
        p_source,
        CASE WHEN p_rollup THEN '' ELSE 'WHERE symbol_base IS NOT NULL' END)
    FROM cex_migration.ohlcv_measures() AS m
$$;

-- Create trades_ohlcv_1m and trades_ohlcv_1h where they are missing. With
-- TimescaleDB: continuous aggregates, created WITH NO DATA (allowed in a
-- transaction block; WITH DATA is not) and filled by 001's background step;
-- real-time (materialized_only = false) so they answer like the plain views;
-- the 1 hour one built on the 1 minute one (hierarchical, TimescaleDB 2.9+),
-- and a refresh policy each. On plain PostgreSQL: views with the same names,
-- columns and answers, date_bin with time_bucket's default origin
-- (2000-01-03, a Monday) giving the same buckets; ties in open/close: first()
-- and last() pick any row, the views the lowest/highest id.
CREATE OR REPLACE PROCEDURE cex_migration.create_trade_aggregates()
LANGUAGE plpgsql AS $$
DECLARE
    origin CONSTANT text := $o$TIMESTAMPTZ '2000-01-03 00:00:00+00'$o$;
    cagg CONSTANT text := 'CREATE MATERIALIZED VIEW %I WITH (timescaledb.continuous, '
                          'timescaledb.materialized_only = false) AS %s WITH NO DATA';
BEGIN
    IF NOT cex_migration.is_hypertable('trades') THEN
        EXECUTE format('CREATE OR REPLACE VIEW trades_ohlcv_1m AS %s', cex_migration.ohlcv_query(
            format($b$date_bin(INTERVAL '1 minute', "timestamp", %s)$b$, origin), 'trades', false,
            '(array_agg(price ORDER BY "timestamp", id))[1]',
            '(array_agg(price ORDER BY "timestamp" DESC, id DESC))[1]'));
        EXECUTE format('CREATE OR REPLACE VIEW trades_ohlcv_1h AS %s', cex_migration.ohlcv_query(
            format($b$date_bin(INTERVAL '1 hour', "timestamp", %s)$b$, origin), 'trades', false,
            '(array_agg(price ORDER BY "timestamp", id))[1]',
            '(array_agg(price ORDER BY "timestamp" DESC, id DESC))[1]'));
        RETURN;
    END IF;
    IF to_regclass('trades_ohlcv_1m') IS NULL THEN
        EXECUTE format(cagg, 'trades_ohlcv_1m', cex_migration.ohlcv_query(
            $b$time_bucket(INTERVAL '1 minute', "timestamp")$b$, 'trades', false,
            'first(price, "timestamp")', 'last(price, "timestamp")'));
    END IF;
    IF to_regclass('trades_ohlcv_1h') IS NULL AND cex_migration.timescaledb_version() >= 209 THEN
        EXECUTE format(cagg, 'trades_ohlcv_1h', cex_migration.ohlcv_query(
            $b$time_bucket(INTERVAL '1 hour', bucket)$b$, 'trades_ohlcv_1m', true,
            'first(open, bucket)', 'last(close, bucket)'));
    ELSIF to_regclass('trades_ohlcv_1h') IS NULL THEN
        EXECUTE format(cagg, 'trades_ohlcv_1h', cex_migration.ohlcv_query(
            $b$time_bucket(INTERVAL '1 hour', "timestamp")$b$, 'trades', false,
            'first(price, "timestamp")', 'last(price, "timestamp")'));
    END IF;
    -- Keep the recent past materialised; older changes (late trades, the
    -- backfill) are picked up by 001's background refresh step.
    PERFORM add_continuous_aggregate_policy('trades_ohlcv_1m',
        start_offset => INTERVAL '3 hours', end_offset => INTERVAL '1 minute',
        schedule_interval => INTERVAL '1 minute', if_not_exists => true);
    PERFORM add_continuous_aggregate_policy('trades_ohlcv_1h',
        start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour',
        schedule_interval => INTERVAL '30 minutes', if_not_exists => true);
END
$$;

-- migrate:psql-only
SELECT migration_record_manual('R__trade_aggregates', 'trade_aggregates', 'trade_collection');
