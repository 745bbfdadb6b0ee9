"""Parse one migration or routine file: name, header directives, steps, statements.

Format: docs/migration-files.md. Directives are SQL comments (`-- migrate:KEY VALUE`),
so every file stays a plain psql script. Phases: the file name, a line scan into
header and raw steps, step validation, then the header's values.
"""

from __future__ import annotations

import dataclasses
import re

from cex_arbitrage.db.migrator.model import (
    INFRASTRUCTURE_VERSION,
    ROUTINE_PREFIX,
    Migration,
    Routine,
    Step,
    checksum_of,
)
from cex_arbitrage.db.migrator.refusals import refuse_transaction_control
from cex_arbitrage.db.migrator.split import split_statements
from cex_arbitrage.errors import MigrationFileError

FILENAME_RE = re.compile(r"^(?P<version>\d{3,})_(?P<name>[a-z0-9][a-z0-9_]*)\.sql$")
ROUTINE_FILENAME_RE = re.compile(rf"^{ROUTINE_PREFIX}(?P<name>[a-z0-9][a-z0-9_]*)\.sql$")
_DIRECTIVE_RE = re.compile(r"^--\s*migrate:(?P<key>[a-z-]+)(?:\s+(?P<value>.*?))?\s*$")
# Anything that looks like a directive but is not one (`migrate:Feature`, `migrate: step`)
# is refused rather than read as a comment: ignoring it could run a feature's SQL as core.
_DIRECTIVE_LIKE_RE = re.compile(r"^\s*--\s*migrate\s*:", re.IGNORECASE)
# The same for a directive without its colon (`-- migrate step x`): only a directive word
# right after `-- migrate ` counts, so `-- migrate the data` or `-- migrated rows` stay comments.
_DIRECTIVE_NO_COLON_RE = re.compile(
    r"^\s*--\s*migrate\s+(?P<key>feature|extension|depends|description|replaces|irreversible|step|session"
    r"|psql-only)"
    r"(?![\w-])",
    re.IGNORECASE,
)
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")
_EXTENSION_RE = re.compile(r"^[a-z0-9_-]+$")
_CHECKSUM_RE = re.compile(r"^[0-9a-f]{64}$")
_HEADER_KEYS = ("feature", "extension", "depends", "description", "replaces", "irreversible")
_MIGRATION_KEYS = ("feature", "extension", "depends", "description", "replaces")
_REPEATABLE_KEYS = ("replaces",)
_ROUTINE_KEYS = ("feature", "description")
_STEP_FLAGS = ("transaction:false", "background", "parallel")
_KNOWN = ", ".join((*_HEADER_KEYS, "step", "session", "psql-only"))


@dataclasses.dataclass
class _RawStep:
    """A step as scanned, before validation; `line_numbers`: each of `lines`' file line."""

    name: str
    line: int
    flags: tuple[str, ...] = ()
    lines: list[str] = dataclasses.field(default_factory=list)
    line_numbers: list[int] = dataclasses.field(default_factory=list)
    first_sql_line: int = 0
    session: set[int] = dataclasses.field(default_factory=set)

    @property
    def sql(self) -> str:
        return "".join(self.lines)


@dataclasses.dataclass
class Scan:
    """Phase 1's result: header directives (with their lines) and raw steps."""

    header: list[tuple[str, str, int]] = dataclasses.field(default_factory=list)
    steps: list[_RawStep] = dataclasses.field(default_factory=list)
    psql_only: bool = False


def parse_file(filename: str, text: str) -> Migration | Routine:
    """A versioned migration (`NNN_name.sql`) or a routine (`R__name.sql`)."""
    if filename.startswith(ROUTINE_PREFIX):
        return parse_routine(filename, text)
    return parse_migration(filename, text)


def parse_migration(filename: str, text: str) -> Migration:
    """Parse a versioned migration file; refuse anything malformed, naming the file and line."""
    match = FILENAME_RE.match(filename)
    if not match:
        raise MigrationFileError(
            f"{filename}: not a migration file name; expected NNN_snake_case_name.sql "
            "(three or more digits, then lower-case letters, digits and underscores), "
            f"or {ROUTINE_PREFIX}snake_case_name.sql for a repeatable routine",
            filename=filename,
        )
    version, name = match["version"], match["name"]
    scan = scan_file(filename, text)
    steps = _validated_steps(filename, scan)
    header = header_values(filename, scan, _MIGRATION_KEYS)
    return Migration(
        version=version,
        name=name,
        filename=filename,
        feature=_feature(filename, header),
        depends=_depends(filename, version, header),
        description=header.get("description", [name.replace("_", " ")])[0],
        steps=tuple(steps),
        checksum=checksum_of(text),
        replaces=_replaces(filename, header),
        extension=_extension(filename, header),
    )


