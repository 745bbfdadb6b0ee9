"""Decide what runs: one plan value that the dry run prints and the executor runs.

Planning validates everything it can before anything changes, in named
phases: history rows no file knows (a database ahead of this code), edited
applied files, the target, what runs where, dependencies; then which
routines changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence

from cex_arbitrage.db.migrator.history import HistoryRow
from cex_arbitrage.db.migrator.model import Catalog, Migration, Routine
from cex_arbitrage.db.migrator.states import MigrationState
from cex_arbitrage.errors import (
    AbandonedAttemptError,
    ChecksumMismatchError,
    DatabaseAheadError,
    MissingDependencyError,
    TargetBelowAppliedError,
    UnknownTargetError,
)


@dataclasses.dataclass(frozen=True)
class PlannedMigration:
    """A migration to run, and where to start (a resume after a failure or crash)."""

    migration: Migration
    start_step: int = 0
    start_statement: int = 0
    checksum_changed: bool = False  # the file changed since a failed attempt

    @property
    def resuming(self) -> bool:
        return self.start_step > 0 or self.start_statement > 0


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything a run will do, in order."""

    database: str
    target: str | None
    foreground: tuple[PlannedMigration, ...]
    background: tuple[PlannedMigration, ...]
    disabled: tuple[Migration, ...]  # not for here: a feature off, an extension missing
    adopt_checksum: tuple[Migration, ...]  # applied by hand with psql: record the checksum
    # Recorded with the checksum of an earlier release this file replaces: record this one.
    replaced_checksum: tuple[Migration, ...] = ()
    # Routines new or changed since they were recorded: run before any other step.
    routines: tuple[Routine, ...] = ()
    # Why each of `disabled` does not apply here, by version.
    skipped_because: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.foreground or self.background or self.has_bookkeeping)

    @property
    def has_bookkeeping(self) -> bool:
        """Work under the migration lock besides foreground steps."""
        return bool(self.adopt_checksum or self.replaced_checksum or self.routines)

    def describe(self, *, sql: bool = False) -> str:
        """The plan as the dry run prints it."""
        lines: list[str] = []
        if not self.foreground and not self.background:
            lines.append(f"{self.database}: nothing to apply; the schema is current")
        for r in self.routines:
            lines.append(f"routine {r.filename}: create or replace (new or changed)")
            if sql:
                lines.extend("    " + line for line in r.sql.strip().splitlines())
        for pm in self.foreground:
            lines.extend(_describe_foreground(pm, sql))
        for pm in self.background:
            m = pm.migration
            steps = [s for s in m.steps if s.background]
            lines.append(f"background {m.filename}: " + ", ".join(s.name for s in steps))
            if sql:
                for step in steps:
                    lines.append(f"  step {step.name}: {_how(step.transactional, True)}")
                    lines.extend("    " + line for line in step.sql.strip().splitlines())
        for m in self.adopt_checksum:
            lines.append(f"record checksum of {m.filename} (applied by hand with psql)")
        for m in self.replaced_checksum:
            lines.append(f"record checksum of {m.filename} (it replaces the recorded release)")
        for m in self.disabled:
            lines.append(f"skip {m.filename}: {self.skipped_because[m.version]}")
        return "\n".join(lines)


def _describe_foreground(pm: PlannedMigration, sql: bool) -> list[str]:
    m = pm.migration
    where = (
        f" (resuming at step {pm.start_step + 1}, statement {pm.start_statement + 1})"
        if pm.resuming
        else ""
    )
    feature = f" [feature {m.feature}]" if m.feature else ""
    lines = [f"apply {m.filename}{feature}{where}"]
    for index, step in enumerate(m.execution_order):
        if step.background or index < pm.start_step:
            continue
        lines.append(f"  step {step.name}: {_how(step.transactional, step.background)}")
        if sql:
            lines.extend("    " + line for line in step.sql.strip().splitlines())
    return lines


def _how(transactional: bool, background: bool) -> str:
    kind = "one transaction" if transactional else "statement by statement, no transaction"
    return f"{kind}{', in the background' if background else ''}"


def versioned(history: Mapping[str, HistoryRow]) -> dict[str, HistoryRow]:
    """The rows of versioned migrations (routines have rows of their own)."""
    return {v: row for v, row in history.items() if not row.is_routine}


