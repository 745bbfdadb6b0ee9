"""Migration 001 on a live, large legacy database (PRODUCT.md parts 9 and 11).

The story: an engine boots onto a database the legacy collector filled with
five million trades. `ensure_schema()` returns after the foreground part, the trade
writer starts at once and its rows land complete and deduplicated while the
backfill of the old rows runs in the background, visible in `status`. Later:
an operator's `python -m cex_arbitrage.db.migrate` is SIGKILLed mid-backfill
and mid-`CREATE INDEX CONCURRENTLY`; running it again finishes the job, and
the result is the same as an uninterrupted run on an identical database.

Every legacy row is accounted for independently of the migration's SQL: a
fingerprint of the legacy columns over `trades` + `trades_duplicates_removed`
must equal the legacy table's, each symbol must split as the Python reference
(tests/legacy_data.py) says, and the archived duplicates must be exactly the
replays the reference rule finds.

Sizes: CEX_TEST_LIVE_ROWS legacy rows (default 5,000,000) on plain PostgreSQL,
CEX_TEST_LIVE_TS_ROWS (default 200,000) on TimescaleDB. The plain-PostgreSQL
legacy database is built once per module and copied per test (CREATE DATABASE
... TEMPLATE).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from cex_arbitrage.collectors import Trade, TradeWriter
from cex_arbitrage.config import MigrationSettings
from cex_arbitrage.db.migrations import ensure_schema
from cex_arbitrage.db.structs import DatabaseConfig
from tests.support.cli import run_cli_process
from tests.support.databases import create_database, drop_database, pg_env
from tests.support.legacy_data import (
    create_legacy_schema,
    dump_difference,
    fill_legacy_bulk,
    load_legacy_dataset,
    make_legacy_dataset,
    normalise_dump,
    reference_split,
    schema_dump,
)

ROWS = int(os.environ.get("CEX_TEST_LIVE_ROWS", "5000000"))
TS_ROWS = int(os.environ.get("CEX_TEST_LIVE_TS_ROWS", "200000"))
SMALL = make_legacy_dataset(3_000)  # every spelling, replays, NULL trade_ids, unsplittable
WRITE_BATCH = 100
REPLAYED_BY_WRITER = 20  # legacy trades the live writer sends again during the backfill

pytestmark = pytest.mark.slow


_T0 = time.monotonic()


def quiet(message: str) -> None:
    """Runner progress lines: printed with CEX_TEST_LIVE_VERBOSE=1, else dropped."""
    if os.environ.get("CEX_TEST_LIVE_VERBOSE") == "1":
        print(f"{time.monotonic() - _T0:8.2f} {message[:300]}", flush=True)


# ---------------------------------------------------------------------------
# The legacy database and what migration 001 must make of it.

# Reconnect replays at the end of the table: 1 in 100 bulk trades again (same
# exchange, trade_id and time), every other one spelled in lower case. Their
# originals are split by earlier backfill batches, so these are the
# duplicates found through uq_trades_dedup, not inside one batch.
_APPEND_REPLAYS = """
INSERT INTO trades (timestamp, exchange, symbol, price, quantity, side, trade_id)
SELECT timestamp, exchange, CASE WHEN id % 200 = 5 THEN lower(symbol) ELSE symbol END,
       price, quantity, side, trade_id
