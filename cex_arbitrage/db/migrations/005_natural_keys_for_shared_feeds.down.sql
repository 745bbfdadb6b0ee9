-- Down of migration 005: drop the natural-key indexes and the book-ticker archive.
--
-- What comes back: the schema before 005. The writers keep storing each fact
-- once without the indexes (a lock per feed, then only keys not stored:
-- cex_arbitrage/collectors/statements.py), only slower. What does not come
-- back: the repeated rows 005 moved out. Book tickers it archived go with
-- book_ticker_snapshots_duplicates_removed (`down` counts them and asks for
-- --allow-data-loss when there are any); id-less trades it archived stay in
-- 001's trades_duplicates_removed. Putting either back into their tables would
-- store those facts twice again, which is what 005 exists to end.
-- DROP INDEX (not CONCURRENTLY: a down is one transaction) takes the table's
-- ACCESS EXCLUSIVE lock for a moment; the runner bounds the wait.
--
-- By hand: psql -v ON_ERROR_STOP=1 -1 -f 005_natural_keys_for_shared_feeds.down.sql

DROP INDEX IF EXISTS uq_book_ticker_snapshots_natural_key;
DROP INDEX IF EXISTS uq_trades_natural_key;
DROP TABLE IF EXISTS book_ticker_snapshots_duplicates_removed;

-- migrate:psql-only
DELETE FROM migration_history WHERE version = '005';