def check_checksums(
    migrations: Sequence[Migration], history: Mapping[str, HistoryRow], database: str
) -> None:
    """Refuse an applied migration whose file was edited afterwards."""
    for m in migrations:
        row = history.get(m.version)
        if row is None or not row.is_applied or row.checksum is None:
            continue
        if not m.checksum_matches(row.checksum):
            raise ChecksumMismatchError(
                f"{database}: migration {m.filename} was edited after it was applied "
                f"(checksum in database {row.checksum[:12]}…, file {m.checksum[:12]}…). "
                "Restore the file as it was applied (e.g. git checkout it); put new changes "
                "in a new migration. If the edit is deliberate and changes nothing in the "
                "schema, record the new checksum with "
                f"`python -m cex_arbitrage.db.migrate accept-checksum {m.version}`",
                version=m.version,
                recorded=row.checksum,
                current=m.checksum,
            )


def make_plan(
    catalog: Catalog,
    history: Mapping[str, HistoryRow],
    features: Mapping[str, bool],
    database: str,
    target: str | None = None,
    *,
    extensions: Collection[str] = frozenset(),
) -> Plan:
    """Compare files with history and decide what runs, or refuse.

    A migration applies where its feature is on and its extension (if it
    names one) is installed; `extensions` are the database's.
    """
    migrations = catalog.migrations
    rows = versioned(history)
    refuse_unknown_rows(catalog, rows, database)
    check_checksums(migrations, rows, database)
    if target is not None:
        target = _checked_target(catalog, rows, target.strip(), database)
    sorted_ = _sort(migrations, rows, features, extensions, target)
    _check_dependencies(catalog, sorted_.foreground, rows, (features, extensions), target, database)
    background = [
        *sorted_.background,
        *(
            PlannedMigration(pm.migration, start_step=len(pm.migration.foreground_steps))
            for pm in sorted_.foreground
            if pm.migration.background_steps
        ),
    ]
    return Plan(
        database=database,
        target=target,
        foreground=tuple(sorted_.foreground),
        background=tuple(background),
        disabled=tuple(sorted_.disabled),
        skipped_because={m.version: m.why_not(features) for m in sorted_.disabled},
        adopt_checksum=tuple(sorted_.adopt),
        replaced_checksum=tuple(sorted_.replaced),
        routines=_changed_routines(catalog.routines, history, features),
    )


def refuse_unknown_rows(catalog: Catalog, rows: Mapping[str, HistoryRow], database: str) -> None:
    """Phase 1: history rows no file knows: an abandoned attempt, or a newer code's work."""
    known = catalog.by_version()
    unknown = sorted(v for v in rows if v not in known)
    abandoned = [v for v in unknown if not rows[v].is_applied]
    if abandoned:
        # Not "a newer version": an attempt that failed or was cut off, whose file is gone.
        listed = ", ".join(f"version {v} ({rows[v].state})" for v in abandoned)
        raise AbandonedAttemptError(
            f"{database}: migration_history records an unfinished attempt of {listed}, but "
            "this code has no file for it (a newer cex_arbitrage's, or deleted after it "
            "failed). Deploy the code with that file and run again to finish it; or, "
            "if it was abandoned, undo what of it was applied (transaction:false statements "
            "before the failure stay), then remove its row: DELETE FROM migration_history "
            f"WHERE version IN ({', '.join(repr(v) for v in abandoned)})",
            versions=abandoned,
        )
    if unknown:
        raise DatabaseAheadError(
            f"{database}: migration(s) {', '.join(unknown)} are recorded in migration_history "
            "but this code has no file for them: the database was migrated by a newer "
            "version of cex_arbitrage. Deploy that version (or newer); this one refuses to "
            "run against a schema it does not know",
            versions=unknown,
        )


def _checked_target(
    catalog: Catalog, rows: Mapping[str, HistoryRow], target: str, database: str
) -> str:
    """Phase 3: the target names a file and is not below what is applied."""
    known = catalog.by_version()
    if target not in known:
        raise UnknownTargetError(
            f"{database}: unknown target version {target!r}; known versions: "
            f"{', '.join(known) or 'none'}",
            target=target,
            known=list(known),
        )
    above = sorted(v for v, row in rows.items() if row.is_applied and int(v) > int(target))
    if above:
        raise TargetBelowAppliedError(
            f"{database}: target {target} is below what is applied already "
            f"({', '.join(above)}); apply only goes forward. To go back, run "
            f"`down --target {target}` (it undoes them, newest first, where each has a "
            "down file), or restore a backup",
            target=target,
            applied_above=above,
        )
    return target


