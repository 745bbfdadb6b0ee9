"""Citus: migration 007 distributes trades and book tickers from every starting point (issue 11).

Run when CEX_TEST_CITUS_DSN names a Citus-enabled coordinator database; each
test makes its databases on every node (tests/support/citus.py). One test at
a time: Citus runs one concurrent distribution per cluster, and the tests of
this module each run some.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import subprocess
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from cex_arbitrage.collectors import Trade, TradeWriter, WriteResult
from cex_arbitrage.config import MigrationSettings
from cex_arbitrage.db.migrations import ensure_schema
from cex_arbitrage.db.structs import DatabaseConfig
from cex_arbitrage.errors import ExitCode
from tests.support.citus import citus_admin, citus_database
from tests.support.cli import run_cli_process
from tests.support.databases import pg_env
from tests.support.legacy_data import (
    create_legacy_schema,
    dump_difference,
    load_legacy_dataset,
    make_legacy_dataset,
    normalise_dump,
    pg_program,
    schema_dump,
)
from tests.support.processes import cli, kill, running_query, shipped_plus, start, until

pytestmark = pytest.mark.citus

N_LEGACY = 20_000
CITUS_TABLES = """
SELECT table_name::text, citus_table_type, distribution_column, shard_count,
       colocation_id = (SELECT colocation_id FROM citus_tables
                        WHERE table_name = 'trades'::regclass) AS with_trades
FROM citus_tables ORDER BY 1
"""
DISTRIBUTED = [
    ("book_ticker_snapshots", "distributed", "symbol_base", 4, True),
    ("trades", "distributed", "symbol_base", 4, True),
]


@pytest.fixture
async def citus_db() -> AsyncIterator[DatabaseConfig]:
    async for config in citus_database(citus_admin()):
        yield config


@pytest.fixture
async def second_citus_db() -> AsyncIterator[DatabaseConfig]:
    async for config in citus_database(citus_admin()):
        yield config


async def _fetch(db: DatabaseConfig, sql: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(**db.connect_kwargs())
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


async def _load_legacy(db: DatabaseConfig, n: int = N_LEGACY) -> int:
    conn = await asyncpg.connect(**db.connect_kwargs())
    try:
        await create_legacy_schema(conn)
        await load_legacy_dataset(conn, make_legacy_dataset(n))
        return int(await conn.fetchval("SELECT count(*) FROM trades"))
    finally:
        await conn.close()


async def _apply(
    db: DatabaseConfig, tmp_path: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        run_cli_process, ["apply", "--verbose", *extra], pg_env(db), tmp_path, 600
    )


async def _clean_schema(db: DatabaseConfig) -> list[str]:
    """The coordinator's dump once Citus dropped the shards a distribution left behind."""
    conn = await asyncpg.connect(**db.connect_kwargs())
    try:
        await conn.execute("CALL citus_cleanup_orphaned_resources()")
    finally:
        await conn.close()
    return normalise_dump(await schema_dump(db, schemas=("public", "cex_migration")))


class _Collector:
    """A writer inserting trades of several pairs at a steady rate until stopped."""

    def __init__(self, db: DatabaseConfig, per_batch: int = 20, every: float = 0.05) -> None:
        self.writer = TradeWriter(lambda: asyncpg.connect(**db.connect_kwargs()))
        self.per_batch, self.every = per_batch, every
        self.sent = 0
        self.result = WriteResult()
        self.slowest = 0.0
        self.stop = asyncio.Event()

    async def run(self) -> None:
        ids = itertools.count()
        bases = ("BTC", "ETH", "SOL", "XRP", "DOGE")
        while not self.stop.is_set():
            now = dt.datetime.now(dt.timezone.utc)
            batch = [
                Trade(
                    timestamp=now,
                    exchange="binance",
                    symbol_base=bases[i % len(bases)],
                    symbol_quote="USDT",
                    price=Decimal("1.5"),
                    quantity=Decimal("2"),
                    side="buy",
                    trade_id=f"w-{i}",
                )
                for i in itertools.islice(ids, self.per_batch)
            ]
            started = time.monotonic()
            self.result.add(await self.writer.write(batch))
            self.slowest = max(self.slowest, time.monotonic() - started)
            self.sent += len(batch)
            await asyncio.sleep(self.every)
        await self.writer.close()


