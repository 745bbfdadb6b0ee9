-- Routine trade_backfill (repeatable): 001's background backfill of the old rows: splits
-- `symbol` into base/quote and archives replayed duplicates.
--
-- A routine is code that is replaced, not migrated: the runner runs this
-- whole file again, in one transaction with its history row
-- (migration_history.version 'R__trade_backfill'), whenever its checksum differs
-- from the recorded one, before any pending step that may call it. Edit it
-- freely; the next run or engine boot installs the new bodies
-- (docs/migration-files.md, "Routines"). By hand: `psql -v ON_ERROR_STOP=1
-- -f` after 000 and before 001 (README, "Manual SQL execution").
--
-- migrate:feature trade_collection
-- migrate:description 001's backfill of old rows: base/quote split and replayed-duplicate archive

-- 001's helpers live in the schema cex_migration, out of the application's
-- way (docs/schema.md, "Helper functions and procedures").
CREATE SCHEMA IF NOT EXISTS cex_migration;

-- A backfill left half done by an earlier release kept its work tables in
-- public: they move here, under their new names, and it resumes.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['chunks', 'dup_ids'] LOOP
        IF to_regclass('public.cex_backfill_' || t) IS NOT NULL
           AND to_regclass('cex_migration.backfill_' || t) IS NULL THEN
            EXECUTE format('ALTER TABLE public.%I SET SCHEMA cex_migration', 'cex_backfill_' || t);
            EXECUTE format('ALTER TABLE cex_migration.%I RENAME TO %I', 'cex_backfill_' || t, 'backfill_' || t);
        END IF;
    END LOOP;
END
$$;

