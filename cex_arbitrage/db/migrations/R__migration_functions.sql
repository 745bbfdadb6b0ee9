-- Routine migration_functions (repeatable): the status functions of
-- migration_history, as SQL callers (dashboards, health probes) use them.
--
-- 000 created their first versions; they are code, replaced rather than
-- migrated, so a body that must change lives here (the others stay as 000
-- made them). Routines record themselves in
-- migration_history under 'R__NAME', so "the current version" counts only
-- versioned migrations (numeric versions).
--
-- A routine is re-applied by the runner, whole and in one transaction with
-- its history row, whenever its checksum differs from the recorded one
-- (docs/migration-files.md, "Routines"). By hand: `psql -v ON_ERROR_STOP=1
-- -f` right after 000 (README, "Manual SQL execution").
--
-- migrate:description Status functions over migration_history (routines excluded from versions)

-- The highest applied versioned migration, NULL on an empty history.
-- Versions compare as numbers (010 > 009 whatever the collation).
CREATE OR REPLACE FUNCTION migration_current_version()
RETURNS TEXT
LANGUAGE sql STABLE AS $$
    SELECT version FROM migration_history
    WHERE state IN ('background', 'applied') AND version ~ '^[0-9]+$'
    ORDER BY version::numeric DESC
    LIMIT 1
$$;

-- migrate:psql-only
SELECT migration_record_manual('R__migration_functions', 'migration_functions');
