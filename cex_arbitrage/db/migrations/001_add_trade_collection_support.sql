-- Migration 001: trade collection support.
--
-- Upgrades `trades` from the legacy shape (tests/legacy-schema.sql: one
-- `symbol` string as each exchange spells it) to base/quote columns, removes
-- replayed duplicate trades (archiving them), adds the indexes and
-- constraints trade queries need, OHLCV aggregates at 1 minute and 1 hour,
-- and grants for an application role and a read-only role. On an empty
-- database it first creates both tables exactly as the legacy init script
-- did, so both starting points end with the same schema (docs/schema.md).
--
-- Live-database rules (PRODUCT.md part 9): the foreground steps only do what
-- new writes need (columns, the dedup index, the fill trigger, NOT VALID
-- constraints); every statement there holds a lock that blocks inserts for a
-- moment only, and the runner bounds lock waits (lock_timeout) and retries.
-- Work proportional to the table (backfill, validation, query indexes, the
-- first aggregate refresh) runs in background steps that commit as they go
-- and resume from a checkpoint.
--
-- TimescaleDB: written against the TimescaleDB 2.x documentation and checked
-- with TimescaleDB 2.28.3 on PostgreSQL 15; per-chunk unique index builds
-- need 2.22 or later (older versions fall back to one blocking build, with a
-- NOTICE), hierarchical aggregates need 2.9. Quirks: docs/timescaledb.md.
--
-- Symbol split rules, in one place: the function cex_split_symbol() below.
--   1. trim white space, upper-case;
--   2. exactly one separator `_`, `-` or `/` with a non-empty alphanumeric
--      part on each side: BTC_USDT, btc-usdt, BTC/USDT -> BTC / USDT;
--   3. no separator, alphanumeric: the LONGEST known quote asset that is a
--      suffix and leaves a non-empty base: BTCUSDT -> BTC/USDT,
--      BTCFDUSD -> BTC/FDUSD (not FD... /USD), ETHBTC -> ETH/BTC.
--      Known quotes: FDUSD USDT USDC BUSD TUSD USDP USD EUR GBP TRY BRL DAI
--      BTC ETH BNB;
--   4. anything else (XYZ, ???, BTC__USDT, BTC_USDT_PERP, a part longer than
--      20 characters) is unsplittable: the row is kept as it is with NULL
--      base/quote, counted, reported by NOTICE and recorded in
--      migration_progress (version '001', task 'backfill_symbols', detail).
--      Nothing is guessed and no row is lost.
--
-- Dedup rule: rows with the same (exchange, symbol_base, symbol_quote,
-- trade_id), trade_id NOT NULL, are one trade replayed; the lowest id stays,
-- the others move to trades_duplicates_removed (with kept_id). Rows without
-- trade_id and unsplittable rows are all kept. New duplicates are kept out
-- by uq_trades_dedup, on which the writers' ON CONFLICT relies.
--
-- migrate:feature trade_collection
-- migrate:depends 000
-- migrate:description Trade collection: symbol_base/symbol_quote on trades, dedup, indexes, OHLCV aggregates, grants

-- migrate:step tables
-- The two tables exactly as the legacy init script created them (no-ops on a
-- legacy database), as hypertables where TimescaleDB is installed.

CREATE TABLE IF NOT EXISTS book_ticker_snapshots (
    id            BIGSERIAL,
    timestamp     TIMESTAMPTZ   NOT NULL,
    exchange      VARCHAR(50)   NOT NULL,
    symbol_base   VARCHAR(20)   NOT NULL,
    symbol_quote  VARCHAR(20)   NOT NULL,
    bid_price     NUMERIC(20,8) NOT NULL,
    bid_qty       NUMERIC(20,8) NOT NULL,
    ask_price     NUMERIC(20,8) NOT NULL,
    ask_qty       NUMERIC(20,8) NOT NULL,
    created_at    TIMESTAMPTZ   DEFAULT NOW(),
    PRIMARY KEY (id, timestamp)
);
CREATE INDEX IF NOT EXISTS idx_bts_exchange_pair_time
    ON book_ticker_snapshots (exchange, symbol_base, symbol_quote, timestamp DESC);

CREATE TABLE IF NOT EXISTS trades (
    id          BIGSERIAL,
    timestamp   TIMESTAMPTZ   NOT NULL,
    exchange    VARCHAR(50)   NOT NULL,
    symbol      VARCHAR(50)   NOT NULL,
    price       NUMERIC(20,8) NOT NULL,
    quantity    NUMERIC(20,8) NOT NULL,
    side        VARCHAR(4)    NOT NULL,
    trade_id    VARCHAR(100),
    created_at  TIMESTAMPTZ   DEFAULT NOW(),
    PRIMARY KEY (id, timestamp)
);
CREATE INDEX IF NOT EXISTS idx_trades_exchange_symbol_time
    ON trades (exchange, symbol, timestamp DESC);

-- Is REL a TimescaleDB hypertable? False where the extension is not installed.
CREATE OR REPLACE FUNCTION cex_is_hypertable(rel regclass)
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
CREATE OR REPLACE FUNCTION cex_timescaledb_version()
RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT split_part(extversion, '.', 1)::int * 100 + split_part(extversion, '.', 2)::int
    FROM pg_extension WHERE extname = 'timescaledb'
$$;


