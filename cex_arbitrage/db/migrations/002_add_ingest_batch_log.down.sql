-- Down of migration 002: drop the ingest batch log and its prune function.
--
-- The log's rows matter only for seconds (until a writer has seen its commit
-- or retried), but they are rows: `down` counts them and asks for
-- --allow-data-loss when there are any. Stop the collectors first: a writer
-- of this version records each batch here and fails without the table.
--
-- By hand: psql -v ON_ERROR_STOP=1 -1 -f 002_add_ingest_batch_log.down.sql

DROP FUNCTION IF EXISTS ingest_batch_log_prune(INTERVAL);
DROP TABLE IF EXISTS ingest_batch_log;

-- migrate:psql-only
DELETE FROM migration_history WHERE version = '002';
