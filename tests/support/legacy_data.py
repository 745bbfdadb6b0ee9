"""The legacy starting point of migration 001, and ways to compare schemas.

- `create_legacy_schema`: the tables exactly as tests/support/legacy-schema.sql (a copy
  of the spec's file) creates them, optionally as hypertables as the legacy
  init script did on TimescaleDB deployments.
- `make_legacy_dataset` / `load_legacy_dataset`: a deterministic data set of
  the kind old deployments hold (every symbol spelling, replayed duplicates,
  rows without trade_id, symbols no rule splits), with what migration 001
  must make of each row, computed here independently of the SQL.
- `schema_dump` / `normalise_dump`: `pg_dump --schema-only` by the pg_dump of
  the server's major version, as a sorted list of statements.
- `run_psql` / `run_steps_psql`: apply a migration file (or some of its steps)
  the way an operator does with psql.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import random
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from decimal import Decimal
from pathlib import Path

import asyncpg

from cex_arbitrage.db.migrator.model import Migration
from cex_arbitrage.db.migrator.parse import parse_migration
from cex_arbitrage.db.migrator.split import split_statements
from cex_arbitrage.db.structs import DatabaseConfig
from tests.support.databases import pg_env
from tests.support.paths import MIGRATIONS, SUPPORT

LEGACY_SCHEMA = SUPPORT / "legacy-schema.sql"
MIGRATION_000 = MIGRATIONS / "000_create_migration_infrastructure.sql"
MIGRATION_001 = MIGRATIONS / "001_add_trade_collection_support.sql"
# The routines 001 calls: psql runs them after 000 and before 001 (README, manual SQL).
ROUTINES = tuple(sorted(MIGRATIONS.glob("R__*.sql")))
# Everything an operator runs by hand for 001, in order.
PSQL_ORDER_001 = (MIGRATION_000, *ROUTINES, MIGRATION_001)

# The two lines the legacy file leaves commented out ("only where the
# timescaledb extension is installed").
LEGACY_HYPERTABLES = (
    "SELECT create_hypertable('book_ticker_snapshots', 'timestamp', if_not_exists => TRUE);",
    "SELECT create_hypertable('trades', 'timestamp', if_not_exists => TRUE);",
)

# ---------------------------------------------------------------------------
# Symbol rules, written again in Python as the reference the SQL is held to.

KNOWN_QUOTES = (
    "FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USDP",
    "USD", "EUR", "GBP", "TRY", "BRL", "DAI", "BTC", "ETH", "BNB",
)  # fmt: skip
_SEPARATED = re.compile(r"^([A-Z0-9]+)[-_/]([A-Z0-9]+)$")
_PLAIN = re.compile(r"^[A-Z0-9]+$")


def reference_split(symbol: str) -> tuple[str, str] | None:
    """(base, quote) by the rules of docs/schema.md, or None when no rule applies."""
    s = symbol.strip(" \t\r\n").upper()
    parts: tuple[str, str] | None = None
    m = _SEPARATED.match(s)
    if m:
        parts = (m.group(1), m.group(2))
    elif _PLAIN.match(s):
        for quote in sorted(KNOWN_QUOTES, key=len, reverse=True):
            if len(s) > len(quote) and s.endswith(quote):
                parts = (s[: -len(quote)], quote)
                break
    if parts is None or len(parts[0]) > 20 or len(parts[1]) > 20:
        return None
    return parts


# Spellings seen in the field, and some that no rule may split.
SPLIT_CASES: dict[str, tuple[str, str] | None] = {
    "BTCUSDT": ("BTC", "USDT"),
    "BTC_USDT": ("BTC", "USDT"),
    "BTC-USDT": ("BTC", "USDT"),
    "BTC/USDT": ("BTC", "USDT"),
    "btcusdt": ("BTC", "USDT"),
    "btc_usdt": ("BTC", "USDT"),
    " eth-usdc ": ("ETH", "USDC"),
    "ETHBTC": ("ETH", "BTC"),
    "BNBETH": ("BNB", "ETH"),
    "BTCFDUSD": ("BTC", "FDUSD"),
    "BTCTUSD": ("BTC", "TUSD"),
    "BTCUSD": ("BTC", "USD"),
    "BTCDAI": ("BTC", "DAI"),
    "USDTTRY": ("USDT", "TRY"),
    "USDCUSDT": ("USDC", "USDT"),
    "1000PEPEUSDT": ("1000PEPE", "USDT"),
    "1000PEPE_USDT": ("1000PEPE", "USDT"),
    "SOL/EUR": ("SOL", "EUR"),
    "XYZ/ABC": ("XYZ", "ABC"),  # separated: any alphanumeric parts
    "XYZ": None,
    "???": None,
    "BTC__USDT": None,
    "BTC_USDT_PERP": None,
    "BTC-": None,
    "-USDT": None,
    "USDT": None,  # the quote alone leaves no base
    "BTC": None,
    "": None,
    "   ": None,
    "BTC USDT": None,
    "ÉTHUSDT": None,
    "AVERYLONGTOKENNAMEOVERTWENTYUSDT": None,  # base longer than VARCHAR(20)
}


# ---------------------------------------------------------------------------
# Legacy data set.

TRADE_COLUMNS = (
    "id", "timestamp", "exchange", "symbol", "price", "quantity", "side", "trade_id", "created_at",
)  # fmt: skip
BOOK_TICKER_COLUMNS = (
    "id", "timestamp", "exchange", "symbol_base", "symbol_quote",
    "bid_price", "bid_qty", "ask_price", "ask_qty", "created_at",
)  # fmt: skip

# exchange -> how it spells a pair
_SPELLINGS = {
    "MEXC": lambda b, q: f"{b}{q}",
    "GATEIO": lambda b, q: f"{b}_{q}",
    "OKX": lambda b, q: f"{b}-{q}",
    "KRAKEN": lambda b, q: f"{b}/{q}",
    "BINANCE": lambda b, q: f"{b}{q}".lower(),
    "GATEIO_FUTURES": lambda b, q: f" {b.lower()}_{q} ",
}
_PAIRS = (
    ("BTC", "USDT"), ("ETH", "USDT"), ("ETH", "BTC"), ("SOL", "USDC"), ("BNB", "FDUSD"),
    ("XRP", "TUSD"), ("DOGE", "TRY"), ("ADA", "EUR"), ("LINK", "ETH"), ("1000PEPE", "USDT"),
    ("BTC", "DAI"), ("BTC", "USD"),
)  # fmt: skip
_UNSPLITTABLE = ("XYZ", "???", "BTC__USDT", "BTC_USDT_PERP", "USDT", "", "ÉTHUSDT")
EPOCH = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


@dataclasses.dataclass(frozen=True)
class LegacyDataset:
    """Legacy rows and what migration 001 must make of them."""

    trades: list[tuple[object, ...]]  # in TRADE_COLUMNS order
    book_tickers: list[tuple[object, ...]]  # in BOOK_TICKER_COLUMNS order

    @property
    def by_id(self) -> dict[int, tuple[object, ...]]:
        return {int(row[0]): row for row in self.trades}  # type: ignore[call-overload]

    def expected_split(self) -> dict[int, tuple[str, str] | None]:
        return {int(r[0]): reference_split(str(r[3])) for r in self.trades}  # type: ignore[call-overload]

    def expected_removed(self, *, natural_keys: bool = False) -> dict[int, int]:
        """id of each replayed duplicate -> id of the row of the same trade that stays.

        001 archives trades with a trade_id; with `natural_keys` (005 ran), trades
        without one that repeat exchange, symbol, timestamp, price, quantity and side too.
        """
        kept: dict[tuple[object, ...], int] = {}
        removed: dict[int, int] = {}
        for row in sorted(self.trades, key=lambda r: r[0]):  # type: ignore[arg-type, return-value]
            parts = reference_split(str(row[3]))
            key: tuple[object, ...]
            if row[7] is None and natural_keys:  # 005: exchange, raw symbol, time, values
                key = ("no id", row[2], row[3], row[1], row[4], row[5], row[6])
            elif parts is None or row[7] is None:
                continue
            else:
                key = (row[2], parts[0], parts[1], row[7])
            if key in kept:
                removed[int(row[0])] = kept[key]  # type: ignore[call-overload]
            else:
                kept[key] = int(row[0])  # type: ignore[call-overload]
        return removed

    def unsplittable_count(self) -> int:
        return sum(1 for r in self.trades if reference_split(str(r[3])) is None)


def make_legacy_dataset(n_trades: int = 100_000, seed: int = 1, days: int = 40) -> LegacyDataset:
    """About n_trades rows over `days` days (several 7-day hypertable chunks).

    ~4% replayed duplicates (same exchange, symbol, trade_id and usually the
    same timestamp, appended later as a reconnect replays them; some spelled
    differently on the same exchange, some with another timestamp), ~3% rows
    without trade_id (some identical to each other), ~1% unsplittable symbols.
    Timestamps are distinct per pair, so open/close are unambiguous.
    """
    rng = random.Random(seed)
    rows: list[tuple[object, ...]] = []
    originals: list[tuple[object, ...]] = []
    span = dt.timedelta(days=days).total_seconds()
    step = span / max(n_trades, 1)
    next_trade_id: dict[tuple[str, str, str], int] = {}
    created = EPOCH + dt.timedelta(days=days + 1)

    def add(row: tuple[object, ...]) -> None:
        rows.append((len(rows) + 1, *row))

    for i in range(n_trades):
        ts = EPOCH + dt.timedelta(seconds=i * step, microseconds=i % 997)
        roll = rng.random()
        exchange = rng.choice(tuple(_SPELLINGS))
        side = "buy" if rng.random() < 0.5 else "sell"
        price = Decimal(rng.randint(1, 10_000_000)) / Decimal(1000)
        qty = Decimal(rng.randint(1, 5_000_000)) / Decimal(100_000)
        if roll < 0.01:
            symbol = rng.choice(_UNSPLITTABLE)
            tid: str | None = str(rng.randint(1, 50))  # repeats: unsplittable, so all kept
            add((ts, exchange, symbol, price, qty, side, tid, created))
            continue
        base, quote = rng.choice(_PAIRS)
        symbol = _SPELLINGS[exchange](base, quote)
        if roll < 0.04:
            # no trade_id; sometimes the same trade written twice: both stay
            add((ts, exchange, symbol, price, qty, side, None, created))
            if rng.random() < 0.3:
                add((ts, exchange, symbol, price, qty, side, None, created))
            continue
        key = (exchange, base, quote)
        next_trade_id[key] = next_trade_id.get(key, 1_000_000) + rng.randint(1, 3)
        tid = str(next_trade_id[key])
        row = (ts, exchange, symbol, price, qty, side, tid, created)
        add(row)
        originals.append(row)
        # a reconnect replays the last few trades
        if rng.random() < 0.02 and originals:
            for replay in originals[-rng.randint(1, 4) :]:
                r_ts, r_ex, r_sym, *rest = replay
                choice = rng.random()
                if choice < 0.2:  # the same pair spelled another way on that exchange
                    r_sym = (
                        str(r_sym).lower()
                        if str(r_sym) != str(r_sym).lower()
                        else str(r_sym).upper()
                    )
                elif choice < 0.3:  # stamped on receipt, not by the exchange
                    r_ts = r_ts + dt.timedelta(milliseconds=rng.randint(1, 900))  # type: ignore[operator]
                add((r_ts, r_ex, r_sym, *rest))

    book = []
    for i in range(max(n_trades // 50, 10)):
        base, quote = _PAIRS[i % len(_PAIRS)]
        bid = Decimal(rng.randint(1, 10_000_000)) / Decimal(1000)
        book.append(
            (
                i + 1,
                EPOCH + dt.timedelta(seconds=i * span / max(n_trades // 50, 10)),
                rng.choice(("MEXC", "GATEIO", "GATEIO_FUTURES")),
                base,
                quote,
                bid,
                Decimal("1.5"),
                bid + Decimal("0.001"),
                Decimal("2.25"),
                created,
            )
        )
    return LegacyDataset(trades=rows, book_tickers=book)


async def create_legacy_schema(conn: asyncpg.Connection, *, hypertables: bool = False) -> None:
    """The schema exactly as tests/support/legacy-schema.sql makes it (+ create_hypertable)."""
    await conn.execute(LEGACY_SCHEMA.read_text())
    if hypertables:
        for statement in LEGACY_HYPERTABLES:
            await conn.execute(statement)


async def load_legacy_dataset(conn: asyncpg.Connection, data: LegacyDataset) -> None:
    """COPY the rows in, then move the id sequences past them as BIGSERIAL would have."""
    await conn.copy_records_to_table("trades", records=data.trades, columns=list(TRADE_COLUMNS))
    await conn.copy_records_to_table(
        "book_ticker_snapshots", records=data.book_tickers, columns=list(BOOK_TICKER_COLUMNS)
    )
    for table in ("trades", "book_ticker_snapshots"):
        await conn.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
            f"(SELECT coalesce(max(id), 0) + 1 FROM {table}), false)"
        )
    await conn.execute("ANALYZE trades; ANALYZE book_ticker_snapshots")


async def fill_legacy_bulk(conn: asyncpg.Connection, n_rows: int, days: int = 60) -> None:
    """n_rows legacy trades made by the server itself (for timing runs of millions of rows).

    Same kinds of rows as make_legacy_dataset, without an expected outcome:
    3 in 100 replayed, 3 in 100 without trade_id, 1 in 100 unsplittable.
    """
    await conn.execute(
        """
        INSERT INTO trades (timestamp, exchange, symbol, price, quantity, side, trade_id)
        SELECT timestamptz '2024-01-01' + (g * ($2::float8 * 86400 / $1)) * interval '1 second',
               (ARRAY['MEXC','GATEIO','OKX','KRAKEN'])[1 + g % 4],
               CASE WHEN g % 100 = 7 THEN 'XYZ'
                    ELSE (ARRAY['BTCUSDT','BTC_USDT','BTC-USDT','BTC/USDT','ethbtc','SOL_USDC',
                                'bnbfdusd','ADA-EUR'])[1 + (g / 4) % 8] END,
               1 + (g % 1000) / 10.0, 0.001 + (g % 97) / 100.0,
               CASE WHEN g % 2 = 0 THEN 'buy' ELSE 'sell' END,
               CASE WHEN g % 100 = 3 THEN NULL
                    WHEN g % 100 IN (11, 12, 13) THEN (g - 10)::text
                    ELSE g::text END
        FROM generate_series(1, $1) AS g
        """,
        n_rows,
        days,
    )
    await conn.execute("ANALYZE trades")


# ---------------------------------------------------------------------------
# PostgreSQL client programs of the server's major version.


def _embedded_bin_dir() -> Path | None:
    try:
        from cex_arbitrage.embedded import _bin_dir

        return _bin_dir()
    except Exception:
        return None


def pg_program(name: str, server_major: int) -> tuple[str, dict[str, str]]:
    """Path of psql/pg_dump of the server's major version, and extra environment it needs.

    pg_dump refuses a newer server, and an older one dumps differently, so the
    version matters: /usr/lib/postgresql/MAJOR/bin, else the embedded
    PostgreSQL's bin dir (PG18 in CI), else PATH if it is that version. With
    none of that major (the version matrix's servers come without clients),
    the nearest newer one: pg_dump reads every older server, and the suite
    only compares dumps taken from one server by one pg_dump.
    """
    candidates: list[tuple[Path, dict[str, str]]] = [
        (Path(f"/usr/lib/postgresql/{server_major}/bin") / name, {})
    ]
    override = os.environ.get("CEX_TEST_PG_BIN")
    if override:
        candidates.insert(0, (Path(override) / name, {}))
    embedded = _embedded_bin_dir()
    if embedded is not None:
        from cex_arbitrage.embedded import _environment

        env = {k: v for k, v in _environment(embedded).items() if k == "LD_LIBRARY_PATH"}
        candidates.append((embedded / name, env))
    on_path = shutil.which(name)
    if on_path:
        candidates.append((Path(on_path), {}))
    newer: list[tuple[int, str, dict[str, str]]] = []
    for path, env in candidates:
        if not path.is_file():
            continue
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, env={**os.environ, **env}
        )
        m = re.search(r"(\d+)(?:\.\d+)?", out.stdout)
        if out.returncode != 0 or m is None:
            continue
        if int(m.group(1)) == server_major:
            return str(path), env
        if int(m.group(1)) > server_major:
            newer.append((int(m.group(1)), str(path), env))
    if newer:
        _, path_text, env = min(newer, key=lambda found: found[0])
        return path_text, env
    raise FileNotFoundError(f"no {name} of PostgreSQL {server_major} found (set CEX_TEST_PG_BIN)")


async def server_major(config: DatabaseConfig) -> int:
    conn = await asyncpg.connect(**config.connect_kwargs())
    try:
        return int(await conn.fetchval("SHOW server_version_num")) // 10000
    finally:
        await conn.close()


async def run_psql(
    config: DatabaseConfig,
    *,
    file: Path | None = None,
    sql: str | None = None,
    options: str | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """psql -X -v ON_ERROR_STOP=1 -f FILE (or -c SQL), as an operator runs it."""
    major = await server_major(config)
    try:
        psql, extra = pg_program("psql", major)
    except FileNotFoundError:
        psql, extra = shutil.which("psql") or "psql", {}
    args = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    if file is not None:
        args += ["-f", str(file)]
    if sql is not None:
        args += ["-c", sql]
    env = pg_env(config, extra)
    if options:
        env["PGOPTIONS"] = options
    # Not subprocess.run: the event loop stays free for concurrent writers in the test.
    process = await asyncio.create_subprocess_exec(
        *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return subprocess.CompletedProcess(
        args, process.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    )


def migration_001() -> Migration:
    path = MIGRATION_001
    return parse_migration(path.name, path.read_text())


async def run_steps_psql(
    config: DatabaseConfig, names: Iterable[str], *, options: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run some steps of 001 through psql the way the runner runs them.

    Transactional steps in one BEGIN/COMMIT, the others statement by statement
    in autocommit. For tests that stop between the foreground and the
    background part.
    """
    wanted = list(names)
    steps = {s.name: s for s in migration_001().steps}
    script = []
    for name in wanted:
        step = steps[name]
        if step.transactional:
            script.append(f"BEGIN;\n{step.sql}\n;\nCOMMIT;\n")
        else:
            script.extend(s + "\n" for s in step.statements)
    return await _run_psql_text(config, "".join(script), options)


async def _run_psql_text(
    config: DatabaseConfig, text: str, options: str | None
) -> subprocess.CompletedProcess[str]:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as handle:
        handle.write(text)
        path = Path(handle.name)
    try:
        return await run_psql(config, file=path, options=options)
    finally:
        os.unlink(path)


FOREGROUND_STEPS = (
    "tables",
    "columns",
    "archive_table",
    "dedup_index",
    "write_path",
    "aggregates",
    "grants",
)
BACKGROUND_STEPS = ("backfill", "validate_constraints", "query_indexes", "refresh_aggregates")


# ---------------------------------------------------------------------------
# Schema comparison.


async def schema_dump(config: DatabaseConfig, *, schemas: Sequence[str] = ("public",)) -> str:
    """pg_dump --schema-only of the given schemas (TimescaleDB's own ones are left out:
    chunks and materialisation tables differ with the data, not with the schema)."""
    major = await server_major(config)
    pg_dump, extra = pg_program("pg_dump", major)
    args = [pg_dump, "--schema-only"]
    for schema in schemas:
        args += ["-n", schema]
    result = subprocess.run(
        args, env=pg_env(config, extra), capture_output=True, text=True, timeout=300
    )
    if result.returncode != 0:
        raise RuntimeError(f"pg_dump failed: {result.stderr}")
    return result.stdout


def normalise_dump(text: str) -> list[str]:
    """The dump's statements, without comments, SET lines and the database name, sorted.

    pg_dump orders objects by dependencies and OIDs, which differ between two
    databases that reached the same schema by different paths.
    """
    statements = []
    for statement in split_statements(text):
        lines = [
            line.rstrip()
            for line in statement.splitlines()
            if line.strip() and not line.lstrip().startswith("--")
        ]
        body = "\n".join(lines).strip()
        if not body or re.match(r"^(SET|SELECT pg_catalog\.set_config)\b", body):
            continue
        if body.startswith("\\"):  # \restrict / \unrestrict lines of newer pg_dump
            continue
        statements.append(body)
    return sorted(statements)


def dump_difference(a: list[str], b: list[str]) -> str:
    """Readable difference of two normalised dumps ('' when equal)."""
    import difflib

    if a == b:
        return ""
    return "\n".join(difflib.unified_diff(a, b, "first", "second", lineterm="", n=1))


async def timescale_summary(conn: asyncpg.Connection) -> dict[str, object]:
    """What pg_dump -n public does not show of TimescaleDB objects: hypertables,
    continuous aggregates, jobs, and (as a sanity check) index definitions per chunk."""
    hypertables = await conn.fetch(
        "SELECT hypertable_name, num_dimensions FROM timescaledb_information.hypertables "
        "WHERE hypertable_schema = 'public' ORDER BY 1"
    )
    dims = await conn.fetch(
        "SELECT hypertable_name, column_name, time_interval::text FROM "
        "timescaledb_information.dimensions WHERE hypertable_schema = 'public' ORDER BY 1, 2"
    )
    caggs = await conn.fetch(
        "SELECT view_name, materialized_only FROM "
        "timescaledb_information.continuous_aggregates ORDER BY 1"
    )
    jobs = await conn.fetch(
        "SELECT proc_name, hypertable_name IS NOT NULL AS on_table, schedule_interval::text, "
        "config - 'mat_hypertable_id' AS config FROM timescaledb_information.jobs "
        "WHERE hypertable_name IS NOT NULL ORDER BY 1, 3"
    )
    return {
        "hypertables": [tuple(r) for r in hypertables],
        "dimensions": [tuple(r) for r in dims],
        "caggs": [tuple(r) for r in caggs],
        "jobs": [(r[0], r[1], r[2], str(r[3])) for r in jobs],
    }


async def run_psql_000_and_routines(config: DatabaseConfig, options: str | None = None) -> None:
    """psql -f 000 and the routines 001 calls: the state before 001's own steps."""
    for path in (MIGRATION_000, *ROUTINES):
        result = await run_psql(config, file=path, options=options)
        assert result.returncode == 0, result.stderr


async def trades_by_id(conn: asyncpg.Connection) -> dict[int, asyncpg.Record]:
    rows = await conn.fetch("SELECT * FROM trades")
    return {r["id"]: r for r in rows}


async def assert_legacy_outcome(conn: asyncpg.Connection, data: LegacyDataset) -> None:
    """Every legacy row is in trades or in the archive, split as the rules say."""
    trades = await trades_by_id(conn)
    archived = {r["id"]: r for r in await conn.fetch("SELECT * FROM trades_duplicates_removed")}
    expected_split = data.expected_split()
    natural_keys = bool(
        await conn.fetchval(
            "SELECT done FROM migration_progress WHERE version = '005' "
            "AND task = 'archive_idless_trades'"
        )
    )
    expected_removed = data.expected_removed(natural_keys=natural_keys)
    assert expected_removed, "the data set has duplicates"
    assert set(archived) == set(expected_removed)
    for legacy_id, row in data.by_id.items():
        if legacy_id in expected_removed:
            assert legacy_id not in trades
            gone = archived[legacy_id]
            assert gone["kept_id"] == expected_removed[legacy_id]
            assert gone["kept_id"] in trades
            assert (gone["symbol"], gone["price"], gone["quantity"], gone["trade_id"]) == (
                row[3],
                row[4],
                row[5],
                row[7],
            )
            continue
        got = trades[legacy_id]
        # untouched legacy columns
        assert (got["timestamp"], got["exchange"], got["symbol"], got["trade_id"]) == (
            *row[1:4],
            row[7],
        )
        assert (got["price"], got["quantity"], got["side"]) == (row[4], row[5], row[6])
        parts = expected_split[legacy_id]
        assert (got["symbol_base"], got["symbol_quote"]) == (parts or (None, None)), row
    assert set(trades) >= set(data.by_id) - set(expected_removed)
    # rows without trade_id: all kept by 001, identical ones included; 005 keeps one of each
    no_tid = [i for i, r in data.by_id.items() if r[7] is None]
    assert no_tid and all(i in trades or natural_keys for i in no_tid)
    progress = await conn.fetchrow(
        "SELECT * FROM migration_progress WHERE version = '001' AND task = 'backfill_symbols'"
    )
    assert progress["done"]
    detail = json.loads(progress["detail"])
    assert detail["unsplittable_rows"] == data.unsplittable_count() > 0
    assert detail["duplicates_archived"] == len(data.expected_removed())  # 001's own count
    assert set(detail["unsplittable_symbols"]) <= {str(r[3]) for r in data.trades}


async def prepare_legacy(
    config: DatabaseConfig, data: LegacyDataset | None, *, hypertables: bool = False
) -> None:
    conn = await asyncpg.connect(**config.connect_kwargs())
    try:
        await create_legacy_schema(conn, hypertables=hypertables)
        if data is not None:
            await load_legacy_dataset(conn, data)
    finally:
        await conn.close()