def parse_routine(filename: str, text: str) -> Routine:
    """Parse a routine file: a header, then SQL that runs whole in one transaction."""
    match = ROUTINE_FILENAME_RE.match(filename)
    if not match:
        raise MigrationFileError(
            f"{filename}: not a routine file name; expected {ROUTINE_PREFIX}snake_case_name.sql",
            filename=filename,
        )
    scan = scan_file(filename, text)
    if len(scan.steps) != 1 or scan.steps[0].name != "main":
        raise MigrationFileError(
            f"{filename}:{scan.steps[-1].line}: a routine has no steps: it runs whole, "
            "in one transaction, whenever it changes",
            filename=filename,
            line=scan.steps[-1].line,
        )
    (step,) = _validated_steps(filename, scan)
    header = header_values(filename, scan, _ROUTINE_KEYS)
    return Routine(
        name=match["name"],
        filename=filename,
        feature=_feature(filename, header),
        description=header.get("description", [match["name"].replace("_", " ")])[0],
        sql=step.sql,
        checksum=checksum_of(text),
    )


def scan_file(filename: str, text: str) -> Scan:
    """Phase 1: read directives line by line into the header and raw steps."""
    text = text.removeprefix("\ufeff")  # a BOM, as psql skips it (the checksum keeps it)
    scan = Scan(steps=[_RawStep("main", 1)])
    for lineno, line in enumerate(text.splitlines(keepends=True), start=1):
        directive = _DIRECTIVE_RE.match(line.rstrip("\r\n"))
        if directive is None and _DIRECTIVE_LIKE_RE.match(line):
            raise MigrationFileError(
                f"{filename}:{lineno}: malformed directive {line.strip()!r}; write "
                f"`-- migrate:KEY VALUE` with a lower-case key: {_KNOWN}",
                filename=filename,
                line=lineno,
            )
        if directive is None:
            _refuse_missing_colon(filename, line, lineno)
            if not scan.psql_only:
                _add_line(scan.steps[-1], line, lineno)
            continue
        if scan.psql_only:
            raise MigrationFileError(
                f"{filename}:{lineno}: no migrate: directive may follow migrate:psql-only",
                filename=filename,
                line=lineno,
            )
        _directive(filename, scan, directive["key"], directive["value"] or "", lineno)
    return scan


def _refuse_missing_colon(filename: str, line: str, lineno: int) -> None:
    """`-- migrate step x` reads as a comment: refuse it rather than ignore the directive."""
    match = _DIRECTIVE_NO_COLON_RE.match(line)
    if match:
        key = match["key"].lower()
        raise MigrationFileError(
            f"{filename}:{lineno}: {line.strip()!r} looks like the directive migrate:{key} "
            f"without its colon, and would be ignored as a comment; write `-- migrate:{key}` "
            f"(or reword the comment so it does not start with `-- migrate {key}`)",
            filename=filename,
            line=lineno,
        )


def _add_line(step: _RawStep, line: str, lineno: int) -> None:
    step.lines.append(line)
    step.line_numbers.append(lineno)
    stripped = line.strip()
    if not step.first_sql_line and stripped and not stripped.startswith("--"):
        step.first_sql_line = lineno


def _directive(filename: str, scan: Scan, key: str, value: str, lineno: int) -> None:
    """Apply one directive line to the scan."""
    where = f"{filename}:{lineno}"
    current = scan.steps[-1]
    if key in _HEADER_KEYS:
        if current.first_sql_line or len(scan.steps) > 1:
            raise MigrationFileError(
                f"{where}: migrate:{key} must be in the header, before the first statement",
                filename=filename,
                line=lineno,
            )
        if key not in _REPEATABLE_KEYS and any(k == key for k, _, _ in scan.header):
            raise MigrationFileError(
                f"{where}: migrate:{key} is given twice", filename=filename, line=lineno
            )
        if not value:
            raise MigrationFileError(
                f"{where}: migrate:{key} needs a value", filename=filename, line=lineno
            )
        scan.header.append((key, value, lineno))
    elif key == "session":
        if "transaction:false" not in current.flags:
            raise MigrationFileError(
                f"{where}: migrate:session only belongs in a transaction:false step (a "
                "transactional step is always run whole, on one connection)",
                filename=filename,
                line=lineno,
            )
        if value:
            raise MigrationFileError(
                f"{where}: migrate:session takes no value", filename=filename, line=lineno
            )
        current.session.add(len(split_statements(current.sql)))
    elif key == "step":
        scan.steps.append(_new_step(filename, scan, value, lineno))
    elif key == "psql-only":
        scan.psql_only = True
    else:
        raise MigrationFileError(
            f"{where}: unknown directive migrate:{key}; known: {_KNOWN}",
            filename=filename,
            line=lineno,
        )


