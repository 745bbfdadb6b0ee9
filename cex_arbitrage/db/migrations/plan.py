"""Decide what runs: one plan value that the dry run prints and the executor runs.

Planning validates everything it can before anything changes: checksums of
applied files, a database ahead of this code, the target, dependencies on
migrations of disabled features.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from cex_arbitrage.db.migrations.errors import ChecksumMismatchError, ValidationError
from cex_arbitrage.db.migrations.history import HistoryRow
from cex_arbitrage.db.migrations.script import Migration


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
    disabled: tuple[Migration, ...]
    adopt_checksum: tuple[Migration, ...]  # applied by hand with psql: record the checksum

    @property
    def empty(self) -> bool:
        return not (self.foreground or self.background or self.adopt_checksum)

    def describe(self, *, sql: bool = False) -> str:
        """The plan as the dry run prints it."""
        lines: list[str] = []
        if not self.foreground and not self.background:
            lines.append(f"{self.database}: nothing to apply; the schema is current")
        for pm in self.foreground:
            m = pm.migration
            where = (
                f" (resuming at step {pm.start_step + 1}, statement {pm.start_statement + 1})"
                if pm.resuming
                else ""
            )
            feature = f" [feature {m.feature}]" if m.feature else ""
            lines.append(f"apply {m.filename}{feature}{where}")
            for index, step in enumerate(m.execution_order):
                if step.background or index < pm.start_step:
                    continue
                lines.append(f"  step {step.name}: {_how(step.transactional, step.background)}")
                if sql:
                    lines.extend("    " + line for line in step.sql.strip().splitlines())
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
        for m in self.disabled:
            lines.append(f"skip {m.filename}: feature {m.feature} is disabled")
        return "\n".join(lines)


def _how(transactional: bool, background: bool) -> str:
    kind = "one transaction" if transactional else "statement by statement, no transaction"
    return f"{kind}{', in the background' if background else ''}"


def check_checksums(
    migrations: Sequence[Migration], history: Mapping[str, HistoryRow], database: str
) -> None:
    """Refuse an applied migration whose file was edited afterwards."""
    for m in migrations:
        row = history.get(m.version)
        if row is None or not row.is_applied or row.checksum is None:
            continue
        if row.checksum != m.checksum:
            raise ChecksumMismatchError(
                f"{database}: migration {m.filename} was edited after it was applied "
                f"(checksum in database {row.checksum[:12]}…, file {m.checksum[:12]}…). "
                "Restore the file as it was applied (e.g. git checkout it); put new changes "
                "in a new migration. If the edit is deliberate and changes nothing in the "
                "schema, record the new checksum with "
                f"`python -m cex_arbitrage.db.migrate accept-checksum {m.version}`"
            )


def make_plan(
    migrations: Sequence[Migration],
    history: Mapping[str, HistoryRow],
    features: Mapping[str, bool],
    database: str,
    target: str | None = None,
) -> Plan:
    """Compare files with history and decide what runs, or refuse."""
    by_version = {m.version: m for m in migrations}
    unknown = sorted(v for v in history if v not in by_version)
    abandoned = [v for v in unknown if not history[v].is_applied]
    if abandoned:
        # Not "a newer version": an attempt that failed or was cut off, whose file is gone.
        rows = ", ".join(f"version {v} ({history[v].state})" for v in abandoned)
        raise ValidationError(
            f"{database}: migration_history records an unfinished attempt of {rows}, but "
            "this code has no file for it (a newer cex_arbitrage's, or deleted after it "
            "failed). Deploy the code with that file and run again to finish it; or, "
            "if it was abandoned, undo what of it was applied (transaction:false statements "
            "before the failure stay), then remove its row: DELETE FROM migration_history "
            f"WHERE version IN ({', '.join(repr(v) for v in abandoned)})"
        )
    if unknown:
        raise ValidationError(
            f"{database}: migration(s) {', '.join(unknown)} are recorded in migration_history "
            "but this code has no file for them: the database was migrated by a newer "
            "version of cex_arbitrage. Deploy that version (or newer); this one refuses to "
            "run against a schema it does not know"
        )
    check_checksums(migrations, history, database)

    def enabled(m: Migration) -> bool:
        return m.feature is None or bool(features.get(m.feature, False))

    if target is not None:
        target = target.strip()
        if target not in by_version:
            known = ", ".join(by_version) or "none"
            raise ValidationError(
                f"{database}: unknown target version {target!r}; known versions: {known}"
            )
        applied_above = sorted(
            v for v, row in history.items() if row.is_applied and int(v) > int(target)
        )
        if applied_above:
            raise ValidationError(
                f"{database}: target {target} is below what is applied already "
                f"({', '.join(applied_above)}); migrations only go forward (there are no "
                "down migrations). Restore a backup to go back"
            )

    foreground: list[PlannedMigration] = []
    background: list[PlannedMigration] = []
    disabled: list[Migration] = []
    adopt: list[Migration] = []
    for m in migrations:
        row = history.get(m.version)
        if target is not None and int(m.version) > int(target):
            continue
        if not enabled(m):
            if row is None:
                disabled.append(m)
            elif row.state == "background":
                background.append(_resume(m, row))
            continue
        if row is None:
            foreground.append(PlannedMigration(m))
        elif row.state == "applied":
            if row.checksum is None:
                adopt.append(m)
        elif row.state == "background":
            if row.checksum is None:
                adopt.append(m)
            background.append(_resume(m, row))
        else:  # failed or running (interrupted): resume where it stopped
            pm = _resume(m, row)
            if pm.start_step >= len(m.foreground_steps):
                background.append(pm)
            else:
                foreground.append(pm)
    planned = {pm.migration.version for pm in foreground}
    for pm in foreground:
        for dep in pm.migration.depends:
            dep_row = history.get(dep)
            if dep in planned or (dep_row is not None and dep_row.is_applied):
                continue
            dep_m = by_version[dep]
            why = (
                f"it belongs to feature {dep_m.feature}, which is disabled"
                if not enabled(dep_m)
                else f"it is above the target {target}"
                if target is not None
                else "it is not applied"
            )
            raise ValidationError(
                f"{database}: {pm.migration.filename} depends on {dep_m.filename}, "
                f"which will not run: {why}"
            )
    return Plan(
        database=database,
        target=target,
        foreground=tuple(foreground),
        background=tuple(
            [
                *background,
                *(
                    PlannedMigration(pm.migration, start_step=len(pm.migration.foreground_steps))
                    for pm in foreground
                    if pm.migration.background_steps
                ),
            ]
        ),
        disabled=tuple(disabled),
        adopt_checksum=tuple(adopt),
    )


def _resume(m: Migration, row: HistoryRow) -> PlannedMigration:
    """Where to restart: the first unfinished step, at the first unfinished statement."""
    checksum_changed = row.checksum is not None and row.checksum != m.checksum
    return PlannedMigration(
        migration=m,
        start_step=row.steps_done,
        start_statement=row.statements_done,
        checksum_changed=checksum_changed,
    )
