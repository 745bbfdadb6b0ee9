"""The status view: every migration file and history row, as a table or JSON."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

from cex_arbitrage.db.migrations.history import HistoryRow, ProgressRow
from cex_arbitrage.db.migrations.script import Migration

# applied     done, file unchanged (or checksum adopted)
# background  foreground done; background steps pending or running (progress shown)
# pending     will run on the next apply
# disabled    belongs to a feature that is off
# failed      last attempt failed; a re-run resumes (error shown)
# running     an apply is in progress, or was interrupted (a re-run resumes)
# unknown     in the database but no file: the database is ahead of this code
STATES = ("applied", "background", "pending", "disabled", "failed", "running", "unknown")


@dataclasses.dataclass(frozen=True)
class MigrationStatus:
    version: str
    name: str
    feature: str | None
    state: str
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
        return self.state in ("pending", "failed", "running", "unknown") or (
            self.checksum_ok is False
        )

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["applied_at"] = self.applied_at.isoformat() if self.applied_at else None
        data["step_timings"] = dict(self.step_timings)
        return data


def collect_status(
    migrations: Sequence[Migration],
    history: Mapping[str, HistoryRow],
    progress: Sequence[ProgressRow],
    features: Mapping[str, bool],
) -> list[MigrationStatus]:
    by_version = {m.version: m for m in migrations}
    rows: list[MigrationStatus] = []
    for version in sorted(set(by_version) | set(history), key=lambda v: (int(v), v)):
        m = by_version.get(version)
        h = history.get(version)
        tasks = [p for p in progress if p.version == version]
        progress_text = ", ".join(p.describe() for p in tasks) or None
        if m is None:
            assert h is not None
            state = "unknown"
        elif h is None:
            enabled = m.feature is None or features.get(m.feature, False)
            state = "pending" if enabled else "disabled"
        else:
            state = h.state
        checksum_ok: bool | None = None
        if m is not None and h is not None and h.checksum is not None and h.is_applied:
            checksum_ok = h.checksum == m.checksum
        error = h.last_error if h is not None else None
        if h is not None and h.failed_statement and error:
            error = f"{error} (at: {' '.join(h.failed_statement.split())[:200]})"
        rows.append(
            MigrationStatus(
                version=version,
                name=m.name if m else (h.name if h else "?"),
                feature=m.feature if m else (h.feature if h else None),
                state=state,
                applied_at=h.applied_at if h else None,
                execution_ms=h.execution_ms if h else None,
                background_ms=h.background_ms if h else None,
                applied_by=h.applied_by if h else None,
                checksum_ok=checksum_ok,
                progress=progress_text,
                error=error,
                step_timings=h.step_timings if h else {},
            )
        )
    return rows


def format_table(rows: Sequence[MigrationStatus], *, verbose: bool = False) -> str:
    """A fixed-width table for humans."""
    header = ("VERSION", "NAME", "FEATURE", "STATE", "APPLIED AT", "DURATION", "CHECKSUM")
    table: list[tuple[str, ...]] = [header]
    notes: list[str] = []
    for r in rows:
        applied = (
            r.applied_at.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
            if r.applied_at and r.state in ("applied", "background")
            else "-"
        )
        duration = f"{r.execution_ms} ms" if r.execution_ms is not None else "-"
        if r.background_ms:
            duration += f" (+{r.background_ms} ms bg)"
        checksum = {True: "ok", False: "CHANGED", None: "-"}[r.checksum_ok]
        table.append((r.version, r.name, r.feature or "core", r.state, applied, duration, checksum))
        if r.progress and (r.state != "applied" or verbose):
            notes.append(f"  {r.version} progress: {r.progress}")
        if r.error and r.state != "applied":
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
