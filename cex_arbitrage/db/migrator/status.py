"""The status view: every migration file and history row, as a table or JSON."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cex_arbitrage.db.migrator.history import HistoryRow, ProgressRow
from cex_arbitrage.db.migrator.model import Catalog, Migration, Routine
from cex_arbitrage.db.migrator.states import MigrationState

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

    @property
    def needs_attention(self) -> bool:
        """Pending, failed, interrupted, drifted or unknown: what `status --exit-code` flags."""
        return self.state in _ATTENTION or self.checksum_ok is False

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["state"] = self.state.value
        data["applied_at"] = self.applied_at.isoformat() if self.applied_at else None
        data["step_timings"] = dict(self.step_timings)
        return data


def collect_status(
    catalog: Catalog,
    history: Mapping[str, HistoryRow],
    progress: Sequence[ProgressRow],
    features: Mapping[str, bool],
) -> list[MigrationStatus]:
    """Versioned migrations in version order (files and history rows), then routines."""
    by_version = catalog.by_version()
    versions = {v for v, row in history.items() if not row.is_routine} | set(by_version)
    rows = [
        _versioned_status(by_version.get(v), history.get(v), progress, features)
        for v in sorted(versions, key=lambda v: (int(v), v))
    ]
    rows.extend(_routine_status(r, history.get(r.key), features) for r in catalog.routines)
    return rows


def _versioned_status(
    m: Migration | None,
    h: HistoryRow | None,
    progress: Sequence[ProgressRow],
    features: Mapping[str, bool],
) -> MigrationStatus:
    version = m.version if m is not None else h.version if h is not None else "?"
    tasks = [p for p in progress if p.version == version]
    if m is None:
        state = MigrationState.UNKNOWN
    elif h is None:
        enabled = m.feature is None or features.get(m.feature, False)
        state = MigrationState.PENDING if enabled else MigrationState.DISABLED
    else:
        state = h.state
    checksum_ok: bool | None = None
    if m is not None and h is not None and h.checksum is not None and h.is_applied:
        checksum_ok = m.checksum_matches(h.checksum)
    return MigrationStatus(
        version=version,
        name=m.name if m else (h.name if h else "?"),
        feature=m.feature if m else (h.feature if h else None),
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
        table.append(
            (r.version, r.name, r.feature or "core", r.state.value, applied, duration, checksum)
        )
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


def to_json(rows: Sequence[MigrationStatus], extra: Mapping[str, Any] | None = None) -> str:
    payload: dict[str, Any] = dict(extra or {})
    payload["migrations"] = [r.to_json() for r in rows]
    payload["needs_attention"] = any(r.needs_attention for r in rows)
    return json.dumps(payload, indent=2, sort_keys=False)
