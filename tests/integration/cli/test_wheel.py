"""The built wheel works on its own: migrations load from the installed package.

Builds the wheel from a copy of the checkout, installs it into a fresh
virtualenv outside the repository, and runs the CLI from a directory outside
the repository, so nothing can be imported or read from the source tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from cex_arbitrage.db.structs import DatabaseConfig
from cex_arbitrage.errors import ExitCode
from tests.support.databases import pg_env
from tests.support.paths import REPO

pytestmark = pytest.mark.wheel

PACKAGE_DIR = REPO / "cex_arbitrage" / "db" / "migrations"
SKIP_IN_COPY = shutil.ignore_patterns(
    ".git", ".venv", "*cache*", "*.egg-info", "build", "dist", "__pycache__", ".cex-pgdata"
)


@dataclass(frozen=True)
class InstalledWheel:
    wheel: Path
    venv: Path
    python: Path
    cex_migrate: Path
    outside: Path  # a working directory outside the repository


def _run(
    args: list[object], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))}: exit {result.returncode}\n"
        f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    )
    return result


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """No PYTHONPATH or active virtualenv that could lead back to the checkout."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "CEX_MIGRATIONS_DIR")
    }
    env.update(extra or {})
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InstalledWheel]:
    root = tmp_path_factory.mktemp("wheel")
    assert REPO not in root.parents
    src = root / "src"
    shutil.copytree(REPO, src, ignore=SKIP_IN_COPY, symlinks=True)
    dist = root / "dist"
    # The pip cache is used as usual: the build backend comes from it after the first run.
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(src), "-w", str(dist)],
        cwd=root,
        env=_clean_env(),
    )
    (wheel,) = dist.glob("cex_arbitrage-*.whl")
    venv = root / "venv"
    # A bare venv filled by this interpreter's pip (--python): no ensurepip, seconds saved.
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root, env=_clean_env())
    python = venv / "bin" / "python"
    _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", str(wheel)],
        cwd=root,
        env=_clean_env(),
    )
    outside = root / "ops"
    outside.mkdir()
    yield InstalledWheel(wheel, venv, python, venv / "bin" / "cex-migrate", outside)


def test_wheel_contains_every_migration_file(installed: InstalledWheel) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    shipped = sorted(p.name for p in PACKAGE_DIR.glob("*.sql"))
    assert shipped, "no migration files in the checkout"
    for name in shipped:
        assert f"cex_arbitrage/db/migrations/{name}" in names, sorted(names)
    assert "000_create_migration_infrastructure.sql" in shipped
    assert "001_add_trade_collection_support.sql" in shipped


def test_installed_package_reads_its_migrations_from_site_packages(
    installed: InstalledWheel,
) -> None:
    probe = _run(
        [
            installed.python,
            "-c",
            "import json, cex_arbitrage, importlib.resources as r\n"
            "from cex_arbitrage.db.migrator.source import PackageSource, load_migrations\n"
            "root = r.files('cex_arbitrage.db.migrations')\n"
            "print(json.dumps({'package': cex_arbitrage.__file__, 'resources': str(root),\n"
            "  'sql': sorted(e.name for e in root.iterdir() if e.name.endswith('.sql')),\n"
            "  'versions': [m.version for m in\n"
            "     load_migrations(PackageSource('cex_arbitrage.db.migrations'))]}))",
        ],
        cwd=installed.outside,
        env=_clean_env(),
    )
    found = json.loads(probe.stdout)
    site = installed.venv / "lib"
    for key in ("package", "resources"):
        path = Path(found[key]).resolve()
        assert site.resolve() in path.parents, (key, path)
        assert "site-packages" in path.parts, (key, path)
        assert REPO.resolve() not in path.parents, (key, path)
    assert {"000", "001"} <= set(found["versions"])
    assert found["sql"] == sorted(p.name for p in PACKAGE_DIR.glob("*.sql"))
    resources = Path(found["resources"])
    assert (resources / "000_create_migration_infrastructure.sql").is_file()
    assert (resources / "001_add_trade_collection_support.sql").is_file()


async def test_installed_cli_applies_and_reports_from_outside_the_repo(
    installed: InstalledWheel, db: DatabaseConfig
) -> None:
    env = _clean_env(pg_env(db))

    before = subprocess.run(
        [str(installed.cex_migrate), "status", "--json", "--exit-code"],
        cwd=installed.outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert before.returncode == ExitCode.PENDING, before.stderr
    pending = json.loads(before.stdout)
    versions = [m["version"] for m in pending["migrations"]]
    assert {"000", "001"} <= set(versions), versions
    assert all(m["state"] in ("pending", "disabled") for m in pending["migrations"])

    applied = _run(
        [installed.python, "-m", "cex_arbitrage.db.migrate"],
        cwd=installed.outside,
        env=env,
    )
    assert "applied 000" in applied.stdout, applied.stdout

    verbose = _run([installed.cex_migrate, "status", "--verbose"], cwd=installed.outside, env=env)
    assert "migrations: package cex_arbitrage.db.migrations" in verbose.stdout

    after = _run(
        [installed.cex_migrate, "status", "--json", "--exit-code"],
        cwd=installed.outside,
        env=env,
    )
    data = json.loads(after.stdout)
    assert data["needs_attention"] is False
    states = {m["version"]: m["state"] for m in data["migrations"]}
    assert states["000"] == "applied" and states["001"] == "applied", states
    assert [m["version"] for m in data["migrations"]] == versions

    conn = await asyncpg.connect(**db.connect_kwargs())
    try:
        rows = await conn.fetch("SELECT version, checksum FROM migration_history ORDER BY 1")
    finally:
        await conn.close()
    # Recorded: every listed migration but those for an extension not installed (007: Citus).
    assert [r["version"] for r in rows] == [v for v in versions if states[v] != "disabled"]
    # The installed files are byte-for-byte the checkout's: same checksums.
    for r in rows:
        v = r["version"]
        pattern = f"{v}.sql" if v.startswith("R__") else f"{v}_*.sql"
        (path,) = (p for p in PACKAGE_DIR.glob(pattern) if ".down." not in p.name)
        text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
        assert r["checksum"] == hashlib.sha256(text.encode()).hexdigest(), path.name
