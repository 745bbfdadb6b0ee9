"""The states a migration can be in: one enum for history, plan, status and 000's CHECK.

Stored in `migration_history.state` (only the first four; a CHECK constraint
in 000 lists exactly those, and a unit test holds the two together); the
others exist only in the status view, derived from files and features.
"""

from __future__ import annotations

import enum


class MigrationState(str, enum.Enum):
    """Where one migration stands on one database."""

    RUNNING = "running"  # an apply is in progress, or was interrupted (a re-run resumes)
    FAILED = "failed"  # last attempt failed; a re-run resumes (error shown)
    BACKGROUND = "background"  # foreground done; background steps pending or running
    APPLIED = "applied"  # done, file unchanged (or checksum adopted)
    PENDING = "pending"  # not in history: will run on the next apply
    DISABLED = "disabled"  # not in history: belongs to a feature that is off
    UNKNOWN = "unknown"  # in history but no file: the database is ahead of this code

    def __str__(self) -> str:
        return self.value

    @property
    def is_applied(self) -> bool:
        """The schema new writes need is in place (background work may remain)."""
        return self in (MigrationState.APPLIED, MigrationState.BACKGROUND)


# The values migration_history.state may hold (000's CHECK constraint).
RECORDED_STATES = (
    MigrationState.RUNNING,
    MigrationState.FAILED,
    MigrationState.BACKGROUND,
    MigrationState.APPLIED,
)
