"""The CLI run as a subprocess, as an operator runs it; migration sets of a test's own."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from tests.support.paths import REPO

CliRunner = Callable[..., subprocess.CompletedProcess[str]]


def run_cli_process(
    args: list[str],
    env: Mapping[str, str],
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m cex_arbitrage.db.migrate ARGS` the way an operator does."""
    return subprocess.run(
        [sys.executable, "-m", "cex_arbitrage.db.migrate", *args],
        env=dict(env),
        cwd=str(cwd) if cwd else None,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_migrations(directory: Path, files: Mapping[str, str]) -> Path:
    """A migration set of the test's own: {'003_x.sql': sql}. 000 is copied in unless given."""
    directory.mkdir(parents=True, exist_ok=True)
    infra = "000_create_migration_infrastructure.sql"
    if not any(name.startswith("000_") for name in files):
        src = REPO / "cex_arbitrage" / "db" / "migrations" / infra
        (directory / infra).write_text(src.read_text())
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory
