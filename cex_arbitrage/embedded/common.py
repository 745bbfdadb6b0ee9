"""Names every part of the embedded server shares: its constants, its error, who runs it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cex_arbitrage.errors import ConnectError

# One logger for the whole package, named as before it was split into modules.
_log = logging.getLogger("cex_arbitrage.embedded")

HOST = "127.0.0.1"
SUPERUSER = "postgres"
SERVER_USER = "cex-pg"
_LOG_NAME = "embedded-server.log"
_LOG_ROTATE_BYTES = 10 * 1024 * 1024
_PORT_ATTEMPTS = 5


class EmbeddedServerError(ConnectError):
    """The embedded PostgreSQL could not be initialised, started or stopped."""


@dataclass(frozen=True)
class _RunAs:
    """The unprivileged identity the server binaries run as when we are root."""

    name: str
    uid: int
    gid: int
    namespace: bool = False  # True: uid/gid inside a user namespace, root outside