FROM trades
WHERE id > $1 AND id % 100 = 5 AND trade_id IS NOT NULL
ORDER BY id
"""

# Order-independent fingerprint of rows: count and sum of a 60-bit hash each.
_FINGERPRINT = """
SELECT count(*), coalesce(sum(('x' || substr(md5(r), 1, 15))::bit(60)::bigint), 0)::text
FROM ({rows}) AS s(r)
"""
_LEGACY_ROW_TEXT = (
    "concat_ws('|', id, \"timestamp\", exchange, symbol, price, quantity, side, "
    "coalesce(trade_id, '<null>'), created_at)"
)
_SPLIT_ROW_TEXT = "concat_ws('|', id, coalesce(symbol_base, '-'), coalesce(symbol_quote, '-'))"

# The replays the reference rule removes: same exchange, base, quote and
# trade_id as a lower id. The split comes from Python, not from the migration.
_EXPECTED_REMOVED = """
WITH m AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) AS m(symbol, base, quote)),
k AS (
    SELECT t.id, min(t.id) OVER (PARTITION BY t.exchange, m.base, m.quote, t.trade_id) AS keep
    FROM trades t JOIN m ON m.symbol = t.symbol
    WHERE t.trade_id IS NOT NULL
)
SELECT id, keep FROM k WHERE id <> keep
"""


@dataclasses.dataclass(frozen=True)
class LegacyFacts:
    """The legacy table before migration 001, and the outcome the reference rules expect."""

    rows: int
    max_id: int
    fingerprint: tuple[int, str]
    removed: dict[int, int]  # replayed duplicate id -> id of the row that stays
    replays: list[asyncpg.Record]  # legacy trades the live writer sends again


async def fill_legacy(conn: asyncpg.Connection, n_rows: int, *, hypertables: bool) -> None:
    """Legacy schema, the small varied data set, n_rows bulk trades, replays at the end."""
    await create_legacy_schema(conn, hypertables=hypertables)
    await load_legacy_dataset(conn, SMALL)
    await fill_legacy_bulk(conn, n_rows)
    await conn.execute(_APPEND_REPLAYS, max(SMALL.by_id))
    await conn.execute("VACUUM ANALYZE trades")


async def fingerprint(conn: asyncpg.Connection, rows_sql: str, *args: object) -> tuple[int, str]:
    row = await conn.fetchrow(_FINGERPRINT.format(rows=rows_sql), *args)
    assert row is not None
    return int(row[0]), str(row[1])


async def symbol_map(conn: asyncpg.Connection) -> dict[str, tuple[str, str] | None]:
    symbols = await conn.fetch("SELECT DISTINCT symbol FROM trades")
    return {r["symbol"]: reference_split(r["symbol"]) for r in symbols}


async def legacy_facts(conn: asyncpg.Connection) -> LegacyFacts:
    rows, max_id = await conn.fetchrow("SELECT count(*), max(id) FROM trades")
    splits = {s: p for s, p in (await symbol_map(conn)).items() if p is not None}
    removed = {
        r["id"]: r["keep"]
        for r in await conn.fetch(
            _EXPECTED_REMOVED,
            list(splits),
            [p[0] for p in splits.values()],
            [p[1] for p in splits.values()],
        )
    }
    small_max = max(SMALL.by_id)
    assert {k: v for k, v in removed.items() if k <= small_max} == SMALL.expected_removed()
    assert len(removed) > rows // 200, "the legacy data should hold replayed duplicates"
    # Trades the writer will replay: late ids (split by the last batches), ones that
    # stay and have no replay of their own (the table ends with the appended replays).
    candidates = await conn.fetch(
        "SELECT id, timestamp, exchange, symbol, price, quantity, side, trade_id FROM trades "
        "WHERE trade_id IS NOT NULL ORDER BY id DESC LIMIT $1",
        len(removed) + 5_000,
    )
    keeps = set(removed.values())
    replays = [
        r
        for r in candidates
        if r["id"] not in removed
        and r["id"] not in keeps
        and reference_split(r["symbol"]) is not None
    ][:REPLAYED_BY_WRITER]
    assert len(replays) == REPLAYED_BY_WRITER
    return LegacyFacts(
        rows=int(rows),
        max_id=int(max_id),
        fingerprint=await fingerprint(conn, f"SELECT {_LEGACY_ROW_TEXT} FROM trades"),
        removed=removed,
        replays=replays,
    )


async def copy_database(admin: DatabaseConfig, template: DatabaseConfig) -> DatabaseConfig:
    """A copy of `template` (files copied: much faster than refilling it)."""
    name = f"cex_test_live_{os.urandom(6).hex()}"
    conn = await asyncpg.connect(**admin.connect_kwargs())
    try:
        major = int(await conn.fetchval("SHOW server_version_num")) // 10000
        strategy = " STRATEGY FILE_COPY" if major >= 15 else ""
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template.database}"{strategy}')
    finally:
        await conn.close()
    return admin.with_database(name)


CRASH_BATCH = 20_000  # backfill_batch_size of the CLI runs: many checkpoints to kill between


@dataclasses.dataclass(frozen=True)
class Template:
    """The module's legacy database, and the uninterrupted CLI run the crash test compares with."""

    config: DatabaseConfig
    facts: LegacyFacts
    reference: DatabaseConfig  # a copy, migrated by `python -m cex_arbitrage.db.migrate`
    reference_run: subprocess.Popen[bytes]
    reference_log: Path
    reference_started: float


