"""A new migration file: the next version, its name checked, a header and steps to fill in.

Pure except for `write_migration`, which reads the directory's migration set
and writes the file. The text parses with `parse_migration` as written (its
one step holds `SELECT 1;` for the author to replace), so `status` shows the
new migration as pending at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from cex_arbitrage.db.migrator.model import INFRASTRUCTURE_VERSION, Catalog, Migration, Routine
from cex_arbitrage.db.migrator.parse import FILENAME_RE, parse_migration
from cex_arbitrage.db.migrator.parse_down import parse_down
from cex_arbitrage.db.migrator.source import DirectorySource, load_catalog
from cex_arbitrage.errors import ConfigError, ValidationError

MIN_WIDTH = 3
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")

_GUIDE = """\
--
-- {filename}: written by `new`. Replace the placeholder `SELECT 1;` below with
-- this migration's SQL, then check it: `status` shows it pending, `--dry-run
-- --verbose` shows its plan and SQL. Once released, never edit it: add another.
-- The format: docs/migration-files.md.
--
-- Header directives (before the first statement, each at most once):
--   * migrate:feature NAME   the migration belongs to feature NAME; with the
--                            feature off in config it is skipped (disabled).
--                            Without it the migration is core (always applied).
--   * migrate:extension NAME only where extension NAME is installed (e.g.
--                            citus); elsewhere neither run nor recorded.
--   * migrate:depends V, ... versions that must be applied first (default 000).
--   * migrate:description T  one line shown by `status --verbose`.
--
-- Steps, each from a line `-- migrate:step NAME [flags]` to the next:
--   (no flag)          one transaction with the history row that records it.
--   transaction:false  statement by statement in autocommit (CREATE INDEX
--                      CONCURRENTLY, procedures that commit); a failed run
--                      resumes at the failed statement, so each statement must
--                      be safe to re-run (IF NOT EXISTS, checkpoints).
--   background         work old rows need and new writes do not (backfills):
--                      runs after every foreground step, resumable.
--   parallel           (with transaction:false) each statement runs on several
--                      sessions at once and must share its work out itself
--                      (claim items with FOR UPDATE SKIP LOCKED).
--   * migrate:session    on the line before a statement of a transaction:false
--                      step: session set-up (SET, temp table) replayed on resume.
--   * migrate:psql-only  the rest of the file is for a manual psql run only.
-- Never BEGIN, COMMIT or ROLLBACK here: the runner owns the transactions.
"""

_STEP = """\

-- migrate:step main
-- Placeholder: replace `SELECT 1;` with the SQL of this step (a step needs at
-- least one statement, so the file is valid as it stands).
SELECT 1;
"""

_NON_TRANSACTIONAL_STEP = """\

-- migrate:step outside_transaction transaction:false
-- Placeholder: statements run one by one in autocommit, e.g. an index built
-- CONCURRENTLY with IF NOT EXISTS; replace `SELECT 1;` with them.
SELECT 1;
"""

_TAIL = """\

-- migrate:psql-only
-- For a manual `psql -v ON_ERROR_STOP=1 -f {filename}` run: records the
-- migration so that the runner sees it applied.
SELECT migration_record_manual({arguments});
"""


_DOWN = """\
-- Down of migration {version}: undoes {filename}.
--
-- Written by `new --down`. Replace the placeholder `SELECT 1;` with SQL that
-- undoes {filename}: `down --target V` runs this file whole, in one
-- transaction together with the removal of the migration's history row, when
-- its walk passes {version}. Drop what the migration created (IF EXISTS), in
-- reverse order. A down that drops tables or columns holding rows is refused
-- unless --allow-data-loss is given (the refusal says how many rows).
-- If the migration cannot be undone exactly, delete the SQL and write:
--   -- migrate:irreversible REASON
-- (a migrate:KEY directive, like those of the migration file).

SELECT 1;

-- migrate:psql-only
-- For a manual `psql -v ON_ERROR_STOP=1 -1 -f {down_filename}` run.
DELETE FROM migration_history WHERE version = '{version}';
"""


def down_text(version: str, name: str) -> str:
    """The text of a new down file (it parses as it stands)."""
    filename = f"{version}_{name}.sql"
    return _DOWN.format(
        version=version, filename=filename, down_filename=f"{version}_{name}.down.sql"
    )


@dataclasses.dataclass(frozen=True)
class NewMigration:
    """What `new` writes: the file name and its text."""

    version: str
    name: str
    filename: str
    text: str


def next_version(versions: Sequence[str]) -> str:
    """Highest version + 1, zero-padded to the widest existing version (at least 3 digits)."""
    if not versions:
        return INFRASTRUCTURE_VERSION
    width = max(MIN_WIDTH, *(len(v) for v in versions))
    return str(max(int(v) for v in versions) + 1).zfill(width)


def check_name(name: str, catalog: Catalog) -> None:
    """Refuse a name that is not snake_case or that another file of the set uses."""
    if not NAME_RE.match(name):
        raise ValidationError(
            f"migration name {name!r} is not snake_case: use lower-case letters, digits "
            "and underscores, starting with a letter or digit (e.g. add_order_book_index)"
        )
    used: list[Migration | Routine] = [*catalog.migrations, *catalog.routines]
    for other in used:
        if other.name == name:
            raise ValidationError(
                f"migration name {name!r} is already used by {other.filename}; choose another name"
            )


def resolve_depends(depends: Iterable[str], catalog: Catalog) -> tuple[str, ...]:
    """Versions the new migration depends on, each an existing version (`1` means 001)."""
    versions = [m.version for m in catalog.migrations]
    chosen: list[str] = []
    for raw in depends:
        value = raw.strip()
        if not value:
            continue
        same = [v for v in versions if v == value] or [
            v for v in versions if value.isdigit() and int(v) == int(value)
        ]
        if len(same) != 1:
            raise ValidationError(
                f"--depends {value!r}: no migration has that version; "
                f"versions: {', '.join(versions)}"
            )
        if same[0] not in chosen:
            chosen.append(same[0])
    return tuple(chosen) or (INFRASTRUCTURE_VERSION,)


def check_feature(feature: str | None, catalog: Catalog, default_features: Iterable[str]) -> None:
    """Refuse a feature that neither the defaults nor a file of the set names."""
    if feature is None:
        return
    files: list[Migration | Routine] = [*catalog.migrations, *catalog.routines]
    known = sorted({*default_features, *(f.feature for f in files if f.feature)})
    if feature not in known:
        close = difflib.get_close_matches(feature, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"known features: {', '.join(known)}"
        raise ValidationError(f"--feature {feature!r}: unknown feature; {hint}")


def check_order(filename: str, catalog: Catalog) -> None:
    """Refuse a file name that would not sort after every existing one (e.g. 1000 after 999)."""
    existing = sorted(m.filename for m in catalog.migrations)
    if existing and filename < existing[-1]:
        raise ValidationError(
            f"{filename} would sort before {existing[-1]} in a directory listing (the "
            "versions have different widths); renumber the files to one width first, "
            "so that listing order stays version order"
        )


def scaffold_text(
    version: str,
    name: str,
    *,
    feature: str | None = None,
    depends: Sequence[str] = (INFRASTRUCTURE_VERSION,),
    non_transactional: bool = False,
) -> str:
    """The text of a new migration file (it parses as it stands)."""
    filename = f"{version}_{name}.sql"
    if feature is None:
        header = "-- (core migration: add a migrate:feature line to put it under a feature)\n"
    else:
        header = f"-- migrate:feature {feature}\n"
    header += f"-- migrate:depends {', '.join(depends)}\n"
    header += f"-- migrate:description {name.replace('_', ' ').capitalize()}\n"
    arguments = ", ".join(f"'{a}'" for a in (version, name, feature) if a is not None)
    body = _STEP + (_NON_TRANSACTIONAL_STEP if non_transactional else "")
    tail = _TAIL.format(filename=filename, arguments=arguments)
    return (
        f"-- Migration {version}: {name}\n"
        + header
        + _GUIDE.format(filename=filename)
        + body
        + tail
    )


def new_migration(
    catalog: Catalog,
    name: str,
    *,
    feature: str | None = None,
    depends: Iterable[str] = (),
    non_transactional: bool = False,
    default_features: Iterable[str] = (),
) -> NewMigration:
    """The next migration of `catalog`, checked against it (no file is written)."""
    check_name(name, catalog)
    check_feature(feature, catalog, default_features)
    chosen = resolve_depends(depends, catalog)
    version = next_version([m.version for m in catalog.migrations])
    filename = f"{version}_{name}.sql"
    if not FILENAME_RE.match(filename):
        raise ValidationError(f"{filename}: not a valid migration file name")
    check_order(filename, catalog)
    text = scaffold_text(
        version, name, feature=feature, depends=chosen, non_transactional=non_transactional
    )
    parse_migration(filename, text)  # the scaffold is a valid file as it stands
    return NewMigration(version=version, name=name, filename=filename, text=text)


def write_migration(
    directory: Path,
    name: str,
    *,
    feature: str | None = None,
    depends: Iterable[str] = (),
    non_transactional: bool = False,
    default_features: Iterable[str] = (),
    down: bool = False,
) -> Path:
    """Write the next migration of the set in `directory` (and its down file); returns its path.

    The set is read and validated first (a malformed file is refused as the
    runner would refuse it), and again with the new files, which are created
    exclusively: an existing file is never overwritten.
    """
    source = DirectorySource(directory)
    catalog = load_catalog(source)
    new = new_migration(
        catalog,
        name,
        feature=feature,
        depends=depends,
        non_transactional=non_transactional,
        default_features=default_features,
    )
    path = Path(directory) / new.filename
    files = [(path, new.text)]
    if down:
        text = down_text(new.version, new.name)
        down_name = f"{new.version}_{new.name}.down.sql"
        parse_down(down_name, text)  # valid as it stands
        files.append((Path(directory) / down_name, text))
    written: list[Path] = []
    try:
        for target, text in files:
            _write_new(target, text)
            written.append(target)
        load_catalog(source)
    except (ValidationError, ConfigError):
        for done in written:
            done.unlink()
        raise
    return path


def _write_new(path: Path, text: str) -> None:
    """Create `path` with `text`; never overwrite."""
    try:
        with path.open("x", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
    except FileExistsError:
        raise ValidationError(f"{path} exists already; nothing was written") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