async def test_a_legacy_database_moves_to_citus_while_a_writer_collects(
    citus_db: DatabaseConfig, tmp_path: Path
) -> None:
    """001 runs on the local tables, 007 distributes them; nothing written is lost or doubled.

    As on an engine's boot: the foreground steps first, then the writer starts
    while the background steps (001's backfill ... 007's distribution) run.
    """
    legacy = await _load_legacy(citus_db)
    foreground = await _apply(citus_db, tmp_path, "--no-background")
    assert foreground.returncode == ExitCode.OK, foreground.stdout + foreground.stderr
    collector = _Collector(citus_db)
    writing = asyncio.create_task(collector.run())
    try:
        result = await _apply(citus_db, tmp_path)
    finally:
        await asyncio.sleep(1.0)  # a few batches after the switch-over too
        collector.stop.set()
        await writing

    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    assert "step distribute_trades done" in result.stderr + result.stdout
    assert await _fetch(citus_db, CITUS_TABLES) == DISTRIBUTED
    # Every trade the writer sent is stored once, and it counted them right.
    written = await _fetch(
        citus_db,
        "SELECT count(*), count(DISTINCT trade_id) FROM trades WHERE trade_id LIKE 'w-%'",
    )
    assert written == [(collector.sent, collector.sent)]
    assert collector.result.inserted == collector.sent
    print(
        f"writer: {collector.sent} trades, {collector.result.retries} retries, "
        f"slowest batch {collector.slowest * 1000:.0f} ms"
    )
    # Every legacy row is in trades, trades_unsplit, or the duplicate archive.
    (kept, unsplit, archived, null_base) = (
        await _fetch(
            citus_db,
            "SELECT (SELECT count(*) FROM trades"
            " WHERE trade_id IS NULL OR trade_id NOT LIKE 'w-%'),"
            " (SELECT count(*) FROM trades_unsplit),"
            " (SELECT count(*) FROM trades_duplicates_removed),"
            " (SELECT count(*) FROM trades_unsplit WHERE symbol_base IS NOT NULL)",
        )
    )[0]
    assert kept + unsplit + archived == legacy, (kept, unsplit, archived, legacy)
    assert unsplit > 0 and null_base == 0
    # The primary key holds the distribution column; 005's key does too, by its old name.
    keys = await _fetch(
        citus_db,
        "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index "
        "WHERE indrelid = 'trades'::regclass AND indisunique ORDER BY 1",
    )
    assert [name for name, _ in keys] == ["trades_pkey", "uq_trades_dedup", "uq_trades_natural_key"]
    assert all("symbol_base" in definition for _, definition in keys)
    status = await asyncio.to_thread(
        run_cli_process, ["status", "--exit-code"], pg_env(citus_db), tmp_path
    )
    assert status.returncode == ExitCode.OK, status.stdout + status.stderr


async def test_fresh_and_legacy_citus_databases_end_with_the_same_schema(
    citus_db: DatabaseConfig, second_citus_db: DatabaseConfig, tmp_path: Path
) -> None:
    await _load_legacy(second_citus_db, 2_000)
    fresh = await _apply(citus_db, tmp_path)
    assert fresh.returncode == ExitCode.OK, fresh.stdout + fresh.stderr
    legacy = await _apply(second_citus_db, tmp_path)
    assert legacy.returncode == ExitCode.OK, legacy.stdout + legacy.stderr

    assert await _fetch(citus_db, CITUS_TABLES) == DISTRIBUTED
    assert await _fetch(second_citus_db, CITUS_TABLES) == DISTRIBUTED
    difference = dump_difference(
        await _clean_schema(citus_db), await _clean_schema(second_citus_db)
    )
    assert difference == "", difference


async def _dump_restore(source: DatabaseConfig, target: DatabaseConfig, tmp_path: Path) -> None:
    """pg_dump of the single-node database, pg_restore onto the coordinator (as an operator)."""
    pg_dump, env = pg_program("pg_dump", 15)
    pg_restore, _ = pg_program("pg_restore", 15)
    archive = tmp_path / "single-node.dump"
    subprocess.run(
        [pg_dump, "-Fc", "--no-owner", "-f", str(archive)],
        env=pg_env(source, env),
        check=True,
        capture_output=True,
    )
    restored = subprocess.run(
        [pg_restore, "--no-owner", "--exit-on-error", "-d", target.database, str(archive)],
        env=pg_env(target, env),
        capture_output=True,
        text=True,
    )
    assert restored.returncode == 0, restored.stderr