@pytest.fixture(scope="module")
def legacy_template(
    admin_config: DatabaseConfig, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Template]:
    """A legacy database of ROWS trades (+ the small data set), built once for this module.

    The crash test's reference run (the CLI on an untouched copy) starts here,
    so that it uses the second core while the boot test's backfill uses the
    first: the file's wall time is what the ~3 minute budget counts.
    """

    async def build() -> tuple[DatabaseConfig, LegacyFacts, DatabaseConfig]:
        config = await create_database(admin_config, "cex_test_live_tpl")
        conn = await asyncpg.connect(**config.connect_kwargs())
        try:
            started = time.monotonic()
            await fill_legacy(conn, ROWS, hypertables=False)
            facts = await legacy_facts(conn)
            print(f"\nlegacy template: {facts.rows} rows in {time.monotonic() - started:.1f}s")
        finally:
            await conn.close()
        return config, facts, await copy_database(admin_config, config)

    config, facts, reference = asyncio.run(build())
    directory = tmp_path_factory.mktemp("reference-run")
    log = directory / "cli.log"
    run = start_cli(config_file(directory / "config.yaml", reference, CRASH_BATCH), reference, log)
    try:
        yield Template(config, facts, reference, run, log, time.monotonic())
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        asyncio.run(drop_database(admin_config, reference))
        asyncio.run(drop_database(admin_config, config))


@pytest.fixture
async def legacy_db(
    admin_config: DatabaseConfig, legacy_template: Template
) -> AsyncIterator[tuple[DatabaseConfig, LegacyFacts]]:
    config = await copy_database(admin_config, legacy_template.config)
    try:
        yield config, legacy_template.facts
    finally:
        await drop_database(admin_config, config)


# ---------------------------------------------------------------------------
# Checks of the migrated database.


