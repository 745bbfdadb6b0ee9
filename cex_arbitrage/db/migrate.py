"""`python -m cex_arbitrage.db.migrate`: a thin shell over MigrationRunner.

It parses arguments and prints; all behaviour lives in the Python API the
engine also calls. Exit codes are the `ExitCode` values (README).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import signal
import sys
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Only the argument parser loads up front: `--help`, usage errors, `new` and `lint` need no
# config, asyncpg or runner; each command imports what it uses.
from cex_arbitrage.db.cli_args import (
    COMMANDS as COMMANDS,
)
from cex_arbitrage.db.cli_args import (
    EMBEDDED_DIR_ENV,
    EMBEDDED_ENV,
    MIGRATIONS_DIR_ENV,
    build_parser,
)
from cex_arbitrage.db.cli_args import (
    check_arguments as _check_arguments,
)
from cex_arbitrage.errors import (
    ChecksumMismatchError,
    ConfigError,
    ExitCode,
    MigrationError,
    ValidationError,
)

if TYPE_CHECKING:
    from cex_arbitrage.config import AppConfig
    from cex_arbitrage.db.migrations.run_migrations import MigrationRunner
    from cex_arbitrage.db.migrator.model import Catalog
    from cex_arbitrage.db.migrator.source import MigrationSource
    from cex_arbitrage.db.structs import DatabaseConfig

_CURRENT = "nothing to apply; the schema is current"


def _features(config: AppConfig, overrides: Sequence[str], known: Sequence[str]) -> dict[str, bool]:
    from cex_arbitrage.features import check_feature_name

    features = dict(config.features)
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or value.lower() not in ("on", "off", "true", "false", "1", "0"):
            raise ConfigError(f"--feature {item!r}: expected NAME=on or NAME=off")
        check_feature_name(name.strip(), f"--feature {item}", known)
        features[name.strip()] = value.lower() in ("on", "true", "1")
    return features


def _source(args: argparse.Namespace) -> MigrationSource:
    """The migration set: --migrations-dir, else $CEX_MIGRATIONS_DIR, else the package's."""
    if args.migrations_dir is not None:
        directory, origin = args.migrations_dir, "--migrations-dir"
    elif MIGRATIONS_DIR_ENV in os.environ:
        directory, origin = os.environ[MIGRATIONS_DIR_ENV], f"${MIGRATIONS_DIR_ENV}"
    else:
        from cex_arbitrage.db.migrations.run_migrations import shipped_source

        return shipped_source()
    if not directory.strip():
        raise ValidationError(
            f"{origin} is empty; give the directory that holds the NNN_name.sql migration "
            f"files, or leave {origin} out to use the migrations shipped in the package"
        )
    path = Path(directory)
    if not path.is_dir():
        problem = "is not a directory" if path.exists() else "does not exist"
        raise ValidationError(
            f"migrations directory {path} (from {origin}) {problem}; check the path "
            f"(a relative one is taken from {Path.cwd()})"
        )
    from cex_arbitrage.db.migrator.source import DirectorySource

    return DirectorySource(path)


def _target(target: str | None, catalog: Catalog, label: str = "--target") -> str | None:
    """`--target 1` is version 001 when exactly one file's version has that value."""
    versions = [m.version for m in catalog.migrations]
    if target is None or target.strip() in versions or not re.fullmatch(r"\s*[0-9]+\s*", target):
        return target
    same = [v for v in versions if int(v) == int(target)]
    if len(same) != 1:
        return target  # unknown or ambiguous: the runner refuses it, listing the versions
    _err(f"{label} {target}: version {same[0]}")
    return same[0]


@dataclasses.dataclass(frozen=True)
class _Prepared:
    """What a run needs, checked before any database is touched."""

    source: MigrationSource
    config: AppConfig  # with the --feature overrides applied
    target: str | None


def _prepare(args: argparse.Namespace) -> _Prepared:
    """Read the migration set, then the config; refuse unknown features and bad sets."""
    from cex_arbitrage.config import load_config
    from cex_arbitrage.db.migrator.catalog import cached_catalog
    from cex_arbitrage.features import known_features

    source = _source(args)
    catalog = cached_catalog(source)
    declared = [m.feature for m in catalog.migrations] + [r.feature for r in catalog.routines]
    known = known_features(declared)
    config = load_config(args.config, known_features=known)
    features = _features(config, args.feature, known)
    return _Prepared(
        source=source,
        config=dataclasses.replace(config, features=features),
        target=_target(args.target, catalog),
    )


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _say(message: str) -> None:
    """The runner's progress, on stderr; "schema is current" is the CLI's, on stdout."""
    if not message.endswith(_CURRENT):
        _err(message)


