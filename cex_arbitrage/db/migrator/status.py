"""The status view: every migration file and history row, as a table or JSON."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cex_arbitrage.db.migrator.history import HistoryRow, ProgressRow
from cex_arbitrage.db.migrator.model import Catalog, Migration, Routine
from cex_arbitrage.db.migrator.states import MigrationState

if TYPE_CHECKING:
    from cex_arbitrage.db.migrator.lock import Holder

# What is happening to a migration now, from the runner's locks (who holds them).
APPLYING = "applying"  # a live runner holds the migration lock and is on this one
INTERRUPTED = "interrupted"  # started, and no runner holds the lock: run again to resume
BACKGROUND_RUNNING = "background running"  # a live runner holds the background lock
BACKGROUND_ORPHANED = "background orphaned"  # background work unfinished, nobody on it

_ATTENTION = (
    MigrationState.PENDING,
    MigrationState.FAILED,
    MigrationState.RUNNING,
    MigrationState.UNKNOWN,
)


@dataclasses.dataclass(frozen=True)
class MigrationStatus:
    """One row of the status view: a versioned migration, or a routine (`R__name`)."""

    version: str
    name: str
    feature: str | None
    state: MigrationState
    applied_at: dt.datetime | None
    execution_ms: int | None
    background_ms: int | None
    applied_by: str | None
    checksum_ok: bool | None  # None: not applied, or applied by psql (no checksum yet)
    progress: str | None
    error: str | None
    step_timings: Mapping[str, int]
    activity: str | None = None  # APPLYING, INTERRUPTED, BACKGROUND_RUNNING/ORPHANED
    runner: Holder | None = None  # the live session doing it (APPLYING, BACKGROUND_RUNNING)
    extension: str | None = None  # the extension the migration is for (migrate:extension)

    @property
    def scope(self) -> str:
        """The FEATURE column: its feature (or core), and its extension when it names one."""
        feature = self.feature or "core"
        return f"{feature}+{self.extension}" if self.extension else feature

    @property
    def needs_attention(self) -> bool:
        """Pending, failed, interrupted, drifted, unknown, or background work nobody runs:
        what `status --exit-code` flags."""
        return (
            self.state in _ATTENTION
            or self.checksum_ok is False
            or self.activity == BACKGROUND_ORPHANED
        )

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["runner"] = self.runner.to_json() if self.runner is not None else None
        data["state"] = self.state.value
        data["applied_at"] = self.applied_at.isoformat() if self.applied_at else None
        data["step_timings"] = dict(self.step_timings)
        return data


def collect_status(
    catalog: Catalog,
    history: Mapping[str, HistoryRow],
    progress: Sequence[ProgressRow],
    features: Mapping[str, bool],
    *,
    locks: tuple[Holder | None, Holder | None] | None = None,
    extensions: Collection[str] = frozenset(),
) -> list[MigrationStatus]:
    """Versioned migrations in version order (files and history rows), then routines.

    `locks`: the live holders of the runner's migration and background locks
    (None: not looked up), which tell work in progress from work interrupted.
    """
    by_version = catalog.by_version()
    versions = {v for v, row in history.items() if not row.is_routine} | set(by_version)
    rows = [
        _versioned_status(by_version.get(v), history.get(v), progress, (features, extensions))
        for v in sorted(versions, key=lambda v: (int(v), v))
    ]
    if locks is not None:
        rows = with_activity(rows, *locks)
    rows.extend(_routine_status(r, history.get(r.key), features) for r in catalog.routines)
    return rows


def with_activity(
    rows: Sequence[MigrationStatus], applying: Holder | None, background: Holder | None
) -> list[MigrationStatus]:
    """Mark what is happening now: the runner applies migrations in version order,
    so while it holds the migration lock the first one not applied is in its hands
    (a single-transaction migration has no history row until it commits)."""
    unfinished = (MigrationState.RUNNING, MigrationState.FAILED, MigrationState.PENDING)
    in_hand = next((r.version for r in rows if r.state in unfinished), None)
    marked: list[MigrationStatus] = []
    for r in rows:
        if applying is not None and r.version == in_hand:
            r = dataclasses.replace(
                r, state=MigrationState.RUNNING, activity=APPLYING, runner=applying
            )
        elif r.state is MigrationState.RUNNING:
            r = dataclasses.replace(r, activity=INTERRUPTED)
        elif r.state is MigrationState.BACKGROUND and background is not None:
            r = dataclasses.replace(r, activity=BACKGROUND_RUNNING, runner=background)
        elif r.state is MigrationState.BACKGROUND:
            r = dataclasses.replace(r, activity=BACKGROUND_ORPHANED)
        marked.append(r)
    return marked


def _versioned_status(
    m: Migration | None,
    h: HistoryRow | None,
    progress: Sequence[ProgressRow],
    environment: tuple[Mapping[str, bool], Collection[str]],
) -> MigrationStatus:
    version = m.version if m is not None else h.version if h is not None else "?"
    tasks = [p for p in progress if p.version == version]
    if m is None:
        state = MigrationState.UNKNOWN
    elif h is None:
        state = MigrationState.PENDING if m.applies(*environment) else MigrationState.DISABLED
    else:
        state = h.state
    checksum_ok: bool | None = None
    if m is not None and h is not None and h.checksum is not None and h.is_applied:
        checksum_ok = m.checksum_matches(h.checksum)
    return MigrationStatus(
        version=version,
        name=m.name if m else (h.name if h else "?"),
        feature=m.feature if m else (h.feature if h else None),
        extension=m.extension if m else None,
        state=state,
        applied_at=h.applied_at if h else None,
        execution_ms=h.execution_ms if h else None,
        background_ms=h.background_ms if h else None,
        applied_by=h.applied_by if h else None,
        checksum_ok=checksum_ok,
        progress=", ".join(p.describe() for p in tasks) or None,
        error=_error_text(h),
        step_timings=h.step_timings if h else {},
    )


def _routine_status(
    r: Routine, h: HistoryRow | None, features: Mapping[str, bool]
) -> MigrationStatus:
    """A routine is applied when its recorded checksum is the file's; otherwise it is due."""
    if r.feature is not None and not features.get(r.feature, False):
        state = MigrationState.DISABLED
    elif h is None or h.checksum != r.checksum:
        state = MigrationState.FAILED if h is not None and h.last_error else MigrationState.PENDING
    else:
        state = h.state
    return MigrationStatus(
        version=r.key,
        name=r.name,
        feature=r.feature,
        state=state,
        applied_at=h.applied_at if h else None,
        execution_ms=h.execution_ms if h else None,
        background_ms=None,
        applied_by=h.applied_by if h else None,
        checksum_ok=None,  # a changed routine is not drift: it is re-applied
        progress=None,
        error=_error_text(h),
        step_timings={},
    )