async def assert_legacy_rows_accounted_for(conn: asyncpg.Connection, facts: LegacyFacts) -> None:
    """Every legacy row is in trades or in the archive, unchanged, split as the reference says."""
    both = await conn.fetchval(
        "SELECT count(*) FROM trades t JOIN trades_duplicates_removed d USING (id)"
    )
    assert both == 0, "a row is both in trades and in the duplicates archive"
    legacy_now = await fingerprint(
        conn,
        f"SELECT {_LEGACY_ROW_TEXT} FROM trades WHERE id <= $1 UNION ALL "
        f"SELECT {_LEGACY_ROW_TEXT} FROM trades_duplicates_removed WHERE id <= $1",
        facts.max_id,
    )
    assert legacy_now == facts.fingerprint, "legacy rows were lost or changed"

    outcomes = await conn.fetch(
        "SELECT symbol, symbol_base, symbol_quote, count(*) AS n FROM ("
        " SELECT symbol, symbol_base, symbol_quote FROM trades WHERE id <= $1 UNION ALL"
        " SELECT symbol, symbol_base, symbol_quote FROM trades_duplicates_removed WHERE id <= $1"
        ") AS u GROUP BY 1, 2, 3",
        facts.max_id,
    )
    wrong = [
        (r["symbol"], r["symbol_base"], r["symbol_quote"], r["n"])
        for r in outcomes
        if ((r["symbol_base"], r["symbol_quote"]) != (reference_split(r["symbol"]) or (None, None)))
    ]
    assert not wrong, f"symbols split differently from the reference: {wrong[:10]}"
    assert sum(r["n"] for r in outcomes) == facts.rows

    archived = {
        r["id"]: r["kept_id"]
        for r in await conn.fetch(
            "SELECT id, kept_id FROM trades_duplicates_removed "
            "WHERE id <= $1 AND trade_id IS NOT NULL",
            facts.max_id,
        )
    }
    assert archived == facts.removed
    # 005: a trade without an id archived only as a repeat of its natural key, the
    # kept row (a lower id) still stored.
    not_repeats = await conn.fetchval(
        "SELECT count(*) FROM trades_duplicates_removed d WHERE d.trade_id IS NULL AND NOT EXISTS "
        "(SELECT 1 FROM trades t WHERE t.id = d.kept_id AND t.id < d.id AND t.trade_id IS NULL "
        "AND (t.exchange, t.symbol, t.timestamp, t.price, t.quantity, t.side)"
        " = (d.exchange, d.symbol, d.timestamp, d.price, d.quantity, d.side))"
    )
    assert not_repeats == 0
    remaining = await conn.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM trades WHERE trade_id IS NOT NULL "
        "AND symbol_base IS NOT NULL GROUP BY exchange, symbol_base, symbol_quote, trade_id "
        "HAVING count(*) > 1) AS d"
    )
    assert remaining == 0, "replayed trades left in trades"


async def invalid_indexes(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT indexrelid::regclass::text AS name FROM pg_index WHERE NOT indisvalid"
    )
    return [r["name"] for r in rows]


async def status_of(config: DatabaseConfig, version: str) -> dict[str, object]:
    """`python -m cex_arbitrage.db.migrate status --json`, as an operator runs it."""
    result = await asyncio.to_thread(run_cli_process, ["status", "--json"], pg_env(config))
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["migrations"]
    by_version: dict[str, dict[str, object]] = {r["version"]: r for r in rows}
    return by_version[version]


async def same_schema(a: DatabaseConfig, b: DatabaseConfig) -> None:
    difference = dump_difference(
        normalise_dump(await schema_dump(a)), normalise_dump(await schema_dump(b))
    )
    assert difference == "", difference


async def timescale_objects(conn: asyncpg.Connection) -> list[tuple[object, ...]]:
    """What pg_dump -n public leaves out: hypertables, continuous aggregates, their policies."""
    rows = await conn.fetch(
        "SELECT 'hypertable', hypertable_name::text, num_dimensions::text "
        "FROM timescaledb_information.hypertables UNION ALL "
        "SELECT 'cagg', view_name::text, materialized_only::text "
        "FROM timescaledb_information.continuous_aggregates UNION ALL "
        "SELECT 'job', proc_name::text, schedule_interval::text FROM timescaledb_information.jobs "
        "WHERE proc_name LIKE 'policy_%' ORDER BY 1, 2, 3"
    )
    return [tuple(r) for r in rows]


