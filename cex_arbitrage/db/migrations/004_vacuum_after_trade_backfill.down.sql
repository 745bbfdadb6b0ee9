-- Down of migration 004: nothing to reverse in the schema.
--
-- 004 vacuums and analyses (no schema change, nothing to put back) and sets
-- the comment of trades_duplicates_removed to the text 001 gives it. Undoing
-- 004 removes its history row only; applying it again vacuums again.
--
-- By hand: psql -v ON_ERROR_STOP=1 -f 004_vacuum_after_trade_backfill.down.sql

-- migrate:psql-only
DELETE FROM migration_history WHERE version = '004';
