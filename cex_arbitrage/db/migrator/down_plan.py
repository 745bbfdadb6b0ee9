"""Decide what `down --target VERSION` undoes: the walk, newest first, or the refusal.

Pure, like plan.py: the history is a value. Everything that can stop the
walk is found here, before any down runs: history this code does not know,
an edited applied file, an unknown target, and a migration in the walk
without a down file or marked irreversible.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from cex_arbitrage.db.migrator.history import HistoryRow
from cex_arbitrage.db.migrator.model import Catalog, Down, Migration
from cex_arbitrage.db.migrator.plan import check_checksums, refuse_unknown_rows, versioned
from cex_arbitrage.db.migrator.states import MigrationState
from cex_arbitrage.errors import IrreversibleMigrationError, UnknownTargetError


@dataclasses.dataclass(frozen=True)
class DownStep:
    """One migration to undo: its file, its down file, and the state it is recorded in."""

    migration: Migration
    down: Down
    state: MigrationState


@dataclasses.dataclass(frozen=True)
class DownPlan:
    """The walk from the newest recorded migration down to (not including) the target."""

    database: str
    target: str
    steps: tuple[DownStep, ...]

    @property
    def versions(self) -> list[str]:
        return [s.migration.version for s in self.steps]

    def describe(self, *, sql: bool = False) -> str:
        """The walk as the dry run prints it."""
        if not self.steps:
            return f"{self.database}: nothing to undo; nothing above {self.target} is recorded"
        lines: list[str] = []
        for step in self.steps:
            d = step.down
            what = "undo (one transaction, with its history row)"
            if not d.sql:
                what = "undo: nothing to reverse in the schema; only its history row goes"
            lines.append(f"down {d.filename} [{step.state.value}]: {what}")
            if sql and d.sql:
                lines.extend("    " + line for line in d.sql.strip().splitlines())
        lines.append(f"{self.database}: then at {self.target}")
        return "\n".join(lines)


def make_down_plan(
    catalog: Catalog, history: Mapping[str, HistoryRow], database: str, target: str
) -> DownPlan:
    """Every recorded migration above `target`, newest first, each with its down; or refuse."""
    rows = versioned(history)
    refuse_unknown_rows(catalog, rows, database)
    known = catalog.by_version()
    target = target.strip()
    if target not in known:
        raise UnknownTargetError(
            f"{database}: unknown target version {target!r}; known versions: "
            f"{', '.join(known) or 'none'}",
            target=target,
            known=list(known),
        )
    above = sorted(
        (v for v in rows if int(v) > int(target)), key=lambda v: (int(v), v), reverse=True
    )
    walk = [known[v] for v in above]
    check_checksums(walk, rows, database)
    steps = []
    for m in walk:
        down = catalog.down_of(m.version)
        if down is None or down.irreversible is not None:
            raise _irreversible(database, target, m, down, walk)
        steps.append(DownStep(m, down, rows[m.version].state))
    return DownPlan(database=database, target=target, steps=tuple(steps))


def _irreversible(
    database: str, target: str, m: Migration, down: Down | None, walk: list[Migration]
) -> IrreversibleMigrationError:
    """The refusal that stops the walk at `m`, before anything ran."""
    filename = f"{m.version}_{m.name}.down.sql"
    order = ", ".join(x.version for x in walk)
    if down is None:
        why = f"it has no down file ({filename})"
    else:
        why = f"{filename} marks it irreversible: {down.irreversible}"
    return IrreversibleMigrationError(
        f"{database}: cannot go down to {target}: the walk ({order}, newest first) reaches "
        f"{m.filename}, and {why}. Nothing was undone. Choose a target at or above "
        f"{m.version}, or restore a backup taken before {m.filename} was applied",
        version=m.version,
        filename=filename,
        reason=down.irreversible if down is not None else None,
    )