async def poll(
    conn: asyncpg.Connection,
    sql: str,
    ready: Callable[[asyncpg.Record], bool],
    timeout: float,
    what: str,
) -> asyncpg.Record:
    """Run `sql` every 20 ms until it returns a row that is `ready`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            row = await conn.fetchrow(sql)
        except asyncpg.UndefinedTableError:  # migration_progress not created yet
            row = None
        if row is not None and ready(row):
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f}s in vain for {what}; last: {row}")
        await asyncio.sleep(0.02)


_PROGRESS = (
    "SELECT rows_done, rows_total, done, position FROM migration_progress "
    "WHERE version = '001' AND task = 'backfill_symbols'"
)


# ---------------------------------------------------------------------------
# The live writer.


class LiveWriter:
    """The trade collector's writer, running while the backfill does: batches of 100."""

    PAIRS = (("BTC", "USDT", "BTC_USDT"), ("ETH", "BTC", "ETHBTC"), ("SOL", "USDC", "SOL-USDC"))

    def __init__(self, config: DatabaseConfig) -> None:
        self.writer = TradeWriter(
            lambda: asyncpg.connect(**config.connect_kwargs()), database=config.display
        )
        self.batches = 0
        self.latencies: list[float] = []
        self.slow: list[str] = []  # batches over 200 ms: when, and how long
        self.stop = asyncio.Event()

    def batch(self, n: int) -> list[Trade]:
        now = dt.datetime.now(dt.timezone.utc)
        out = []
        for i in range(WRITE_BATCH):
            base, quote, symbol = self.PAIRS[i % len(self.PAIRS)]
            out.append(
                Trade(
                    timestamp=now + dt.timedelta(microseconds=i),
                    exchange="MEXC",
                    symbol_base=base,
                    symbol_quote=quote,
                    symbol=symbol,
                    price=Decimal(100 + i),
                    quantity=Decimal("0.5"),
                    side="buy" if i % 2 else "sell",
                    trade_id=f"live-{n}-{i}",
                )
            )
        return out

    async def write(self, trades: list[Trade]) -> int:
        started = time.perf_counter()
        result = await self.writer.write(trades)
        took = time.perf_counter() - started
        self.latencies.append(took)
        if took > 0.2:
            self.slow.append(f"{took * 1000:.0f} ms at {time.monotonic() - _T0:.1f}s")
        return result.inserted

    async def run(self) -> None:
        """A batch every 50 ms until stopped; each must land whole."""
        while not self.stop.is_set():
            inserted = await self.write(self.batch(self.batches))
            assert inserted == WRITE_BATCH
            self.batches += 1
            await asyncio.sleep(0.05)

    def summary(self) -> str:
        ordered = sorted(self.latencies)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        return (
            f"{len(ordered)} writer batches, p99 {p99 * 1000:.0f} ms, "
            f"max {ordered[-1] * 1000:.0f} ms; over 200 ms: {self.slow or 'none'}"
        )


def replayed_trade(row: asyncpg.Record) -> Trade:
    parts = reference_split(row["symbol"])
    assert parts is not None
    return Trade(
        timestamp=row["timestamp"],
        exchange=row["exchange"],
        symbol_base=parts[0],
        symbol_quote=parts[1],
        symbol=row["symbol"],
        price=row["price"],
        quantity=row["quantity"],
        side=row["side"],
        trade_id=row["trade_id"],
    )


# ---------------------------------------------------------------------------
# 1 and 3: boot onto a legacy database while the writer writes.


