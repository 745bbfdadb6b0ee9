"""The migrate CLI's arguments: the parser, and the refusal of options a command would ignore.

Imports nothing heavy, so `--help` and usage errors answer without loading
the config layer, asyncpg or the runner.
"""

from __future__ import annotations

import argparse

from cex_arbitrage.errors import ConfigError

COMMANDS = {
    "apply": "(default) apply pending migrations in order, then backfills",
    "status": "each migration's state; changes nothing (--json, --exit-code, --drift)",
    "background": "run unfinished background steps (backfills) here",
    "accept-checksum": "VERSION: record the checksum of a deliberately edited file",
    "accept-drift": "record the schema as it is now as the fingerprint status --drift uses",
    "down": "--target VERSION: undo the migrations above VERSION, newest first",
    "new": "NAME: write the next migration file, NNN_NAME.sql, to fill in (no database)",
    "lint": "[FILES...]: safety rules for migrations on live tables (no database;\n"
    + " " * 19
    + "default: the whole set; --json; `-- lint:ignore RULE reason` suppresses;\n"
    + " " * 19
    + "needs the lint extra: pip install 'cex-arbitrage[lint]'; docs/lint.md)",
}
EMBEDDED_DIR_ENV = "CEX_EMBEDDED_DIR"
EMBEDDED_ENV = "CEX_EMBEDDED"
MIGRATIONS_DIR_ENV = "CEX_MIGRATIONS_DIR"

_DESCRIPTION = """Apply and inspect cex_arbitrage database migrations.

commands:
{commands}

connection (each layer overrides only the fields it sets):
  PG* variables (PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD, PGSSLMODE, ...),
  then DATABASE_URL, then the database: section of the config file
  (--config FILE, else $CEX_CONFIG, else ./config.yaml).
  With none of them (no config file, no DATABASE_URL, none of PGHOST, PGPORT,
  PGDATABASE, PGUSER, PGPASSWORD), an embedded PostgreSQL is started with its
  data in ./.cex-pgdata (or ${embedded}) when the run is interactive (stdin is
  a terminal) or {embedded_on}=1 is set; otherwise the run is refused (exit 2),
  so a script that lost its DATABASE_URL never migrates a throwaway database.
  {embedded_on}=0 refuses it on a terminal too. It needs the [embedded] extra."""

_EPILOG = """exit codes: 0 ok, 1 migration failed, 2 usage/config, 3 cannot connect,
  4 refused (checksum/dependency/target/migration files, lint findings), 5 lock timeout,
  6 pending, drifted or background work nobody runs (status --exit-code; with --drift
  also schema drift), 7 pre-flight (privilege/server), 8 interrupted. down refuses with
  4 (no down file, irreversible, or data loss without --allow-data-loss) before undoing
  anything."""

# Options that mean something to some commands only. Elsewhere they were ignored
# silently; `--exit-code` or `--json` without `status` even applied migrations.
_ONLY_FOR: dict[str, tuple[str, tuple[str, ...]]] = {
    "exit_code": ("--exit-code", ("status",)),
    "json": ("--json", ("status", "lint")),
    "target": ("--target", ("apply", "down")),
    "dry_run": ("--dry-run", ("apply", "down")),
    "allow_data_loss": ("--allow-data-loss", ("down",)),
    "drift": ("--drift", ("status",)),
    "no_background": ("--no-background", ("apply",)),
    "wait_background": ("--wait-background", ("apply",)),
    "depends": ("--depends", ("new",)),
    "non_transactional": ("--non-transactional", ("new",)),
    "down": ("--down", ("new",)),
}
# Commands that take the positional argument, and what it is.
_ARGUMENT = {"accept-checksum": "VERSION", "new": "NAME (snake_case, e.g. add_order_index)"}


