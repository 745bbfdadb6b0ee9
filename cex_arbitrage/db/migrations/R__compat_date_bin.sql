-- Routine compat_date_bin (repeatable): date_bin(interval, timestamptz, timestamptz)
-- on PostgreSQL 13, which lacks it (it came in 14).
--
-- 001's plain-PostgreSQL OHLCV views bucket trades with date_bin; 001 is
-- released and pinned, so on 13 the function it names is supplied here, in
-- schema public, where the view's unqualified call finds it. On 14 and newer
-- this file changes nothing: pg_catalog.date_bin exists and is always found
-- first. Same results as the built-in for what we use (a positive stride of
-- days, hours, minutes or seconds, no months): origin + whole strides, in
-- exact microseconds (docs/postgresql-versions.md).
--
-- Runs after 000 and before any pending step, in name order before the
-- R__trade_* files (docs/migration-files.md, "Routines"). By hand: `psql -v
-- ON_ERROR_STOP=1 -f` after 000 and before 001 (README, "Manual SQL execution").
--
-- migrate:description date_bin for PostgreSQL 13 (built in from 14 on): 001's OHLCV views need it

DO $$
BEGIN
    IF to_regprocedure('pg_catalog.date_bin(interval, timestamptz, timestamptz)') IS NOT NULL THEN
        RETURN;  -- PostgreSQL 14+: the built-in is there and wins
    END IF;
    CREATE OR REPLACE FUNCTION public.date_bin(stride interval, source timestamptz,
                                               origin timestamptz)
    RETURNS timestamptz
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $body$
    DECLARE
        diff interval := source - origin;  -- days and time, never months
        stride_us bigint;
        offset_us bigint;
    BEGIN
        IF extract(month FROM stride) <> 0 OR extract(year FROM stride) <> 0 THEN
            RAISE EXCEPTION 'timestamps cannot be binned into intervals containing months or years'
                USING ERRCODE = 'feature_not_supported';
        END IF;
        -- Whole microseconds, a day counted as 86400 s as date_bin does. The days
        -- and the sub-day rest are converted apart: no float rounding at any date.
        stride_us := extract(day FROM stride)::bigint * 86400000000
                     + round(extract(epoch FROM stride - make_interval(
                           days => extract(day FROM stride)::int)) * 1000000)::bigint;
        offset_us := extract(day FROM diff)::bigint * 86400000000
                     + round(extract(epoch FROM diff - make_interval(
                           days => extract(day FROM diff)::int)) * 1000000)::bigint;
        IF stride_us <= 0 THEN
            RAISE EXCEPTION 'stride must be greater than zero'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        -- Floor division, also for a source before the origin.
        RETURN origin + (offset_us - mod(mod(offset_us, stride_us) + stride_us, stride_us))
                        * INTERVAL '1 microsecond';
    END
    $body$;
END
$$;

-- migrate:psql-only
SELECT migration_record_manual('R__compat_date_bin', 'compat_date_bin');
