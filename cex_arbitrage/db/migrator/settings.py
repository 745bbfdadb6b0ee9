"""RunnerSettings: everything the runner needs to know of the application, as one value.

The runner is generic: it names no table and no setting of the application.
What it needs of it arrives here, built by the config layer
(`cex_arbitrage.config`): the session settings the migration SQL reads, the
tables pre-flight checks ownership of, the features that are on, and how
long to wait for locks and servers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal


def _frozen(values: Mapping[str, object]) -> Mapping[str, object]:
    return MappingProxyType(dict(values))


@dataclasses.dataclass(frozen=True)
class RunnerSettings:
    """How the runner applies migrations to one database, for one application."""

    # Features that are on (a migration of a feature not listed here is off).
    features: Mapping[str, bool] = dataclasses.field(default_factory=dict)
    # Session settings (set_config) on every runner session; migration SQL reads
    # them with current_setting(name, true).
    session_settings: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Tables the migrations alter: pre-flight refuses a user that does not own them.
    watched_tables: tuple[str, ...] = ()
    mode: Literal["apply", "wait"] = "apply"  # boot: apply, or only wait for the schema
    lock_wait_timeout: float = 300.0  # seconds to wait for the runner's advisory lock
    wait_timeout: float = 600.0  # follower mode: give up after this
    boot_wait_timeout: float = 60.0  # database not up yet at boot: retry this long
    progress_interval: float = 10.0  # a progress line this often while migrating
    parallel_sessions: int = 2  # sessions a `parallel` step runs on at once
    run_background: bool = True  # boot: start background steps in a supervised task
    # An engine that found another runner on the background work tries to take it
    # over this often (one try-lock round trip), until the work is finished.
    background_retry_interval: float = 30.0
    long_transaction_seconds: float = 30.0  # pre-flight names transactions older than this
    # Watched tables at least this large: pre-flight checks the host's kernel
    # writeback threshold (writeback.py).
    writeback_check_rows: int = 5_000_000

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", _frozen(self.features))
        object.__setattr__(self, "session_settings", _frozen(self.session_settings))
        object.__setattr__(self, "watched_tables", tuple(self.watched_tables))

    def feature_on(self, feature: str | None) -> bool:
        """Core migrations (no feature) are always on."""
        return feature is None or bool(self.features.get(feature, False))

    def replace(self, **changes: object) -> RunnerSettings:
        """A copy with some fields changed (e.g. a CLI --feature override)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
