"""The public API: start (or reuse) a server on a data directory, and stop it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cex_arbitrage.db.structs import DatabaseConfig
from cex_arbitrage.embedded.account import _make_reachable, _server_account
from cex_arbitrage.embedded.commands import _bin_dir, _binary_major, _run
from cex_arbitrage.embedded.common import (
    _LOG_NAME,
    HOST,
    SUPERUSER,
    EmbeddedServerError,
    _log,
    _RunAs,
)
from cex_arbitrage.embedded.datadir import _data_dir_lock, _postmaster_port, _running_postmaster
from cex_arbitrage.embedded.startup import (
    _create_database,
    _ensure_initialised,
    _start,
    _wait_until_ready,
)

__all__ = ["EmbeddedServer", "EmbeddedServerError", "start_embedded"]


@dataclass
class EmbeddedServer:
    """A running embedded server; `config` reaches its application database."""

    config: DatabaseConfig
    data_dir: Path
    bin_dir: Path  # pg_dump, psql etc. of the same major version as the server
    _run_as: _RunAs | None = field(default=None, repr=False)

    def stop(self) -> None:
        """Stop the server; idempotent.

        Fast shutdown: open transactions roll back, committed data stays. If
        that fails, immediate shutdown (crash recovery on the next start).
        """
        with _data_dir_lock(self.data_dir):
            if _running_postmaster(self.data_dir) is None:
                return
            for mode in ("fast", "immediate"):
                result = _run(
                    [
                        str(self.bin_dir / "pg_ctl"),
                        "stop",
                        "-D",
                        str(self.data_dir),
                        "-m",
                        mode,
                        "-w",
                        "-t",
                        "60",
                    ],
                    self._run_as,
                    self.bin_dir,
                )
                if result.returncode == 0 or _running_postmaster(self.data_dir) is None:
                    return
                _log.warning(
                    "pg_ctl stop -m %s failed for %s: %s", mode, self.data_dir, result.output
                )
            raise EmbeddedServerError(
                f"embedded PostgreSQL in {self.data_dir} did not stop; see "
                f"{self.data_dir / _LOG_NAME} and stop it with pg_ctl stop -D {self.data_dir}"
            )


def start_embedded(
    data_dir: Path,
    port: int | None = None,
    database: str = "cex_arbitrage",
    *,
    timeout: float = 60.0,
) -> EmbeddedServer:
    """Start (or reuse) an embedded server on `data_dir` and create `database` if missing.

    `data_dir` persists: initdb runs only the first time. If a server is already
    running on it, that server is returned. With `port=None` a free TCP port
    on 127.0.0.1 is chosen. Raises EmbeddedServerError with the server log's
    tail when the server does not come up within `timeout` seconds.
    """
    if not database or len(database.encode()) > 63:
        raise EmbeddedServerError(f"database name {database!r} must be 1 to 63 bytes")
    bin_dir = _bin_dir()
    data_dir = Path(data_dir).expanduser().absolute()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with _data_dir_lock(data_dir):
        run_as = _server_account(data_dir)
        if run_as is not None and not run_as.namespace:
            _make_reachable(bin_dir, run_as)
            _make_reachable(data_dir.parent, run_as)
        major = _binary_major(bin_dir, run_as)
        _ensure_initialised(data_dir, bin_dir, run_as, major)
        chosen = _running_port(data_dir, port)
        if chosen is None:
            chosen = _start(data_dir, bin_dir, run_as, port, timeout)
        admin = _config(chosen, "postgres")
        _wait_until_ready(admin, bin_dir, data_dir, timeout)
        _create_database(admin, database, bin_dir)
    return EmbeddedServer(
        config=_config(chosen, database), data_dir=data_dir, bin_dir=bin_dir, _run_as=run_as
    )


def _running_port(data_dir: Path, port: int | None) -> int | None:
    """The port of a server already running on `data_dir` (reused), else None.

    A running server cannot move: asking for another port is an error, not a restart.
    """
    running = _running_postmaster(data_dir)
    if running is None:
        return None
    actual = _postmaster_port(data_dir)
    if port is not None and actual != port:
        raise EmbeddedServerError(
            f"embedded PostgreSQL in {data_dir} is already running on port {actual}, "
            f"not {port}; stop it first or ask for port {actual}"
        )
    _log.info("reusing embedded PostgreSQL pid %d on port %d", running, actual)
    return actual


def _config(port: int, database: str) -> DatabaseConfig:
    """The superuser's connection settings for `database` on this server."""
    # sslmode=disable: the server has no certificate; skipping the SSL
    # request saves a round trip per connection.
    return DatabaseConfig(
        host=HOST, port=port, database=database, user=SUPERUSER, sslmode="disable"
    )