def _error_text(h: HistoryRow | None) -> str | None:
    error = h.last_error if h is not None else None
    if h is not None and h.failed_statement and error:
        error = f"{error} (at: {' '.join(h.failed_statement.split())[:200]})"
    return error


def format_table(rows: Sequence[MigrationStatus], *, verbose: bool = False) -> str:
    """A fixed-width table for humans."""
    header = ("VERSION", "NAME", "FEATURE", "STATE", "APPLIED AT", "DURATION", "CHECKSUM")
    table: list[tuple[str, ...]] = [header]
    notes: list[str] = []
    for r in rows:
        applied = (
            r.applied_at.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
            if r.applied_at and r.state.is_applied
            else "-"
        )
        duration = f"{r.execution_ms} ms" if r.execution_ms is not None else "-"
        if r.background_ms:
            duration += f" (+{r.background_ms} ms bg)"
        checksum = {True: "ok", False: "CHANGED", None: "-"}[r.checksum_ok]
        table.append((r.version, r.name, r.scope, r.state.value, applied, duration, checksum))
        note = _activity_note(r)
        if note:
            notes.append(f"  {r.version} {note}")
        if r.progress and (r.state is not MigrationState.APPLIED or verbose):
            notes.append(f"  {r.version} progress: {r.progress}")
        if r.error and r.state is not MigrationState.APPLIED:
            notes.append(f"  {r.version} error: {r.error}")
        if verbose and r.step_timings:
            steps = ", ".join(f"{k} {v} ms" for k, v in r.step_timings.items())
            notes.append(f"  {r.version} steps: {steps}")
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in table
    ]
    return "\n".join(lines + notes)


def _activity_note(r: MigrationStatus) -> str | None:
    runner = r.runner.describe() if r.runner is not None else "?"
    return {
        APPLYING: f"being applied now by {runner}",
        INTERRUPTED: "interrupted: no runner holds the migration lock; run again to resume",
        BACKGROUND_RUNNING: f"background steps being run now by {runner}",
        BACKGROUND_ORPHANED: (
            "background steps unfinished and nobody is running them: run the migrate "
            "command's `background`, or start an engine (it takes the work over)"
        ),
    }.get(r.activity or "")


def to_json(rows: Sequence[MigrationStatus], extra: Mapping[str, Any] | None = None) -> str:
    payload: dict[str, Any] = dict(extra or {})
    payload["migrations"] = [r.to_json() for r in rows]
    payload["needs_attention"] = any(r.needs_attention for r in rows)
    return json.dumps(payload, indent=2, sort_keys=False)
