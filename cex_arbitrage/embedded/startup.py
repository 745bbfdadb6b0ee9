"""Bringing a server up: initdb once, pg_ctl start, wait until it answers, create the database."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from cex_arbitrage.db.structs import DatabaseConfig
from cex_arbitrage.embedded.commands import _psql, _Result, _run
from cex_arbitrage.embedded.common import (
    _LOG_NAME,
    _PORT_ATTEMPTS,
    HOST,
    SUPERUSER,
    EmbeddedServerError,
    _log,
    _RunAs,
)
from cex_arbitrage.embedded.datadir import _choose_port, _last_port, _log_tail, _rotate_log


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
        chosen = _choose_port(port, previous, first=attempt == 1)
        result = _pg_ctl_start(data_dir, bin_dir, run_as, log, chosen, timeout)
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


def _pg_ctl_start(
    data_dir: Path, bin_dir: Path, run_as: _RunAs | None, log: Path, port: int, timeout: float
) -> _Result:
    """One `pg_ctl start -w` on 127.0.0.1:`port`, with no Unix socket."""
    # -k '' disables the Unix socket; pg_ctl hands -o to a shell, hence the quotes.
    options = f"-h {HOST} -p {port} -k ''"
    return _run(
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
    """CREATE DATABASE `database` unless it exists; the name is quoted by the server."""
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