async def boot_while_writing(
    db: DatabaseConfig,
    facts: LegacyFacts,
    fresh: DatabaseConfig,
    *,
    batch_size: int,
    timescale: bool = False,
) -> None:
    settings = MigrationSettings(backfill_batch_size=batch_size, progress_interval=60)
    conn = await asyncpg.connect(**db.connect_kwargs())
    live = LiveWriter(db)
    try:
        # The floor, measured in this run on this machine: build an index on the
        # dedup key's columns of a private copy of the table. Boot's foreground is
        # essentially that build done concurrently (two passes and waits); the
        # backfill must not be part of it.
        started = time.monotonic()
        await conn.execute(
            "CREATE TEMP TABLE boot_floor AS "
            'SELECT exchange, symbol, trade_id, "timestamp" FROM trades'
        )
        await conn.execute('CREATE INDEX ON boot_floor (exchange, symbol, trade_id, "timestamp")')
        floor_s = time.monotonic() - started
        await conn.execute("DROP TABLE boot_floor")
        started = time.monotonic()
        report = await ensure_schema(db, settings=settings, say=quiet)
        boot_s = time.monotonic() - started
        assert report.background is not None and not report.background.done, (
            "the backfill should still be running when boot returns"
        )
        assert report.pending_background[0] == "001"  # then 004 (its vacuum)
        assert boot_s < 4 * floor_s + 5, (
            f"boot took {boot_s:.1f}s, {boot_s / floor_s:.1f}x copying and indexing the "
            f"dedup key ({floor_s:.1f}s); the backfill must not hold it up"
        )
        print(
            f"\nboot returned in {boot_s:.1f}s ({boot_s / floor_s:.1f}x the index floor) with "
            f"the backfill of {facts.rows} rows running"
        )

        writing = asyncio.create_task(live.run())
        # The same batch twice lands once.
        again = live.batch(-1)
        assert await live.write(again) == WRITE_BATCH
        assert await live.write(again) == 0
        # Legacy trades sent again by a reconnecting collector, before the backfill reaches them.
        replays = [replayed_trade(r) for r in facts.replays]
        replay_inserted = await live.write(replays)
        # A legacy-style writer (symbol only): the trigger fills base/quote.
        legacy_style = await conn.fetchrow(
            "INSERT INTO trades (timestamp, exchange, symbol, price, quantity, side, trade_id) "
            "VALUES (now(), 'OKX', ' sol-usdc ', 1, 1, 'buy', 'legacy-style-1') "
            "RETURNING symbol_base, symbol_quote"
        )
        assert tuple(legacy_style) == ("SOL", "USDC")

        progress = await poll(
            conn, _PROGRESS, lambda r: r["rows_done"] > 0, 120, "backfill progress"
        )
        status = await status_of(db, "001")
        assert status["state"] == "background", status
        assert "backfill_symbols" in str(status["progress"]), status
        still = await conn.fetchrow(_PROGRESS)
        assert still is not None and not still["done"], "the backfill ended too soon to observe"
        # New rows are complete while the old ones are still being split.
        incomplete = await conn.fetchval(
            "SELECT count(*) FROM trades WHERE id > $1 AND symbol_base IS NULL", facts.max_id
        )
        assert incomplete == 0
        print(f"status while running: {status['progress']} (first seen at {progress['rows_done']})")

        await report.background.wait()
        total_s = time.monotonic() - started
        live.stop.set()
        await writing
        print(f"background done {total_s:.1f}s after boot; {live.summary()}")

        for version in ("000", "001"):
            assert (await status_of(db, version))["state"] == "applied"
        assert await invalid_indexes(conn) == []
        await assert_legacy_rows_accounted_for(conn, facts)

        # The writer's rows: all there, once, complete.
        written = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT trade_id) AS ids, "
            "count(*) FILTER (WHERE symbol_base IS NULL OR symbol_quote IS NULL) AS incomplete "
            "FROM trades WHERE trade_id LIKE 'live-%'"
        )
        assert written is not None
        assert written["n"] == written["ids"] == (live.batches + 1) * WRITE_BATCH
        assert written["incomplete"] == 0
        # Each replayed legacy trade: the legacy row stays; the replay was dropped on
        # insert (backfill already past it) or archived by the backfill.
        for row in facts.replays:
            ids = await conn.fetch(
                "SELECT id FROM trades WHERE exchange = $1 AND trade_id = $2 AND symbol_base = $3",
                row["exchange"],
                row["trade_id"],
                reference_split(row["symbol"])[0],  # type: ignore[index]
            )
            assert [r["id"] for r in ids] == [row["id"]]
        archived_replays = await conn.fetchval(
            "SELECT count(*) FROM trades_duplicates_removed WHERE id > $1 AND kept_id = ANY($2)",
            facts.max_id,
            [r["id"] for r in facts.replays],
        )
        assert archived_replays == replay_inserted
        print(
            f"{replay_inserted} of {len(replays)} replayed legacy trades were inserted before the "
            "backfill reached their originals, and archived by it; the rest were dropped on insert"
        )

        # The same schema as a fresh database migrated the same way.
        fresh_report = await ensure_schema(fresh, settings=settings, say=quiet)
        if fresh_report.background is not None:
            await fresh_report.background.wait()
        await same_schema(db, fresh)
        if timescale:
            fresh_conn = await asyncpg.connect(**fresh.connect_kwargs())
            try:
                assert await timescale_objects(conn) == await timescale_objects(fresh_conn)
            finally:
                await fresh_conn.close()
    finally:
        live.stop.set()
        await live.writer.close()
        await conn.close()


