"""Where migrations come from: the package's resources, or a directory.

Package resources are read through importlib.resources so an installed
wheel (or a zip) works exactly like a source checkout. `load_catalog`
parses and validates a whole set before anything runs.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path, PurePath
from typing import Protocol

from cex_arbitrage.db.migrator.model import (
    INFRASTRUCTURE_VERSION,
    Catalog,
    Down,
    Migration,
    Routine,
)
from cex_arbitrage.db.migrator.parse import parse_file
from cex_arbitrage.db.migrator.parse_down import is_down_file, parse_down, up_filename
from cex_arbitrage.errors import (
    DuplicateVersionError,
    MigrationFileError,
    MissingDependencyError,
    ValidationError,
)


class MigrationSource(Protocol):
    """Anything that can list migration files as (file name, text) pairs."""

    def describe(self) -> str: ...

    def files(self) -> list[tuple[str, str]]: ...


class PackageSource:
    """The migration files shipped inside a package, as its resources."""

    def __init__(self, package: str) -> None:
        self.package = package

    def describe(self) -> str:
        return f"package {self.package}"

    def files(self) -> list[tuple[str, str]]:
        root = resources.files(self.package)
        shown = {e.name: f"{e.name} (package {self.package})" for e in root.iterdir()}
        entries = [e for e in root.iterdir() if e.is_file() and _is_sql(e.name, shown[e.name])]
        return [(e.name, _decoded(e.name, e.read_bytes(), shown[e.name])) for e in entries]


class DirectorySource:
    """Migrations in a directory of the caller's (tests, other deployments)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def describe(self) -> str:
        return f"directory {self.path}"

    def files(self) -> list[tuple[str, str]]:
        if not self.path.exists():
            raise ValidationError(f"migrations directory {self.path} does not exist")
        if not self.path.is_dir():
            raise ValidationError(
                f"migrations directory {self.path} is not a directory; give the directory "
                "that holds the NNN_name.sql files"
            )
        paths = sorted(p for p in self.path.iterdir() if p.is_file() and _is_sql(p.name, str(p)))
        return [(p.name, _decoded(p.name, p.read_bytes(), str(p))) for p in paths]


def _is_sql(name: str, shown: str) -> bool:
    """Whether `name` is a migration file; refuse `X.SQL`, which would be skipped unseen."""
    suffix = PurePath(name).suffix
    if suffix.lower() == ".sql" and suffix != ".sql":
        raise MigrationFileError(
            f"{shown}: migration files end in lower-case .sql, so this file would be "
            f"skipped without a word; rename it to {name[: -len(suffix)]}.sql",
            filename=name,
        )
    return suffix == ".sql"


def _decoded(name: str, data: bytes, where: str) -> str:
    """The text of a migration file, with universal newlines as `read_text` gave it."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MigrationFileError(
            f"{where}: not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} "
            "cannot be decoded; save the file as UTF-8 (e.g. `iconv -f LATIN1 -t UTF-8`)",
            filename=name,
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def load_catalog(source: MigrationSource) -> Catalog:
    """Parse and validate a whole migration set before anything runs.

    Refuses: malformed files, two files with one version, a dependency on a
    version no file has, a set without migrations or without the infrastructure one.
    """
    migrations: list[Migration] = []
    routines: list[Routine] = []
    downs: list[Down] = []
    for name, text in source.files():
        if is_down_file(name):
            downs.append(parse_down(name, text))
            continue
        parsed = parse_file(name, text)
        if isinstance(parsed, Routine):
            routines.append(parsed)
        else:
            migrations.append(parsed)
    if not migrations:
        raise ValidationError(
            f"{source.describe()} holds no migration files (NNN_name.sql), so there is "
            "nothing to check the database against; point at the directory that holds them"
        )
    migrations.sort(key=lambda m: (int(m.version), m.version))
    _refuse_duplicates(migrations, source)
    _refuse_unknown_dependencies(migrations, source)
    if migrations and migrations[0].version != INFRASTRUCTURE_VERSION:
        raise ValidationError(
            f"{source.describe()} has no {INFRASTRUCTURE_VERSION} migration; the history table "
            "is created by 000_create_migration_infrastructure.sql"
        )
    _refuse_orphan_downs(migrations, downs, source)
    return Catalog(
        tuple(migrations),
        tuple(sorted(routines, key=lambda r: r.name)),
        tuple(sorted(downs, key=lambda d: (int(d.version), d.version))),
    )


def load_migrations(source: MigrationSource) -> list[Migration]:
    """The versioned migrations of a source, validated, in version order."""
    return list(load_catalog(source).migrations)


def _refuse_orphan_downs(
    migrations: list[Migration], downs: list[Down], source: MigrationSource
) -> None:
    """A down file names the migration it undoes; one that names none is a typo or a leftover."""
    filenames = {m.filename for m in migrations}
    for down in downs:
        if up_filename(down) not in filenames:
            raise MigrationFileError(
                f"{down.filename}: no migration {up_filename(down)} to undo "
                f"({source.describe()}); a down file is named like its migration, with "
                ".down.sql for .sql",
                filename=down.filename,
            )


def _refuse_duplicates(migrations: list[Migration], source: MigrationSource) -> None:
    by_number: dict[int, Migration] = {}  # 001 and 0001 are one version too
    for migration in migrations:
        other = by_number.get(int(migration.version))
        if other is not None:
            raise DuplicateVersionError(
                f"two migration files have version {migration.version}: "
                f"{other.filename} and {migration.filename} ({source.describe()}); "
                "renumber one of them",
                version=migration.version,
                filenames=(other.filename, migration.filename),
            )
        by_number[int(migration.version)] = migration


def _refuse_unknown_dependencies(migrations: list[Migration], source: MigrationSource) -> None:
    versions = {m.version for m in migrations}
    for migration in migrations:
        for dep in migration.depends:
            if dep not in versions:
                raise MissingDependencyError(
                    f"{migration.filename} depends on version {dep}, but no migration file "
                    f"has that version ({source.describe()})",
                    version=migration.version,
                    dependency=dep,
                    reason="no file has it",
                )