@dataclasses.dataclass
class _Sorted:
    foreground: list[PlannedMigration] = dataclasses.field(default_factory=list)
    background: list[PlannedMigration] = dataclasses.field(default_factory=list)
    disabled: list[Migration] = dataclasses.field(default_factory=list)
    adopt: list[Migration] = dataclasses.field(default_factory=list)
    replaced: list[Migration] = dataclasses.field(default_factory=list)


def _sort(
    migrations: Sequence[Migration],
    rows: Mapping[str, HistoryRow],
    features: Mapping[str, bool],
    extensions: Collection[str],
    target: str | None,
) -> _Sorted:
    """Phase 4: each migration to foreground, background, disabled or bookkeeping."""
    out = _Sorted()
    for m in migrations:
        row = rows.get(m.version)
        if target is not None and int(m.version) > int(target):
            continue
        applied = row is not None and row.is_applied and row.checksum is not None
        if applied and row is not None and row.checksum != m.checksum:
            out.replaced.append(m)  # it matched an earlier release this file replaces
        if not m.applies(features, extensions):
            if row is None:
                out.disabled.append(m)
            elif row.state is MigrationState.BACKGROUND:
                out.background.append(_resume(m, row))
            continue
        if row is None:
            out.foreground.append(PlannedMigration(m))
        elif row.is_applied:
            if row.checksum is None:
                out.adopt.append(m)
            if row.state is MigrationState.BACKGROUND:
                out.background.append(_resume(m, row))
        else:  # failed or running (interrupted): resume where it stopped
            pm = _resume(m, row)
            if pm.start_step >= len(m.foreground_steps):
                out.background.append(pm)
            else:
                out.foreground.append(pm)
    return out


def _check_dependencies(
    catalog: Catalog,
    foreground: Sequence[PlannedMigration],
    rows: Mapping[str, HistoryRow],
    environment: tuple[Mapping[str, bool], Collection[str]],
    target: str | None,
    database: str,
) -> None:
    """Phase 5: every dependency of what runs is applied or runs first."""
    by_version = catalog.by_version()
    planned = {pm.migration.version for pm in foreground}
    for pm in foreground:
        for dep in pm.migration.depends:
            dep_row = rows.get(dep)
            if dep in planned or (dep_row is not None and dep_row.is_applied):
                continue
            dep_m = by_version[dep]
            why = (
                _not_here(dep_m, environment[0])
                if not dep_m.applies(*environment)
                else f"it is above the target {target}"
                if target is not None
                else "it is not applied"
            )
            raise MissingDependencyError(
                f"{database}: {pm.migration.filename} depends on {dep_m.filename}, "
                f"which will not run: {why}",
                version=pm.migration.version,
                dependency=dep,
                reason=why,
            )


def _changed_routines(
    routines: Sequence[Routine], history: Mapping[str, HistoryRow], features: Mapping[str, bool]
) -> tuple[Routine, ...]:
    """Phase 6: routines of enabled features that are new or changed since recorded."""
    changed = []
    for r in routines:
        if r.feature is not None and not features.get(r.feature, False):
            continue
        row = history.get(r.key)
        if row is None or row.state is not MigrationState.APPLIED or row.checksum != r.checksum:
            changed.append(r)  # new, changed, failed last time, or run by hand (no checksum)
    return tuple(changed)


def _not_here(m: Migration, features: Mapping[str, bool]) -> str:
    if m.feature is not None and not features.get(m.feature, False):
        return f"it belongs to feature {m.feature}, which is disabled"
    return f"it is for extension {m.extension}, which is not installed"


def _resume(m: Migration, row: HistoryRow) -> PlannedMigration:
    """Where to restart: the first unfinished step, at the first unfinished statement."""
    checksum_changed = row.checksum is not None and not m.checksum_matches(row.checksum)
    return PlannedMigration(
        migration=m,
        start_step=row.steps_done,
        start_statement=row.statements_done,
        checksum_changed=checksum_changed,
    )