async def test_boot_returns_while_the_backfill_runs_and_writers_keep_writing(
    legacy_db: tuple[DatabaseConfig, LegacyFacts], db: DatabaseConfig
) -> None:
    config, facts = legacy_db
    await boot_while_writing(config, facts, db, batch_size=50_000)


@pytest.mark.timescale
async def test_timescale_boot_returns_while_the_backfill_runs_and_writers_keep_writing(
    ts_db: DatabaseConfig, timescale_admin: DatabaseConfig
) -> None:
    conn = await asyncpg.connect(**ts_db.connect_kwargs())
    try:
        await fill_legacy(conn, TS_ROWS, hypertables=True)
        facts = await legacy_facts(conn)
    finally:
        await conn.close()
    fresh = await create_database(timescale_admin, "cex_ts_test")
    try:
        fresh_conn = await asyncpg.connect(**fresh.connect_kwargs())
        try:
            await fresh_conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        finally:
            await fresh_conn.close()
        await boot_while_writing(ts_db, facts, fresh, batch_size=20_000, timescale=True)
    finally:
        await drop_database(timescale_admin, fresh)


# ---------------------------------------------------------------------------
# 2: the CLI killed mid-backfill and mid-CREATE INDEX CONCURRENTLY.


def config_file(path: Path, config: DatabaseConfig, batch_size: int) -> Path:
    path.write_text(
        "database:\n"
        f"  host: {config.host}\n"
        f"  port: {config.port}\n"
        f"  database: {config.database}\n"
        f"  user: {config.user}\n"
        "migrations:\n"
        f"  backfill_batch_size: {batch_size}\n"
    )
    return path


