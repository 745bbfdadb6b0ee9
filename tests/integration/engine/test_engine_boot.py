"""Engine boot on a real PostgreSQL: schema first, then collectors, and a clean stop.

These use the migrations shipped in the package (000, 001, 002, ...), so they
check the product as an operator boots it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from cex_arbitrage.config import AppConfig, load_config
from cex_arbitrage.db.migrations import DirectorySource, PackageSource
from cex_arbitrage.db.migrator.source import load_migrations
from cex_arbitrage.db.structs import DatabaseConfig
from cex_arbitrage.engine import TRADE_FEATURE, Engine, EngineSources
from cex_arbitrage.errors import ChecksumMismatchError, MigrationError
from tests.support.databases import pg_env
from tests.support.paths import REPO, shipped_versions

MIGRATIONS = REPO / "cex_arbitrage" / "db" / "migrations"
SAMPLE = REPO / "cex_arbitrage" / "samples" / "replay.jsonl"


def make_config(
    db: DatabaseConfig,
    directory: Path,
    *,
    trades: bool = True,
    boot_wait: float = 30,
    pool_max: int = 2,
) -> AppConfig:
    """The config an operator would write, read the way the engine reads it."""
    directory.mkdir(parents=True, exist_ok=True)
    file = directory / "config.yaml"
    file.write_text(
        f"database:\n  pool_min_size: 1\n  pool_max_size: {pool_max}\n"
        f"features:\n  {TRADE_FEATURE}: {'true' if trades else 'false'}\n"
        f"migrations:\n  boot_wait_timeout: {boot_wait}\n"
        "collectors:\n  batch_size: 100\n  flush_interval: 0.1\n  max_retries: 3\n"
    )
    return load_config(file, env=pg_env(db), cwd=directory)


def sample_line(kind: str) -> str:
    """The first line of the bundled sample of this kind ("trade" or "book_ticker")."""
    return next(line for line in SAMPLE.read_text().splitlines() if f'"{kind}"' in line)


def trade_migrations() -> list[str]:
    """The trade feature's migrations that apply on plain PostgreSQL (not 007: Citus only)."""
    return [
        m.version
        for m in load_migrations(PackageSource("cex_arbitrage.db.migrations"))
        if m.feature == TRADE_FEATURE and m.extension is None
    ]


def all_migrations() -> list[str]:
    """What the engine applies on plain PostgreSQL: every file but 007 (Citus only)."""
    return shipped_versions()


async def history(conn: asyncpg.Connection) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT version, state FROM migration_history WHERE version ~ '^[0-9]+$' ORDER BY version"
    )
    return {r["version"]: r["state"] for r in rows}


async def wait_until(
    conn: asyncpg.Connection, query: str, expected: object, timeout: float = 10
) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = await conn.fetchval(query)
        if value == expected or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(engine: Engine) -> AsyncIterator[Engine]:
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


