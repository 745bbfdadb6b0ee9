-- Routine trade_maintenance (repeatable): the procedures 001's last background steps CALL:
-- constraint validation and the first refresh of the OHLCV aggregates.
--
-- A routine is code that is replaced, not migrated: the runner runs this
-- whole file again, in one transaction with its history row
-- (migration_history.version 'R__trade_maintenance'), whenever its checksum differs
-- from the recorded one, before any pending step that may call it. Edit it
-- freely; the next run or engine boot installs the new bodies
-- (docs/migration-files.md, "Routines"). By hand: `psql -v ON_ERROR_STOP=1
-- -f` after 000 and before 001 (README, "Manual SQL execution").
--
-- migrate:feature trade_collection
-- migrate:description 001's constraint validation and first aggregate refresh

-- 001's helpers live in the schema cex_migration, out of the application's
-- way (docs/schema.md, "Helper functions and procedures").
CREATE SCHEMA IF NOT EXISTS cex_migration;

-- VALIDATE the constraints the foreground part added NOT VALID: a scan that
-- holds SHARE UPDATE EXCLUSIVE, which inserts do not wait for. A constraint
-- that old rows violate stays NOT VALID (new rows are still checked), with a
-- WARNING and a note in migration_progress ('001', 'validate_constraints'):
-- the rows are not changed behind the operator's back.
CREATE OR REPLACE PROCEDURE cex_migration.validate_trade_constraints()
LANGUAGE plpgsql AS $$
DECLARE
    c record;
    outcome text;
BEGIN
    INSERT INTO migration_progress (version, task, rows_done, rows_total)
    VALUES ('001', 'validate_constraints', 0, (SELECT count(*) FROM cex_migration.trade_constraints()))
    ON CONFLICT (version, task) DO NOTHING;
    COMMIT;
    FOR c IN
        SELECT conname FROM pg_constraint
        WHERE conrelid = 'trades'::regclass AND contype = 'c' AND NOT convalidated
          AND conname IN (SELECT name FROM cex_migration.trade_constraints())
        ORDER BY conname
    LOOP
        BEGIN
            EXECUTE format('ALTER TABLE trades VALIDATE CONSTRAINT %I', c.conname);
            outcome := 'valid';
        EXCEPTION WHEN check_violation THEN
            outcome := 'NOT VALID: ' || SQLERRM;
            RAISE WARNING 'migration 001: constraint % stays NOT VALID because existing rows violate it '
                          '(%); new rows are checked. Fix those rows, then run ALTER TABLE trades '
                          'VALIDATE CONSTRAINT %', c.conname, SQLERRM, c.conname;
        END;
        UPDATE migration_progress
        SET rows_done = rows_done + 1, detail = detail || jsonb_build_object(c.conname, outcome),
            updated_at = now()
        WHERE version = '001' AND task = 'validate_constraints';
        COMMIT;
    END LOOP;
    UPDATE migration_progress
    SET done = true, rows_done = rows_total, updated_at = now()
    WHERE version = '001' AND task = 'validate_constraints' AND NOT done;
    COMMIT;
END
$$;

-- First materialisation of the continuous aggregates (history, including
-- what the backfill just split), up to the last complete bucket: the current
-- bucket stays in the real-time part. Nothing to do for plain views.
CREATE OR REPLACE PROCEDURE cex_migration.refresh_trade_aggregates()
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT cex_migration.is_hypertable('trades') THEN
        RAISE NOTICE 'migration 001: trades_ohlcv_1m/1h are plain views on a plain table; nothing to refresh';
        RETURN;
    END IF;
    -- refresh_continuous_aggregate refuses a transaction block; a nested CALL
    -- from a procedure CALLed outside one is allowed. It commits batch by
    -- batch; TimescaleDB's default batch of 10 buckets makes a history of
    -- minute buckets crawl, so from 2.22 on (the `options` argument) a batch
    -- is a day of minutes / a week of hours.
    IF cex_migration.timescaledb_version() >= 222 THEN
        CALL refresh_continuous_aggregate('trades_ohlcv_1m', NULL, now() - INTERVAL '1 minute',
                                          options => '{"buckets_per_batch": 1440}');
        CALL refresh_continuous_aggregate('trades_ohlcv_1h', NULL, now() - INTERVAL '1 hour',
                                          options => '{"buckets_per_batch": 168}');
    ELSE
        CALL refresh_continuous_aggregate('trades_ohlcv_1m', NULL, now() - INTERVAL '1 minute');
        CALL refresh_continuous_aggregate('trades_ohlcv_1h', NULL, now() - INTERVAL '1 hour');
    END IF;
END
$$;

-- migrate:psql-only
SELECT migration_record_manual('R__trade_maintenance', 'trade_maintenance', 'trade_collection');
