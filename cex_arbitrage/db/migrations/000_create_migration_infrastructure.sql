-- Migration 000: the tracking infrastructure every later migration records into.
--
-- Runnable by the runner and by plain `psql -v ON_ERROR_STOP=1 -f` (idempotent:
-- every object is created only if missing). The runner's own bookkeeping
-- (checksum, timing, who applied it) is written by the runner in the same
-- transaction; a manual psql run records itself through the psql-only tail.
--
-- migrate:description Migration tracking: history table, progress table, status functions

-- migrate:step infrastructure

CREATE TABLE IF NOT EXISTS migration_history (
    version           TEXT        PRIMARY KEY,
    name              TEXT        NOT NULL,
    feature           TEXT,                     -- NULL = core
    checksum          TEXT,                     -- SHA-256 of the file; NULL after a manual psql run
    state             TEXT        NOT NULL DEFAULT 'applied'
                      CHECK (state IN ('running', 'failed', 'background', 'applied')),
    applied_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at       TIMESTAMPTZ,              -- when the last (background) step ended
    execution_ms      INTEGER,                  -- foreground time
    background_ms     INTEGER,                  -- background time, summed over runs
    applied_by        TEXT        NOT NULL DEFAULT current_user,
    applied_from      TEXT,                     -- host/process of the runner, 'psql' when manual
    steps_done        INTEGER     NOT NULL DEFAULT 0,   -- steps finished
    statements_done   INTEGER     NOT NULL DEFAULT 0,   -- statements finished in the current step
    step_timings      JSONB       NOT NULL DEFAULT '{}'::jsonb,
    last_error        TEXT,
    failed_statement  TEXT
);

COMMENT ON TABLE migration_history IS
    'One row per migration of cex_arbitrage; the single truth of what is applied.';

CREATE TABLE IF NOT EXISTS migration_progress (
    version     TEXT        NOT NULL,
    task        TEXT        NOT NULL,
    position    TEXT,                 -- checkpoint of a batched task (e.g. last id done)
    rows_done   BIGINT      NOT NULL DEFAULT 0,
    rows_total  BIGINT,
    done        BOOLEAN     NOT NULL DEFAULT false,
    detail      JSONB       NOT NULL DEFAULT '{}'::jsonb,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (version, task)
);

COMMENT ON TABLE migration_progress IS
    'Checkpoints of long batched migration work, so it resumes after a crash.';

-- Is VERSION applied (its foreground part at least)?
CREATE OR REPLACE FUNCTION migration_is_applied(p_version TEXT)
RETURNS BOOLEAN
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM migration_history
        WHERE version = p_version AND state IN ('background', 'applied')
    )
$$;

-- The highest applied version, NULL on an empty history.
CREATE OR REPLACE FUNCTION migration_current_version()
RETURNS TEXT
LANGUAGE sql STABLE AS $$
    SELECT max(version) FROM migration_history WHERE state IN ('background', 'applied')
$$;

-- Status of every recorded migration, with unfinished background work.
CREATE OR REPLACE FUNCTION migration_status()
RETURNS TABLE (
    version TEXT, name TEXT, feature TEXT, state TEXT, applied_at TIMESTAMPTZ,
    execution_ms INTEGER, applied_by TEXT, progress TEXT
)
LANGUAGE sql STABLE AS $$
    SELECT h.version, h.name, h.feature, h.state, h.applied_at, h.execution_ms, h.applied_by,
           (SELECT string_agg(
                       p.task || ' ' || p.rows_done
                       || coalesce('/' || p.rows_total, '') || CASE WHEN p.done THEN ' done' ELSE '' END,
                       ', ' ORDER BY p.task)
              FROM migration_progress p WHERE p.version = h.version)
    FROM migration_history h
    ORDER BY h.version
$$;

-- Record a migration applied by hand with psql (the file's psql-only tail
-- calls this). The checksum stays NULL: the runner adopts the file's checksum
-- on its next run and says so.
CREATE OR REPLACE FUNCTION migration_record_manual(p_version TEXT, p_name TEXT, p_feature TEXT DEFAULT NULL)
RETURNS VOID
LANGUAGE sql AS $$
    INSERT INTO migration_history AS h (version, name, feature, checksum, state, applied_from, finished_at)
    VALUES (p_version, p_name, p_feature, NULL, 'applied', 'psql', now())
    ON CONFLICT (version) DO UPDATE
        SET state = 'applied', finished_at = now(), last_error = NULL, failed_statement = NULL
        WHERE h.state <> 'applied'
$$;

-- Readable by everyone who may connect: health probes and dashboards ask it.
GRANT SELECT ON migration_history, migration_progress TO PUBLIC;

-- migrate:psql-only
SELECT migration_record_manual('000', 'create_migration_infrastructure');
