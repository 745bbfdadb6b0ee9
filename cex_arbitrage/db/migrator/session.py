"""A runner session: the connection, its settings, and where its NOTICEs go.

Every session the runner uses (its own, and the extra ones of a `parallel`
step) is prepared the same way, by `prepare`: timeouts, writeback hints and
the application's session settings, set in one round trip.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Callable

import asyncpg

from cex_arbitrage.db.migrator.settings import RunnerSettings
from cex_arbitrage.db.structs import DatabaseConfig


def applied_from(program: str) -> str:
    """Who runs the migration, for migration_history.applied_from."""
    return f"{program} on {socket.gethostname()} pid {os.getpid()}"


def _liveness(conn: asyncpg.Connection) -> dict[str, str]:
    """Settings that end the session soon after its client is gone.

    The runner's advisory locks are session-level: they die with the session,
    which is how other runners (and `status`) learn that a runner stopped. A
    backend busy in a long statement notices a killed client only when it next
    talks to it; with client_connection_check_interval (PostgreSQL 14+) it
    checks every few seconds and ends. TCP keepalives bound how long a client
    whose host vanished (no FIN) keeps the lock: about idle + interval x count.
    """
    values = {"tcp_keepalives_idle": "30", "tcp_keepalives_interval": "10"}
    values["tcp_keepalives_count"] = "3"
    if conn.get_server_version().major >= 14:
        values["client_connection_check_interval"] = "5s"
    return values


@dataclasses.dataclass
class Activity:
    """What the executor is doing right now, for progress lines while it works."""

    migration: str = "-"
    step: str = "-"
    started: float = dataclasses.field(default_factory=time.monotonic)


@dataclasses.dataclass
class RunContext:
    """What every part of one run shares: the connection, the settings, where to report."""

    conn: asyncpg.Connection
    db: DatabaseConfig
    settings: RunnerSettings
    applied_from: str
    say: Callable[[str], None]
    verbose: bool = False
    activity: Activity = dataclasses.field(default_factory=Activity)
    current: str = "-"  # the migration whose SQL runs now (for NOTICE lines)

    @property
    def database(self) -> str:
        return self.db.display

    # While a `parallel` statement runs: the notices already said. Every session
    # runs the same text, so a final report would otherwise come once per session.
    notices_once: set[str] | None = None

    def on_notice(self, _conn: object, message: asyncpg.PostgresLogMessage) -> None:
        severity = getattr(message, "severity", "NOTICE")
        text = str(message.message)
        if text.endswith(", skipping") and not self.verbose:
            # IF [NOT] EXISTS found the object there (or not): expected on a re-run, and
            # on a fresh database when an earlier migration made it; --verbose shows it.
            return
        if self.notices_once is not None:
            if text in self.notices_once:
                return
            self.notices_once.add(text)
        self.say(f"{self.database}: {self.current}: {severity}: {text}")

    async def prepare(self, conn: asyncpg.Connection | None = None) -> None:
        """Session settings for the whole run: timeouts, writeback, the application's values."""
        conn = conn or self.conn
        values = {
            # A backfill dirties far more pages than shared_buffers holds, so the
            # session writes them out itself. Without writeback hints they pile up
            # in the OS page cache until a checkpoint fsyncs the file at once, and
            # every collector COMMIT waits behind that fsync (200-330 ms stalls at
            # 5M rows; 39 ms max with this, bench/bench_migration_001.py).
            "backend_flush_after": "256kB",
            "lock_timeout": f"{int(self.db.lock_timeout_ms)}ms",
            "statement_timeout": f"{int(self.db.statement_timeout_ms)}ms",
            **_liveness(conn),
            **self.settings.session_settings,
        }
        names = list(values)
        calls = ", ".join(
            f"set_config(${2 * i + 1}, ${2 * i + 2}, false)" for i in range(len(names))
        )
        await conn.execute(f"SELECT {calls}", *[x for n in names for x in (n, values[n])])
        conn.add_log_listener(self.on_notice)

    def release(self, conn: asyncpg.Connection | None = None) -> None:
        """Stop forwarding the session's NOTICEs (it may live on in a pool)."""
        conn = conn or self.conn
        if not conn.is_closed():
            conn.remove_log_listener(self.on_notice)
