-- Down of migration 003: drop book_ticker_snapshots, unless 001 still needs it.
--
-- 001 (feature trade_collection) creates the same table and grants on it; with
-- 001 applied the table is 001's too and stays. Otherwise it goes, with its
-- rows: `down` counts them and asks for --allow-data-loss when there are any.
-- On a legacy database the table was there before 003 (003 was a no-op), so
-- this drops rows 003 never wrote; the count in the refusal is the warning.
--
-- By hand: psql -v ON_ERROR_STOP=1 -1 -f 003_create_book_ticker_snapshots.down.sql

DO $$
BEGIN
    IF NOT migration_is_applied('001') THEN
        DROP TABLE IF EXISTS book_ticker_snapshots;
    END IF;
END
$$;

-- migrate:psql-only
DELETE FROM migration_history WHERE version = '003';