-- Backfill symbol_base/symbol_quote of old rows, removing replayed
-- duplicates on the way (header of 001_add_trade_collection_support.sql:
-- dedup rule). Only rows that existed when it started are walked (detail ->> 'boundary_id'): later rows
-- got their parts from the writer or the trigger.
--
-- Set-up, once, in one transaction: the old rows' ids are cut into chunks
-- of cex.backfill_batch_size rows (table cex_migration.backfill_chunks), and the ids
-- of old rows whose (exchange, trade_id) occurs more than once are noted
-- (cex_migration.backfill_dup_ids). Only those rows can be replayed duplicates, so
-- only they are looked up in uq_trades_dedup; every other row of a chunk is
-- split by one plain UPDATE, each distinct symbol split once. That keeps the
-- backfill close to the cost of one UPDATE of every row
-- (bench/bench_migration_001.py).
--
-- Then each chunk is one transaction: claim it (FOR UPDATE SKIP LOCKED, so
-- several sessions may CALL this at once, each on other chunks: the
-- runner's `parallel` step), archive its duplicates, split the rest, mark it
-- done, add to the counters in migration_progress ('001',
-- 'backfill_symbols'). A crash loses the chunk in hand only; a re-CALL takes
-- the chunks not done; a CALL after the end does nothing. `position` is a
-- low-water mark: every old id up to it is done (with one session, nothing
-- above it is). Sleeps cex.backfill_sleep_ms between chunks. The session
-- that finds every chunk done drops the two tables and reports.
--
-- A duplicate is removed BEFORE its group's kept row gets base/quote, since
-- that update is what uq_trades_dedup checks. A row written since the
-- foreground part (base/quote set) that replays an old trade, or a
-- duplicate split meanwhile by another session, makes the chunk's UPDATE
-- fail on uq_trades_dedup: the chunk is rolled back (a subtransaction) and
-- done again with every row looked up, which archives the later row and
-- keeps the lowest id. A row written since the set-up that replays an old
-- trade at another time meets no unique index; the finishing session
-- archives those (one lookup each of the rows above the boundary).
--
-- The phases, one routine each, in the order cex_migration.backfill_trade_symbols()
-- calls them:
--   set-up    cex_migration.backfill_setup(batch_size)           once, one transaction
--   claim     cex_migration.backfill_claim()                      the next chunk, locked
--   chunk     cex_migration.backfill_candidates(lo, hi, all)      split its symbols, find duplicates
--             cex_migration.backfill_archive(lo, hi)              move duplicates to the archive
--             cex_migration.backfill_split(lo, hi)                split the rest in one UPDATE
--             cex_migration.backfill_record(lo, ...)              mark done, add to the counters
--   finish    cex_migration.backfill_finish()                     the last session: sweep, drop, report
--   archive   cex_migration.archive_trades()                      the one move of rows to the archive
--
-- State: the work tables the set-up creates and the finish drops —
-- cex_migration.backfill_chunks and cex_migration.backfill_dup_ids (above), the counters in
-- typed columns of cex_migration.backfill_totals (one row), the unsplittable symbols
-- with their row counts (cex_migration.backfill_unsplittable) and the ids of rows left
-- unsplit because they break a constraint (cex_migration.backfill_violating) — and
-- migration_progress ('001', 'backfill_symbols': position, rows_done,
-- rows_total, and in detail the JSON that status shows, derived from the
-- work tables by cex_migration.backfill_detail() alone). A backfill left half done by
-- an earlier release of this file (counters in detail only) resumes: the
-- set-up seeds the counters from that detail.

-- Set-up, once: cut the old ids into chunks, note the duplicate candidates,
-- start the counters. A session that comes second waits for the first's
-- set-up to commit (however long the scans take), then finds it done.
CREATE OR REPLACE PROCEDURE cex_migration.backfill_setup(batch_size integer)
LANGUAGE plpgsql AS $$
DECLARE
    progress migration_progress%ROWTYPE;
    boundary bigint;
    start_after bigint;
    chunks integer;
    candidates bigint;
BEGIN
    PERFORM set_config('lock_timeout', '0', true);
    INSERT INTO migration_progress (version, task, rows_done, detail)
    VALUES ('001', 'backfill_symbols', 0, '{}'::jsonb)
    ON CONFLICT (version, task) DO NOTHING;
    SELECT * INTO progress FROM migration_progress
    WHERE version = '001' AND task = 'backfill_symbols' FOR UPDATE;
    IF NOT progress.done AND NOT progress.detail ? 'chunks' THEN
        PERFORM set_config('work_mem', '256MB', true), set_config('jit', 'off', true);
        boundary := coalesce((progress.detail ->> 'boundary_id')::bigint, (SELECT max(id) FROM trades));
        start_after := coalesce(progress.position::bigint, -9223372036854775808);
        CREATE TABLE IF NOT EXISTS cex_migration.backfill_chunks (
            lo   bigint  PRIMARY KEY,  -- the chunk is lo < id <= hi
            hi   bigint  NOT NULL,
            done boolean NOT NULL DEFAULT false
        );
        CREATE TABLE IF NOT EXISTS cex_migration.backfill_dup_ids (id bigint PRIMARY KEY);
        INSERT INTO cex_migration.backfill_chunks (lo, hi)
        SELECT coalesce(lag(e) OVER (ORDER BY e), start_after), e
        FROM (SELECT id AS e
              FROM (SELECT id, row_number() OVER (ORDER BY id) AS n
                    FROM trades WHERE id > start_after AND id <= boundary) AS s
              WHERE n % batch_size = 0 OR id = boundary) AS ends;
        -- Candidates: every old row of an (exchange, trade_id) seen more than
        -- once. The dedup key also has base/quote, so this is a superset.
        INSERT INTO cex_migration.backfill_dup_ids (id)
        SELECT t.id
        FROM trades t
        JOIN (SELECT exchange, trade_id FROM trades
              WHERE id <= boundary AND trade_id IS NOT NULL
              GROUP BY exchange, trade_id HAVING count(*) > 1) AS k
          ON k.exchange = t.exchange AND k.trade_id = t.trade_id
        WHERE t.id > start_after AND t.id <= boundary
        ON CONFLICT DO NOTHING;
        SELECT count(*) INTO chunks FROM cex_migration.backfill_chunks;
        SELECT count(*) INTO candidates FROM cex_migration.backfill_dup_ids;
        CALL cex_migration.backfill_start_totals(progress.detail, boundary, chunks, candidates);
        UPDATE migration_progress p
        SET rows_total = coalesce(p.rows_total, (SELECT count(*) FROM trades
                                                 WHERE symbol_base IS NULL AND id <= boundary)),
            detail = cex_migration.backfill_detail(), updated_at = now()
        WHERE p.version = '001' AND p.task = 'backfill_symbols';
    ELSIF NOT progress.done THEN  -- resumed; the counters of an earlier release are in detail
        CALL cex_migration.backfill_start_totals(progress.detail, (progress.detail ->> 'boundary_id')::bigint,
                                       (progress.detail ->> 'chunks')::integer,
                                       (progress.detail ->> 'duplicate_candidates')::bigint);
    END IF;
    COMMIT;
    -- The session's work tables, emptied at each commit.
    CREATE TEMP TABLE IF NOT EXISTS cex_backfill_symbols (  -- the chunk's distinct symbols
        symbol  varchar(50),
        n       bigint,
        parts   text[]
    ) ON COMMIT DELETE ROWS;
    CREATE TEMP TABLE IF NOT EXISTS cex_backfill_batch (    -- the chunk's duplicate candidates
        id          bigint,
        ts          timestamptz,
        exchange    varchar(50),
        trade_id    varchar(100),
        parts       text[],
        keep_id     bigint,      -- lowest id of the trade: the row that stays
        settled_max bigint       -- highest id of the trade among rows with parts set
    ) ON COMMIT DELETE ROWS;
    CREATE TEMP TABLE IF NOT EXISTS cex_backfill_gone (     -- rows cex_migration.archive_trades() moves
        id           bigint,
        ts           timestamptz,
        kept_id      bigint,     -- the row of the same trade that stays
        symbol_base  text,
        symbol_quote text
    ) ON COMMIT DELETE ROWS;
END
$$;

-- The counter tables, unless they exist: typed columns in one row, the
-- unsplittable symbols and the constraint-breaking ids, seeded from DETAIL
-- (the JSON an earlier release kept its counters in; '{}' on a first start).
CREATE OR REPLACE PROCEDURE cex_migration.backfill_start_totals(
    detail jsonb, boundary bigint, chunks integer, candidates bigint)
LANGUAGE plpgsql AS $$
BEGIN
    IF to_regclass('cex_migration.backfill_totals') IS NOT NULL THEN
        RETURN;
    END IF;
    CREATE TABLE cex_migration.backfill_totals (
        only_row                   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
        boundary_id                bigint,            -- the last old row (NULL: none); later rows are not walked
        chunks                     integer NOT NULL,
        duplicate_candidates       bigint  NOT NULL,
        rows_split                 bigint  NOT NULL,
        unsplittable_rows          bigint  NOT NULL,
        duplicates_archived        bigint  NOT NULL,
        rows_violating_constraints bigint  NOT NULL,
        chunks_redone              integer NOT NULL   -- done again after a concurrent write
    );
    CREATE TABLE cex_migration.backfill_unsplittable (symbol varchar(50) PRIMARY KEY, n bigint NOT NULL);
    CREATE TABLE cex_migration.backfill_violating (id bigint PRIMARY KEY);
    INSERT INTO cex_migration.backfill_totals
    VALUES (true, boundary, chunks, candidates,
            coalesce((detail ->> 'rows_split')::bigint, 0),
            coalesce((detail ->> 'unsplittable_rows')::bigint, 0),
            coalesce((detail ->> 'duplicates_archived')::bigint, 0),
            coalesce((detail ->> 'rows_violating_constraints')::bigint, 0),
            coalesce((detail ->> 'chunks_redone')::integer, 0));
    INSERT INTO cex_migration.backfill_unsplittable (symbol, n)
    SELECT key, value::bigint FROM jsonb_each_text(coalesce(detail -> 'unsplittable_symbols', '{}'));
    INSERT INTO cex_migration.backfill_violating (id)
    SELECT jsonb_array_elements_text(coalesce(detail -> 'violating_ids', '[]'))::bigint;
END
$$;

-- The backfill's detail in migration_progress, as status shows it, from the
-- counter tables: the counters, the 100 most frequent unsplittable symbols
-- with their row counts, the first 100 ids of rows left unsplit.
CREATE OR REPLACE FUNCTION cex_migration.backfill_detail()
RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN  -- plpgsql: the tables exist only while a backfill runs
    RETURN (SELECT to_jsonb(t) - 'only_row'
           || jsonb_build_object(
               'unsplittable_symbols',
               (SELECT coalesce(jsonb_object_agg(symbol, n), '{}'::jsonb)
                FROM (SELECT symbol, n FROM cex_migration.backfill_unsplittable
                      ORDER BY n DESC, symbol LIMIT 100) AS top),
               'violating_ids',
               (SELECT to_jsonb(coalesce(array_agg(id ORDER BY id), '{}'))
                FROM (SELECT id FROM cex_migration.backfill_violating ORDER BY id LIMIT 100) AS first_ids))
    FROM cex_migration.backfill_totals t);
END
$$;

-- Claim: the lowest chunk not done and not in another session's hands,
-- locked until this transaction ends. NULLs when none is left (or another
-- session finished and dropped the chunk table).
CREATE OR REPLACE FUNCTION cex_migration.backfill_claim(OUT lo bigint, OUT hi bigint)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT c.lo, c.hi INTO lo, hi FROM cex_migration.backfill_chunks c
    WHERE NOT c.done ORDER BY c.lo LIMIT 1 FOR UPDATE SKIP LOCKED;
EXCEPTION WHEN undefined_table THEN
    lo := NULL;
    hi := NULL;
END
$$;

-- Chunk, part 1: each distinct symbol of the chunk's unsplit rows, split
-- once; then the duplicate candidates (all rows, when a first try met a row
-- split elsewhere) with the kept row of each trade: the lowest id among this
-- chunk (hashed) and the rows already split (other chunks, new writes; found
-- through uq_trades_dedup). has_candidates: whether there are any.
CREATE OR REPLACE FUNCTION cex_migration.backfill_candidates(
    c_lo bigint, c_hi bigint, look_up_all boolean,
    OUT examined bigint, OUT unsplittable bigint, OUT has_candidates boolean)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cex_backfill_symbols (symbol, n, parts)
    SELECT symbol, count(*), cex_split_symbol(symbol)
    FROM trades
    WHERE id > c_lo AND id <= c_hi AND symbol_base IS NULL
    GROUP BY symbol;
    SELECT coalesce(sum(n), 0), coalesce(sum(n) FILTER (WHERE parts IS NULL), 0)
    INTO examined, unsplittable FROM cex_backfill_symbols;

    INSERT INTO cex_backfill_batch (id, ts, exchange, trade_id, parts, keep_id, settled_max)
    WITH src AS MATERIALIZED (
        SELECT t.id, t."timestamp" AS ts, t.exchange, t.trade_id, m.parts
        FROM trades t
        JOIN cex_backfill_symbols m ON m.symbol = t.symbol AND m.parts IS NOT NULL
        WHERE t.id > c_lo AND t.id <= c_hi AND t.symbol_base IS NULL
          AND t.trade_id IS NOT NULL
          AND (look_up_all OR t.id IN (SELECT d.id FROM cex_migration.backfill_dup_ids d
                                       WHERE d.id > c_lo AND d.id <= c_hi))
    ), repeated AS (  -- trades that occur more than once in this chunk
        SELECT exchange, parts, trade_id, min(id) AS first_id
        FROM src
        GROUP BY exchange, parts, trade_id
        HAVING count(*) > 1
    )
    SELECT k.id, k.ts, k.exchange, k.trade_id, k.parts,
           least(coalesce(r.first_id, k.id), s.min_id), s.max_id
    FROM src k
    LEFT JOIN repeated r
      ON r.exchange = k.exchange AND r.parts = k.parts AND r.trade_id = k.trade_id
    LEFT JOIN LATERAL (
        SELECT min(t.id) AS min_id, max(t.id) AS max_id
        FROM trades t
        WHERE t.exchange = k.exchange AND t.symbol_base = k.parts[1]
          AND t.symbol_quote = k.parts[2] AND t.trade_id = k.trade_id
          AND t.trade_id IS NOT NULL) AS s ON true;
    has_candidates := FOUND;
END
$$;

-- Move the rows listed in cex_backfill_gone (and present in trades) to
-- trades_duplicates_removed, with the base/quote and kept row given there;
-- empties the list. Returns how many rows moved. The one place rows leave
-- trades.
CREATE OR REPLACE FUNCTION cex_migration.archive_trades()
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    moved integer;
BEGIN
    WITH listed AS (
        DELETE FROM cex_backfill_gone RETURNING *
    ), gone AS (
        DELETE FROM trades t
        USING listed g
        WHERE t.id = g.id AND t."timestamp" = g.ts
        RETURNING t.*, g.kept_id AS kept, g.symbol_base AS base, g.symbol_quote AS quote
    )
    INSERT INTO trades_duplicates_removed (
        id, "timestamp", exchange, symbol, symbol_base, symbol_quote, price, quantity,
        side, trade_id, created_at, quote_quantity, is_buyer, is_maker, kept_id)
    SELECT id, "timestamp", exchange, symbol, base, quote, price, quantity,
           side, trade_id, created_at, quote_quantity, is_buyer, is_maker, kept
    FROM gone;
    GET DIAGNOSTICS moved = ROW_COUNT;
    RETURN moved;
END
$$;

-- Chunk, part 2: archive the candidates that are not their trade's kept
-- row; then later rows (split elsewhere, higher ids) that duplicate a kept
-- row of this chunk. A duplicate is removed BEFORE its group's kept row gets
-- base/quote, since that update is what uq_trades_dedup checks.
CREATE OR REPLACE FUNCTION cex_migration.backfill_archive(
    c_lo bigint, c_hi bigint, OUT archived integer, OUT archived_later integer)
LANGUAGE plpgsql AS $$
DECLARE
    resplit bigint;
BEGIN
    INSERT INTO cex_backfill_gone (id, ts, kept_id, symbol_base, symbol_quote)
    SELECT b.id, b.ts, b.keep_id, b.parts[1], b.parts[2]
    FROM cex_backfill_batch b
    WHERE b.keep_id < b.id AND b.id > c_lo AND b.id <= c_hi;
    archived := cex_migration.archive_trades();
    INSERT INTO cex_backfill_gone (id, ts, kept_id, symbol_base, symbol_quote)
    SELECT t.id, t."timestamp", b.id, t.symbol_base, t.symbol_quote
    FROM cex_backfill_batch b
    JOIN trades t
      ON t.exchange = b.exchange AND t.symbol_base = b.parts[1]
     AND t.symbol_quote = b.parts[2] AND t.trade_id = b.trade_id AND t.id > b.id
    WHERE b.keep_id = b.id AND b.settled_max > b.id;
    -- An old row (id up to the boundary) among them was split by another
    -- session's chunk, which counted it in rows_split: it is archived now,
    -- not split. (A row written between 001's foreground part and the
    -- set-up also has such an id but was split by its writer; archived here,
    -- it is subtracted too, and rows_split undercounts by it.)
    SELECT count(*) INTO resplit FROM cex_backfill_gone g
    WHERE g.id <= (SELECT boundary_id FROM cex_migration.backfill_totals);
    archived_later := cex_migration.archive_trades();
    IF resplit > 0 THEN
        UPDATE cex_migration.backfill_totals SET rows_split = rows_split - resplit;
    END IF;
END
$$;

-- Chunk, part 3: split every remaining unsplit row of the chunk in one
-- UPDATE. An old row that breaks a constraint the foreground part added NOT
-- VALID (say side 'BUY') fails it, since PostgreSQL checks those on UPDATE:
-- then the chunk is split row by row, and such rows stay as they were.
-- Returns their ids.
CREATE OR REPLACE FUNCTION cex_migration.backfill_split(c_lo bigint, c_hi bigint)
RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    violating bigint[] := '{}';
    survivor record;
BEGIN
    BEGIN
        UPDATE trades t
        SET symbol_base = m.parts[1], symbol_quote = m.parts[2]
        FROM cex_backfill_symbols m
        WHERE t.id > c_lo AND t.id <= c_hi AND t.symbol_base IS NULL
          AND m.symbol = t.symbol AND m.parts IS NOT NULL;
    EXCEPTION WHEN check_violation THEN
        FOR survivor IN
            SELECT t.id, t."timestamp" AS ts, m.parts
            FROM trades t JOIN cex_backfill_symbols m ON m.symbol = t.symbol
            WHERE t.id > c_lo AND t.id <= c_hi AND t.symbol_base IS NULL
              AND m.parts IS NOT NULL
        LOOP
            BEGIN
                UPDATE trades
                SET symbol_base = survivor.parts[1], symbol_quote = survivor.parts[2]
                WHERE id = survivor.id AND "timestamp" = survivor.ts AND symbol_base IS NULL;
            EXCEPTION WHEN check_violation THEN
                violating := violating || survivor.id;
            END;
        END LOOP;
    END;
    RETURN violating;
END
$$;

-- Chunk, part 4: the chunk is done; add its counts to the counter tables
-- (the totals row first: it orders sessions, so their upserts of symbols
-- cannot deadlock) and derive migration_progress from them. `position` is
-- the low-water mark: every old id up to it is done.
CREATE OR REPLACE FUNCTION cex_migration.backfill_record(
    c_lo bigint, boundary bigint, examined bigint, unsplittable bigint, archived integer,
    archived_later integer, violating bigint[], redone boolean)
RETURNS migration_progress
LANGUAGE plpgsql AS $$
DECLARE
    progress migration_progress%ROWTYPE;
BEGIN
    UPDATE cex_migration.backfill_chunks SET done = true WHERE lo = c_lo;
    UPDATE cex_migration.backfill_totals
    SET rows_split = rows_split + examined - unsplittable - archived - cardinality(violating),
        unsplittable_rows = unsplittable_rows + unsplittable,
        duplicates_archived = duplicates_archived + archived + archived_later,
        rows_violating_constraints = rows_violating_constraints + cardinality(violating),
        chunks_redone = chunks_redone + CASE WHEN redone THEN 1 ELSE 0 END;
    INSERT INTO cex_migration.backfill_unsplittable AS u (symbol, n)
    SELECT symbol, n FROM cex_backfill_symbols WHERE parts IS NULL ORDER BY symbol
    ON CONFLICT (symbol) DO UPDATE SET n = u.n + excluded.n;
    INSERT INTO cex_migration.backfill_violating (id) SELECT unnest(violating) ON CONFLICT DO NOTHING;
    UPDATE migration_progress p
    SET position = coalesce((SELECT min(lo) FROM cex_migration.backfill_chunks WHERE NOT done),
                            boundary)::text,
        rows_done = p.rows_done + examined,
        detail = cex_migration.backfill_detail(),
        updated_at = now()
    WHERE p.version = '001' AND p.task = 'backfill_symbols'
    RETURNING * INTO progress;
    RETURN progress;
END
$$;

-- One chunk, in the caller's transaction. A row of this chunk's trades split
-- elsewhere meanwhile (a writer, another session) makes it fail on
-- uq_trades_dedup: the chunk is rolled back (the block is a
-- subtransaction) and done again, looking every row up.
CREATE OR REPLACE FUNCTION cex_migration.backfill_chunk(c_lo bigint, c_hi bigint, boundary bigint)
RETURNS migration_progress
LANGUAGE plpgsql AS $$
DECLARE
    look_up_all boolean := false;
    attempt integer := 0;
    cand record;
    archived integer;
    archived_later integer;
    violating bigint[];
    progress migration_progress%ROWTYPE;
BEGIN
    -- Hash the chunk in memory, and no JIT (compiling costs more than it
    -- saves on one chunk).
    PERFORM set_config('work_mem', '64MB', true), set_config('jit', 'off', true);
    LOOP
        BEGIN
            SELECT * INTO cand FROM cex_migration.backfill_candidates(c_lo, c_hi, look_up_all);
            archived := 0;
            archived_later := 0;
            IF cand.has_candidates THEN
                SELECT * INTO archived, archived_later FROM cex_migration.backfill_archive(c_lo, c_hi);
            END IF;
            violating := cex_migration.backfill_split(c_lo, c_hi);
            SELECT * INTO progress
            FROM cex_migration.backfill_record(c_lo, boundary, cand.examined, cand.unsplittable,
                                     archived, archived_later, violating, attempt > 0);
            RETURN progress;
        EXCEPTION WHEN unique_violation OR deadlock_detected THEN
            attempt := attempt + 1;
            IF attempt >= 5 THEN
                RAISE;
            END IF;
            IF look_up_all THEN
                RAISE NOTICE 'migration 001: backfill_symbols: chunk after id % met a concurrent '
                             'write (%), retrying', c_lo, SQLERRM;
                PERFORM pg_sleep(0.1 * attempt);
            END IF;
            look_up_all := true;
        END;
    END LOOP;
END
$$;

-- Finish, by the session that finds nothing left to claim: if every chunk is
-- done, archive rows written since the set-up (ids above the boundary, split
-- by their writer) that replay an old trade at another time than the old row
-- (at the same time, uq_trades_dedup made the chunk look them up), mark the
-- task done with its final detail, drop the work tables and report. A chunk still in another
-- session's hands is finished by that session.
CREATE OR REPLACE PROCEDURE cex_migration.backfill_finish()
LANGUAGE plpgsql AS $$
DECLARE
    progress migration_progress%ROWTYPE;
    boundary bigint;
    archived_later integer;
BEGIN
    SELECT * INTO progress FROM migration_progress
    WHERE version = '001' AND task = 'backfill_symbols' FOR UPDATE;
    IF progress.done THEN
        COMMIT;
        RETURN;
    END IF;
    IF to_regclass('cex_migration.backfill_chunks') IS NOT NULL
       AND EXISTS (SELECT 1 FROM cex_migration.backfill_chunks WHERE NOT done) THEN
        COMMIT;
        RAISE NOTICE 'migration 001: backfill_symbols: no chunk left for this session; '
                     'another session is finishing the last ones';
        RETURN;
    END IF;
    boundary := (progress.detail ->> 'boundary_id')::bigint;
    INSERT INTO cex_backfill_gone (id, ts, kept_id, symbol_base, symbol_quote)
    SELECT n.id, n."timestamp", min(o.id), n.symbol_base, n.symbol_quote
    FROM trades n
    JOIN trades o
      ON o.exchange = n.exchange AND o.symbol_base = n.symbol_base
     AND o.symbol_quote = n.symbol_quote AND o.trade_id = n.trade_id
     AND o.trade_id IS NOT NULL AND o.id <= boundary
    WHERE n.id > boundary AND n.trade_id IS NOT NULL
    GROUP BY n.id, n."timestamp", n.symbol_base, n.symbol_quote;
    archived_later := cex_migration.archive_trades();
    UPDATE cex_migration.backfill_totals SET duplicates_archived = duplicates_archived + archived_later;
    UPDATE migration_progress p
    SET done = true, position = coalesce(boundary::text, p.position), updated_at = now(),
        detail = cex_migration.backfill_detail()
    WHERE p.version = '001' AND p.task = 'backfill_symbols'
    RETURNING * INTO progress;
    DROP TABLE IF EXISTS cex_migration.backfill_chunks, cex_migration.backfill_dup_ids, cex_migration.backfill_totals,
                         cex_migration.backfill_unsplittable, cex_migration.backfill_violating;
    COMMIT;
    IF coalesce((progress.detail ->> 'rows_violating_constraints')::bigint, 0) > 0 THEN
        RAISE WARNING 'migration 001: % rows break a constraint of trades (see the WARNING of '
                      'validate_constraints) and were left unsplit, ids (first 100): %; fix them, '
                      'then set their symbol_base/symbol_quote from cex_split_symbol(symbol)',
                      progress.detail ->> 'rows_violating_constraints', progress.detail -> 'violating_ids';
    END IF;
    IF (progress.detail ->> 'unsplittable_rows')::bigint > 0 THEN
        RAISE NOTICE 'migration 001: % rows have a symbol no rule splits; they are kept as they '
                     'were, with NULL symbol_base/symbol_quote: %',
                     progress.detail ->> 'unsplittable_rows', progress.detail -> 'unsplittable_symbols';
    END IF;
END
$$;

-- The backfill: set-up, then claim and do chunks until none is left, then
-- finish. Several sessions may CALL it at once (the runner's `parallel`
-- step); each takes other chunks.
CREATE OR REPLACE PROCEDURE cex_migration.backfill_trade_symbols(p_batch_size integer DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    batch_size integer := coalesce(
        p_batch_size, nullif(current_setting('cex.backfill_batch_size', true), '')::integer, 50000);
    sleep_ms integer := coalesce(nullif(current_setting('cex.backfill_sleep_ms', true), '')::integer, 0);
    progress migration_progress%ROWTYPE;
    chunk record;
BEGIN
    IF batch_size < 1 THEN
        RAISE EXCEPTION 'migration 001: backfill batch size must be positive, got %', batch_size;
    END IF;
    CALL cex_migration.backfill_setup(batch_size);
    SELECT * INTO progress FROM migration_progress
    WHERE version = '001' AND task = 'backfill_symbols';
    LOOP
        EXIT WHEN progress.done;
        SELECT * INTO chunk FROM cex_migration.backfill_claim();
        IF chunk.lo IS NULL THEN
            COMMIT;  -- hold no lock on the chunk table while finishing
            EXIT;
        END IF;
        SELECT * INTO progress
        FROM cex_migration.backfill_chunk(chunk.lo, chunk.hi, (progress.detail ->> 'boundary_id')::bigint);
        COMMIT;
        RAISE NOTICE 'migration 001: backfill_symbols: %/% rows, ids up to % done; % unsplittable, % duplicates archived',
                     progress.rows_done, progress.rows_total, progress.position,
                     progress.detail ->> 'unsplittable_rows', progress.detail ->> 'duplicates_archived';
        IF sleep_ms > 0 THEN
            PERFORM pg_sleep(sleep_ms / 1000.0);
        END IF;
    END LOOP;
    CALL cex_migration.backfill_finish();
    SELECT * INTO progress FROM migration_progress
    WHERE version = '001' AND task = 'backfill_symbols';
    IF progress.done THEN
        RAISE NOTICE 'migration 001: backfill_symbols: done (% rows); % unsplittable rows kept with '
                     'NULL symbol_base/symbol_quote; % duplicates in trades_duplicates_removed',
                     progress.rows_done, progress.detail ->> 'unsplittable_rows',
                     progress.detail ->> 'duplicates_archived';
    END IF;
END
$$;

-- migrate:psql-only
SELECT migration_record_manual('R__trade_backfill', 'trade_backfill', 'trade_collection');