async def test_a_migrated_single_node_database_restored_onto_the_coordinator_is_distributed(
    db: DatabaseConfig, citus_db: DatabaseConfig, tmp_path: Path
) -> None:
    """001 to 006 applied on one server (007 skipped there: no Citus), then restored: 007 runs."""
    legacy = await _load_legacy(db)
    single = await _apply(db, tmp_path)
    assert single.returncode == ExitCode.OK, single.stdout + single.stderr
    assert "skipped 007_distribute_on_citus.sql: extension citus is not installed" in single.stdout
    await _dump_restore(db, citus_db, tmp_path)

    pending = await asyncio.to_thread(
        run_cli_process, ["status", "--exit-code"], pg_env(citus_db), tmp_path
    )
    assert pending.returncode != ExitCode.OK
    assert "007" in pending.stdout and "pending" in pending.stdout
    result = await _apply(citus_db, tmp_path)
    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    assert "applied 007" in result.stdout + result.stderr

    assert await _fetch(citus_db, CITUS_TABLES) == DISTRIBUTED
    counts = (
        "SELECT (SELECT count(*) FROM trades), (SELECT count(*) FROM trades_duplicates_removed)"
    )
    (single_trades, single_archived) = (await _fetch(db, counts))[0]
    (trades, archived) = (await _fetch(citus_db, counts))[0]
    (unsplit,) = (await _fetch(citus_db, "SELECT count(*) FROM trades_unsplit"))[0]
    assert (trades + unsplit, archived) == (single_trades, single_archived)
    assert single_trades + single_archived == legacy

    # The OHLCV views answer the same on the distributed tables as on the single node.
    for view in ("trades_ohlcv_1m", "trades_ohlcv_1h"):
        query = f"SELECT * FROM {view} ORDER BY bucket, exchange, symbol_base, symbol_quote"
        on_one_server = await _fetch(db, query)
        assert on_one_server, view
        assert await _fetch(citus_db, query) == on_one_server, view


async def test_sixteen_engines_booting_at_once_on_citus_apply_each_migration_once(
    citus_db: DatabaseConfig,
) -> None:
    # Engines that find the background work taken look again every 0.5 s (not 30 s).
    settings = MigrationSettings(background_retry_interval=0.5)
    reports = await asyncio.gather(
        *(
            ensure_schema(citus_db, features={"trade_collection": True}, settings=settings)
            for _ in range(16)
        )
    )
    applied = sorted(v for r in reports for v in r.applied)
    assert applied == ["000", "001", "002", "003", "004", "005", "006", "007"]
    works = [r.background for r in reports if r.background is not None]
    assert works, "nobody took the background work (007's distribution)"
    for work in works:
        await asyncio.wait_for(work.wait(), 300)
    history = await _fetch(
        citus_db, "SELECT version, state FROM migration_history WHERE version ~ '^[0-9]' ORDER BY 1"
    )
    assert history == [(v, "applied") for v in applied]
    assert await _fetch(citus_db, CITUS_TABLES) == DISTRIBUTED


SHARD_INDEXES = """
SELECT count(*) FILTER (WHERE result = 'valid'), count(*) FILTER (WHERE result = 'invalid'),
       count(*)
FROM run_command_on_placements('trades', $$SELECT coalesce((SELECT CASE WHEN indisvalid
    THEN 'valid' ELSE 'invalid' END FROM pg_index WHERE indrelid = '%s'::regclass
    AND indexrelid::regclass::text LIKE 'uq_probe%%'), 'absent')$$)
"""
UNIQUE_PROBE = """-- migrate:feature trade_collection
-- migrate:depends 007
-- migrate:step probe transaction:false
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS uq_probe ON trades (exchange, symbol_base, price);
"""


async def test_a_failed_unique_build_on_a_distributed_table_is_cleared_on_every_shard(
    citus_db: DatabaseConfig, tmp_path: Path
) -> None:
    """Citus leaves INVALID copies on some shards; the re-run drops them all and builds anew."""
    directory = shipped_plus(tmp_path / "m", {"090_unique_probe.sql": UNIQUE_PROBE})
    env = pg_env(citus_db, {"CEX_MIGRATIONS_DIR": str(directory)})
    shipped = await _apply(citus_db, tmp_path, "--target", "007")
    assert shipped.returncode == ExitCode.OK, shipped.stdout + shipped.stderr
    conn = await asyncpg.connect(**citus_db.connect_kwargs())
    try:
        for trade_id in ("a", "b"):  # the same (exchange, base, price) twice
            await conn.execute(
                "INSERT INTO trades (timestamp, exchange, symbol, symbol_base, symbol_quote, "
                "price, quantity, side, trade_id) "
                "VALUES (now(), 'binance', 'BTCUSDT', 'BTC', 'USDT', 1, 1, 'buy', $1)",
                trade_id,
            )
        failed = await asyncio.to_thread(run_cli_process, [], env, tmp_path)
        assert failed.returncode == ExitCode.MIGRATION_FAILED, failed.stdout + failed.stderr
        assert "090_unique_probe" in failed.stderr and "is duplicated" in failed.stderr
        valid, invalid, placements = (await conn.fetch(SHARD_INDEXES))[0]
        # Shards that built before the duplicate was met keep a valid copy, one an invalid.
        assert invalid >= 1 and valid < placements == 4, (valid, invalid, placements)

        await conn.execute("DELETE FROM trades WHERE trade_id = 'b'")
        again = await asyncio.to_thread(run_cli_process, [], env, tmp_path)
        assert again.returncode == ExitCode.OK, again.stdout + again.stderr
        assert "dropping INVALID index uq_probe" in again.stdout + again.stderr
        assert tuple((await conn.fetch(SHARD_INDEXES))[0]) == (4, 0, 4)
    finally:
        await conn.close()