async def test_sixteen_engines_booting_at_once_all_start_and_migrate_once(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    config = make_config(db, tmp_path, pool_max=1)
    engines = [Engine(config) for _ in range(16)]
    results = await asyncio.gather(*(e.start() for e in engines), return_exceptions=True)
    try:
        assert [r for r in results if r is not None] == []
        assert all(
            e.collectors[name].running for e in engines for name in ("book_tickers", "trades")
        )
        applied = [v for e in engines for v in (e.schema.applied if e.schema else [])]
        # Each migration applied by exactly one engine; the other 15 saw it done.
        assert sorted(applied) == all_migrations()
        states = await history(conn)
        assert list(states) == all_migrations()
        assert set(states.values()) <= {"applied", "background"}
    finally:
        await asyncio.gather(*(e.stop() for e in engines))
    assert not any(c.running for e in engines for c in e.collectors.values())


async def test_trade_flag_off_skips_trade_migrations_and_collector_then_on_applies_them(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    gated = trade_migrations()
    assert gated, "migration 001 (feature trade_collection) must ship in the package"
    feed = tmp_path / "feed.jsonl"
    feed.write_text("")

    off = Engine(make_config(db, tmp_path / "off", trades=False), EngineSources.replay(feed))
    async with running(off):
        assert "trades" not in off.collectors
        assert off.collectors["book_tickers"].running
        assert off.schema is not None and off.schema.applied
        assert not set(gated) & set(off.schema.applied)
        assert not set(gated) & set(await history(conn))

    on = Engine(
        make_config(db, tmp_path / "on", trades=True), EngineSources.replay(feed, follow=True)
    )
    async with running(on):
        assert on.schema is not None and on.schema.applied == gated
        assert set(gated) <= set(await history(conn))
        assert on.collectors["trades"].running
        # The trade collector is really writing: a line appended to the feed lands.
        with feed.open("a") as out:
            out.write(sample_line("trade") + "\n")
        assert await wait_until(conn, "SELECT count(*) FROM trades", 1) == 1


async def test_book_tickers_are_collected_with_the_trade_flag_off(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    feed = tmp_path / "feed.jsonl"
    feed.write_text(sample_line("book_ticker") + "\n")
    engine = Engine(make_config(db, tmp_path, trades=False), EngineSources.replay(feed))
    await engine.run(handle_signals=False)  # the feed ends: flush, stop
    assert await conn.fetchval("SELECT count(*) FROM book_ticker_snapshots") == 1


async def test_edited_applied_migration_is_refused_and_no_collector_starts(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    directory = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, directory, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    config = make_config(db, tmp_path)
    async with running(Engine(config, migration_source=DirectorySource(directory))):
        pass
    edited = directory / "002_add_ingest_batch_log.sql"
    edited.write_text(edited.read_text() + "\n-- a harmless-looking edit\n")

    engine = Engine(config, migration_source=DirectorySource(directory))
    with pytest.raises(ChecksumMismatchError, match="002"):
        await engine.start()
    assert engine.collectors == {}
    assert engine.pool is None
    # Refused before anything ran: the recorded history is untouched.
    assert set((await history(conn)).values()) <= {"applied", "background"}


async def test_boot_failure_is_a_migration_error_with_an_exit_code(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    config = make_config(db.with_database("cex_no_such_database"), tmp_path, boot_wait=0)
    engine = Engine(config)
    with pytest.raises(MigrationError) as raised:
        await engine.start()
    assert raised.value.exit_code != 0
    assert engine.collectors == {}


class LateProxy:
    """A TCP proxy to the test server that starts listening only after a delay.

    Before it listens, connecting to its port is refused, exactly like a
    database whose server has not started yet.
    """

    def __init__(self, upstream: DatabaseConfig) -> None:
        self.upstream = upstream
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.server: asyncio.Server | None = None
        self.pipes: set[asyncio.Task[None]] = set()

    async def start_after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.upstream.host, self.upstream.port)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self.pipes.add(task)
            task.add_done_callback(self.pipes.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.pipes):
            task.cancel()
        await asyncio.gather(*self.pipes, return_exceptions=True)


@pytest.mark.slow
async def test_engine_waits_for_a_database_that_comes_up_late(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    proxy = LateProxy(db)
    late = DatabaseConfig(
        host="127.0.0.1",
        port=proxy.port,
        database=db.database,
        user=db.user,
        password=db.password,
        connect_timeout=2,
    )
    engine = Engine(make_config(late, tmp_path, boot_wait=30))
    opening = asyncio.create_task(proxy.start_after(5))
    started = time.monotonic()
    try:
        async with running(engine):
            waited = time.monotonic() - started
            assert waited >= 5
            assert engine.collectors["book_tickers"].running
            assert list(await history(conn)) == all_migrations()
    finally:
        opening.cancel()
        await proxy.close()


def run_engine(args: list[str], db: DatabaseConfig, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cex_arbitrage", "run", *args],
        env=pg_env(db),
        cwd=str(cwd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def sample_counts() -> tuple[int, int]:
    """(book tickers, distinct trades) in the bundled sample."""
    books, keys = 0, set()
    for line in SAMPLE.read_text().splitlines():
        data = json.loads(line)
        if data["type"] == "book_ticker":
            books += 1
        else:
            keys.add((data["exchange"], data.get("trade_id") or line, str(data["timestamp"])))
    return books, len(keys)


async def test_run_replay_boots_migrates_ingests_and_prints_ohlcv(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    process = run_engine(["--replay", "sample"], db, tmp_path)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    books, trades = sample_counts()
    assert await conn.fetchval("SELECT count(*) FROM book_ticker_snapshots") == books
    assert await conn.fetchval("SELECT count(*) FROM trades") == trades
    assert "trades_ohlcv_1m" in out
    table = out.split("trades_ohlcv_1m", 1)[1].splitlines()
    assert table[1].split()[:4] == ["bucket", "exchange", "symbol_base", "symbol_quote"]
    assert len(table) > 3 and "2024-05-01T12:00:00+00:00" in table[2]
    assert db.database in err and "engine stopped" in err  # one line per event, by display


async def test_sigterm_stops_collectors_after_flushing(
    db: DatabaseConfig, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    feed = tmp_path / "feed.jsonl"
    shutil.copy(SAMPLE, feed)
    (tmp_path / "config.yaml").write_text(
        # Batches too large and intervals too long to flush on their own.
        "collectors:\n  batch_size: 100000\n  flush_interval: 3600\n"
    )
    process = run_engine(["--replay", str(feed), "--follow"], db, tmp_path)
    try:
        assert process.stderr is not None
        os.set_blocking(process.stderr.fileno(), True)
        for line in process.stderr:
            if "collector trades started" in line:
                break
        else:
            raise AssertionError("the engine never started its trade collector")
        await asyncio.sleep(1.0)  # the whole file is read into the buffers by now
        assert await conn.fetchval("SELECT count(*) FROM trades") == 0
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, rest
    books, trades = sample_counts()
    assert await conn.fetchval("SELECT count(*) FROM trades") == trades
    assert await conn.fetchval("SELECT count(*) FROM book_ticker_snapshots") == books
    assert "SIGTERM" in rest
