"""`python -m cex_arbitrage.db.migrate`: a thin shell over MigrationRunner.

It parses arguments and prints; all behaviour lives in the Python API the
engine also calls. Exit codes are the `ExitCode` values (README).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cex_arbitrage.config import AppConfig, load_config
from cex_arbitrage.db.migrations.connect import connect
from cex_arbitrage.db.migrations.errors import (
    ConfigError,
    ExitCode,
    MigrationError,
    ValidationError,
)
from cex_arbitrage.db.migrations.preflight import run_preflight
from cex_arbitrage.db.migrations.run_migrations import MigrationRunner
from cex_arbitrage.db.migrations.source import DirectorySource, MigrationSource, PackageSource
from cex_arbitrage.db.migrations.status import format_table, to_json
from cex_arbitrage.db.structs import DatabaseConfig

COMMANDS = ("apply", "status", "background", "accept-checksum")
EMBEDDED_DIR_ENV = "CEX_EMBEDDED_DIR"
MIGRATIONS_DIR_ENV = "CEX_MIGRATIONS_DIR"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cex_arbitrage.db.migrate",
        description="Apply and inspect cex_arbitrage database migrations.",
        epilog=(
            "commands: apply (default) | status | background | accept-checksum VERSION. "
            "Exit codes: 0 ok, 1 migration failed, 2 usage/config, 3 cannot connect, "
            "4 refused (checksum/dependency/target), 5 lock timeout, 6 pending or drifted "
            "(status --exit-code), 7 pre-flight (privilege/server), 8 interrupted."
        ),
    )
    parser.add_argument("command", nargs="?", default="apply", choices=COMMANDS)
    parser.add_argument("version", nargs="?", help="VERSION for accept-checksum")
    parser.add_argument("--config", help="config file (default: $CEX_CONFIG or ./config.yaml)")
    parser.add_argument("--target", metavar="VERSION", help="apply up to this version only")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (and the SQL with --verbose); change nothing",
    )
    parser.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="config source, server, extensions, user; per-step timings",
    )
    parser.add_argument("--json", action="store_true", help="status as JSON")
    parser.add_argument(
        "--exit-code",
        action="store_true",
        help="status: exit 6 when something is pending, failed or drifted",
    )
    parser.add_argument(
        "--no-background",
        action="store_true",
        help="apply: leave background steps (backfills) to the engines",
    )
    parser.add_argument(
        "--feature",
        action="append",
        default=[],
        metavar="NAME=on|off",
        help="override a feature flag from the config (repeatable)",
    )
    parser.add_argument(
        "--migrations-dir",
        metavar="DIR",
        help=f"use the migrations in DIR instead of the package's (also ${MIGRATIONS_DIR_ENV})",
    )
    return parser


def _features(config: AppConfig, overrides: Sequence[str]) -> dict[str, bool]:
    features = dict(config.features)
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or value.lower() not in ("on", "off", "true", "false", "1", "0"):
            raise ConfigError(f"--feature {item!r}: expected NAME=on or NAME=off")
        features[name.strip()] = value.lower() in ("on", "true", "1")
    return features


def _source(args: argparse.Namespace) -> MigrationSource | None:
    directory = args.migrations_dir or os.environ.get(MIGRATIONS_DIR_ENV)
    return DirectorySource(Path(directory)) if directory else None


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _verbose_report(db: DatabaseConfig, config: AppConfig, source: str) -> None:
    print(f"config:     {config.source}")
    print(f"database:   {db.display} (sslmode {db.sslmode})")
    print(f"migrations: {source}")
    features = ", ".join(f"{k}={'on' if v else 'off'}" for k, v in sorted(config.features.items()))
    print(f"features:   {features or 'none'}")
    conn = await connect(db)
    try:
        pre = await run_preflight(conn, db.display)
        print(f"server:     PostgreSQL {pre.server_version_text}")
        print(f"user:       {pre.user}")
        print(f"extensions: {', '.join(pre.extensions) or 'none'}")
        for warning in pre.warnings:
            print(f"warning:    {warning}")
    finally:
        await conn.close()


async def _run(args: argparse.Namespace, config: AppConfig, db: DatabaseConfig) -> int:
    features = _features(config, args.feature)
    source = _source(args)
    describe = (source or PackageSource()).describe()
    runner = MigrationRunner(
        db,
        source=source,
        features=features,
        settings=config.migrations,
        say=_err,
        verbose=args.verbose,
        program="cex-migrate",
    )
    config = dataclasses.replace(config, features=features)
    if args.command == "status":
        if args.verbose and not args.json:
            await _verbose_report(db, config, describe)
        rows = await runner.get_migration_status()
        if args.json:
            print(to_json(rows, {"database": db.display}))
        else:
            print(format_table(rows, verbose=args.verbose))
        if args.exit_code and any(r.needs_attention for r in rows):
            return int(ExitCode.PENDING)
        return 0
    if args.command == "accept-checksum":
        if not args.version:
            raise ValidationError("accept-checksum needs the VERSION whose file was edited")
        old = await runner.accept_checksum(args.version)
        print(
            f"{db.display}: recorded the current checksum of version {args.version} "
            f"(was {old[:12] or 'none'}…)"
        )
        return 0
    if args.command == "background":
        done = await runner.run_background()
        print(f"{db.display}: background steps finished for: {', '.join(done) or 'nothing'}")
        return 0
    if args.verbose:
        await _verbose_report(db, config, describe)
    if args.dry_run:
        plan = await runner.plan(args.target)
        print("dry run: nothing will be changed")
        print(plan.describe(sql=args.verbose))
        return 0
    started = time.monotonic()
    result = await runner.migrate(args.target, background=not args.no_background)
    total = int((time.monotonic() - started) * 1000)
    if result.applied:
        parts = ", ".join(f"{v} ({result.durations_ms[v]} ms)" for v in result.applied)
        print(f"{db.display}: applied {parts}; total {total} ms")
    else:
        print(f"{db.display}: nothing to apply; the schema is current")
    if result.background_done:
        print(f"{db.display}: background steps finished: {', '.join(result.background_done)}")
    if result.background_pending:
        print(
            f"{db.display}: background steps still pending (engines run them; "
            f"`background` runs them here): {', '.join(result.background_pending)}"
        )
    for m in result.plan.disabled:
        print(f"{db.display}: skipped {m.filename}: feature {m.feature} is disabled")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) and int(ExitCode.USAGE)
    if args.command == "accept-checksum" and not args.version:
        parser.print_usage(sys.stderr)
        _err("error: accept-checksum needs VERSION")
        return int(ExitCode.USAGE)
    if args.version and args.command != "accept-checksum":
        parser.print_usage(sys.stderr)
        _err(f"error: unexpected argument {args.version!r}")
        return int(ExitCode.USAGE)
    server = None
    try:
        config = load_config(args.config)
        db = config.database
        if not config.database_configured:
            from cex_arbitrage.embedded import start_embedded

            data_dir = Path(os.environ.get(EMBEDDED_DIR_ENV, ".cex-pgdata")).resolve()
            _err(
                f"no database configured (no config.yaml, DATABASE_URL or PG* variables): "
                f"using an embedded PostgreSQL with data in {data_dir}"
            )
            server = start_embedded(data_dir)
            db = server.config
            _err(f"embedded PostgreSQL is up at {db.display}")
        return asyncio.run(_run(args, config, db))
    except MigrationError as exc:
        _err(f"error: {exc.message}")
        return int(exc.exit_code)
    except KeyboardInterrupt:
        _err(
            "error: interrupted; a transactional step was rolled back, finished statements "
            "of other steps are recorded; run again to resume"
        )
        return int(ExitCode.INTERRUPTED)
    finally:
        if server is not None:
            server.stop()


def run() -> None:
    """Console entry point: `main()`, quiet when the reader of stdout goes away (`| head`)."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would print a traceback at exit; point stdout at /dev/null instead.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    run()
