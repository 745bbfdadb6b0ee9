-- Migration 002: the ingest batch log, so a collector batch is committed exactly once.
--
-- A writer inserts its batch of rows AND the batch's id here in ONE
-- transaction. When the connection dies mid-batch the writer cannot know
-- whether COMMIT reached the server; on retry it first looks its batch id up
-- here: found = committed (only the acknowledgement was lost), not found =
-- nothing of the batch is stored, send it again. The primary key also stops
-- a retry from committing alongside a still-running earlier attempt: the
-- second insert of one batch_id waits for the first, then fails.
--
-- Pruning: an id is only needed until its writer has seen the commit or
-- retried, i.e. seconds; `ingest_batch_log_prune()` deletes old rows (the
-- engine calls it periodically), using the index on written_at.
--
-- Runnable by the runner and by plain `psql -v ON_ERROR_STOP=1 -f` (idempotent).
--
-- migrate:depends 000
-- migrate:description Ingest batch log: each collector batch is committed exactly once

CREATE TABLE IF NOT EXISTS ingest_batch_log (
    batch_id    UUID        PRIMARY KEY,
    table_name  TEXT        NOT NULL,     -- target table of the batch, e.g. 'trades'
    rows        INTEGER     NOT NULL,     -- rows the batch inserted (after deduplication)
    written_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

COMMENT ON TABLE ingest_batch_log IS
    'One row per committed collector batch: a retried batch whose id is here was already '
    'written. Rows older than a day serve no purpose; see ingest_batch_log_prune().';

CREATE INDEX IF NOT EXISTS idx_ingest_batch_log_written_at ON ingest_batch_log (written_at);

-- Delete log rows older than p_keep; returns how many. Small batches of
-- deletes keep each transaction short next to the collectors' inserts.
CREATE OR REPLACE FUNCTION ingest_batch_log_prune(p_keep INTERVAL DEFAULT INTERVAL '1 day')
RETURNS BIGINT
LANGUAGE sql AS $$
    WITH gone AS (
        DELETE FROM ingest_batch_log
        WHERE batch_id IN (
            SELECT batch_id FROM ingest_batch_log
            WHERE written_at < now() - p_keep
            ORDER BY written_at
            LIMIT 100000
        )
        RETURNING 1
    )
    SELECT count(*) FROM gone
$$;

-- The collectors run as the application role (migrations.app_role): they
-- record and look up batches, and prune. Granted only if the role exists, so
-- a database without role management still migrates.
DO $$
DECLARE
    app_role TEXT := coalesce(nullif(current_setting('cex.app_role', true), ''), 'cex_app');
    readonly_role TEXT := coalesce(nullif(current_setting('cex.readonly_role', true), ''), 'cex_readonly');
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = app_role) THEN
        EXECUTE format('GRANT SELECT, INSERT, DELETE ON ingest_batch_log TO %I', app_role);
        EXECUTE format('GRANT EXECUTE ON FUNCTION ingest_batch_log_prune(INTERVAL) TO %I', app_role);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = readonly_role) THEN
        EXECUTE format('GRANT SELECT ON ingest_batch_log TO %I', readonly_role);
    END IF;
END
$$;

-- migrate:psql-only
SELECT migration_record_manual('002', 'add_ingest_batch_log');