async def _verbose(db: DatabaseConfig, config: AppConfig, source: str) -> None:
    from cex_arbitrage.db.cli_verbose import verbose_report

    await verbose_report(db, config, source)


async def _run(args: argparse.Namespace, prep: _Prepared, db: DatabaseConfig) -> int:
    from cex_arbitrage.db.migrations.run_migrations import MigrationRunner

    config = prep.config
    runner = MigrationRunner(
        db,
        source=prep.source,
        features=config.features,
        settings=config.migrations,
        say=_say,
        verbose=args.verbose,
        program="cex-migrate",
    )
    if args.verbose and not args.json and args.command in ("status", "apply"):
        await _verbose(db, config, prep.source.describe())
    if args.command in ("status", "down", "accept-drift"):
        from cex_arbitrage.db.cli_schema import run_schema_command

        return await run_schema_command(args, runner, prep.target, db)
    if args.command == "accept-checksum":
        version = _target(args.version, runner.catalog(), "accept-checksum") or args.version
        old = await runner.accept_checksum(version)
        if old == runner.catalog().by_version()[version].checksum:
            print(
                f"{db.display}: the recorded checksum of version {version} already "
                "matches the file; nothing changed"
            )
            return 0
        print(
            f"{db.display}: recorded the current checksum of version {version} "
            f"(was {old[:12] or 'none'}…)"
        )
        return 0
    if args.command == "background":
        done = await runner.run_background()
        if done:
            print(f"{db.display}: background steps finished for: {', '.join(done)}")
        else:
            print(f"{db.display}: no background steps left to run")
        return 0
    if args.dry_run:
        plan = await runner.plan(prep.target)
        print("dry run: nothing will be changed")
        print(plan.describe(sql=args.verbose))
        return 0
    return await _apply(args, runner, prep.target, db)


async def _apply(
    args: argparse.Namespace, runner: MigrationRunner, target: str | None, db: DatabaseConfig
) -> int:
    started = time.monotonic()
    result = await runner.migrate(
        target, background=not args.no_background, wait_background=args.wait_background
    )
    total = int((time.monotonic() - started) * 1000)
    if result.applied:
        parts = ", ".join(f"{v} ({result.durations_ms[v]} ms)" for v in result.applied)
        print(f"{db.display}: applied {parts}; total {total} ms")
    else:
        print(f"{db.display}: {_CURRENT}")
    if result.background_done:
        print(f"{db.display}: background steps finished: {', '.join(result.background_done)}")
    if result.background_elsewhere and result.background_pending:
        print(
            f"{db.display}: background steps of {', '.join(result.background_pending)} are "
            f"being run by {result.background_elsewhere}; not waiting for them "
            "(`status` shows how far they are; --wait-background waits)"
        )
    elif result.background_pending:
        print(
            f"{db.display}: background steps still pending (engines run them; "
            f"`background` runs them here): {', '.join(result.background_pending)}"
        )
    for m in result.plan.disabled:
        print(f"{db.display}: skipped {m.filename}: {result.plan.skipped_because[m.version]}")
    return 0


def _with_options(exc: MigrationError, args: argparse.Namespace) -> str:
    """The message; a suggested accept-checksum gets the --migrations-dir/--config of this run.

    Run literally without them it would read the package's files and config, and
    record the checksum of a file other than the one that was refused.
    """
    if not isinstance(exc, ChecksumMismatchError):
        return exc.message
    command = f"python -m cex_arbitrage.db.migrate accept-checksum {exc.version}"
    options: list[str] = []
    directory = args.migrations_dir
    if directory is None and os.environ.get(MIGRATIONS_DIR_ENV, "").strip():
        directory = os.environ[MIGRATIONS_DIR_ENV]
    if directory is not None:
        options += ["--migrations-dir", directory]
    if args.config is not None:
        options += ["--config", args.config]
    if not options or command not in exc.message:
        return exc.message
    return exc.message.replace(command, f"{command} {shlex.join(options)}")


