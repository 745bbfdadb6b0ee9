"""The parsed migration set as plain values: migrations, their steps, and routines.

One value that the planner, the dry run and the executor share; nothing
here touches a database.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Collection, Mapping

from cex_arbitrage.db.migrator.split import split_statements

# The migration that creates the history table every other one records into.
INFRASTRUCTURE_VERSION = "000"
# History rows of routines carry this prefix in `version` (it never starts a number).
ROUTINE_PREFIX = "R__"


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
    # The file's line number of each line of `sql` (directive lines are not in it),
    # so a server error position maps back to file:line.
    line_numbers: tuple[int, ...] = dataclasses.field(default=(), compare=False)

    @property
    def statements(self) -> list[str]:
        return split_statements(self.sql)

    def file_line(self, offset: int) -> int | None:
        """The file line of character `offset` of `sql`."""
        index = self.sql.count("\n", 0, max(0, offset))
        return self.line_numbers[index] if index < len(self.line_numbers) else None


@dataclasses.dataclass(frozen=True)
class Migration:
    """One parsed versioned migration file."""

    version: str
    name: str
    filename: str
    feature: str | None
    depends: tuple[str, ...]
    description: str
    steps: tuple[Step, ...]
    checksum: str
    # Checksums of earlier releases of this file that this one replaces on
    # purpose, with the same schema (`-- migrate:replaces CHECKSUM REASON`):
    # a database that recorded one of them is current, not edited.
    replaces: frozenset[str] = frozenset()
    # A PostgreSQL extension the migration is for (`-- migrate:extension citus`):
    # where it is not installed the migration does not apply (not run, not
    # recorded), and it becomes pending when the extension appears (a database
    # restored onto a Citus coordinator).
    extension: str | None = None

    def applies(self, features: Mapping[str, bool], extensions: Collection[str]) -> bool:
        """Whether its feature is on and its extension (if any) is installed."""
        return (self.feature is None or bool(features.get(self.feature, False))) and (
            self.extension is None or self.extension in extensions
        )

    def why_not(self, features: Mapping[str, bool]) -> str:
        """Why it does not apply here (call when `applies` is false)."""
        if self.feature is not None and not features.get(self.feature, False):
            return f"feature {self.feature} is disabled"
        return f"extension {self.extension} is not installed"

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

    @property
    def is_infrastructure(self) -> bool:
        return self.version == INFRASTRUCTURE_VERSION

    def checksum_matches(self, recorded: str) -> bool:
        """The recorded checksum is this file's, or one of a release it replaces."""
        return recorded == self.checksum or recorded in self.replaces


@dataclasses.dataclass(frozen=True)
class Routine:
    """A repeatable file (`R__name.sql`): code replaced, not migrated.

    Functions, procedures and views: the whole file runs again, in one
    transaction with its history row, whenever its checksum differs from the
    recorded one, before any pending step that may call it.
    """

    name: str
    filename: str
    feature: str | None
    description: str
    sql: str
    checksum: str

    @property
    def key(self) -> str:
        """Its `migration_history.version`."""
        return f"{ROUTINE_PREFIX}{self.name}"

    @property
    def label(self) -> str:
        return self.key


@dataclasses.dataclass(frozen=True)
class Down:
    """A down file (`NNN_name.down.sql`): how to undo migration NNN, or why it cannot be.

    A companion file, not a section of the migration: `psql -f` of the
    migration must never run its down. It runs whole, in one transaction with
    the deletion of the migration's history row. `irreversible` holds the
    reason given by `-- migrate:irreversible REASON` (then there is no SQL);
    an empty `sql` undoes nothing but the history row (e.g. a VACUUM).
    """

    version: str
    name: str
    filename: str
    sql: str
    irreversible: str | None = None

    @property
    def statements(self) -> list[str]:
        return split_statements(self.sql)


@dataclasses.dataclass(frozen=True)
class Catalog:
    """A whole validated migration set: versioned files in order, and routines by name."""

    migrations: tuple[Migration, ...]
    routines: tuple[Routine, ...] = ()
    downs: tuple[Down, ...] = ()

    def by_version(self) -> dict[str, Migration]:
        return {m.version: m for m in self.migrations}

    def down_of(self, version: str) -> Down | None:
        """The down file of `version`, or None when it has none."""
        return next((d for d in self.downs if d.version == version), None)


def checksum_of(text: str) -> str:
    """SHA-256 of the file with line endings normalised, so a CRLF checkout is not drift."""
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()
