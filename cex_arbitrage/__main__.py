"""`python -m cex_arbitrage run [--config F] [--replay FILE] [--follow]`: the engine from a shell.

Thin: it parses arguments, sets up logging, and prints. Booting, migrating,
collecting and stopping are the Engine's, exactly as an embedding app calls it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from decimal import Decimal
from importlib import metadata
from pathlib import Path

import asyncpg

from cex_arbitrage.collectors import WriteError
from cex_arbitrage.config import AppConfig, load_config
from cex_arbitrage.db.migrator.source import DirectorySource, MigrationSource
from cex_arbitrage.engine import TRADES, Engine, EngineSources, fetch_ohlcv
from cex_arbitrage.errors import ExitCode, MigrationError

SAMPLE = "sample"
_PLACES = Decimal("1e-8")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cex_arbitrage",
        description="cex_arbitrage engine: migrate the schema, then collect market data.",
        epilog=(
            "To migrate or inspect the schema without starting the engine, use the migrate "
            "CLI: `python -m cex_arbitrage.db.migrate` (also ./migrate.sh and cex-migrate; "
            "`python -m cex_arbitrage.db.migrate --help` lists its commands)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="boot the engine: ensure the schema, start the collectors, run until stopped",
    )
    run.add_argument("--config", help="config file (default: $CEX_CONFIG, then ./config.yaml)")
    run.add_argument(
        "--replay",
        metavar="FILE",
        help=f"feed the collectors from a JSONL file ('{SAMPLE}' = the bundled sample)",
    )
    run.add_argument(
        "--follow",
        action="store_true",
        help="with --replay: keep reading lines appended to the file until stopped",
    )
    run.add_argument(
        "--rows", type=int, default=12, help="OHLCV rows to print after a replay (default 12)"
    )
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _version() -> str:
    # From the installed distribution: the package root need not be importable
    # as a regular package (an editable install may expose it as a namespace).
    try:
        return metadata.version("cex-arbitrage")
    except metadata.PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m cex_arbitrage` and the `cex-arbitrage` script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load_config(args.config)
    except MigrationError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return int(exc.exit_code)
    replay: Path | None = None
    if args.replay is not None:
        replay = _replay_path(args.replay)
        if not replay.is_file():
            print(f"error: replay file {replay} does not exist", file=sys.stderr)
            return int(ExitCode.USAGE)
    try:
        return asyncio.run(_run(config, replay, follow=args.follow, rows=args.rows))
    except MigrationError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return int(exc.exit_code)
    except WriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(ExitCode.MIGRATION_FAILED)


def _replay_path(value: str) -> Path:
    if value == SAMPLE:
        # Package data installed beside this module (pyproject package-data).
        return Path(__file__).resolve().with_name("samples") / "replay.jsonl"
    return Path(value)


def _migration_source() -> MigrationSource | None:
    """$CEX_MIGRATIONS_DIR, as the migrate CLI reads it; else the package's migrations."""
    directory = os.environ.get("CEX_MIGRATIONS_DIR", "").strip()
    return DirectorySource(Path(directory)) if directory else None


async def _run(config: AppConfig, replay: Path | None, *, follow: bool, rows: int) -> int:
    sources = EngineSources.replay(replay, follow=follow) if replay else EngineSources()
    engine = Engine(config, sources, migration_source=_migration_source())
    await engine.run()
    if replay is None:
        return 0
    for name, collector in engine.collectors.items():
        stats = collector.stats
        print(
            f"{name}: {stats.received} received, {stats.inserted} inserted, "
            f"{stats.rows - stats.inserted - stats.rejected} duplicates dropped, "
            f"{stats.rejected} rejected, {stats.batches} batches"
        )
    trades = engine.collectors.get(TRADES)
    if trades is None:
        print("trade collection is off: no OHLCV to show")
        return 0
    conn = await asyncpg.connect(**config.database.connect_kwargs())
    try:
        ohlcv = await fetch_ohlcv(
            conn, since=trades.stats.earliest, until=trades.stats.latest, limit=rows
        )
    finally:
        await conn.close()
    print(f"\ntrades_ohlcv_1m on {config.database.display} (first {len(ohlcv)} rows):")
    _print_table(ohlcv)
    return 0


def _print_table(rows: list[dict[str, object]]) -> None:
    columns = ["bucket", "exchange", "symbol_base", "symbol_quote", "open", "high", "low"]
    columns += ["close", "volume", "trade_count", "vwap"]
    if not rows:
        print("(no rows)")
        return
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def _cell(value: object) -> str:
    if value is None:
        return ""
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    if isinstance(value, Decimal):
        return format(value.quantize(_PLACES).normalize(), "f")
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
