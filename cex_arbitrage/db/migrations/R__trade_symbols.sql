-- Routine trade_symbols (repeatable): the symbol split rules (the header of
-- 001_add_trade_collection_support.sql lists them) and the trigger function
-- that fills symbol_base/symbol_quote for writers that send `symbol` only.
--
-- A routine is code that is replaced, not migrated: the runner runs this
-- whole file again, in one transaction with its history row
-- (migration_history.version 'R__trade_symbols'), whenever its checksum differs
-- from the recorded one, before any pending step that may call it. Edit it
-- freely; the next run or engine boot installs the new bodies
-- (docs/migration-files.md, "Routines"). By hand: `psql -v ON_ERROR_STOP=1
-- -f` after 000 and before 001 (README, "Manual SQL execution").
--
-- migrate:feature trade_collection
-- migrate:description Symbol split rules and the trigger that fills base/quote for legacy writers

-- The split rules (header of 001_add_trade_collection_support.sql,
-- docs/schema.md): {base, quote}, or NULL when no rule applies. IMMUTABLE:
-- the same symbol always splits the same way. A change of rules here changes
-- how new rows split only; re-splitting old rows takes a migration.
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

-- migrate:psql-only
SELECT migration_record_manual('R__trade_symbols', 'trade_symbols', 'trade_collection');
