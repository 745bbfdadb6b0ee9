"""Where migrations come from: the package's resources, or a directory.

Package resources are read through importlib.resources so an installed
wheel (or a zip) works exactly like a source checkout.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Protocol

from cex_arbitrage.db.migrations.errors import ValidationError
from cex_arbitrage.db.migrations.script import Migration, parse_migration

PACKAGE = "cex_arbitrage.db.migrations"


class MigrationSource(Protocol):
    """Anything that can list migration files as (file name, text) pairs."""

    def describe(self) -> str: ...

    def files(self) -> list[tuple[str, str]]: ...


class PackageSource:
    """The migrations shipped inside the cex_arbitrage package."""

    def __init__(self, package: str = PACKAGE) -> None:
        self.package = package

    def describe(self) -> str:
        return f"package {self.package}"

    def files(self) -> list[tuple[str, str]]:
        root = resources.files(self.package)
        return [
            (entry.name, entry.read_text(encoding="utf-8"))
            for entry in root.iterdir()
            if entry.name.endswith(".sql") and entry.is_file()
        ]


class DirectorySource:
    """Migrations in a directory of the caller's (tests, other deployments)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def describe(self) -> str:
        return f"directory {self.path}"

    def files(self) -> list[tuple[str, str]]:
        if not self.path.is_dir():
            raise ValidationError(f"migrations directory {self.path} does not exist")
        return [
            (p.name, p.read_text(encoding="utf-8"))
            for p in self.path.iterdir()
            if p.suffix == ".sql" and p.is_file()
        ]


def load_migrations(source: MigrationSource) -> list[Migration]:
    """Parse and validate a whole migration set before anything runs.

    Refuses: malformed files, two files with one version, a dependency on a
    version no file has.
    """
    migrations = sorted(
        (parse_migration(name, text) for name, text in source.files()),
        key=lambda m: (int(m.version), m.version),
    )
    by_version: dict[str, Migration] = {}
    by_number: dict[int, Migration] = {}  # 001 and 0001 are one version too
    for migration in migrations:
        other = by_number.get(int(migration.version))
        if other is not None:
            raise ValidationError(
                f"two migration files have version {migration.version}: "
                f"{other.filename} and {migration.filename} ({source.describe()}); "
                "renumber one of them"
            )
        by_version[migration.version] = migration
        by_number[int(migration.version)] = migration
    for migration in migrations:
        for dep in migration.depends:
            if dep not in by_version:
                raise ValidationError(
                    f"{migration.filename} depends on version {dep}, but no migration file "
                    f"has that version ({source.describe()})"
                )
    if migrations and migrations[0].version != "000":
        raise ValidationError(
            f"{source.describe()} has no 000 migration; the history table is created by "
            "000_create_migration_infrastructure.sql"
        )
    return migrations
