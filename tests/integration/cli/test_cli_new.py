"""`new NAME` end to end: the written file is pending in `status`, and applies."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from cex_arbitrage.db.structs import DatabaseConfig
from tests.support.cli import run_cli_process
from tests.support.databases import pg_env
from tests.support.paths import REPO

SHIPPED = REPO / "cex_arbitrage" / "db" / "migrations"


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def states(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return {m["version"]: m["state"] for m in json.loads(result.stdout)["migrations"]}


def test_new_writes_a_pending_migration_that_applies(db: DatabaseConfig, tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    directory.mkdir()
    for path in SHIPPED.glob("*.sql"):
        shutil.copy(path, directory / path.name)
    env = pg_env(db)
    dir_args = ["--migrations-dir", str(directory)]
    applied = run_cli_process(dir_args, env, cwd=tmp_path)
    assert applied.returncode == 0, explain(applied)

    new = run_cli_process(
        ["new", "add_order_index", "--depends", "3", "--non-transactional", *dir_args],
        env,
        cwd=tmp_path,
    )
    assert new.returncode == 0, explain(new)
    highest = max(int(p.name.split("_", 1)[0]) for p in SHIPPED.glob("[0-9]*.sql"))
    # (a down file shares its migration's version)
    version = f"{highest + 1:03d}"
    written = directory / f"{version}_add_order_index.sql"
    assert new.stdout.strip() == str(written) and written.is_file()

    status = run_cli_process(["status", "--json", *dir_args], env, cwd=tmp_path)
    assert status.returncode == 0, explain(status)
    assert states(status)[version] == "pending"
    assert states(status)["003"] == "applied"

    applied = run_cli_process(dir_args, env, cwd=tmp_path)
    assert applied.returncode == 0, explain(applied)
    assert f"applied {version}" in applied.stdout
    after = run_cli_process(["status", "--json", "--exit-code", *dir_args], env, cwd=tmp_path)
    assert after.returncode == 0, explain(after)
    assert states(after)[version] == "applied"
