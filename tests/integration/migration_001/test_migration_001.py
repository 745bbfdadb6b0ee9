"""Migration 001 on both starting points: an empty database and a legacy one.

Plain PostgreSQL tests run on the test server (CEX_TEST_DSN / embedded); the
TimescaleDB variants need CEX_TEST_TIMESCALE_DSN and are skipped visibly
without it. Each test gets databases of its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from cex_arbitrage.config import MigrationSettings
from cex_arbitrage.db.migrations.run_migrations import MigrationRunner
from cex_arbitrage.db.migrator.source import DirectorySource
from cex_arbitrage.db.structs import DatabaseConfig
from tests.support.cli import run_cli_process
from tests.support.databases import fresh_database, pg_env, timescale_database
from tests.support.legacy_data import (
    BACKGROUND_STEPS,
    FOREGROUND_STEPS,
    MIGRATION_001,
    PSQL_ORDER_001,
    SPLIT_CASES,
    LegacyDataset,
    assert_legacy_outcome,
    dump_difference,
    make_legacy_dataset,
    normalise_dump,
    prepare_legacy,
    reference_split,
    run_psql,
    run_psql_000_and_routines,
    run_steps_psql,
    schema_dump,
    timescale_summary,
    trades_by_id,
)

_DATASETS: dict[int, LegacyDataset] = {}


def dataset(n: int) -> LegacyDataset:
    if n not in _DATASETS:
        _DATASETS[n] = make_legacy_dataset(n)
    return _DATASETS[n]


@pytest.fixture
def migrations_dir(tmp_path: Path) -> Path:
    """000 and 001 only, so these tests do not depend on later migrations."""
    directory = tmp_path / "migrations"
    directory.mkdir()
    for src in PSQL_ORDER_001:
        shutil.copy(src, directory / src.name)
    return directory


@pytest.fixture
async def second_db(admin_config: DatabaseConfig) -> AsyncIterator[DatabaseConfig]:
    async for config in fresh_database(admin_config):
        yield config


@pytest.fixture
async def second_ts_db(timescale_admin: DatabaseConfig) -> AsyncIterator[DatabaseConfig]:
    async for config in timescale_database(timescale_admin):
        yield config


async def connect(config: DatabaseConfig) -> asyncpg.Connection:
    return await asyncpg.connect(**config.connect_kwargs())


def runner(
    config: DatabaseConfig,
    migrations_dir: Path,
    messages: list[str] | None = None,
    settings: MigrationSettings | None = None,
) -> MigrationRunner:
    return MigrationRunner(
        config,
        source=DirectorySource(migrations_dir),
        settings=settings or MigrationSettings(backfill_batch_size=20_000),
        say=(messages.append if messages is not None else (lambda _m: None)),
    )


async def apply_with_runner(
    config: DatabaseConfig, migrations_dir: Path, messages: list[str] | None = None
) -> None:
    r = runner(config, migrations_dir, messages)
    assert await r.run_migrations(), r.last_error


async def apply_with_psql(config: DatabaseConfig, options: str | None = None) -> str:
    """psql -f 000, then 001, as an operator does; returns 001's stderr (NOTICEs)."""
    for path in PSQL_ORDER_001:
        result = await run_psql(config, file=path, options=options)
        assert result.returncode == 0, result.stderr
    return result.stderr


async def normalised_schema(config: DatabaseConfig) -> list[str]:
    return normalise_dump(await schema_dump(config))


async def legacy_after_foreground(config: DatabaseConfig, n: int = 20_000) -> LegacyDataset:
    """A legacy database of n trades with 000 and 001's foreground part run by psql:
    the state the background part starts from."""
    data = dataset(n)
    await prepare_legacy(config, data)
    await run_psql_000_and_routines(config)
    result = await run_steps_psql(config, FOREGROUND_STEPS)
    assert result.returncode == 0, result.stderr
    return data


async def start_backfill_psql(
    config: DatabaseConfig, *, batch_size: int, sleep_ms: int
) -> asyncio.subprocess.Process:
    """psql CALLing the backfill in small, paced batches, for a test to act on midway."""
    options = f"-c cex.backfill_batch_size={batch_size} -c cex.backfill_sleep_ms={sleep_ms}"
    return await asyncio.create_subprocess_exec(
        "psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", "CALL cex_migration.backfill_trade_symbols()",
        env=pg_env(config, {"PGOPTIONS": options}),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


# ---------------------------------------------------------------------------
# The split rules


async def test_split_function_follows_the_documented_rules(db: DatabaseConfig) -> None:
    await apply_with_psql(db)
    conn = await connect(db)
    try:
        for symbol, expected in SPLIT_CASES.items():
            assert reference_split(symbol) == expected, symbol
            got = await conn.fetchval("SELECT cex_split_symbol($1)", symbol)
            assert (tuple(got) if got else None) == expected, symbol
        # every spelling in the generated data too
        for symbol in sorted({str(r[3]) for r in dataset(20_000).trades}):
            got = await conn.fetchval("SELECT cex_split_symbol($1)", symbol)
            assert (tuple(got) if got else None) == reference_split(symbol), symbol
        assert await conn.fetchval("SELECT cex_split_symbol(NULL)") is None
        volatility = await conn.fetchval(
            "SELECT provolatile::text FROM pg_proc WHERE proname = 'cex_split_symbol'"
        )
        assert volatility == "i"
    finally:
        await conn.close()


# ---------------------------------------------------------------------------
# Plain PostgreSQL


async def test_legacy_and_empty_databases_reach_the_same_schema(
    db: DatabaseConfig, second_db: DatabaseConfig, migrations_dir: Path
) -> None:
    await prepare_legacy(db, dataset(20_000))
    await apply_with_runner(db, migrations_dir)
    await apply_with_runner(second_db, migrations_dir)  # empty database
    legacy, empty = await normalised_schema(db), await normalised_schema(second_db)
    assert dump_difference(legacy, empty) == ""
    assert any("uq_trades_dedup" in s for s in legacy)


async def test_legacy_rows_are_split_deduplicated_and_all_accounted_for(
    db: DatabaseConfig, migrations_dir: Path
) -> None:
    data = dataset(100_000)
    await prepare_legacy(db, data)
    messages: list[str] = []
    await apply_with_runner(db, migrations_dir, messages)
    conn = await connect(db)
    try:
        await assert_legacy_outcome(conn, data)
        assert (
            await conn.fetchval("SELECT state FROM migration_history WHERE version = '001'")
            == "applied"
        )
        invalid = await conn.fetch(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'trades'::regclass "
            "AND NOT convalidated"
        )
        assert invalid == []
    finally:
        await conn.close()
    text = "\n".join(messages)
    assert f"{data.unsplittable_count()} rows have a symbol no rule splits" in text
    assert "backfill_symbols" in text


async def test_running_again_changes_nothing(db: DatabaseConfig, migrations_dir: Path) -> None:
    data = dataset(20_000)
    await prepare_legacy(db, data)
    await apply_with_runner(db, migrations_dir)
    conn = await connect(db)
    try:
        before_rows = await conn.fetchval(
            "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM trades t"
        )
        before_archive = await conn.fetchval("SELECT count(*) FROM trades_duplicates_removed")
        before_history = await conn.fetchrow(
            "SELECT * FROM migration_history WHERE version = '001'"
        )
        before_schema = await normalised_schema(db)

        messages: list[str] = []
        await apply_with_runner(db, migrations_dir, messages)
        assert any("nothing to apply" in m for m in messages)
        # and the file by hand, all of it again: every statement is re-runnable
        result = await run_psql(db, file=MIGRATION_001)
        assert result.returncode == 0, result.stderr

        assert await normalised_schema(db) == before_schema
        after_rows = await conn.fetchval(
            "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM trades t"
        )
        assert after_rows == before_rows
        assert (
            await conn.fetchval("SELECT count(*) FROM trades_duplicates_removed") == before_archive
        )
        after_history = await conn.fetchrow("SELECT * FROM migration_history WHERE version = '001'")
        assert after_history["applied_at"] == before_history["applied_at"]
        assert after_history["state"] == "applied"
    finally:
        await conn.close()


async def test_psql_file_gives_the_same_schema_as_the_runner(
    db: DatabaseConfig, second_db: DatabaseConfig, migrations_dir: Path
) -> None:
    data = dataset(20_000)
    await prepare_legacy(db, data)
    await prepare_legacy(second_db, data)
    await apply_with_runner(db, migrations_dir)
    notices = await apply_with_psql(second_db)
    assert "rows have a symbol no rule splits" in notices
    assert dump_difference(await normalised_schema(db), await normalised_schema(second_db)) == ""
    conn = await connect(second_db)
    try:
        await assert_legacy_outcome(conn, data)
        # the psql-only tail recorded it, so the runner sees it applied
        assert await conn.fetchval("SELECT migration_is_applied('001')")
    finally:
        await conn.close()
    messages: list[str] = []
    await apply_with_runner(second_db, migrations_dir, messages)
    assert not any("step" in m and "starts" in m for m in messages)


async def test_backfill_resumes_after_its_session_is_killed(db: DatabaseConfig) -> None:
    data = await legacy_after_foreground(db)

    # psql CALLs the backfill with small batches and a pause; we SIGKILL it midway.
    process = await start_backfill_psql(db, batch_size=500, sleep_ms=30)
    conn = await connect(db)
    try:
        position = None
        for _ in range(400):
            await asyncio.sleep(0.05)
            position = await conn.fetchval(
                "SELECT position::bigint FROM migration_progress WHERE task = 'backfill_symbols'"
            )
            if position is not None and position >= 5_000:
                break
        assert position is not None and position >= 5_000, "the backfill did not get going"
        process.send_signal(signal.SIGKILL)
        await process.communicate()
        # the server ends that session when it next writes to the dead client
        # (a NOTICE after a batch's commit); on a loaded machine that can take
        # seconds, and until then it commits more batches: wait for it to go.
        busy = None
        for _ in range(1200):
            busy = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CALL cex_%backfill%' "
                "AND pid <> pg_backend_pid()"
            )
            if not busy:
                break
            await asyncio.sleep(0.05)
        assert not busy, "the killed client's backfill session is still running after 60 s"
        stopped = await conn.fetchrow(
            "SELECT position::bigint AS position, rows_done, done FROM migration_progress "
            "WHERE task = 'backfill_symbols'"
        )
        assert not stopped["done"] and stopped["position"] < max(data.by_id)
        # checkpoint and data agree: nothing after the checkpoint was split
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM trades "
                "WHERE id > $1 AND id <= $2 AND symbol_base IS NOT NULL",
                stopped["position"],
                max(data.by_id),
            )
            == 0
        )

        result = await run_steps_psql(db, BACKGROUND_STEPS)
        assert result.returncode == 0, result.stderr
        await assert_legacy_outcome(conn, data)
        # once done, a further CALL is a no-op
        result = await run_psql(db, sql="CALL cex_migration.backfill_trade_symbols()")
        assert result.returncode == 0 and "done" in result.stderr
    finally:
        await conn.close()


