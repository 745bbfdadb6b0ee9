"""The `lint [FILES...]` command of the migrate CLI: which files, the application's facts, output.

Imported only for `lint`: it needs no config, no database and no asyncpg
connection; it needs pglast (the `lint` extra), and says how to install it
when it is missing.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cex_arbitrage.db.cli_args import MIGRATIONS_DIR_ENV
from cex_arbitrage.errors import ConfigError, LintFindingsError, ValidationError

INSTALL_HINT = (
    "`lint` needs PostgreSQL's parser, the optional lint extra (pglast): "
    "pip install 'cex-arbitrage[lint]' (from a checkout: pip install -e '.[lint]')"
)


def lint_targets(files: list[str], migrations_dir: str | None) -> list[Path]:
    """FILES, else every .sql file of --migrations-dir / $CEX_MIGRATIONS_DIR / the package's."""
    if files:
        paths = [Path(f) for f in files]
        for path in paths:
            if not path.is_file():
                problem = "is not a file" if path.exists() else "does not exist"
                raise ValidationError(f"lint: {path} {problem}; give migration files (.sql)")
        return paths
    if migrations_dir is not None:
        given, origin = migrations_dir, "--migrations-dir"
    elif MIGRATIONS_DIR_ENV in os.environ:
        given, origin = os.environ[MIGRATIONS_DIR_ENV], f"${MIGRATIONS_DIR_ENV}"
    else:
        import cex_arbitrage.db.migrations as package

        given, origin = str(Path(package.__file__ or ".").resolve().parent), "the package"
    if not given.strip():
        raise ValidationError(
            f"{origin} is empty; give the directory that holds the NNN_name.sql migration files"
        )
    directory = Path(given)
    if not directory.is_dir():
        problem = "is not a directory" if directory.exists() else "does not exist"
        raise ValidationError(
            f"migrations directory {directory} (from {origin}) {problem}; give the directory "
            "that holds the NNN_name.sql files"
        )
    if not any(directory.glob("*.sql")):
        raise ValidationError(
            f"directory {directory} (from {origin}) holds no migration files (NNN_name.sql), "
            "so there is nothing to lint"
        )
    return sorted(_shown(p) for p in directory.glob("*.sql") if not p.name.endswith(_DOWN))


_DOWN = ".down.sql"  # down files (parse_down.py): what `down` runs, not what apply runs


def _shown(path: Path) -> Path:
    """The path relative to the working directory when it is below it (shorter reports)."""
    try:
        return path.resolve().relative_to(Path.cwd())
    except ValueError:
        return path


def run_lint(args: argparse.Namespace) -> int:
    """Lint; print the report; LintFindingsError (exit 4) when a finding stands."""
    try:
        import pglast  # noqa: F401
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    from cex_arbitrage.collectors.columns import WRITTEN_COLUMNS
    from cex_arbitrage.db.lint import AppFacts, format_text, lint_paths, to_json
    from cex_arbitrage.db.structs import LEGACY_TABLES

    paths = lint_targets([f for f in (args.version, *args.files) if f], args.migrations_dir)
    downs = [str(p) for p in paths if p.name.endswith(_DOWN)]
    if downs:
        raise ConfigError(
            f"{downs[0]}: down files are not linted: a down drops on purpose, and `down` "
            "rehearses the walk first and refuses data loss without --allow-data-loss"
        )
    # 007's procedure (R__citus_distribution.sql) distributes its first argument by symbol_base.
    facts = AppFacts(frozenset(LEGACY_TABLES), WRITTEN_COLUMNS, {"distribute_table": "symbol_base"})
    report = lint_paths(paths, facts)
    print(to_json(report) if args.json else format_text(report, show_suppressed=args.verbose))
    if report.active:
        count = len(report.active)
        raise LintFindingsError(
            f"lint: {count} finding{'s' * (count != 1)} in {len(paths)} files; fix each, or "
            "suppress it with `-- lint:ignore RULE reason` (docs/lint.md)",
            findings=count,
            files=[str(p) for p in paths],
        )
    return 0