def build_parser() -> argparse.ArgumentParser:
    width = max(len(name) for name in COMMANDS) + 2
    commands = "\n".join(f"  {name:<{width}}{text}" for name, text in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="python -m cex_arbitrage.db.migrate",
        description=_DESCRIPTION.format(
            commands=commands, embedded=EMBEDDED_DIR_ENV, embedded_on=EMBEDDED_ENV
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "command", nargs="?", default="apply", choices=list(COMMANDS), help="see commands above"
    )
    parser.add_argument(
        "version", nargs="?", help="VERSION for accept-checksum, NAME for new, a FILE for lint"
    )
    parser.add_argument("files", nargs="*", metavar="FILES", help="lint: more files")
    parser.add_argument("--config", help="config file (default: $CEX_CONFIG or ./config.yaml)")
    parser.add_argument(
        "--target",
        metavar="VERSION",
        help="apply: up to this version only (1 means 001); down (required): undo every "
        "migration above it",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="apply, down: print the plan or the walk (and the SQL with --verbose); change nothing",
    )
    parser.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="config source, server, extensions, user; per-step timings",
    )
    parser.add_argument("--json", action="store_true", help="status, lint: print JSON")
    parser.add_argument(
        "--exit-code",
        action="store_true",
        help="status: exit 6 when something is pending, failed or drifted",
    )
    _add_drift_and_down_options(parser)
    _add_background_options(parser)
    parser.add_argument(
        "--feature",
        action="append",
        default=[],
        metavar="NAME=on|off",
        help="override a feature flag from the config (repeatable); "
        "new: --feature NAME, the feature the new migration belongs to",
    )
    parser.add_argument(
        "--migrations-dir",
        metavar="DIR",
        help=f"use the migrations in DIR instead of the package's (also ${MIGRATIONS_DIR_ENV}); "
        "new writes there, lint reads all of it",
    )
    _add_new_options(parser)
    return parser


def _add_drift_and_down_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--drift",
        action="store_true",
        help="status: also compare the schema with the fingerprint recorded after the last "
        "run, naming objects added, removed or changed outside migrations",
    )
    parser.add_argument(
        "--allow-data-loss",
        action="store_true",
        help="down: go ahead when a down drops tables or columns that hold rows "
        "(without it down refuses, saying how many rows)",
    )


def _add_new_options(parser: argparse.ArgumentParser) -> None:
    """The options of `new NAME` only."""
    parser.add_argument(
        "--depends",
        metavar="V,V",
        help="new: versions the new migration depends on (default 000)",
    )
    parser.add_argument(
        "--non-transactional",
        action="store_true",
        help="new: add a transaction:false step (CREATE INDEX CONCURRENTLY and the like)",
    )
    parser.add_argument(
        "--down",
        action="store_true",
        help="new: also write NNN_NAME.down.sql, the down file that undoes it",
    )


def _add_background_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-background",
        action="store_true",
        help="apply: leave background steps (backfills) to the engines",
    )
    parser.add_argument(
        "--wait-background",
        action="store_true",
        help="apply: when another runner is running the background steps, wait for it "
        "(up to migrations.lock_wait_timeout) instead of leaving them to it",
    )


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse an argument the command would ignore (ConfigError: a usage error)."""
    if args.command in _ARGUMENT and not args.version:
        raise ConfigError(f"{args.command} needs {_ARGUMENT[args.command]}")
    stray = [a for a in (args.version, *args.files) if a]
    if args.command in _ARGUMENT:
        stray = args.files
    if stray and args.command != "lint":
        raise ConfigError(f"unexpected argument {stray[0]!r}")
    if args.command == "down" and not args.target:
        raise ConfigError(
            "down needs --target VERSION: the version to go down to (it stays applied; "
            "every migration above it is undone, newest first)"
        )
    if args.no_background and args.wait_background:
        raise ConfigError("--wait-background and --no-background contradict each other")
    for attr, (option, commands) in _ONLY_FOR.items():
        if getattr(args, attr) in (None, False) or args.command in commands:
            continue
        hint = ""
        if "status" in commands and args.command == "apply":
            hint = f"; did you mean `status {option}`? (without `status` this would migrate)"
        elif option == "--target" and args.command == "status":
            hint = "; status always shows every migration (`--dry-run --target V` shows a plan)"
        elif option == "--dry-run":
            hint = "; only apply and down have a plan to show (`--dry-run` alone)"
        which = " and ".join(commands) + (" commands" if len(commands) > 1 else " command")
        raise ConfigError(f"{option} is for the {which} only, not {args.command}{hint}")
