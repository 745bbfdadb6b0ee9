-- Migration 003: the book-ticker table, for deployments without trade collection.
--
-- The book-ticker collector is core: it runs whatever features.trade_collection
-- says. Migration 001 (feature trade_collection) creates book_ticker_snapshots
-- too, because each shipped file must be runnable on its own with `psql -f`;
-- with the feature off 001 never runs, so this core migration creates the
-- table. Where it exists already (a legacy database, or 001 ran) every
-- statement here is a no-op. The definition is the legacy init script's,
-- exactly (legacy-schema.sql), so every starting point ends with one schema.
--
-- migrate:depends 000
-- migrate:description Book-ticker table for deployments without trade collection

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

-- As in the legacy script: a hypertable where TimescaleDB is installed. Only
-- an EMPTY table is converted (migrate_data would copy every row under an
-- exclusive lock that a live collector cannot wait for).
DO $$
DECLARE
    is_hypertable boolean;
    is_empty boolean;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN;
    END IF;
    -- Dynamic SQL: the catalog view does not exist without the extension.
    EXECUTE 'SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables
                            WHERE hypertable_schema = current_schema()
                              AND hypertable_name = ''book_ticker_snapshots'')'
        INTO is_hypertable;
    SELECT NOT EXISTS (SELECT 1 FROM book_ticker_snapshots) INTO is_empty;
    IF NOT is_hypertable AND is_empty THEN
        PERFORM create_hypertable('book_ticker_snapshots', 'timestamp', if_not_exists => TRUE);
    END IF;
END
$$;

-- The same grants as 001 gives this table (names from cex.app_role /
-- cex.readonly_role), only where the roles exist: creating roles is 001's job.
DO $$
DECLARE
    app_role TEXT := coalesce(nullif(current_setting('cex.app_role', true), ''), 'cex_app');
    readonly_role TEXT := coalesce(nullif(current_setting('cex.readonly_role', true), ''), 'cex_readonly');
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = app_role) THEN
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON book_ticker_snapshots TO %I', app_role);
        EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %s TO %I',
                       pg_get_serial_sequence('book_ticker_snapshots', 'id'), app_role);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = readonly_role) THEN
        EXECUTE format('GRANT SELECT ON book_ticker_snapshots TO %I', readonly_role);
    END IF;
END
$$;

-- migrate:psql-only
SELECT migration_record_manual('003', 'create_book_ticker_snapshots');
