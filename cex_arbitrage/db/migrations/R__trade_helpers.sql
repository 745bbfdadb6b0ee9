-- Routine trade_helpers (repeatable): 001's list of trades constraints, whether a table is
-- a TimescaleDB hypertable, the extension's version, and index builds one chunk at a time.
--
-- A routine is code that is replaced, not migrated: the runner runs this
-- whole file again, in one transaction with its history row
-- (migration_history.version 'R__trade_helpers'), whenever its checksum differs
-- from the recorded one, before any pending step that may call it. Edit it
-- freely; the next run or engine boot installs the new bodies
-- (docs/migration-files.md, "Routines"). By hand: `psql -v ON_ERROR_STOP=1
-- -f` after 000 and before 001 (README, "Manual SQL execution").
--
-- migrate:feature trade_collection
-- migrate:description 001's constraint list, TimescaleDB detection and the chunk-by-chunk index build 001 and 005 use

-- 001's helpers live in the schema cex_migration, out of the application's
-- way (docs/schema.md, "Helper functions and procedures").
CREATE SCHEMA IF NOT EXISTS cex_migration;

-- Earlier releases installed these helpers in public (0.3.0 from 001 itself,
-- later from these routines, all with a cex_ prefix): drop those copies,
-- whatever their signatures. The trigger function and cex_split_symbol()
-- stay in public (R__trade_symbols.sql): the schema uses them.
DO $$
DECLARE
    routine regprocedure;
BEGIN
    FOR routine IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = 'public'::regnamespace
          AND p.proname IN ('cex_is_hypertable', 'cex_timescaledb_version',
                            'cex_create_hypertable_index', 'cex_trade_constraints',
                            'cex_ohlcv_measures', 'cex_ohlcv_query', 'cex_create_trade_aggregates',
                            'cex_validate_trade_constraints', 'cex_refresh_trade_aggregates',
                            'cex_archive_trades', 'cex_backfill_trade_symbols')
              OR p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'cex\_backfill\_%'
    LOOP
        EXECUTE format('DROP ROUTINE %s', routine);
    END LOOP;
END
$$;

-- The CHECK constraints 001 puts on trades, once: its write_path step adds
-- the missing ones NOT VALID, its validate_constraints step validates them.
-- Adding a row here changes neither on a database where 001 ran: a new
-- constraint is a new versioned migration.
CREATE OR REPLACE FUNCTION cex_migration.trade_constraints(OUT name text, OUT definition text)
RETURNS SETOF record
LANGUAGE sql IMMUTABLE AS $$
    VALUES
        ('trades_side_check',                  $c$CHECK (side IN ('buy', 'sell'))$c$),
        ('trades_symbol_parts_check',          $c$CHECK ((symbol_base IS NULL) = (symbol_quote IS NULL))$c$),
        ('trades_price_positive',              $c$CHECK (price > 0)$c$),
        ('trades_quantity_positive',           $c$CHECK (quantity > 0)$c$),
        ('trades_quote_quantity_not_negative', $c$CHECK (quote_quantity >= 0)$c$)
$$;

-- Is REL a TimescaleDB hypertable? False where the extension is not installed.
CREATE OR REPLACE FUNCTION cex_migration.is_hypertable(rel regclass)
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    found boolean;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        RETURN false;
    END IF;
    -- Dynamic: the view does not exist without the extension.
    EXECUTE 'SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables h
                            WHERE format(''%I.%I'', h.hypertable_schema, h.hypertable_name)::regclass = $1)'
        INTO found USING rel;
    RETURN found;
END
$$;

-- The installed TimescaleDB version as an integer major*100+minor (2.28 -> 228), NULL without it.
CREATE OR REPLACE FUNCTION cex_migration.timescaledb_version()
RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT split_part(extversion, '.', 1)::int * 100 + split_part(extversion, '.', 2)::int
    FROM pg_extension WHERE extname = 'timescaledb'
$$;

