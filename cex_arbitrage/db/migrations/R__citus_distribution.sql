-- Routine citus_distribution (repeatable): 007's work on a Citus coordinator.
--
-- A routine is code that is replaced, not migrated: the runner runs this
-- whole file again, in one transaction with its history row
-- (migration_history.version 'R__citus_distribution'), whenever its checksum
-- differs from the recorded one, before any pending step that may call it
-- (docs/migration-files.md, "Routines"). By hand: `psql -v ON_ERROR_STOP=1
-- -f` after 000 and before 007 (README, "Manual SQL execution").
--
-- Every procedure here returns at once where Citus is not installed, so 007
-- runs the same file on plain PostgreSQL, TimescaleDB and Citus. Citus names
-- (pg_dist_partition, create_distributed_table_concurrently, citus.*
-- settings) are reached only through EXECUTE or on the branch that runs, so
-- these bodies compile on a server without Citus. Why each step is what it
-- is: docs/citus.md.
--
-- migrate:feature trade_collection
-- migrate:description 007's Citus work: move unsplittable trades, swap keys, distribute

CREATE SCHEMA IF NOT EXISTS cex_migration;

-- True on a Citus coordinator (the node whose tables the runner migrates);
-- false without Citus. A worker never gets here: pre-flight refuses it.
CREATE OR REPLACE FUNCTION cex_migration.on_citus()
RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')
$$;

-- True when P_TABLE is a Citus hash-distributed table. Not merely in
-- pg_dist_partition: create_distributed_table_concurrently first makes the
-- table a Citus local table (partmethod 'n', one shard on the coordinator),
-- and a call cut off half-way leaves it so, with every row (measured).
CREATE OR REPLACE FUNCTION cex_migration.is_distributed(p_table regclass)
RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    found boolean;
BEGIN
    IF NOT cex_migration.on_citus() THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = $1 '
            'AND partmethod = ''h'')'
        INTO found USING p_table;
    RETURN found;
END
$$;

-- True when the primary key of P_TABLE already holds symbol_base (the
-- distribution column), i.e. the key swap below is done or not needed.
CREATE OR REPLACE FUNCTION cex_migration.primary_key_has_symbol_base(p_table regclass)
RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM pg_constraint c
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
        WHERE c.conrelid = p_table AND c.contype = 'p' AND a.attname = 'symbol_base')
$$;

-- Move the trades whose symbol_base is NULL (pairs no rule splits, left so by
-- 001's backfill) to trades_unsplit: Citus refuses a NULL distribution
-- column, and the OHLCV views already skip these rows, so their answers do
-- not change. Batches of cex.backfill_batch_size ids, each one statement
-- (the DELETE ... RETURNING feeds the INSERT: a row is never in both tables
-- or in neither) and one transaction; cex.backfill_sleep_ms between batches.
-- No row with NULL base arrives meanwhile: 007's foreground added the CHECK
-- trades_symbol_base_not_null (NOT VALID: new rows only). Safe to CALL again:
-- a second walk moves nothing. The walk reads the primary key's id range, so
-- each batch is an index range scan, never a scan of the whole table.
CREATE OR REPLACE PROCEDURE cex_migration.move_unsplit_trades()
LANGUAGE plpgsql AS $$
DECLARE
    batch CONSTANT bigint :=
        coalesce(nullif(current_setting('cex.backfill_batch_size', true), '')::bigint, 50000);
    sleep_ms CONSTANT integer :=
        coalesce(nullif(current_setting('cex.backfill_sleep_ms', true), '')::integer, 0);
    low bigint;
    high bigint;
BEGIN
    IF NOT cex_migration.on_citus() OR to_regclass('public.trades_unsplit') IS NULL
       OR cex_migration.is_distributed('public.trades') THEN
        RETURN;
    END IF;
    SELECT min(id), max(id) INTO low, high FROM public.trades;
    WHILE low IS NOT NULL AND low <= high LOOP
        WITH moved AS (
            DELETE FROM public.trades
            WHERE id >= low AND id < low + batch AND symbol_base IS NULL
            RETURNING *)
        INSERT INTO public.trades_unsplit SELECT * FROM moved;
        COMMIT;
        low := low + batch;
        IF sleep_ms > 0 THEN
            PERFORM pg_sleep(sleep_ms / 1000.0);
        END IF;
    END LOOP;
END
$$;

-- Make the primary key of P_TABLE (id, "timestamp", symbol_base), adopting
-- the unique index P_INDEX built concurrently by 007 (Citus requires every
-- unique key to hold the distribution column). One short transaction under
-- ACCESS EXCLUSIVE, no scan: SET NOT NULL is proven by the validated CHECK
-- P_CHECK (if any), ADD PRIMARY KEY USING INDEX adopts the built index.
-- Returns at once without Citus, or when the key already holds symbol_base.
CREATE OR REPLACE PROCEDURE cex_migration.adopt_distribution_key(
    p_table regclass, p_index text, p_check text)
LANGUAGE plpgsql AS $$
DECLARE
    pkey text;
BEGIN
    IF NOT cex_migration.on_citus() OR cex_migration.primary_key_has_symbol_base(p_table) THEN
        RETURN;
    END IF;
    SELECT conname INTO pkey FROM pg_constraint WHERE conrelid = p_table AND contype = 'p';
    EXECUTE format('ALTER TABLE %s ALTER COLUMN symbol_base SET NOT NULL', p_table);
    EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I, ADD CONSTRAINT %I PRIMARY KEY USING INDEX %I',
                   p_table, pkey, pkey, p_index);
    IF p_check IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', p_table, p_check);
    END IF;
