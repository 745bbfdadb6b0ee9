"""`lint` end to end, the way an operator or CI runs it: the installed CLI as a subprocess,
and ./migrate.sh, on a migration set of the test's own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import run_cli_process
from tests.support.paths import MIGRATIONS, REPO

pytest.importorskip("pglast", reason="the lint extra (pglast) is not installed")

BAD = """-- migrate:description an index on a live table, in one transaction
CREATE INDEX idx_trades_price ON trades (price);
"""


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


@pytest.fixture
def shipped_copy(tmp_path: Path) -> Path:
    directory = tmp_path / "migrations"
    directory.mkdir()
    for path in [*MIGRATIONS.glob("*.sql"), MIGRATIONS / "lint-baseline.yaml"]:
        shutil.copy(path, directory / path.name)
    return directory


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "CEX_MIGRATIONS_DIR"}


def test_the_shipped_set_lints_clean_and_a_new_scaffold_too(shipped_copy: Path) -> None:
    dir_args = ["--migrations-dir", str(shipped_copy)]
    clean = run_cli_process(["lint", *dir_args], _env(), cwd=shipped_copy.parent)
    assert clean.returncode == 0, explain(clean)
    assert clean.stdout.strip().endswith("clean (4 suppressed with a reason)")
    new = run_cli_process(["new", "next_change", *dir_args], _env(), cwd=shipped_copy.parent)
    assert new.returncode == 0, explain(new)
    again = run_cli_process(["lint", *dir_args], _env(), cwd=shipped_copy.parent)
    assert again.returncode == 0, explain(again)


def test_a_finding_exits_4_naming_file_line_rule_and_hint(shipped_copy: Path) -> None:
    bad = shipped_copy / "090_price_index.sql"
    bad.write_text(BAD)
    result = run_cli_process(["lint", str(bad)], _env(), cwd=shipped_copy)
    assert result.returncode == 4, explain(result)
    assert f"{bad}:2: index-not-concurrent: CREATE INDEX on trades" in result.stdout
    assert "hint: CREATE INDEX CONCURRENTLY" in result.stdout
    assert "lint: 1 file, 1 finding (0 suppressed with a reason)" in result.stdout
    assert "error: lint: 1 finding in 1 files" in result.stderr

    as_json = run_cli_process(["lint", "--json", str(bad)], _env(), cwd=shipped_copy)
    assert as_json.returncode == 4, explain(as_json)
    data = json.loads(as_json.stdout)
    assert [(f["rule"], f["line"], f["step"]) for f in data["findings"]] == [
        ("index-not-concurrent", 2, "main")
    ]


def test_a_suppression_needs_a_reason(shipped_copy: Path) -> None:
    bad = shipped_copy / "090_price_index.sql"
    bare = BAD.replace("CREATE", "-- lint:ignore index-not-concurrent\nCREATE")
    bad.write_text(bare)
    refused = run_cli_process(["lint", str(bad)], _env(), cwd=shipped_copy)
    assert refused.returncode == 4, explain(refused)
    assert "lint-suppression: lint:ignore index-not-concurrent gives no reason" in refused.stdout
    bad.write_text(bare.replace("concurrent\n", "concurrent the table is empty at this point\n"))
    accepted = run_cli_process(["lint", "--verbose", str(bad)], _env(), cwd=shipped_copy)
    assert accepted.returncode == 0, explain(accepted)
    assert "reason: the table is empty at this point" in accepted.stdout


def test_migrate_sh_lint_and_a_missing_file(shipped_copy: Path) -> None:
    bad = shipped_copy / "090_price_index.sql"
    bad.write_text(BAD)
    script = subprocess.run(
        [str(REPO / "migrate.sh"), "lint", str(bad)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert script.returncode == 4, explain(script)
    missing = run_cli_process(["lint", str(shipped_copy / "no.sql")], _env())
    assert missing.returncode == 4, explain(missing)
    assert "no.sql does not exist" in missing.stderr


def test_a_missing_empty_or_file_less_migrations_dir_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--migrations-dir", str(tmp_path / "typo")], {}, "does not exist"),
        (["--migrations-dir", ""], {}, "--migrations-dir is empty"),
        ([], {"CEX_MIGRATIONS_DIR": ""}, "$CEX_MIGRATIONS_DIR is empty"),
        (["--migrations-dir", str(empty)], {}, "holds no migration files"),
    ]
    for args, extra, words in cases:
        result = run_cli_process(["lint", *args], {**_env(), **extra}, cwd=tmp_path)
        assert result.returncode == 4, explain(result)
        assert words in result.stderr, explain(result)