def _new_step(filename: str, scan: Scan, value: str, lineno: int) -> _RawStep:
    """A `-- migrate:step NAME [flags]` line: check the name and flags."""
    where = f"{filename}:{lineno}"
    parts = value.split()
    if not parts or not _NAME_RE.match(parts[0]):
        raise MigrationFileError(
            f"{where}: migrate:step needs a name of lower-case letters, digits and "
            f"underscores, then optional flags {', '.join(_STEP_FLAGS)}",
            filename=filename,
            line=lineno,
        )
    name, flags = parts[0], tuple(parts[1:])
    unknown = [f for f in flags if f not in _STEP_FLAGS]
    if unknown or len(set(flags)) != len(flags):
        raise MigrationFileError(
            f"{where}: unknown or repeated step flag {' '.join(unknown or flags)!r}; "
            f"known flags: {', '.join(_STEP_FLAGS)}",
            filename=filename,
            line=lineno,
        )
    implicit_main = scan.steps[0] if split_statements(scan.steps[0].sql) else None
    if any(s.name == name for s in scan.steps[1:]) or (implicit_main and name == "main"):
        raise MigrationFileError(
            f"{where}: step name {name!r} is used twice", filename=filename, line=lineno
        )
    if "parallel" in flags and "transaction:false" not in flags:
        raise MigrationFileError(
            f"{where}: step {name!r} is parallel but transactional; a parallel "
            "step runs its statements on several sessions, so it needs transaction:false",
            filename=filename,
            line=lineno,
        )
    return _RawStep(name, lineno, flags)


def _validated_steps(filename: str, scan: Scan) -> list[Step]:
    """Phase 2: refuse transaction control and empty steps; build the Step values."""
    steps: list[Step] = []
    for raw in scan.steps:
        refuse_transaction_control(filename, raw.sql, raw.line_numbers)
        if not split_statements(raw.sql):
            if raw.name != "main":
                raise MigrationFileError(
                    f"{filename}:{raw.line}: step {raw.name!r} contains no SQL statement",
                    filename=filename,
                    line=raw.line,
                )
            continue
        steps.append(
            Step(
                raw.name,
                raw.sql,
                transactional="transaction:false" not in raw.flags,
                background="background" in raw.flags,
                line=raw.line,
                session_statements=frozenset(raw.session),
                parallel="parallel" in raw.flags,
                line_numbers=tuple(raw.line_numbers),
            )
        )
    if not steps:
        raise MigrationFileError(f"{filename}: contains no SQL statement", filename=filename)
    return steps


def header_values(filename: str, scan: Scan, allowed: tuple[str, ...]) -> dict[str, list[str]]:
    """Phase 3: the header's directives by key, refusing keys this kind of file has not."""
    values: dict[str, list[str]] = {}
    for key, value, lineno in scan.header:
        if key not in allowed:
            raise MigrationFileError(
                f"{filename}:{lineno}: migrate:{key} does not belong in this kind of file; "
                f"known here: {', '.join(allowed)}",
                filename=filename,
                line=lineno,
            )
        values.setdefault(key, []).append(value)
    return values


def _extension(filename: str, header: dict[str, list[str]]) -> str | None:
    extension = header.get("extension", [None])[0]
    if extension is not None and not _EXTENSION_RE.match(extension):
        raise MigrationFileError(
            f"{filename}: migrate:extension {extension!r} is not an extension name",
            filename=filename,
        )
    return extension


def _feature(filename: str, header: dict[str, list[str]]) -> str | None:
    feature = header.get("feature", [None])[0]
    if feature is not None and not _NAME_RE.match(feature):
        raise MigrationFileError(
            f"{filename}: migrate:feature {feature!r} must be lower-case letters, digits, _",
            filename=filename,
        )
    return feature


def _depends(filename: str, version: str, header: dict[str, list[str]]) -> tuple[str, ...]:
    if "depends" in header:
        depends = tuple(d.strip() for d in header["depends"][0].replace(",", " ").split())
        for dep in depends:
            if not dep.isdigit():
                raise MigrationFileError(
                    f"{filename}: migrate:depends {dep!r} is not a version", filename=filename
                )
    else:
        depends = () if version == INFRASTRUCTURE_VERSION else (INFRASTRUCTURE_VERSION,)
    for dep in depends:
        if int(dep) >= int(version):
            raise MigrationFileError(
                f"{filename}: depends on {dep}, which is not an earlier version",
                filename=filename,
            )
    return depends


def _replaces(filename: str, header: dict[str, list[str]]) -> frozenset[str]:
    """`-- migrate:replaces CHECKSUM REASON`: an earlier release of this file, same schema."""
    replaced: set[str] = set()
    for value in header.get("replaces", []):
        checksum, _, reason = value.partition(" ")
        if not _CHECKSUM_RE.match(checksum) or not reason.strip():
            raise MigrationFileError(
                f"{filename}: migrate:replaces needs the SHA-256 of the earlier release and "
                f"a reason (`-- migrate:replaces CHECKSUM why it is the same schema`), got "
                f"{value!r}",
                filename=filename,
            )
        replaced.add(checksum)
    return frozenset(replaced)