WRITER_INSERT = """
INSERT INTO trades (timestamp, exchange, symbol, symbol_base, symbol_quote, price, quantity,
                    side, trade_id, quote_quantity, is_buyer, is_maker)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (exchange, symbol_base, symbol_quote, trade_id, "timestamp")
WHERE trade_id IS NOT NULL DO NOTHING
"""


async def test_backfill_left_half_done_by_the_previous_procedure_is_finished(
    db: DatabaseConfig,
) -> None:
    """A database whose backfill the first shipped 001 left half-done: its checkpoint
    is a plain `position` (everything up to it split, nothing above), with no chunk
    table. The current procedure starts its chunks above that position and keeps the
    counters."""
    data = await legacy_after_foreground(db)
    # Half a backfill by one session, then its state put back into the old shape.
    result = await run_psql(db, sql="CALL cex_migration.backfill_trade_symbols(1000)", timeout=120)
    assert result.returncode == 0, result.stderr
    conn = await connect(db)
    try:
        half = sorted(data.by_id)[len(data.by_id) // 2]
        # undo the upper half: un-split it, put its archived duplicates back (as the
        # legacy rows they were: the fill trigger must not split them)
        await conn.execute("ALTER TABLE trades DISABLE TRIGGER USER")
        await conn.execute(
            "INSERT INTO trades (id, timestamp, exchange, symbol, price, quantity, side, trade_id) "
            "SELECT id, timestamp, exchange, symbol, price, quantity, side, trade_id "
            "FROM trades_duplicates_removed WHERE id > $1",
            half,
        )
        await conn.execute("DELETE FROM trades_duplicates_removed WHERE id > $1", half)
        await conn.execute(
            "UPDATE trades SET symbol_base = NULL, symbol_quote = NULL WHERE id > $1", half
        )
        await conn.execute("ALTER TABLE trades ENABLE TRIGGER USER")
        archived_below = await conn.fetchval("SELECT count(*) FROM trades_duplicates_removed")
        below = await conn.fetchrow(
            "SELECT count(*) AS n, count(*) FILTER (WHERE symbol_base IS NULL) AS unsplit "
            "FROM trades WHERE id <= $1",
            half,
        )
        await conn.execute(
            "UPDATE migration_progress SET done = false, position = $1::text, rows_done = $2, "
            "detail = jsonb_build_object('boundary_id', $3::bigint, 'rows_split', $4::bigint, "
            "'unsplittable_rows', $5::bigint, 'unsplittable_symbols', '{}'::jsonb, "
            "'duplicates_archived', $6::bigint) WHERE task = 'backfill_symbols'",
            str(half),
            below["n"] + archived_below,
            max(data.by_id),
            below["n"] - below["unsplit"],
            below["unsplit"],
            archived_below,
        )

        above = await conn.fetchval("SELECT count(*) FROM trades WHERE id > $1", half)

        result = await run_steps_psql(
            db, BACKGROUND_STEPS, options="-c cex.backfill_batch_size=1000"
        )
        assert result.returncode == 0, result.stderr
        await assert_legacy_outcome(conn, data)
        progress = await conn.fetchrow(
            "SELECT rows_done, rows_total, position, detail FROM migration_progress "
            "WHERE task = 'backfill_symbols'"
        )
        assert progress["rows_done"] == len(data.by_id)
        assert int(progress["position"]) == max(data.by_id)
        # chunks cover only the ids above the old checkpoint
        assert json.loads(progress["detail"])["chunks"] == -(-above // 1000)
    finally:
        await conn.close()


async def exercise_writes_between_foreground_and_background(
    config: DatabaseConfig, data: LegacyDataset
) -> None:
    """New writers and a legacy writer work after the foreground part; a new row
    duplicating an old one is archived by the backfill, the old row stays."""
    conn = await connect(config)
    try:
        removed = data.expected_removed()
        legacy = [
            r
            for r in data.trades
            if r[7] is not None and reference_split(str(r[3])) and r[0] not in removed
        ][:50]
        for row in legacy:
            base, quote = reference_split(str(row[3]))  # type: ignore[misc]
            await conn.execute(
                WRITER_INSERT, row[1], row[2], f"{base}/{quote}", base, quote,
                row[4], row[5], row[6], row[7], None, None, None,
            )  # fmt: skip
        new_ids = await conn.fetch(
            "SELECT id, trade_id FROM trades WHERE id > $1 ORDER BY id", max(data.by_id)
        )
        assert len(new_ids) == len(legacy)
        # the same new trade twice: ON CONFLICT drops the second
        ts = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
        args = (ts, "MEXC", "BTCUSDT", "BTC", "USDT", Decimal(1), Decimal(2), "buy", "n-1",
                Decimal(2), True, False)  # fmt: skip
        assert await conn.execute(WRITER_INSERT, *args) == "INSERT 0 1"
        assert await conn.execute(WRITER_INSERT, *args) == "INSERT 0 0"
        # a legacy writer, symbol only: the trigger fills base/quote
        await conn.execute(
            "INSERT INTO trades (timestamp, exchange, symbol, price, quantity, side, trade_id) "
            "VALUES ($1, 'GATEIO', 'eth_btc', 1, 1, 'sell', 'legacy-writer')",
            ts,
        )
        filled = await conn.fetchrow("SELECT * FROM trades WHERE trade_id = 'legacy-writer'")
        assert (filled["symbol_base"], filled["symbol_quote"]) == ("ETH", "BTC")
        # a writer leaving symbol out gets BASE/QUOTE
        await conn.execute(
            "INSERT INTO trades (timestamp, exchange, symbol_base, symbol_quote, price, quantity, "
            "side, trade_id) VALUES ($1, 'OKX', 'SOL', 'USDC', 1, 1, 'buy', 'no-symbol')",
            ts,
        )
        assert await conn.fetchval("SELECT symbol FROM trades WHERE trade_id = 'no-symbol'") == (
            "SOL/USDC"
        )
        # constraints hold for new rows at once
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(WRITER_INSERT, ts, "MEXC", "X/Y", "X", "Y", Decimal(1),
                               Decimal(1), "hold", "bad-side", None, None, None)  # fmt: skip
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(WRITER_INSERT, ts, "MEXC", "X/Y", "X", None, Decimal(1),
                               Decimal(1), "buy", "half-pair", None, None, None)  # fmt: skip

        result = await run_steps_psql(config, BACKGROUND_STEPS)
        assert result.returncode == 0, result.stderr
        archived = {
            r["id"]: r["kept_id"]
            for r in await conn.fetch("SELECT id, kept_id FROM trades_duplicates_removed")
        }
        for row, new in zip(legacy, new_ids, strict=True):
            assert archived.get(new["id"]) == row[0], (row, new)
        trades = await trades_by_id(conn)
        assert all(int(r[0]) in trades for r in legacy)  # type: ignore[call-overload]
        assert not any(n["id"] in trades for n in new_ids)
        assert await conn.fetchval("SELECT count(*) FROM trades WHERE trade_id = 'n-1'") == 1
    finally:
        await conn.close()


async def test_writes_during_the_background_part_are_deduplicated(db: DatabaseConfig) -> None:
    data = await legacy_after_foreground(db)
    await exercise_writes_between_foreground_and_background(db, data)


async def test_trades_replayed_while_the_backfill_runs_are_archived(db: DatabaseConfig) -> None:
    """Collectors write after the backfill's set-up: a replay of an old trade at the same
    time makes a chunk's UPDATE meet uq_trades_dedup (the chunk is redone looking every
    row up); one at another time is archived by the finishing sweep. The old row stays."""
    data = await legacy_after_foreground(db)
    process = await start_backfill_psql(db, batch_size=500, sleep_ms=50)
    conn = await connect(db)
    try:
        for _ in range(400):
            if await conn.fetchval(
                "SELECT detail ? 'chunks' FROM migration_progress WHERE task = 'backfill_symbols'"
            ):
                break
            await asyncio.sleep(0.05)
        removed = data.expected_removed()
        newest_first = sorted(data.trades, key=lambda r: int(r[0]), reverse=True)  # type: ignore[call-overload]
        old = [
            r
            for r in newest_first
            if r[7] is not None and reference_split(str(r[3])) and int(r[0]) not in removed  # type: ignore[call-overload]
        ][:10]
        boundary = max(data.by_id)
        replays: dict[str, int] = {}  # trade_id -> the old row's id
        for n, row in enumerate(old):
            old_id = int(row[0])  # type: ignore[call-overload]
            # the backfill has not reached it yet
            assert (
                await conn.fetchval("SELECT symbol_base FROM trades WHERE id = $1", old_id) is None
            )
            base, quote = reference_split(str(row[3]))  # type: ignore[misc]
            ts = row[1] if n % 2 else row[1] + dt.timedelta(hours=1)  # type: ignore[operator]
            await conn.execute(
                WRITER_INSERT, ts, row[2], f"{base}/{quote}", base, quote,
                row[4], row[5], row[6], row[7], None, None, None,
            )  # fmt: skip
            replays[str(row[7])] = old_id
        _, stderr = await asyncio.wait_for(process.communicate(), 300)
        assert process.returncode == 0, stderr.decode()

        archived = await conn.fetch(
            "SELECT id, trade_id, kept_id FROM trades_duplicates_removed WHERE id > $1", boundary
        )
        assert {r["trade_id"]: r["kept_id"] for r in archived} == replays
        assert len(archived) == len(replays)
        for old_id in replays.values():
            assert await conn.fetchval(
                "SELECT symbol_base IS NOT NULL FROM trades WHERE id = $1", old_id
            )
        assert await conn.fetchval("SELECT count(*) FROM trades WHERE id > $1", boundary) == 0
        detail = json.loads(
            await conn.fetchval(
                "SELECT detail FROM migration_progress WHERE task = 'backfill_symbols'"
            )
        )
        assert detail["duplicates_archived"] == len(removed) + len(replays)
        assert detail["chunks_redone"] >= 1  # a same-time replay met uq_trades_dedup
        # the set-up's work tables are gone
        assert await conn.fetchval("SELECT to_regclass('cex_migration.backfill_chunks')") is None
        assert await conn.fetchval("SELECT to_regclass('cex_migration.backfill_dup_ids')") is None
    finally:
        await conn.close()


async def test_legacy_rows_violating_a_constraint_are_kept_and_reported(
    db: DatabaseConfig, migrations_dir: Path
) -> None:
    data = dataset(20_000)
    await prepare_legacy(db, data)
    conn = await connect(db)
    try:
        await conn.execute("UPDATE trades SET side = 'BUY' WHERE id = 10")
        messages: list[str] = []
        await apply_with_runner(db, migrations_dir, messages)
        row = await conn.fetchrow("SELECT side, symbol_base FROM trades WHERE id = 10")
        assert (row["side"], row["symbol_base"]) == ("BUY", None)  # kept, unsplit
        assert await conn.fetchval("SELECT count(*) FROM trades WHERE symbol_base IS NOT NULL") > 0
        validated = dict(
            await conn.fetch(
                "SELECT conname, convalidated FROM pg_constraint "
                "WHERE conrelid = 'trades'::regclass "
                "AND contype = 'c'"
            )
        )
        assert validated.pop("trades_side_check") is False
        assert all(validated.values())
        assert any("trades_side_check stays NOT VALID" in m for m in messages)
        detail = await conn.fetchval(
            "SELECT detail ->> 'trades_side_check' FROM migration_progress "
            "WHERE task = 'validate_constraints'"
        )
        assert detail.startswith("NOT VALID")
        backfill = await conn.fetchval(
            "SELECT detail FROM migration_progress WHERE task = 'backfill_symbols'"
        )
        assert '"violating_ids": [10]' in backfill
        assert any("left unsplit" in m for m in messages)
    finally:
        await conn.close()


async def test_roles_are_created_and_granted(db: DatabaseConfig, migrations_dir: Path) -> None:
    settings = MigrationSettings(app_role="cex_test_app", readonly_role="cex_test_ro")
    r = runner(db, migrations_dir, settings=settings)
    assert await r.run_migrations(), r.last_error
    conn = await connect(db)
    try:
        roles = await conn.fetch(
            "SELECT rolname, rolcanlogin FROM pg_roles "
            "WHERE rolname IN ('cex_test_app', 'cex_test_ro')"
        )
        assert sorted(tuple(x) for x in roles) == [("cex_test_app", False), ("cex_test_ro", False)]
        check = "SELECT has_table_privilege($1, $2, $3)"
        for table in ("trades", "book_ticker_snapshots"):
            assert await conn.fetchval(check, "cex_test_app", table, "INSERT")
            assert await conn.fetchval(check, "cex_test_ro", table, "SELECT")
            assert not await conn.fetchval(check, "cex_test_ro", table, "INSERT")
        for view in ("trades_ohlcv_1m", "trades_ohlcv_1h", "trades_duplicates_removed"):
            assert await conn.fetchval(check, "cex_test_ro", view, "SELECT")
            assert await conn.fetchval(check, "cex_test_app", view, "SELECT")
        assert await conn.fetchval(
            "SELECT has_sequence_privilege('cex_test_app', 'trades_id_seq', 'USAGE')"
        )
    finally:
        await conn.close()


def expected_ohlcv(
    data: LegacyDataset, width: dt.timedelta
) -> dict[tuple[object, ...], tuple[object, ...]]:
    """OHLCV per (bucket, exchange, base, quote) from the rows that stay, computed in Python."""
    removed = data.expected_removed()
    groups: dict[tuple[object, ...], list[tuple[object, ...]]] = {}
    origin = dt.datetime(2000, 1, 3, tzinfo=dt.timezone.utc)
    for row in data.trades:
        parts = reference_split(str(row[3]))
        if parts is None or int(row[0]) in removed:  # type: ignore[call-overload]
            continue
        ts: dt.datetime = row[1]  # type: ignore[assignment]
        bucket = origin + ((ts - origin) // width) * width
        groups.setdefault((bucket, row[2], *parts), []).append(row)
    out = {}
    for key, rows in groups.items():
        rows.sort(key=lambda r: (r[1], r[0]))  # type: ignore[arg-type, return-value]
        prices = [r[4] for r in rows]
        volume = sum((r[5] for r in rows), Decimal(0))  # type: ignore[misc]
        notional = sum((r[4] * r[5] for r in rows), Decimal(0))  # type: ignore[operator, misc]
        out[key] = (
            rows[0][4], max(prices), min(prices), rows[-1][4],  # type: ignore[type-var]
            volume, notional, len(rows),
            sum((r[5] for r in rows if r[6] == "buy"), Decimal(0)),  # type: ignore[misc]
            sum((r[5] for r in rows if r[6] == "sell"), Decimal(0)),  # type: ignore[misc]
            notional / volume,
        )  # fmt: skip
    return out


async def assert_aggregates(conn: asyncpg.Connection, data: LegacyDataset) -> None:
    for view, width in (("trades_ohlcv_1m", dt.timedelta(minutes=1)),
                        ("trades_ohlcv_1h", dt.timedelta(hours=1))):  # fmt: skip
        expected = expected_ohlcv(data, width)
        rows = await conn.fetch(
            f"SELECT bucket, exchange, symbol_base, symbol_quote, open, high, low, close, volume, "
            f"quote_volume, notional, trade_count, buy_volume, sell_volume, vwap FROM {view} "
            "WHERE bucket < '2030-01-01'"
        )
        got = {}
        for r in rows:
            assert r["quote_volume"] == r["notional"]  # no quote_quantity in legacy rows
            got[(r["bucket"], r["exchange"], r["symbol_base"], r["symbol_quote"])] = (
                r["open"], r["high"], r["low"], r["close"], r["volume"], r["notional"],
                r["trade_count"], r["buy_volume"], r["sell_volume"], r["vwap"],
            )  # fmt: skip
        assert set(got) == set(expected), view
        for key, values in expected.items():
            g = got[key]
            assert g[:9] == values[:9], (view, key)
            assert abs(g[9] - values[9]) < Decimal("1e-12"), (view, key)


async def test_plain_views_give_ohlcv_per_pair(db: DatabaseConfig, migrations_dir: Path) -> None:
    data = dataset(20_000)
    await prepare_legacy(db, data)
    await apply_with_runner(db, migrations_dir)
    conn = await connect(db)
    try:
        kinds = dict(
            await conn.fetch(
                "SELECT relname, relkind::text FROM pg_class WHERE relname IN "
                "('trades_ohlcv_1m', 'trades_ohlcv_1h')"
            )
        )
        assert kinds == {"trades_ohlcv_1m": "v", "trades_ohlcv_1h": "v"}
        await assert_aggregates(conn, data)
    finally:
        await conn.close()


def test_cli_applies_001_and_runs_its_background_part(
    run_cli: Callable[..., object],
    cli_env: dict[str, str],
    db: DatabaseConfig,
    migrations_dir: Path,
) -> None:
    asyncio.run(prepare_legacy(db, dataset(20_000)))
    result = run_cli_process(
        ["--migrations-dir", str(migrations_dir)], {**cli_env}, cwd=migrations_dir.parent
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout + result.stderr
    assert "backfill_symbols" in out and "no rule splits" in out
    status = run_cli_process(["status", "--json", "--migrations-dir", str(migrations_dir)],
                             cli_env, cwd=migrations_dir.parent)  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert '"001"' in status.stdout


# ---------------------------------------------------------------------------
# TimescaleDB


@pytest.mark.timescale
async def test_timescale_legacy_hypertables_and_empty_database_reach_the_same_schema(
    ts_db: DatabaseConfig, second_ts_db: DatabaseConfig, migrations_dir: Path
) -> None:
    data = dataset(20_000)
    await prepare_legacy(ts_db, data, hypertables=True)
    await apply_with_runner(ts_db, migrations_dir)
    await apply_with_runner(second_ts_db, migrations_dir)
    legacy, empty = await normalised_schema(ts_db), await normalised_schema(second_ts_db)
    assert dump_difference(legacy, empty) == ""
    a, b = await connect(ts_db), await connect(second_ts_db)
    try:
        summary = await timescale_summary(a)
        assert summary == await timescale_summary(b)
        assert [h[0] for h in summary["hypertables"]] == ["book_ticker_snapshots", "trades"]  # type: ignore[index]
        assert [c[0] for c in summary["caggs"]] == ["trades_ohlcv_1h", "trades_ohlcv_1m"]  # type: ignore[index]
        assert len(summary["jobs"]) == 2  # type: ignore[arg-type]
        await assert_legacy_outcome(a, data)
    finally:
        await a.close()
        await b.close()


@pytest.mark.timescale
async def test_timescale_every_chunk_has_the_dedup_index_and_writers_work(
    ts_db: DatabaseConfig,
) -> None:
    data = dataset(20_000)
    await prepare_legacy(ts_db, data, hypertables=True)
    await run_psql_000_and_routines(ts_db)
    result = await run_steps_psql(ts_db, FOREGROUND_STEPS)
    assert result.returncode == 0, result.stderr
    conn = await connect(ts_db)
    try:
        chunks = await conn.fetch("SELECT show_chunks('trades')")
        assert len(chunks) >= 5
        for (chunk,) in chunks:
            n = await conn.fetchval(
                "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE i.indrelid = $1::regclass AND i.indisunique "
                "AND c.relname LIKE '%uq_trades_dedup'",
                str(chunk),
            )
            assert n == 1, chunk
        assert await conn.fetchval("SELECT to_regclass('pg_temp.trades')") is None
    finally:
        await conn.close()
    # writes into old chunks (legacy timestamps) and a new chunk (2030) use the index
    await exercise_writes_between_foreground_and_background(ts_db, data)
    conn = await connect(ts_db)
    try:
        await conn.execute("CALL cex_migration.refresh_trade_aggregates()")
        await assert_aggregates(conn, data)
    finally:
        await conn.close()


@pytest.mark.timescale
async def test_timescale_psql_file_gives_the_same_schema_as_the_runner(
    ts_db: DatabaseConfig, second_ts_db: DatabaseConfig, migrations_dir: Path
) -> None:
    data = dataset(20_000)
    await prepare_legacy(ts_db, data, hypertables=True)
    await prepare_legacy(second_ts_db, data, hypertables=True)
    await apply_with_runner(ts_db, migrations_dir)
    await apply_with_psql(second_ts_db)
    assert (
        dump_difference(await normalised_schema(ts_db), await normalised_schema(second_ts_db)) == ""
    )
    # and running the file again is a no-op
    before = await normalised_schema(second_ts_db)
    result = await run_psql(second_ts_db, file=MIGRATION_001)
    assert result.returncode == 0, result.stderr
    assert await normalised_schema(second_ts_db) == before
    conn = await connect(second_ts_db)
    try:
        await assert_legacy_outcome(conn, data)
        await assert_aggregates(conn, data)
    finally:
        await conn.close()


async def vacuum_stats(conn: asyncpg.Connection) -> asyncpg.Record:
    """trades' last_vacuum/last_analyze, waiting up to 10 s for them to show.

    Before PostgreSQL 15 a separate stats collector process receives VACUUM's
    report and publishes it up to half a second or more later
    (docs/postgresql-versions.md); from 15 on the statistics are in shared memory at once.
    """
    deadline = time.monotonic() + 10
    while True:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        stats = await conn.fetchrow(
            "SELECT last_vacuum, last_analyze FROM pg_stat_user_tables WHERE relname = 'trades'"
        )
        assert stats is not None
        done = stats["last_vacuum"] is not None and stats["last_analyze"] is not None
        if done or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.2)


async def test_after_the_backfill_trades_is_vacuumed_and_analysed(db: DatabaseConfig) -> None:
    """004: the backfill's dead row versions are made reusable without blocking writers."""
    data = dataset(20_000)
    await prepare_legacy(db, data)
    runner = MigrationRunner(db, say=lambda _m: None)
    result = await runner.migrate()
    assert "004" in result.applied and "004" in result.background_done
    conn = await connect(db)
    try:
        stats = await vacuum_stats(conn)
        backfill_done = await conn.fetchval(
            "SELECT updated_at FROM migration_progress WHERE version = '001' "
            "AND task = 'backfill_symbols' AND done"
        )
        # After the backfill's last row version, not before it. (n_dead_tup is no
        # proof: the backfill sessions' counts may reach the statistics after it.)
        assert backfill_done is not None and stats["last_vacuum"] is not None
        assert stats["last_vacuum"] >= backfill_done and stats["last_analyze"] >= backfill_done
        await assert_legacy_outcome(conn, data)
    finally:
        await conn.close()
