"""The `new NAME` command of the migrate CLI: where to write, then `migrator.scaffold` writes.

Imported only for `new`: it needs no config, no database and no asyncpg.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cex_arbitrage.db.cli_args import MIGRATIONS_DIR_ENV
from cex_arbitrage.errors import ConfigError, ValidationError

_INSTALLED = ("site-packages", "dist-packages")


def package_migrations_dir(path: Path) -> Path:
    """The package's migrations folder, when it is a writable source checkout."""
    if any(part in _INSTALLED for part in path.parts):
        raise ConfigError(
            f"the package's migrations are installed ({path}), not a source checkout; "
            f"give the directory to write to with --migrations-dir DIR (or ${MIGRATIONS_DIR_ENV})"
        )
    if not path.is_dir() or not os.access(path, os.W_OK):
        raise ConfigError(
            f"the package's migrations folder {path} is not writable; "
            f"give the directory to write to with --migrations-dir DIR (or ${MIGRATIONS_DIR_ENV})"
        )
    return path


def target_dir(migrations_dir: str | None) -> Path:
    """--migrations-dir, else $CEX_MIGRATIONS_DIR, else the package's folder in a checkout."""
    if migrations_dir is not None:
        directory, origin = migrations_dir, "--migrations-dir"
    elif MIGRATIONS_DIR_ENV in os.environ:
        directory, origin = os.environ[MIGRATIONS_DIR_ENV], f"${MIGRATIONS_DIR_ENV}"
    else:
        import cex_arbitrage.db.migrations as package

        return package_migrations_dir(Path(package.__file__ or ".").resolve().parent)
    path = Path(directory)
    if not directory.strip() or not path.is_dir():
        problem = "is empty" if not directory.strip() else "is not a directory"
        raise ValidationError(
            f"migrations directory {directory!r} (from {origin}) {problem}; give the "
            "directory that holds the NNN_name.sql files"
        )
    return path


def feature_option(values: list[str]) -> str | None:
    """`new --feature F`: at most one, a plain name (not the NAME=on|off of other commands)."""
    if len(values) > 1:
        raise ConfigError("new takes one --feature (the feature the migration belongs to)")
    if values and "=" in values[0]:
        raise ConfigError(
            f"--feature {values[0]!r}: for new, give the feature's name (--feature NAME)"
        )
    return values[0].strip() if values else None


def run_new(args: argparse.Namespace) -> int:
    """Write the next migration file; print its path."""
    from cex_arbitrage.db.migrator.scaffold import write_migration
    from cex_arbitrage.db.structs import DEFAULT_FEATURES

    feature = feature_option(args.feature)
    directory = target_dir(args.migrations_dir)
    path = write_migration(
        directory,
        args.version,
        feature=feature,
        depends=(args.depends or "").replace(",", " ").split(),
        non_transactional=args.non_transactional,
        default_features=DEFAULT_FEATURES,
        down=args.down,
    )
    print(path)
    if args.down:
        print(path.with_name(path.name.removesuffix(".sql") + ".down.sql"))
    return 0