-- Build index P_INDEX on hypertable P_TABLE without holding up inserts for
-- the whole build; does nothing on a plain table (the CREATE INDEX
-- CONCURRENTLY that follows each call builds it there).
--
-- TimescaleDB refuses CREATE INDEX CONCURRENTLY on hypertables, and its
-- alternative, WITH (timescaledb.transaction_per_chunk), refuses UNIQUE
-- indexes (https://docs.timescale.com/api/latest/hypertable/create_index/).
-- So this does what transaction_per_chunk does, for unique indexes too: one
-- chunk at a time, each in its own transaction (a chunk's inserts wait while
-- that chunk is indexed; all others go on), then the index on the (empty)
-- root table with ON ONLY, so new chunks get it. Since TimescaleDB 2.22 a
-- chunk index belongs to a hypertable index when their definitions match
-- (the chunk_index catalog table is gone), which is what makes ON CONFLICT
-- find these chunk indexes. Older versions: one ordinary CREATE INDEX.
-- Re-runnable: chunks that have the index are skipped; the root index is made
-- last, so its existence means done.
CREATE OR REPLACE PROCEDURE cex_migration.create_hypertable_index(
    p_table regclass, p_index name, p_unique boolean, p_definition text)
LANGUAGE plpgsql AS $$
DECLARE
    kind CONSTANT text := CASE WHEN p_unique THEN 'UNIQUE ' ELSE '' END;
    table_schema name;
    chunk record;
    chunk_index name;
    built integer := 0;
    total integer;
BEGIN
    IF NOT cex_migration.is_hypertable(p_table) THEN
        RETURN;
    END IF;
    SELECT n.nspname INTO table_schema
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = p_table;
    IF to_regclass(format('%I.%I', table_schema, p_index)) IS NOT NULL THEN
        RETURN;
    END IF;
    IF cex_migration.timescaledb_version() < 222 THEN
        RAISE NOTICE 'index build: % on % in one transaction (inserts wait until it is '
                     'built): per-chunk builds need TimescaleDB 2.22 or later', p_index, p_table;
        EXECUTE format('CREATE %sINDEX IF NOT EXISTS %I ON %s %s', kind, p_index, p_table, p_definition);
        RETURN;
    END IF;

    SELECT count(*) INTO total FROM show_chunks(p_table);
    FOR chunk IN
        SELECT n.nspname AS chunk_schema, c.relname AS chunk_name
        FROM show_chunks(p_table) AS s(rel)
        JOIN pg_class c ON c.oid = s.rel
        JOIN pg_namespace n ON n.oid = c.relnamespace
        ORDER BY c.oid
    LOOP
        chunk_index := left(chunk.chunk_name || '_' || p_index, 63);
        CONTINUE WHEN to_regclass(format('%I.%I', chunk.chunk_schema, chunk_index)) IS NOT NULL;
        EXECUTE format('CREATE %sINDEX IF NOT EXISTS %I ON %I.%I %s',
                       kind, chunk_index, chunk.chunk_schema, chunk.chunk_name, p_definition);
        COMMIT;
        built := built + 1;
        RAISE NOTICE 'index build: % on %: chunk %/% indexed', p_index, p_table, built, total;
    END LOOP;

    -- Chunk creation takes SHARE UPDATE EXCLUSIVE on the hypertable: holding
    -- it, no chunk appears between the last chunk index and the root index
    -- (inserts into existing chunks go on).
    -- lint:ignore lock-table SHARE UPDATE EXCLUSIVE does not block inserts or updates, only other DDL and chunk creation, for the few last chunk indexes
    EXECUTE format('LOCK TABLE %s IN SHARE UPDATE EXCLUSIVE MODE', p_table);
    FOR chunk IN
        SELECT n.nspname AS chunk_schema, c.relname AS chunk_name
        FROM show_chunks(p_table) AS s(rel)
        JOIN pg_class c ON c.oid = s.rel
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE to_regclass(format('%I.%I', n.nspname, left(c.relname || '_' || p_index, 63))) IS NULL
    LOOP
        EXECUTE format('CREATE %sINDEX IF NOT EXISTS %I ON %I.%I %s',
                       kind, left(chunk.chunk_name || '_' || p_index, 63),
                       chunk.chunk_schema, chunk.chunk_name, p_definition);
    END LOOP;
    EXECUTE format('CREATE %sINDEX IF NOT EXISTS %I ON ONLY %s %s', kind, p_index, p_table, p_definition);
    COMMIT;
END
$$;

-- migrate:psql-only
SELECT migration_record_manual('R__trade_helpers', 'trade_helpers', 'trade_collection');