def start_cli(config_path: Path, config: DatabaseConfig, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cex_arbitrage.db.migrate", "--config", str(config_path)],
            env=pg_env(config),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def kill(process: subprocess.Popen[bytes], conn: asyncpg.Connection) -> None:
    """SIGKILL the CLI, and end its sessions at once: the crash of the whole migrator.

    A killed client's backend would otherwise finish its statement and only
    die when it next writes to the socket; terminating it rolls back the batch
    or index build it is in the middle of.
    """
    process.send_signal(signal.SIGKILL)
    await asyncio.to_thread(process.wait)
    await conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    await poll(
        conn,
        "SELECT count(*) AS n FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()",
        lambda r: r["n"] == 0,
        30,
        "the killed migrator's sessions to end",
    )


async def outcome(conn: asyncpg.Connection) -> dict[str, object]:
    """What two runs must agree on: rows, their split, the archive, the backfill's counts."""
    progress = await conn.fetchrow(
        "SELECT rows_done, rows_total, done, position, detail FROM migration_progress "
        "WHERE version = '001' AND task = 'backfill_symbols'"
    )
    assert progress is not None
    return {
        "trades": await fingerprint(conn, f"SELECT {_SPLIT_ROW_TEXT} FROM trades"),
        "archive": [
            tuple(r)
            for r in await conn.fetch(
                "SELECT id, kept_id, symbol_base, symbol_quote FROM trades_duplicates_removed "
                "ORDER BY id"
            )
        ],
        "progress": (
            progress["rows_done"],
            progress["rows_total"],
            progress["done"],
            progress["position"],
            # chunks_redone counts races between the two sessions: timing, not outcome
            {k: v for k, v in json.loads(progress["detail"]).items() if k != "chunks_redone"},
        ),
        "history": [
            tuple(r)
            for r in await conn.fetch(
                "SELECT version, state FROM migration_history "
                "WHERE version ~ '^[0-9]+$' ORDER BY version"
            )
        ],
    }


async def test_killed_cli_resumes_to_the_result_of_an_uninterrupted_run(
    admin_config: DatabaseConfig,
    legacy_template: Template,
    tmp_path: Path,
) -> None:
    facts = legacy_template.facts
    killed = await copy_database(admin_config, legacy_template.config)
    log = tmp_path / "cli.log"
    conn = await asyncpg.connect(**killed.connect_kwargs())
    ref_conn: asyncpg.Connection | None = None
    try:
        cfg = config_file(tmp_path / "killed.yaml", killed, CRASH_BATCH)

        # 1. Killed in the middle of the backfill.
        process = start_cli(cfg, killed, log)
        await poll(
            conn,
            _PROGRESS,
            lambda r: r["rows_done"] > 0 and not r["done"],
            180,
            "the backfill to be under way",
        )
        await kill(process, conn)
        stopped = await conn.fetchrow(_PROGRESS)
        assert stopped is not None and not stopped["done"]
        assert 0 < stopped["rows_done"] < stopped["rows_total"]
        # The checkpoint and the data agree: beyond the low-water mark, only
        # chunks recorded done were split (two sessions finish chunks out of
        # order), and the chunk in hand when the kill came was rolled back.
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM trades t WHERE t.id > $1 AND t.id <= $2 "
                "AND t.symbol_base IS NOT NULL AND NOT EXISTS ("
                "  SELECT 1 FROM cex_migration.backfill_chunks c WHERE c.done AND t.id > c.lo "
                "  AND t.id <= c.hi)",
                int(stopped["position"]),
                facts.max_id,
            )
            == 0
        )
        assert (await status_of(killed, "001"))["state"] == "background"

        # 2. Killed while CREATE INDEX CONCURRENTLY builds a query index (INVALID until done).
        process = start_cli(cfg, killed, log)
        building = await poll(
            conn,
            "SELECT i.indexrelid::regclass::text AS name, p.phase FROM pg_index i "
            "LEFT JOIN pg_stat_progress_create_index p ON p.index_relid = i.indexrelid "
            "WHERE NOT i.indisvalid",
            lambda r: True,
            300,
            "an INVALID index (CREATE INDEX CONCURRENTLY in progress)",
        )
        await kill(process, conn)
        assert process.returncode == -signal.SIGKILL, "the run ended before the index build"
        assert await invalid_indexes(conn) == [building["name"]]
        print(f"\nkilled while building {building['name']} ({building['phase']})")

        # 3. Run again: completes, drops the INVALID index and builds it again.
        rerun = await asyncio.to_thread(
            run_cli_process, ["--config", str(cfg)], pg_env(killed), None, 600
        )
        assert rerun.returncode == 0, rerun.stderr
        assert f"dropping INVALID index {building['name']}" in rerun.stderr
        assert await invalid_indexes(conn) == []
        assert (await status_of(killed, "001"))["state"] == "applied"
        await assert_legacy_rows_accounted_for(conn, facts)

        # The uninterrupted run on an identical database (started with the module's
        # template) reaches the same result.
        reference = legacy_template.reference
        returncode = await asyncio.to_thread(legacy_template.reference_run.wait, 600)
        assert returncode == 0, legacy_template.reference_log.read_text()[-3000:]
        ref_conn = await asyncpg.connect(**reference.connect_kwargs())
        assert await invalid_indexes(ref_conn) == []
        assert (await status_of(reference, "001"))["state"] == "applied"
        assert await outcome(conn) == await outcome(ref_conn)
        await same_schema(killed, reference)
    finally:
        await conn.close()
        if ref_conn is not None:
            await ref_conn.close()
        await drop_database(admin_config, killed)
