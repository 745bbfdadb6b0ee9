-- Routine natural_keys (repeatable): 005's archive of stored duplicates, in batches.
--
-- A routine is code that is replaced, not migrated: the runner runs this
-- whole file again, in one transaction with its history row
-- (migration_history.version 'R__natural_keys'), whenever its checksum differs
-- from the recorded one, before any pending step that may call it. Edit it
-- freely; the next run or engine boot installs the new bodies
-- (docs/migration-files.md, "Routines"). By hand: `psql -v ON_ERROR_STOP=1
-- -f` after 000 and before 005 (README, "Manual SQL execution").
--
-- migrate:feature trade_collection
-- migrate:description 005's batched archive of rows that repeat a natural key

-- Migration helpers live in the schema cex_migration (docs/schema.md).
CREATE SCHEMA IF NOT EXISTS cex_migration;

-- Move every row of P_TABLE that repeats the natural key P_KEY of a row with a
-- lower id into P_ARCHIVE (its columns, then kept_id = that lowest id), and
-- delete it from P_TABLE. P_FILTER says which rows have the key: a format()
-- string whose %1$s is a row's alias ('%1$s.trade_id IS NULL'); other rows
-- are left alone. Nothing is deleted without its copy: the archive insert
-- and the delete are one statement.
--
-- Walks ids up to the highest id when it started (detail ->> 'boundary_id'):
-- rows written later went through the writers' natural-key path, which
-- stores a key only once (cex_arbitrage/collectors/statements.py). Each batch
-- of cex.backfill_batch_size ids is one transaction that commits with its
-- checkpoint (migration_progress ('005', P_TASK): position = last id done,
-- rows_done, detail ->> 'duplicates_archived'), so a crash loses one batch
-- and a CALL after the end returns at once: safe to CALL again (docs/resume.md).
-- Sleeps cex.backfill_sleep_ms between batches. A row's duplicates are found
-- through the index whose leading columns are the key's exchange and pair
-- (idx_bts_exchange_pair_time, idx_trades_exchange_symbol_time), one probe per row.
CREATE OR REPLACE PROCEDURE cex_migration.archive_key_duplicates(
    p_task text, p_table regclass, p_archive regclass, p_key text[], p_filter text)
LANGUAGE plpgsql AS $$
DECLARE
    batch CONSTANT integer :=
        coalesce(nullif(current_setting('cex.backfill_batch_size', true), '')::integer, 50000);
    sleep_ms CONSTANT integer :=
        coalesce(nullif(current_setting('cex.backfill_sleep_ms', true), '')::integer, 0);
    progress migration_progress%ROWTYPE;
    columns text;
    same_key text;
    boundary bigint;
    lo bigint;
    hi bigint;
    examined bigint;
    archived bigint;
    total bigint;  -- (a plain variable: a linter cannot resolve progress's %ROWTYPE fields)
BEGIN
    INSERT INTO migration_progress (version, task, rows_done, detail)
    VALUES ('005', p_task, 0, '{}'::jsonb)
    ON CONFLICT (version, task) DO NOTHING;
    SELECT * INTO progress FROM migration_progress WHERE version = '005' AND task = p_task;
    IF progress.done THEN
        RETURN;
    END IF;
    -- The archive's columns other than kept_id / removed_at, in the table's order.
    SELECT string_agg(format('%I', a.attname), ', ' ORDER BY a.attnum) INTO columns
    FROM pg_attribute a
    WHERE a.attrelid = p_archive AND a.attnum > 0 AND NOT a.attisdropped
      AND a.attname NOT IN ('kept_id', 'removed_at');
    SELECT string_agg(format('k.%1$I = d.%1$I', c), ' AND ') || ' AND ' || format(p_filter, 'k')
    INTO same_key FROM unnest(p_key) AS c;
    IF progress.detail ? 'boundary_id' THEN
        boundary := (progress.detail ->> 'boundary_id')::bigint;
    ELSE
        EXECUTE format('SELECT coalesce(max(id), 0), count(*) FROM %s', p_table)
            INTO boundary, total;
        UPDATE migration_progress
        SET rows_total = total, updated_at = now(),
            detail = jsonb_build_object('boundary_id', boundary, 'duplicates_archived', 0)
        WHERE version = '005' AND task = p_task;
        COMMIT;
    END IF;
    lo := coalesce(progress.position::bigint, 0);
    LOOP
        EXECUTE format('SELECT max(id), count(*) FROM (SELECT id FROM %s WHERE id > $1 AND id <= $2 '
                       'ORDER BY id LIMIT $3) AS b', p_table)
            INTO hi, examined USING lo, boundary, batch;
        EXIT WHEN hi IS NULL;
        EXECUTE format(
            'WITH dup AS ('
            '    SELECT d.id, d."timestamp", keep.id AS kept_id FROM %1$s d'
            '    CROSS JOIN LATERAL (SELECT min(k.id) AS id FROM %1$s k WHERE %3$s) AS keep'
            '    WHERE d.id > $1 AND d.id <= $2 AND (%4$s) AND keep.id < d.id'
            '), moved AS ('
            '    DELETE FROM %1$s t USING dup WHERE t.id = dup.id AND t."timestamp" = dup."timestamp"'
            '    RETURNING t.*, dup.kept_id'
            ') INSERT INTO %2$s (%5$s, kept_id) SELECT %5$s, kept_id FROM moved',
            p_table, p_archive, same_key, format(p_filter, 'd'), columns)
            USING lo, hi;
        GET DIAGNOSTICS archived = ROW_COUNT;
        UPDATE migration_progress
        SET position = hi::text, rows_done = rows_done + examined, updated_at = now(),
            detail = jsonb_set(detail, '{duplicates_archived}',
                               to_jsonb((detail ->> 'duplicates_archived')::bigint + archived))
        WHERE version = '005' AND task = p_task;
        COMMIT;
        lo := hi;
        IF sleep_ms > 0 THEN
            PERFORM pg_sleep(sleep_ms / 1000.0);
        END IF;
    END LOOP;
    UPDATE migration_progress SET done = true, updated_at = now()
    WHERE version = '005' AND task = p_task
    RETURNING * INTO progress;
    COMMIT;
    RAISE NOTICE 'migration 005: %: % rows examined, % duplicates moved to %', p_table,
        progress.rows_done, progress.detail ->> 'duplicates_archived', p_archive;
END
$$;

-- migrate:psql-only
SELECT migration_record_manual('R__natural_keys', 'natural_keys', 'trade_collection');
