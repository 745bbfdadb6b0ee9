-- Migration 004: leave trades as a DBA would after 001's backfill.
--
-- The backfill rewrites every legacy row once (an UPDATE is a new row version),
-- so afterwards the table holds one dead tuple per row: at 1M rows the table
-- grew from 98 to 221 MB and its indexes from 105 to 328 MB. Plain VACUUM
-- marks that space reusable (the next ~1M inserts fill it instead of growing
-- the files) and ANALYZE refreshes the planner's statistics for the new
-- columns. VACUUM takes SHARE UPDATE EXCLUSIVE, which inserts and updates do
-- not wait for; it does not give the space back to the operating system
-- (that takes VACUUM FULL or pg_repack, an exclusive rewrite a live collector
-- cannot wait for: a maintenance-window choice, docs/schema.md).
--
-- A background step: it runs after 001's background steps (they are earlier
-- in version order), in the engine's background task or in the CLI, and
-- VACUUM refuses a transaction block, so it is transaction:false. On a
-- TimescaleDB hypertable VACUUM and ANALYZE recurse into the chunks.
--
-- migrate:feature trade_collection
-- migrate:depends 001
-- migrate:description VACUUM (ANALYZE) trades and the duplicate archive after 001's backfill

-- migrate:step note
-- A foreground part is required; this one only leaves a trace of why 004 exists.
COMMENT ON TABLE trades_duplicates_removed IS
    'Replayed duplicate trades removed by migration 001 (same exchange, pair and trade_id as row kept_id)';

-- migrate:step vacuum transaction:false background
VACUUM (ANALYZE) trades;
VACUUM (ANALYZE) trades_duplicates_removed;

-- migrate:psql-only
SELECT migration_record_manual('004', 'vacuum_after_trade_backfill', 'trade_collection');