async def test_a_distribution_cut_off_mid_way_resumes_and_loses_nothing(
    citus_db: DatabaseConfig, tmp_path: Path
) -> None:
    """The CLI is killed while Citus copies trades to the shards; the next run finishes it."""
    legacy = await _load_legacy(citus_db, 100_000)
    env = pg_env(citus_db)
    first = start(cli(), env, tmp_path, tmp_path / "first.log")
    try:
        await until(
            lambda: running_query(citus_db, "cex_migration.distribute_table('public.trades')"),
            "the distribution of trades",
            300,
        )
        # Citus lists what the operation makes in pg_dist_cleanup as it starts copying.
        await until(
            lambda: _fetch(citus_db, "SELECT 1 FROM pg_dist_cleanup"), "the copy under way", 60
        )
        # The runner dies and its session with it (a server-side kill, a cut network):
        # Citus aborts the copy half-way.
        kill(first)
        await _fetch(
            citus_db,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE 'CALL cex_migration.distribute_table%' AND pid <> pg_backend_pid()",
        )
    finally:
        if first.poll() is None:
            kill(first)
    # Cut off: trades is a Citus local table (not yet distributed), every row still in it.
    assert await _fetch(citus_db, "SELECT citus_table_type FROM citus_tables") == [("local",)]
    (rows,) = (await _fetch(citus_db, "SELECT count(*) FROM trades"))[0]
    assert rows > 0

    # The next run resumes at the step, finds trades not distributed, clears what
    # Citus left (slots, publications, half-made shards) and distributes it.
    again = await _apply(citus_db, tmp_path, "--wait-background")
    assert again.returncode == ExitCode.OK, again.stdout + again.stderr
    assert await _fetch(citus_db, CITUS_TABLES) == DISTRIBUTED
    (total,) = (
        await _fetch(
            citus_db,
            "SELECT (SELECT count(*) FROM trades) + (SELECT count(*) FROM trades_unsplit)"
            " + (SELECT count(*) FROM trades_duplicates_removed)",
        )
    )[0]
    assert total == legacy
    assert (await _fetch(citus_db, "SELECT count(*) FROM trades"))[0] == (rows,)
    assert await _fetch(citus_db, "SELECT count(*) FROM pg_replication_slots") == [(0,)]


async def test_a_distribution_waits_for_another_on_the_cluster_then_refuses_naming_it(
    citus_db: DatabaseConfig, tmp_path: Path
) -> None:
    """Citus hangs a second concurrent distribution forever: 007 waits, then names the other."""
    admin = citus_admin()
    conn = await asyncpg.connect(**admin.connect_kwargs())
    try:
        await conn.execute(f'ALTER DATABASE "{citus_db.database}" SET cex.distribution_wait_s = 2')
    finally:
        await conn.close()
    # Another database's session that looks like a distribution in progress.
    other = await asyncpg.connect(**admin.with_database("postgres").connect_kwargs())
    pid = other.get_server_pid()
    busy = asyncio.create_task(
        other.execute("SELECT pg_sleep(120) /* create_distributed_table_concurrently */")
    )
    try:
        await until(
            lambda: _fetch(
                admin, f"SELECT 1 FROM pg_stat_activity WHERE pid = {pid} AND state = 'active'"
            ),
            "the other session",
            30,
        )
        refused = await _apply(citus_db, tmp_path)
    finally:
        await _fetch(admin, f"SELECT pg_cancel_backend({pid})")
        with contextlib.suppress(asyncpg.QueryCanceledError):
            await busy
        await other.close()
    assert refused.returncode == ExitCode.MIGRATION_FAILED, refused.stdout + refused.stderr
    assert (
        f"another Citus distribution is running on this cluster (pid {pid}, database postgres)"
        in refused.stderr
    ), refused.stderr
    assert await _fetch(citus_db, "SELECT count(*) FROM citus_tables") == [(0,)]

    again = await _apply(citus_db, tmp_path)
    assert again.returncode == ExitCode.OK, again.stdout + again.stderr
    assert await _fetch(citus_db, CITUS_TABLES) == DISTRIBUTED
