"""The OS account the server runs as when we are root.

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
import functools
import os
import pwd
import shutil
import stat
import subprocess
from pathlib import Path

from cex_arbitrage.embedded.common import SERVER_USER, EmbeddedServerError, _log, _RunAs
from cex_arbitrage.embedded.datadir import _running_postmaster

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
    """The command prefix that runs a program as `identity` in a new user namespace."""
    return [
        shutil.which("unshare") or "unshare",
        "--user",
        f"--map-user={identity.uid}",
        f"--map-group={identity.gid}",
        "--",
    ]


def _system_account() -> _RunAs:
    """`cex-pg`, created if missing and possible, else `nobody`: a real unprivileged account."""
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
    """Whether `account` may traverse the directory `info` describes."""
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
    """Hand a root-owned data directory to `account`, symlinks themselves not followed."""
    os.chown(root, account.uid, account.gid)
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(os.path.join(parent, name), account.uid, account.gid, follow_symlinks=False)
