-- Down of migration 006: drop the fingerprint table.
--
-- Its rows are the runner's bookkeeping, not data: recorded again from the
-- catalog after the next run that applies 006, so dropping them needs no
-- --allow-data-loss. Without the table `status --drift` says drift is unknown.
--
-- By hand: psql -v ON_ERROR_STOP=1 -1 -f 006_add_schema_fingerprint.down.sql

DROP TABLE IF EXISTS migration_schema_fingerprint;

-- migrate:psql-only
DELETE FROM migration_history WHERE version = '006';
