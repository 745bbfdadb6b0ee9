-- Down of migration 007: without Citus, nothing to undo (007 changed nothing).
--
-- On Citus, before the tables are distributed and their keys swapped, this
-- puts the moved trades back and drops what 007 added. Once distributed,
-- it refuses: undistribute_table() copies every row back to the coordinator
-- under a lock that stops the collectors for the whole copy, a maintenance
-- window's decision, not a migration's (docs/citus.md, "Going back").
--
-- By hand: psql -v ON_ERROR_STOP=1 -1 -f 007_distribute_on_citus.down.sql

DO $$
BEGIN
    IF NOT cex_migration.on_citus() THEN
        RETURN;
    END IF;
    IF cex_migration.is_distributed('public.trades')
       OR cex_migration.is_distributed('public.book_ticker_snapshots')
       OR cex_migration.primary_key_has_symbol_base('public.trades')
       OR cex_migration.primary_key_has_symbol_base('public.book_ticker_snapshots') THEN
        RAISE EXCEPTION 'migration 007 already distributed the tables or swapped their keys on Citus'
            USING HINT = 'undistribute by hand in a maintenance window: '
                         'SELECT undistribute_table(''book_ticker_snapshots''); '
                         'SELECT undistribute_table(''trades''); (docs/citus.md, "Going back")';
    END IF;
    ALTER TABLE public.trades DROP CONSTRAINT IF EXISTS trades_symbol_base_not_null;
    IF to_regclass('public.trades_unsplit') IS NOT NULL THEN
        INSERT INTO public.trades SELECT * FROM public.trades_unsplit;
        DROP TABLE public.trades_unsplit;
    END IF;
    DROP INDEX IF EXISTS public.trades_dist_pkey;
    DROP INDEX IF EXISTS public.uq_trades_natural_key_dist;
    DROP INDEX IF EXISTS public.book_ticker_snapshots_dist_pkey;
END
$$;

-- migrate:psql-only
DELETE FROM migration_history WHERE version = '007';