def _embedded_allowed(data_dir: Path) -> str:
    """Why the embedded fallback may run; ConfigError when it may not.

    With nothing configured, a person at a terminal trying the tool gets an
    embedded server; a script (no terminal on stdin: CI, a deploy job, cron)
    gets an error, unless it asks with CEX_EMBEDDED=1. Otherwise a deploy shell
    that lost DATABASE_URL would migrate a throwaway database and exit 0.
    """
    choice = os.environ.get(EMBEDDED_ENV, "").strip()
    if choice == "1":
        return f"{EMBEDDED_ENV}=1"
    if choice not in ("", "0"):
        raise ConfigError(f"{EMBEDDED_ENV}={choice!r}: expected 1 (allow) or 0 (refuse)")
    interactive = sys.stdin is not None and sys.stdin.isatty()
    if choice == "" and interactive:
        return f"interactive run; {EMBEDDED_ENV}=0 turns this off"
    reason = f"{EMBEDDED_ENV}=0" if choice == "0" else "this run is not interactive (no terminal)"
    raise ConfigError(
        "no database configured: no config file (--config, $CEX_CONFIG, ./config.yaml), "
        f"no DATABASE_URL and no PG* variables, and {reason}, so no throwaway embedded "
        "PostgreSQL is started in its place. Set DATABASE_URL (or PGHOST/PGDATABASE/..., "
        f"or database: in config.yaml); or set {EMBEDDED_ENV}=1 to use the embedded "
        f"PostgreSQL with data in {data_dir}"
    )


class _Terminated(Exception):
    """SIGTERM (docker stop, systemd) arrived: the run was cancelled as Ctrl-C cancels it."""


async def _until_signal(work: Coroutine[Any, Any, int]) -> int:
    """Run `work`; SIGTERM cancels it as Ctrl-C does (asyncpg cancels the running query).

    The cancellation unwinds the runner: the server rolls back the transactional
    step, locks are released, the connection closed; then `_Terminated` is raised.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    received: list[int] = []

    def on_sigterm() -> None:
        received.append(signal.SIGTERM)
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    except (NotImplementedError, RuntimeError):  # no signals here (Windows, a thread)
        return await task
    try:
        return await task
    except asyncio.CancelledError:
        if received and task.cancelled():
            raise _Terminated() from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        # intermixed: `lint --json A.sql B.sql` and `accept-checksum --config C 001` alike
        args = parser.parse_intermixed_args(argv)
        _check_arguments(args)
    except SystemExit as exc:
        return int(exc.code or 0) and int(ExitCode.USAGE)
    except ConfigError as exc:
        parser.print_usage(sys.stderr)
        _err(f"error: {exc.message}")
        return int(exc.exit_code)
    if args.command in ("new", "lint"):
        try:
            if args.command == "lint":
                from cex_arbitrage.db.cli_lint import run_lint

                return run_lint(args)
            from cex_arbitrage.db.cli_new import run_new

            return run_new(args)
        except MigrationError as exc:
            if isinstance(exc, ConfigError):
                parser.print_usage(sys.stderr)
            _err(f"error: {exc.message}")
            return int(exc.exit_code)
    server = None
    try:
        prep = _prepare(args)
        db = prep.config.database
        if not prep.config.database_configured:
            data_dir = Path(os.environ.get(EMBEDDED_DIR_ENV, ".cex-pgdata")).resolve()
            why = _embedded_allowed(data_dir)
            from cex_arbitrage.embedded import start_embedded

            _err(
                f"no database configured (no config.yaml, DATABASE_URL or PG* variables): "
                f"using an embedded PostgreSQL with data in {data_dir} ({why})"
            )
            server = start_embedded(data_dir)
            db = server.config
            _err(f"embedded PostgreSQL is up at {db.display}")
        import asyncio

        return asyncio.run(_until_signal(_run(args, prep, db)))
    except MigrationError as exc:
        _err(f"error: {_with_options(exc, args)}")
        return int(exc.exit_code)
    except (KeyboardInterrupt, _Terminated) as exc:
        what = "interrupted by SIGTERM" if isinstance(exc, _Terminated) else "interrupted"
        _err(
            f"error: {what}; a transactional step was rolled back, finished statements "
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