-- Same calls as the legacy script, in the same order (so hypertable ids, and
-- with them the aggregates' definitions, match a legacy database). Only an
-- EMPTY table is converted: making a filled plain table a hypertable
-- (migrate_data) copies every row under an exclusive lock, which a live
-- collector cannot wait for; such a table stays plain and gets the plain
-- views instead of continuous aggregates (docs/timescaledb.md).
DO $$
DECLARE
    t text;
    is_empty boolean;
BEGIN
    IF cex_timescaledb_version() IS NULL THEN
        RETURN;
    END IF;
    FOREACH t IN ARRAY ARRAY['book_ticker_snapshots', 'trades'] LOOP
        CONTINUE WHEN cex_is_hypertable(t::regclass);
        EXECUTE format('SELECT NOT EXISTS (SELECT 1 FROM %I)', t) INTO is_empty;
        IF is_empty THEN
            PERFORM create_hypertable(t::regclass, 'timestamp', if_not_exists => TRUE);
        ELSE
            RAISE NOTICE 'migration 001: % holds rows and is not a hypertable; it stays a plain table '
                         '(converting it would copy every row under an exclusive lock)', t;
        END IF;
    END LOOP;
END
$$;

-- migrate:step columns
-- Metadata-only column adds (no default, so no table rewrite): one brief
-- ACCESS EXCLUSIVE lock, whatever the table size. NULL base/quote means "not
-- split (yet)": old rows until the backfill reaches them, unsplittable ones
-- for good.

ALTER TABLE trades
    ADD COLUMN IF NOT EXISTS symbol_base    VARCHAR(20),
    ADD COLUMN IF NOT EXISTS symbol_quote   VARCHAR(20),
    ADD COLUMN IF NOT EXISTS quote_quantity NUMERIC(28,12),
    ADD COLUMN IF NOT EXISTS is_buyer       BOOLEAN,
    ADD COLUMN IF NOT EXISTS is_maker       BOOLEAN;

COMMENT ON COLUMN trades.symbol IS
    'The pair as the exchange spells it (BTCUSDT, BTC_USDT, ...); cex_split_symbol() reads it';
COMMENT ON COLUMN trades.symbol_base IS
    'Base asset, upper case (BTC); NULL with symbol_quote when no rule splits symbol';
COMMENT ON COLUMN trades.symbol_quote IS
    'Quote asset, upper case (USDT); NULL with symbol_base when no rule splits symbol';
COMMENT ON COLUMN trades.quote_quantity IS
    'price * quantity as the exchange reports it, when it does';
COMMENT ON COLUMN trades.is_buyer IS 'The exchange''s buyer flag, when it sends one';
COMMENT ON COLUMN trades.is_maker IS 'The exchange''s maker flag, when it sends one';

-- migrate:step functions

-- Removed replayed duplicates, kept so nothing is silently lost. kept_id is
-- the row of the same trade that stayed in trades.
CREATE TABLE IF NOT EXISTS trades_duplicates_removed (
    id              BIGINT        NOT NULL,
    "timestamp"     TIMESTAMPTZ   NOT NULL,
    exchange        VARCHAR(50)   NOT NULL,
    symbol          VARCHAR(50)   NOT NULL,
    symbol_base     VARCHAR(20),
    symbol_quote    VARCHAR(20),
    price           NUMERIC(20,8) NOT NULL,
    quantity        NUMERIC(20,8) NOT NULL,
    side            VARCHAR(4)    NOT NULL,
    trade_id        VARCHAR(100),
    created_at      TIMESTAMPTZ,
    quote_quantity  NUMERIC(28,12),
    is_buyer        BOOLEAN,
    is_maker        BOOLEAN,
    kept_id         BIGINT        NOT NULL,
    removed_at      TIMESTAMPTZ   NOT NULL DEFAULT now(),
    PRIMARY KEY (id, "timestamp")
);

COMMENT ON TABLE trades_duplicates_removed IS
    'Replayed duplicate trades removed by migration 001 (same exchange, pair and trade_id as row kept_id)';

-- The split rules (header of this file, docs/schema.md): {base, quote}, or
-- NULL when no rule applies. IMMUTABLE: the same symbol always splits the
-- same way; a change of rules is a new migration replacing this function.
CREATE OR REPLACE FUNCTION cex_split_symbol(symbol text)
RETURNS text[]
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    s text := upper(btrim(symbol, E' \t\r\n'));
    -- Longest first, so BTCFDUSD is BTC/FDUSD and BTCTUSD is BTC/TUSD.
    known_quotes CONSTANT text[] := ARRAY[
        'FDUSD', 'USDT', 'USDC', 'BUSD', 'TUSD', 'USDP',
        'USD', 'EUR', 'GBP', 'TRY', 'BRL', 'DAI', 'BTC', 'ETH', 'BNB'];
    q text;
    parts text[];
BEGIN
    IF s ~ '^[A-Z0-9]+[-_/][A-Z0-9]+$' THEN
        parts := regexp_split_to_array(s, '[-_/]');
    ELSIF s ~ '^[A-Z0-9]+$' THEN
        FOREACH q IN ARRAY known_quotes LOOP
            IF length(s) > length(q) AND right(s, length(q)) = q THEN
                parts := ARRAY[left(s, length(s) - length(q)), q];
                EXIT;
            END IF;
        END LOOP;
    END IF;
    IF parts IS NULL OR length(parts[1]) > 20 OR length(parts[2]) > 20 THEN
        RETURN NULL;  -- unsplittable: never guess
    END IF;
    RETURN parts;
END
$$;

-- Legacy writers insert `symbol` only: fill base/quote from it. New writers
-- set base/quote (the trigger's WHEN skips them); one that leaves `symbol`
-- out gets BASE/QUOTE, which splits back to the same pair.
CREATE OR REPLACE FUNCTION cex_trades_fill_symbol_parts()
RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    parts text[];
BEGIN
    IF NEW.symbol_base IS NULL AND NEW.symbol_quote IS NULL THEN
        parts := cex_split_symbol(NEW.symbol);
        NEW.symbol_base := parts[1];
        NEW.symbol_quote := parts[2];
    ELSIF NEW.symbol IS NULL AND NEW.symbol_base IS NOT NULL AND NEW.symbol_quote IS NOT NULL THEN
        NEW.symbol := NEW.symbol_base || '/' || NEW.symbol_quote;
    END IF;
    RETURN NEW;
END
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
CREATE OR REPLACE PROCEDURE cex_create_hypertable_index(
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
    IF NOT cex_is_hypertable(p_table) THEN
        RETURN;
    END IF;
    SELECT n.nspname INTO table_schema
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = p_table;
    IF to_regclass(format('%I.%I', table_schema, p_index)) IS NOT NULL THEN
        RETURN;
    END IF;
    IF cex_timescaledb_version() < 222 THEN
        RAISE NOTICE 'migration 001: building % on % in one transaction (inserts wait until it is '
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
        RAISE NOTICE 'migration 001: % on %: chunk %/% indexed', p_index, p_table, built, total;
    END LOOP;

    -- Chunk creation takes SHARE UPDATE EXCLUSIVE on the hypertable: holding
    -- it, no chunk appears between the last chunk index and the root index
    -- (inserts into existing chunks go on).
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

-- Backfill symbol_base/symbol_quote of old rows, removing replayed
-- duplicates on the way (header of this file: dedup rule). Only rows that
-- existed when it started are walked (detail ->> 'boundary_id'): later rows
-- got their parts from the writer or the trigger.
--
-- Set-up, once, in one transaction: the old rows' ids are cut into chunks
-- of cex.backfill_batch_size rows (table cex_backfill_chunks), and the ids
-- of old rows whose (exchange, trade_id) occurs more than once are noted
-- (cex_backfill_dup_ids). Only those rows can be replayed duplicates, so
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
CREATE OR REPLACE PROCEDURE cex_backfill_trade_symbols(p_batch_size integer DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    batch_size integer := coalesce(
        p_batch_size, nullif(current_setting('cex.backfill_batch_size', true), '')::integer, 50000);
    sleep_ms integer := coalesce(nullif(current_setting('cex.backfill_sleep_ms', true), '')::integer, 0);
    progress migration_progress%ROWTYPE;
    boundary bigint;
    start_after bigint;
    c_lo bigint;
    c_hi bigint;
    look_up_all boolean;
    examined bigint;
    unsplittable bigint;
    archived integer;
    archived_later integer;
    violating bigint[];
    survivor record;
    attempt integer;
BEGIN
    IF batch_size < 1 THEN
        RAISE EXCEPTION 'migration 001: backfill batch size must be positive, got %', batch_size;
    END IF;

    -- Set-up, once. A session that comes second waits for the first's
    -- set-up to commit (however long the scans take), then finds it done.
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
        CREATE TABLE IF NOT EXISTS cex_backfill_chunks (
            lo   bigint  PRIMARY KEY,  -- the chunk is lo < id <= hi
            hi   bigint  NOT NULL,
            done boolean NOT NULL DEFAULT false
        );
        CREATE TABLE IF NOT EXISTS cex_backfill_dup_ids (id bigint PRIMARY KEY);
        INSERT INTO cex_backfill_chunks (lo, hi)
        SELECT coalesce(lag(e) OVER (ORDER BY e), start_after), e
        FROM (SELECT id AS e
              FROM (SELECT id, row_number() OVER (ORDER BY id) AS n
                    FROM trades WHERE id > start_after AND id <= boundary) AS s
              WHERE n % batch_size = 0 OR id = boundary) AS ends;
        -- Candidates: every old row of an (exchange, trade_id) seen more than
        -- once. The dedup key also has base/quote, so this is a superset.
        INSERT INTO cex_backfill_dup_ids (id)
        SELECT t.id
        FROM trades t
        JOIN (SELECT exchange, trade_id FROM trades
              WHERE id <= boundary AND trade_id IS NOT NULL
              GROUP BY exchange, trade_id HAVING count(*) > 1) AS k
          ON k.exchange = t.exchange AND k.trade_id = t.trade_id
        WHERE t.id > start_after AND t.id <= boundary
        ON CONFLICT DO NOTHING;
        UPDATE migration_progress p
        SET rows_total = coalesce(p.rows_total, (SELECT count(*) FROM trades
                                                 WHERE symbol_base IS NULL AND id <= boundary)),
            detail = jsonb_build_object('rows_split', 0, 'unsplittable_rows', 0,
                                        'unsplittable_symbols', '{}'::jsonb, 'duplicates_archived', 0)
                     || p.detail
                     || jsonb_build_object('boundary_id', boundary,
                                           'chunks', (SELECT count(*) FROM cex_backfill_chunks),
                                           'duplicate_candidates', (SELECT count(*) FROM cex_backfill_dup_ids)),
            updated_at = now()
        WHERE p.version = '001' AND p.task = 'backfill_symbols'
        RETURNING * INTO progress;
    END IF;
    COMMIT;
    boundary := (progress.detail ->> 'boundary_id')::bigint;

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

    LOOP
        EXIT WHEN progress.done;
        c_lo := NULL;
        BEGIN
            SELECT lo, hi INTO c_lo, c_hi FROM cex_backfill_chunks
            WHERE NOT done ORDER BY lo LIMIT 1 FOR UPDATE SKIP LOCKED;
        EXCEPTION WHEN undefined_table THEN
            NULL;  -- another session finished and dropped it
        END;
        IF c_lo IS NULL THEN
            COMMIT;  -- hold no lock on the chunk table while finishing
            EXIT;
        END IF;

        -- For this chunk's transaction: hash it in memory, and no JIT
        -- (compiling costs more than it saves on one chunk).
        PERFORM set_config('work_mem', '64MB', true), set_config('jit', 'off', true);
        look_up_all := false;
        attempt := 0;
        LOOP
            BEGIN
                -- Each distinct symbol of the chunk's unsplit rows, split once.
                INSERT INTO cex_backfill_symbols (symbol, n, parts)
                SELECT symbol, count(*), cex_split_symbol(symbol)
                FROM trades
                WHERE id > c_lo AND id <= c_hi AND symbol_base IS NULL
                GROUP BY symbol;
                SELECT coalesce(sum(n), 0), coalesce(sum(n) FILTER (WHERE parts IS NULL), 0)
                INTO examined, unsplittable FROM cex_backfill_symbols;

                -- The duplicate candidates (all rows, when a first try met a
                -- row split elsewhere) and the kept row of each trade: the
                -- lowest id among this chunk (hashed) and the rows already split
                -- (other chunks, new writes; found through uq_trades_dedup).
                archived := 0;
                archived_later := 0;
                INSERT INTO cex_backfill_batch (id, ts, exchange, trade_id, parts, keep_id, settled_max)
                WITH src AS MATERIALIZED (
                    SELECT t.id, t."timestamp" AS ts, t.exchange, t.trade_id, m.parts
                    FROM trades t
                    JOIN cex_backfill_symbols m ON m.symbol = t.symbol AND m.parts IS NOT NULL
                    WHERE t.id > c_lo AND t.id <= c_hi AND t.symbol_base IS NULL
                      AND t.trade_id IS NOT NULL
                      AND (look_up_all OR t.id IN (SELECT d.id FROM cex_backfill_dup_ids d
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

                IF FOUND THEN
                    -- Duplicates in this chunk: archive, then delete.
                    WITH gone AS (
                        DELETE FROM trades t
                        USING cex_backfill_batch b
                        WHERE t.id = b.id AND t."timestamp" = b.ts AND b.keep_id < b.id
                          AND t.id > c_lo AND t.id <= c_hi
                        RETURNING t.*, b.parts AS split, b.keep_id AS kept
                    )
                    INSERT INTO trades_duplicates_removed (
                        id, "timestamp", exchange, symbol, symbol_base, symbol_quote, price, quantity,
                        side, trade_id, created_at, quote_quantity, is_buyer, is_maker, kept_id)
                    SELECT id, "timestamp", exchange, symbol, split[1], split[2], price, quantity,
                           side, trade_id, created_at, quote_quantity, is_buyer, is_maker, kept
                    FROM gone;
                    GET DIAGNOSTICS archived = ROW_COUNT;

                    -- Later rows (split elsewhere, higher ids) duplicating a kept row.
                    IF EXISTS (SELECT 1 FROM cex_backfill_batch WHERE keep_id = id AND settled_max > id) THEN
                        WITH gone AS (
                            DELETE FROM trades t
                            USING cex_backfill_batch b
                            WHERE b.keep_id = b.id AND b.settled_max > b.id
                              AND t.exchange = b.exchange AND t.symbol_base = b.parts[1]
                              AND t.symbol_quote = b.parts[2] AND t.trade_id = b.trade_id AND t.id > b.id
                            RETURNING t.*, b.id AS kept
                        )
                        INSERT INTO trades_duplicates_removed (
                            id, "timestamp", exchange, symbol, symbol_base, symbol_quote, price, quantity,
                            side, trade_id, created_at, quote_quantity, is_buyer, is_maker, kept_id)
                        SELECT id, "timestamp", exchange, symbol, symbol_base, symbol_quote, price, quantity,
                               side, trade_id, created_at, quote_quantity, is_buyer, is_maker, kept
                        FROM gone;
                        GET DIAGNOSTICS archived_later = ROW_COUNT;
                    END IF;
                END IF;

                -- Split every remaining unsplit row of the chunk.
                violating := '{}';
                BEGIN
                    UPDATE trades t
                    SET symbol_base = m.parts[1], symbol_quote = m.parts[2]
                    FROM cex_backfill_symbols m
                    WHERE t.id > c_lo AND t.id <= c_hi AND t.symbol_base IS NULL
                      AND m.symbol = t.symbol AND m.parts IS NOT NULL;
                EXCEPTION WHEN check_violation THEN
                    -- An old row breaks a constraint the foreground part added NOT
                    -- VALID (say side 'BUY'), and PostgreSQL checks those on UPDATE.
                    -- Split this chunk row by row; such rows stay as they were.
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

                UPDATE cex_backfill_chunks SET done = true WHERE lo = c_lo;
                UPDATE migration_progress p
                SET position = coalesce((SELECT min(lo) FROM cex_backfill_chunks WHERE NOT done),
                                        boundary)::text,
                    rows_done = p.rows_done + examined,
                    updated_at = now(),
                    detail = p.detail || jsonb_build_object(
                        'rows_split', (p.detail ->> 'rows_split')::bigint
                                      + examined - unsplittable - archived - cardinality(violating),
                        'unsplittable_rows', (p.detail ->> 'unsplittable_rows')::bigint + unsplittable,
                        -- rows left unsplit because they break a trades constraint
                        'rows_violating_constraints',
                            coalesce((p.detail ->> 'rows_violating_constraints')::bigint, 0)
                            + cardinality(violating),
                        'violating_ids', (
                            SELECT to_jsonb(coalesce(array_agg(v ORDER BY v), '{}'))
                            FROM (SELECT v FROM (SELECT jsonb_array_elements_text(
                                                     coalesce(p.detail -> 'violating_ids', '[]'))::bigint
                                                 UNION ALL SELECT unnest(violating)) AS x(v)
                                  ORDER BY v LIMIT 100) AS first_ids),
                        'duplicates_archived',
                            (p.detail ->> 'duplicates_archived')::bigint + archived + archived_later,
                        -- chunks done again after meeting a row split elsewhere meanwhile
                        'chunks_redone', coalesce((p.detail ->> 'chunks_redone')::bigint, 0)
                                         + least(attempt, 1),
                        -- the 100 most frequent unsplittable symbols with their row counts
                        'unsplittable_symbols', (
                            SELECT coalesce(jsonb_object_agg(sym, n), '{}'::jsonb)
                            FROM (SELECT sym, sum(n)::bigint AS n
                                  FROM (SELECT key AS sym, value::bigint AS n
                                        FROM jsonb_each_text(p.detail -> 'unsplittable_symbols')
                                        UNION ALL
                                        SELECT symbol, n FROM cex_backfill_symbols
                                        WHERE parts IS NULL) AS u
                                  GROUP BY sym ORDER BY sum(n) DESC, sym LIMIT 100) AS top))
                WHERE p.version = '001' AND p.task = 'backfill_symbols'
                RETURNING * INTO progress;
                EXIT;
            EXCEPTION WHEN unique_violation OR deadlock_detected THEN
                -- A row of this chunk's trades was split elsewhere meanwhile (a
                -- writer, another session): the chunk is rolled back (this block
                -- is a subtransaction); do it again looking every row up.
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
        COMMIT;
        RAISE NOTICE 'migration 001: backfill_symbols: %/% rows, ids up to % done; % unsplittable, % duplicates archived',
                     progress.rows_done, progress.rows_total, progress.position,
                     progress.detail ->> 'unsplittable_rows', progress.detail ->> 'duplicates_archived';
        IF sleep_ms > 0 THEN
            PERFORM pg_sleep(sleep_ms / 1000.0);
        END IF;
    END LOOP;

    -- Nothing left to claim. Finish if every chunk is done; a chunk still in
    -- another session's hands is finished by that session.
    SELECT * INTO progress FROM migration_progress
    WHERE version = '001' AND task = 'backfill_symbols' FOR UPDATE;
    IF NOT progress.done THEN
        IF to_regclass('cex_backfill_chunks') IS NOT NULL
           AND EXISTS (SELECT 1 FROM cex_backfill_chunks WHERE NOT done) THEN
            COMMIT;
            RAISE NOTICE 'migration 001: backfill_symbols: no chunk left for this session; '
                         'another session is finishing the last ones';
            RETURN;
        END IF;
        -- Rows written since the set-up (ids above the boundary, split by their
        -- writer) that replay an old trade, at another time than the old row
        -- (at the same time, uq_trades_dedup made the chunk look them up):
        -- archived, the old row stays.
        WITH later AS (
            SELECT n.id, n."timestamp" AS ts, min(o.id) AS kept
            FROM trades n
            JOIN trades o
              ON o.exchange = n.exchange AND o.symbol_base = n.symbol_base
             AND o.symbol_quote = n.symbol_quote AND o.trade_id = n.trade_id
             AND o.trade_id IS NOT NULL AND o.id <= boundary
            WHERE n.id > boundary AND n.trade_id IS NOT NULL
            GROUP BY n.id, n."timestamp"
        ), gone AS (
            DELETE FROM trades t USING later l
            WHERE t.id = l.id AND t."timestamp" = l.ts
            RETURNING t.*, l.kept
        )
        INSERT INTO trades_duplicates_removed (
            id, "timestamp", exchange, symbol, symbol_base, symbol_quote, price, quantity,
            side, trade_id, created_at, quote_quantity, is_buyer, is_maker, kept_id)
        SELECT id, "timestamp", exchange, symbol, symbol_base, symbol_quote, price, quantity,
               side, trade_id, created_at, quote_quantity, is_buyer, is_maker, kept
        FROM gone;
        GET DIAGNOSTICS archived_later = ROW_COUNT;
        DROP TABLE IF EXISTS cex_backfill_chunks, cex_backfill_dup_ids;
        UPDATE migration_progress p
        SET done = true, position = coalesce(boundary::text, p.position), updated_at = now(),
            detail = p.detail || jsonb_build_object(
                'duplicates_archived', (p.detail ->> 'duplicates_archived')::bigint + archived_later)
        WHERE p.version = '001' AND p.task = 'backfill_symbols'
        RETURNING * INTO progress;
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
    ELSE
        COMMIT;
    END IF;
    RAISE NOTICE 'migration 001: backfill_symbols: done (% rows); % unsplittable rows kept with '
                 'NULL symbol_base/symbol_quote; % duplicates in trades_duplicates_removed',
                 progress.rows_done, progress.detail ->> 'unsplittable_rows',
                 progress.detail ->> 'duplicates_archived';
END
$$;

-- VALIDATE the constraints the foreground part added NOT VALID: a scan that
-- holds SHARE UPDATE EXCLUSIVE, which inserts do not wait for. A constraint
-- that old rows violate stays NOT VALID (new rows are still checked), with a
-- WARNING and a note in migration_progress ('001', 'validate_constraints'):
-- the rows are not changed behind the operator's back.
CREATE OR REPLACE PROCEDURE cex_validate_trade_constraints()
LANGUAGE plpgsql AS $$
DECLARE
    c record;
    outcome text;
BEGIN
    INSERT INTO migration_progress (version, task, rows_done, rows_total)
    VALUES ('001', 'validate_constraints', 0, 5)
    ON CONFLICT (version, task) DO NOTHING;
    COMMIT;
    FOR c IN
        SELECT conname FROM pg_constraint
        WHERE conrelid = 'trades'::regclass AND contype = 'c' AND NOT convalidated
          AND conname IN ('trades_side_check', 'trades_symbol_parts_check', 'trades_price_positive',
                          'trades_quantity_positive', 'trades_quote_quantity_not_negative')
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
CREATE OR REPLACE PROCEDURE cex_refresh_trade_aggregates()
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT cex_is_hypertable('trades') THEN
        RAISE NOTICE 'migration 001: trades_ohlcv_1m/1h are plain views on a plain table; nothing to refresh';
        RETURN;
    END IF;
    -- refresh_continuous_aggregate refuses a transaction block; a nested CALL
    -- from a procedure CALLed outside one is allowed. It commits batch by
    -- batch; TimescaleDB's default batch of 10 buckets makes a history of
    -- minute buckets crawl, so from 2.22 on (the `options` argument) a batch
    -- is a day of minutes / a week of hours.
    IF cex_timescaledb_version() >= 222 THEN
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

-- migrate:step dedup_index transaction:false
-- The index the writers' ON CONFLICT (exchange, symbol_base, symbol_quote,
-- trade_id, "timestamp") WHERE trade_id IS NOT NULL relies on. Built before
-- the fill trigger exists, so every row it meets has NULL base/quote except
-- new writes, and no old duplicate can make the build fail. On a hypertable
-- it must include the time column (uniqueness is enforced per chunk).
--
-- TimescaleDB errors on any CREATE INDEX CONCURRENTLY that names a
-- hypertable, even with IF NOT EXISTS on an existing index, and the file
-- cannot branch around a statement. So on a hypertable, the procedure builds
-- the index per chunk, and for the CONCURRENTLY statement only, a session-
-- local empty temporary table `trades` shadows the hypertable (pg_temp comes
-- first in name lookup), is indexed instead, and is dropped right after. On a
-- plain table there is no temporary table and the statement builds the
-- index without blocking writes.
CALL cex_create_hypertable_index('trades', 'uq_trades_dedup', true,
    '(exchange, symbol_base, symbol_quote, trade_id, "timestamp") WHERE trade_id IS NOT NULL');
-- migrate:session
DO $$
BEGIN
    IF cex_is_hypertable('trades') THEN
        CREATE TEMP TABLE IF NOT EXISTS trades (LIKE trades);
    END IF;
END
$$;
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS uq_trades_dedup
    ON trades (exchange, symbol_base, symbol_quote, trade_id, "timestamp")
    WHERE trade_id IS NOT NULL;
DO $$
BEGIN
    IF to_regclass('pg_temp.trades') IS NOT NULL THEN
        DROP TABLE pg_temp.trades;
    END IF;
END
$$;

-- migrate:step write_path
-- Constraints first (they take ACCESS EXCLUSIVE for a moment, covering the
-- trigger's lock too), NOT VALID: new rows are checked at once, old rows are
-- validated in the background. Then the trigger for legacy writers.
DO $$
DECLARE
    missing text;
BEGIN
    SELECT string_agg(format('ADD CONSTRAINT %I %s NOT VALID', v.name, v.definition), ', ')
    INTO missing
    FROM (VALUES
        ('trades_side_check',            $c$CHECK (side IN ('buy', 'sell'))$c$),
        ('trades_symbol_parts_check',    $c$CHECK ((symbol_base IS NULL) = (symbol_quote IS NULL))$c$),
        ('trades_price_positive',        $c$CHECK (price > 0)$c$),
        ('trades_quantity_positive',     $c$CHECK (quantity > 0)$c$),
        ('trades_quote_quantity_not_negative', $c$CHECK (quote_quantity >= 0)$c$)
    ) AS v(name, definition)
    WHERE NOT EXISTS (SELECT 1 FROM pg_constraint
                      WHERE conrelid = 'trades'::regclass AND conname = v.name);
    IF missing IS NOT NULL THEN
        EXECUTE 'ALTER TABLE trades ' || missing;
    END IF;

    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = 'trades'::regclass AND tgname = 'trades_fill_symbol_parts') THEN
        CREATE TRIGGER trades_fill_symbol_parts
            BEFORE INSERT ON trades
            FOR EACH ROW
            WHEN (NEW.symbol_base IS NULL OR NEW.symbol_quote IS NULL OR NEW.symbol IS NULL)
            EXECUTE FUNCTION cex_trades_fill_symbol_parts();
    END IF;
END
$$;

-- migrate:step aggregates
-- OHLCV per exchange and pair at 1 minute and 1 hour. With TimescaleDB:
-- continuous aggregates, created WITH NO DATA (allowed in a transaction
-- block; WITH DATA is not) and filled by the background step; real-time
-- (materialized_only = false) so they answer like the plain views; the 1 hour
-- one is built on the 1 minute one (hierarchical, TimescaleDB 2.9+). On plain
-- PostgreSQL: views with the same names, columns and answers. open/close are
-- the first/last price by time (ties: first(), last() pick any; the plain
-- views pick the lowest/highest id). notional = sum(price * quantity) makes
-- the hourly vwap exact from the minute rows.
DO $$
BEGIN
    IF cex_is_hypertable('trades') THEN
        IF to_regclass('trades_ohlcv_1m') IS NULL THEN
            CREATE MATERIALIZED VIEW trades_ohlcv_1m
            WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
            SELECT time_bucket(INTERVAL '1 minute', "timestamp") AS bucket,
                   exchange, symbol_base, symbol_quote,
                   first(price, "timestamp") AS open,
                   max(price) AS high,
                   min(price) AS low,
                   last(price, "timestamp") AS close,
                   sum(quantity) AS volume,
                   sum(coalesce(quote_quantity, price * quantity)) AS quote_volume,
                   sum(price * quantity) AS notional,
                   count(*) AS trade_count,
                   coalesce(sum(quantity) FILTER (WHERE side = 'buy'), 0) AS buy_volume,
                   coalesce(sum(quantity) FILTER (WHERE side = 'sell'), 0) AS sell_volume,
                   sum(price * quantity) / nullif(sum(quantity), 0) AS vwap
            FROM trades
            WHERE symbol_base IS NOT NULL
            GROUP BY 1, exchange, symbol_base, symbol_quote
            WITH NO DATA;
        END IF;
        IF to_regclass('trades_ohlcv_1h') IS NULL AND cex_timescaledb_version() >= 209 THEN
            CREATE MATERIALIZED VIEW trades_ohlcv_1h
            WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
            SELECT time_bucket(INTERVAL '1 hour', bucket) AS bucket,
                   exchange, symbol_base, symbol_quote,
                   first(open, bucket) AS open,
                   max(high) AS high,
                   min(low) AS low,
                   last(close, bucket) AS close,
                   sum(volume) AS volume,
                   sum(quote_volume) AS quote_volume,
                   sum(notional) AS notional,
                   sum(trade_count)::bigint AS trade_count,
                   sum(buy_volume) AS buy_volume,
                   sum(sell_volume) AS sell_volume,
                   sum(notional) / nullif(sum(volume), 0) AS vwap
            FROM trades_ohlcv_1m
            GROUP BY 1, exchange, symbol_base, symbol_quote
            WITH NO DATA;
        ELSIF to_regclass('trades_ohlcv_1h') IS NULL THEN
            CREATE MATERIALIZED VIEW trades_ohlcv_1h
            WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
            SELECT time_bucket(INTERVAL '1 hour', "timestamp") AS bucket,
                   exchange, symbol_base, symbol_quote,
                   first(price, "timestamp") AS open,
                   max(price) AS high,
                   min(price) AS low,
                   last(price, "timestamp") AS close,
                   sum(quantity) AS volume,
                   sum(coalesce(quote_quantity, price * quantity)) AS quote_volume,
                   sum(price * quantity) AS notional,
                   count(*) AS trade_count,
                   coalesce(sum(quantity) FILTER (WHERE side = 'buy'), 0) AS buy_volume,
                   coalesce(sum(quantity) FILTER (WHERE side = 'sell'), 0) AS sell_volume,
                   sum(price * quantity) / nullif(sum(quantity), 0) AS vwap
            FROM trades
            WHERE symbol_base IS NOT NULL
            GROUP BY 1, exchange, symbol_base, symbol_quote
            WITH NO DATA;
        END IF;
        -- Keep the recent past materialised; older changes (late trades, the
        -- backfill) are picked up by the background refresh step.
        PERFORM add_continuous_aggregate_policy('trades_ohlcv_1m',
            start_offset => INTERVAL '3 hours', end_offset => INTERVAL '1 minute',
            schedule_interval => INTERVAL '1 minute', if_not_exists => true);
        PERFORM add_continuous_aggregate_policy('trades_ohlcv_1h',
            start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour',
            schedule_interval => INTERVAL '30 minutes', if_not_exists => true);
    ELSE
        -- date_bin with time_bucket's default origin (2000-01-03, a Monday) gives the same buckets.
        CREATE OR REPLACE VIEW trades_ohlcv_1m AS
        SELECT date_bin(INTERVAL '1 minute', "timestamp", TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
               exchange, symbol_base, symbol_quote,
               (array_agg(price ORDER BY "timestamp", id))[1] AS open,
               max(price) AS high,
               min(price) AS low,
               (array_agg(price ORDER BY "timestamp" DESC, id DESC))[1] AS close,
               sum(quantity) AS volume,
               sum(coalesce(quote_quantity, price * quantity)) AS quote_volume,
               sum(price * quantity) AS notional,
               count(*) AS trade_count,
               coalesce(sum(quantity) FILTER (WHERE side = 'buy'), 0) AS buy_volume,
               coalesce(sum(quantity) FILTER (WHERE side = 'sell'), 0) AS sell_volume,
               sum(price * quantity) / nullif(sum(quantity), 0) AS vwap
        FROM trades
        WHERE symbol_base IS NOT NULL
        GROUP BY 1, exchange, symbol_base, symbol_quote;

        CREATE OR REPLACE VIEW trades_ohlcv_1h AS
        SELECT date_bin(INTERVAL '1 hour', "timestamp", TIMESTAMPTZ '2000-01-03 00:00:00+00') AS bucket,
               exchange, symbol_base, symbol_quote,
               (array_agg(price ORDER BY "timestamp", id))[1] AS open,
               max(price) AS high,
               min(price) AS low,
               (array_agg(price ORDER BY "timestamp" DESC, id DESC))[1] AS close,
               sum(quantity) AS volume,
               sum(coalesce(quote_quantity, price * quantity)) AS quote_volume,
               sum(price * quantity) AS notional,
               count(*) AS trade_count,
               coalesce(sum(quantity) FILTER (WHERE side = 'buy'), 0) AS buy_volume,
               coalesce(sum(quantity) FILTER (WHERE side = 'sell'), 0) AS sell_volume,
               sum(price * quantity) / nullif(sum(quantity), 0) AS vwap
        FROM trades
        WHERE symbol_base IS NOT NULL
        GROUP BY 1, exchange, symbol_base, symbol_quote;
    END IF;
END
$$;

-- migrate:step grants
-- cex.app_role writes, cex.readonly_role reads (docs/migration-files.md,
-- settings). Missing roles are created NOLOGIN when the current user may
-- create roles; otherwise that role's grants are skipped with a NOTICE.
DO $$
DECLARE
    app CONSTANT text := coalesce(nullif(current_setting('cex.app_role', true), ''), 'cex_app');
    ro  CONSTANT text := coalesce(nullif(current_setting('cex.readonly_role', true), ''), 'cex_readonly');
    may_create boolean;
    r text;
BEGIN
    SELECT rolsuper OR rolcreaterole INTO may_create FROM pg_roles WHERE rolname = current_user;
    FOREACH r IN ARRAY ARRAY[app, ro] LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r);
        IF may_create THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
                RAISE NOTICE 'migration 001: created role % (NOLOGIN)', r;
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created meanwhile by a migration of another database
            END;
        ELSE
            RAISE NOTICE 'migration 001: role % does not exist and % may not create roles; its grants '
                         'are skipped (create the role, then grant as docs/schema.md shows)', r, current_user;
        END IF;
    END LOOP;

    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = app) THEN
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON trades, book_ticker_snapshots TO %I', app);
        EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %s, %s TO %I',
                       pg_get_serial_sequence('trades', 'id'),
                       pg_get_serial_sequence('book_ticker_snapshots', 'id'), app);
        EXECUTE format('GRANT SELECT ON trades_duplicates_removed, trades_ohlcv_1m, trades_ohlcv_1h TO %I', app);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = ro) THEN
        EXECUTE format('GRANT SELECT ON trades, book_ticker_snapshots, trades_duplicates_removed, '
                       'trades_ohlcv_1m, trades_ohlcv_1h TO %I', ro);
    END IF;
END
$$;

-- migrate:step backfill transaction:false background parallel
-- Every session of the step CALLs it; they share out the chunks.
CALL cex_backfill_trade_symbols();

-- migrate:step validate_constraints transaction:false background
ANALYZE trades;
CALL cex_validate_trade_constraints();

-- migrate:step query_indexes transaction:false background
-- Over the backfilled columns, so built after the backfill (once, and without
-- slowing its updates). Same hypertable/plain arrangement as dedup_index.
-- A build keeps at most cex.parallel_sessions processes busy (the leader and
-- its parallel workers), as the backfill does, so the collectors keep the
-- server's other cores; PostgreSQL's default is a leader and two workers.
-- migrate:session
SELECT set_config('max_parallel_maintenance_workers', least(
    current_setting('max_parallel_maintenance_workers')::integer,
    greatest(coalesce(nullif(current_setting('cex.parallel_sessions', true), ''), '2')::integer - 1, 0)
)::text, false);
CALL cex_create_hypertable_index('trades', 'idx_trades_pair_time', false,
    '(symbol_base, symbol_quote, "timestamp" DESC)');
CALL cex_create_hypertable_index('trades', 'idx_trades_exchange_time', false,
    '(exchange, "timestamp" DESC)');
-- migrate:session
DO $$
BEGIN
    IF cex_is_hypertable('trades') THEN
        CREATE TEMP TABLE IF NOT EXISTS trades (LIKE trades);
    END IF;
END
$$;
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_trades_pair_time
    ON trades (symbol_base, symbol_quote, "timestamp" DESC);
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_trades_exchange_time
    ON trades (exchange, "timestamp" DESC);
DO $$
BEGIN
    IF to_regclass('pg_temp.trades') IS NOT NULL THEN
        DROP TABLE pg_temp.trades;
    END IF;
END
$$;
RESET max_parallel_maintenance_workers;

-- migrate:step refresh_aggregates transaction:false background
CALL cex_refresh_trade_aggregates();

-- migrate:psql-only
SELECT migration_record_manual('001', 'add_trade_collection_support', 'trade_collection');