END
$$;

-- Swap 005's key for id-less trades (exchange, symbol, ...) for the same key
-- with symbol_base added (uq_trades_natural_key_dist, built concurrently by
-- 007): the same rows are equal under both, since symbol_base follows from
-- symbol; Citus needs the distribution column in it. The new index takes the
-- old name, which the writers look up (collectors/statements.py).
CREATE OR REPLACE PROCEDURE cex_migration.adopt_natural_key_with_symbol_base()
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT cex_migration.on_citus() OR to_regclass('public.uq_trades_natural_key_dist') IS NULL THEN
        RETURN;
    END IF;
    DROP INDEX IF EXISTS public.uq_trades_natural_key;
    ALTER INDEX public.uq_trades_natural_key_dist RENAME TO uq_trades_natural_key;
END
$$;

-- Distribute P_TABLE by symbol_base with create_distributed_table_concurrently
-- (writes go on; one short lock at the switch-over), co-located with
-- P_COLOCATE_WITH when given. Returns at once without Citus or when P_TABLE
-- is already distributed, so a retry after a timeout or a lost connection
-- starts from that check. Citus runs one concurrent distribution per
-- cluster: a second one, even in another database, hangs forever (issue 11,
-- measured). So this waits while pg_stat_activity (cluster-wide on the
-- coordinator; a role needs pg_read_all_stats to see other databases' queries)
-- shows another session in one (its call, or this procedure's), up to cex.distribution_wait_s
-- seconds (default 600), then raises naming it. Must be CALLed outside a
-- transaction block (Citus refuses one), and nothing in the transaction may
-- hold a transaction id when the call starts: the replication slot Citus
-- creates waits for every transaction that holds one, its caller's too.
-- A call cut off half-way (its session killed) leaves the table a Citus
-- local table with all its rows, and new shards, replication slots,
-- publications and subscriptions listed in pg_dist_cleanup, which Citus'
-- maintenance daemon drops within seconds (measured); a retry drops them
-- first (citus_cleanup_orphaned_resources, committed before the call, so
-- the slot does not wait on it) and distributes the Citus local table.
-- citus.enable_unsafe_triggers: the tables carry the symbol-fill trigger,
-- which Citus refuses to distribute without it; transaction-local here.
CREATE OR REPLACE PROCEDURE cex_migration.distribute_table(
    p_table regclass, p_colocate_with text DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    wait_s CONSTANT integer :=
        coalesce(nullif(current_setting('cex.distribution_wait_s', true), '')::integer, 600);
    started CONSTANT timestamptz := clock_timestamp();
    other record;
    leftovers boolean;
BEGIN
    IF NOT cex_migration.on_citus() OR cex_migration.is_distributed(p_table) THEN
        RETURN;
    END IF;
    LOOP
        SELECT a.pid, a.datname INTO other FROM pg_stat_activity a
        WHERE a.pid <> pg_backend_pid() AND a.state <> 'idle'
          AND a.query ~* '(create_distributed_table_concurrently|cex_migration\.distribute_table)'
          AND a.backend_type = 'client backend'
        LIMIT 1;
        EXIT WHEN NOT FOUND;
        IF clock_timestamp() - started > make_interval(secs => wait_s) THEN
            RAISE EXCEPTION 'another Citus distribution is running on this cluster (pid %, database %)',
                other.pid, other.datname
                USING HINT = 'Citus runs one create_distributed_table_concurrently at a time per '
                             'cluster; run again when it is done (cex.distribution_wait_s sets the wait)';
        END IF;
        PERFORM pg_sleep(1);
    END LOOP;
    EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_dist_cleanup)' INTO leftovers;
    IF leftovers THEN
        CALL citus_cleanup_orphaned_resources();
        COMMIT;
    END IF;
    PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
    IF p_colocate_with IS NULL THEN
        EXECUTE 'SELECT create_distributed_table_concurrently($1, $2)'
            USING p_table, 'symbol_base';
    ELSE
        EXECUTE 'SELECT create_distributed_table_concurrently($1, $2, colocate_with => $3)'
            USING p_table, 'symbol_base', p_colocate_with;
    END IF;
END
$$;

-- migrate:psql-only
SELECT migration_record_manual('R__citus_distribution', 'citus_distribution', 'trade_collection');
