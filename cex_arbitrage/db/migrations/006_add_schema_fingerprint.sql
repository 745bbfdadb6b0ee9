-- Migration 006: where the runner records the schema fingerprint, for `status --drift`.
--
-- After every run that changed the schema (applied a migration or routine,
-- adopted a manual psql run, finished background steps, went down), the
-- runner replaces the rows here with one row per schema object the
-- migrations built: tables, columns and their types, indexes, constraints,
-- functions and procedures (a hash of the body), views, sequences, triggers.
-- `status --drift` computes them again and names what was added, removed or
-- changed outside migrations since. A run with nothing to do writes nothing,
-- so an engine's boot check stays one round trip.
--
-- Keys and definitions leave out what differs between databases that
-- reached one schema by different paths (OIDs, column order, constraint
-- names, validation state): a fresh and a legacy-upgraded database record
-- the same rows. The query is the runner's (cex_arbitrage/db/migrator/
-- fingerprint.py); a manual psql run of this file creates the table only,
-- and the next runner run records the fingerprint.
--
-- Runnable by the runner and by plain `psql -v ON_ERROR_STOP=1 -f` (idempotent).
--
-- migrate:depends 000
-- migrate:description Schema fingerprint, recorded after each run, for status --drift

CREATE TABLE IF NOT EXISTS migration_schema_fingerprint (
    kind         TEXT        NOT NULL,  -- table, column, index, constraint, function, procedure,
                                        -- view, materialized view, sequence, trigger
    name         TEXT        NOT NULL,  -- schema-qualified (a constraint: its table and definition)
    definition   TEXT        NOT NULL,  -- type, index definition, body hash, ...
    recorded_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    recorded_by  TEXT,                  -- the runner that recorded it (host, process)
    PRIMARY KEY (kind, name)
);

COMMENT ON TABLE migration_schema_fingerprint IS
    'The schema objects as the last migration run left them; status --drift compares with it.';

GRANT SELECT ON migration_schema_fingerprint TO PUBLIC;

-- migrate:psql-only
SELECT migration_record_manual('006', 'add_schema_fingerprint');
