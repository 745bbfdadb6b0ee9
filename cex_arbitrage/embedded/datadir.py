"""The data directory's lock, its postmaster.pid/.opts files, its server log, and ports."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cex_arbitrage.embedded.common import _LOG_ROTATE_BYTES, HOST, EmbeddedServerError, _log


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


def _postmaster_lines(data_dir: Path) -> list[str]:
    """The lines of postmaster.pid; none when there is no readable one."""
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
    """Whether `pid` is the server of `data_dir`, not a process that reused its pid."""
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
    """The port the running server listens on, from its postmaster.pid."""
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
    """Whether the server could bind `port` on HOST now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As PostgreSQL does, so that old connections in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    """A port on HOST that no one listens on at this moment (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _choose_port(port: int | None, previous: int | None, first: bool) -> int:
    """The port asked for; else, on the first try, the previous start's if still free; else any."""
    if port is not None:
        return port
    if previous is not None and first and _port_is_free(previous):
        return previous  # the same URL keeps working across restarts
    return _free_port()


def _rotate_log(log: Path) -> None:
    """Keep one old server log once it passes the size limit, so it cannot grow forever."""
    with contextlib.suppress(FileNotFoundError):
        if log.stat().st_size > _LOG_ROTATE_BYTES:
            os.replace(log, log.with_suffix(".log.old"))


def _log_tail(log: Path, lines: int = 20) -> str:
    """The server log's last lines, for error messages."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no server log)"
