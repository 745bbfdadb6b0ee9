"""Parse one migration file: name, header directives, steps, statements.

The format is documented in docs/migration-files.md. Directives are SQL
comments (`-- migrate:KEY VALUE`), so every file stays a plain psql script.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

from cex_arbitrage.db.migrations.errors import ValidationError

FILENAME_RE = re.compile(r"^(?P<version>\d{3,})_(?P<name>[a-z0-9][a-z0-9_]*)\.sql$")
_DIRECTIVE_RE = re.compile(r"^--\s*migrate:(?P<key>[a-z-]+)(?:\s+(?P<value>.*?))?\s*$")
# Anything that looks like a directive but is not one (`migrate:Feature`, `migrate: step`)
# is refused rather than read as a comment: ignoring it could run a feature's SQL as core.
_DIRECTIVE_LIKE_RE = re.compile(r"^\s*--\s*migrate\s*:", re.IGNORECASE)
_STEP_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")
# The runner owns transactions; a top-level COMMIT in a step would commit half a migration.
# (Not END: it also closes a BEGIN ATOMIC function body, which a transactional step allows.)
_TRANSACTION_CONTROL_RE = re.compile(
    r"^(?P<word>BEGIN|START\s+TRANSACTION|COMMIT|ROLLBACK|ABORT)\b(?!\s+(?:TO|PREPARED)\b)",
    re.IGNORECASE,
)
_HEADER_KEYS = ("feature", "depends", "description")
_STEP_FLAGS = ("transaction:false", "background", "parallel")
_INDEX_CONCURRENTLY_RE = re.compile(
    r"^\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"(?!ON\b)"  # `CREATE INDEX CONCURRENTLY ON t (...)` has no name to look for
    r"(?P<name>\"(?:[^\"]|\"\")+\"|[A-Za-z_][A-Za-z0-9_$]*)",
    re.IGNORECASE,
)


@dataclasses.dataclass(frozen=True)
class Step:
    """A run of SQL executed the same way: in one transaction, or statement by statement."""

    name: str
    sql: str
    transactional: bool
    background: bool
    line: int
    # Indexes (in `statements`) of statements that set up session state (a
    # SET, a temp table): replayed first when a run resumes mid-step on a new
    # connection, because that state died with the old one.
    session_statements: frozenset[int] = frozenset()
    # `parallel`: each statement shares its work out itself (claims with
    # FOR UPDATE SKIP LOCKED), so the runner may run it on several sessions.
    parallel: bool = False

    @property
    def statements(self) -> list[str]:
        return split_statements(self.sql)


@dataclasses.dataclass(frozen=True)
class Migration:
    """One parsed migration file; a plain value the planner and executor share."""

    version: str
    name: str
    filename: str
    feature: str | None
    depends: tuple[str, ...]
    description: str
    steps: tuple[Step, ...]
    checksum: str

    @property
    def foreground_steps(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if not s.background)

    @property
    def background_steps(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.background)

    @property
    def execution_order(self) -> tuple[Step, ...]:
        """Foreground steps in file order, then background steps; history counts in this order."""
        return self.foreground_steps + self.background_steps

    @property
    def single_transaction(self) -> bool:
        """True when the whole foreground part can run as one transaction."""
        return all(s.transactional for s in self.foreground_steps)

    @property
    def label(self) -> str:
        return f"{self.version}_{self.name}"


def checksum_of(text: str) -> str:
    """SHA-256 of the file with line endings normalised, so a CRLF checkout is not drift."""
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()


def parse_migration(filename: str, text: str) -> Migration:
    """Parse a migration file; refuse anything malformed, naming the file and line."""
    match = FILENAME_RE.match(filename)
    if not match:
        raise ValidationError(
            f"{filename}: not a migration file name; expected NNN_snake_case_name.sql "
            "(three or more digits, then lower-case letters, digits and underscores)"
        )
    version, name = match["version"], match["name"]
    header: dict[str, str] = {}
    steps: list[Step] = []
    current_name, current_tx, current_bg, current_line = "main", True, False, 1
    current_parallel = False
    buffer: list[str] = []
    buffer_line = 1  # the line the buffered SQL starts at
    session: set[int] = set()
    seen_sql = False
    psql_only = False

    def close_step() -> None:
        sql = "".join(buffer)
        _refuse_transaction_control(filename, sql, buffer_line)
        if split_statements(sql):
            steps.append(
                Step(
                    current_name,
                    sql,
                    current_tx,
                    current_bg,
                    current_line,
                    frozenset(session),
                    parallel=current_parallel,
                )
            )
        elif current_name != "main":
            raise ValidationError(
                f"{filename}:{current_line}: step {current_name!r} contains no SQL statement"
            )

    for lineno, line in enumerate(text.splitlines(keepends=True), start=1):
        directive = _DIRECTIVE_RE.match(line.rstrip("\r\n"))
        if directive is None and _DIRECTIVE_LIKE_RE.match(line):
            raise ValidationError(
                f"{filename}:{lineno}: malformed directive {line.strip()!r}; write "
                "`-- migrate:KEY VALUE` with a lower-case key: "
                f"{', '.join((*_HEADER_KEYS, 'step', 'session', 'psql-only'))}"
            )
        if directive is None:
            if not psql_only:
                buffer.append(line)
                if not seen_sql and _has_sql(line):
                    seen_sql = True
            continue
        key, value = directive["key"], directive["value"] or ""
        where = f"{filename}:{lineno}"
        if psql_only:
            raise ValidationError(f"{where}: no migrate: directive may follow migrate:psql-only")
        if key in _HEADER_KEYS:
            if seen_sql or steps or current_name != "main":
                raise ValidationError(
                    f"{where}: migrate:{key} must be in the header, before the first statement"
                )
            if key in header:
                raise ValidationError(f"{where}: migrate:{key} is given twice")
            if not value:
                raise ValidationError(f"{where}: migrate:{key} needs a value")
            header[key] = value
        elif key == "session":
            if current_tx:
                raise ValidationError(
                    f"{where}: migrate:session only belongs in a transaction:false step (a "
                    "transactional step is always run whole, on one connection)"
                )
            if value:
                raise ValidationError(f"{where}: migrate:session takes no value")
            session.add(len(split_statements("".join(buffer))))
        elif key == "step":
            close_step()
            buffer, buffer_line = [], lineno + 1
            session = set()
            parts = value.split()
            if not parts or not _STEP_NAME_RE.match(parts[0]):
                raise ValidationError(
                    f"{where}: migrate:step needs a name of lower-case letters, digits and "
                    f"underscores, then optional flags {', '.join(_STEP_FLAGS)}"
                )
            flags = parts[1:]
            unknown = [f for f in flags if f not in _STEP_FLAGS]
            if unknown or len(set(flags)) != len(flags):
                raise ValidationError(
                    f"{where}: unknown or repeated step flag {' '.join(unknown or flags)!r}; "
                    f"known flags: {', '.join(_STEP_FLAGS)}"
                )
            if any(s.name == parts[0] for s in steps):
                raise ValidationError(f"{where}: step name {parts[0]!r} is used twice")
            current_name = parts[0]
            current_tx = "transaction:false" not in flags
            current_bg = "background" in flags
            current_parallel = "parallel" in flags
            if current_parallel and current_tx:
                raise ValidationError(
                    f"{where}: step {current_name!r} is parallel but transactional; a parallel "
                    "step runs its statements on several sessions, so it needs transaction:false"
                )
            current_line = lineno
        elif key == "psql-only":
            close_step()
            buffer = []
            psql_only = True
        else:
            raise ValidationError(
                f"{where}: unknown directive migrate:{key}; known: "
                f"{', '.join((*_HEADER_KEYS, 'step', 'session', 'psql-only'))}"
            )
    if not psql_only:
        close_step()
    if not steps:
        raise ValidationError(f"{filename}: contains no SQL statement")
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise ValidationError(f"{filename}: a step name is used twice: {names}")

    feature = header.get("feature")
    if feature is not None and not _STEP_NAME_RE.match(feature):
        raise ValidationError(
            f"{filename}: migrate:feature {feature!r} must be lower-case letters, digits, _"
        )
    if "depends" in header:
        depends = tuple(d.strip() for d in header["depends"].replace(",", " ").split())
        for dep in depends:
            if not dep.isdigit():
                raise ValidationError(f"{filename}: migrate:depends {dep!r} is not a version")
    else:
        depends = () if version == "000" else ("000",)
    for dep in depends:
        if int(dep) >= int(version):
            raise ValidationError(f"{filename}: depends on {dep}, which is not an earlier version")
    return Migration(
        version=version,
        name=name,
        filename=filename,
        feature=feature,
        depends=depends,
        description=header.get("description", name.replace("_", " ")),
        steps=tuple(steps),
        checksum=checksum_of(text),
    )


def _refuse_transaction_control(filename: str, sql: str, first_line: int) -> None:
    """Refuse BEGIN/COMMIT/ROLLBACK at top level, naming the line."""
    pos = 0
    for statement in split_statements(sql):
        fragment = statement[:-1]  # as it stands in `sql`, stripped, without the `;`
        start = sql.find(fragment, pos)
        pos = start + len(fragment)
        body = strip_leading_comments(fragment)
        match = _TRANSACTION_CONTROL_RE.match(body)
        if match:
            line = first_line + sql.count("\n", 0, pos - len(body))
            word = " ".join(match["word"].upper().split())
            raise ValidationError(
                f"{filename}:{line}: {word} is not allowed in a migration: the runner runs "
                "each step in a transaction of its own (a transaction:false step statement "
                f"by statement), and {word} would end it halfway through the migration. "
                "Remove it; put work that must commit on its own in a "
                "`-- migrate:step NAME transaction:false` step (for an atomic manual run, "
                "use `psql -1 -f`)"
            )


def _has_sql(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("--")


def concurrent_index_name(statement: str) -> str | None:
    """The index a `CREATE INDEX CONCURRENTLY` builds, so an INVALID leftover can be dropped."""
    match = _INDEX_CONCURRENTLY_RE.match(strip_leading_comments(statement))
    if not match:
        return None
    name = match["name"]
    if name.startswith('"'):
        return name[1:-1].replace('""', '"')
    return name.lower()


def strip_leading_comments(sql: str) -> str:
    """The statement without the comments and blank lines before it."""
    out = sql.lstrip()
    while out.startswith("--") or out.startswith("/*"):
        if out.startswith("--"):
            nl = out.find("\n")
            out = "" if nl < 0 else out[nl + 1 :].lstrip()
        else:
            end = out.find("*/")
            out = "" if end < 0 else out[end + 2 :].lstrip()
    return out


def split_statements(sql: str) -> list[str]:
    """Split SQL into statements on top-level semicolons.

    Understands what psql understands: quoted strings (with E'' escapes),
    quoted identifiers, dollar quoting, line and nested block comments.
    Comment-only fragments are dropped. SQL-standard `BEGIN ATOMIC` bodies are
    not supported (use a dollar-quoted body).
    """
    statements: list[str] = []
    i, start, n = 0, 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch == "-" and sql.startswith("--", i):
            nl = sql.find("\n", i)
            i = n if nl < 0 else nl + 1
        elif ch == "/" and sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif ch == "'":
            escapes = i > 0 and sql[i - 1] in "eE" and (i < 2 or not _ident_char(sql[i - 2]))
            i += 1
            while i < n:
                if escapes and sql[i] == "\\":
                    i += 2
                    continue
                if sql[i] == "'":
                    if i + 1 < n and sql[i + 1] == "'":
                        i += 2
                        continue
                    break
                i += 1
            i += 1
        elif ch == '"':
            end = sql.find('"', i + 1)
            while end >= 0 and sql.startswith('""', end):
                end = sql.find('"', end + 2)
            i = n if end < 0 else end + 1
        elif ch == "$" and (i == 0 or not _ident_char(sql[i - 1])):
            match = re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$", sql[i:])
            if match:
                tag = match.group(0)
                end = sql.find(tag, i + len(tag))
                i = n if end < 0 else end + len(tag)
            else:
                i += 1
        elif ch == ";":
            _append(statements, sql[start:i])
            i += 1
            start = i
        else:
            i += 1
    _append(statements, sql[start:])
    return statements


def _ident_char(ch: str) -> bool:
    return ch.isalnum() or ch in "_$"


def _append(statements: list[str], fragment: str) -> None:
    if strip_leading_comments(fragment).strip():
        statements.append(fragment.strip() + ";")
