"""Operator mistakes the migrate CLI must refuse (or read right) before anything runs.

Each test runs `python -m cex_arbitrage.db.migrate` as a child process against
a database of its own and checks the exit code, the operator's message and
what the database holds afterwards: a misspelt feature, an empty or mistyped
migrations directory, an option the command would ignore (or worse, migrate
with), a file that is not UTF-8 or not named `.sql`, a directive without its
colon, `--target 1` for 001, "schema is current" printed twice, and the help.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cex_arbitrage.config import load_config
from cex_arbitrage.db.migrator.source import PackageSource, load_catalog
from cex_arbitrage.db.structs import DatabaseConfig
from cex_arbitrage.errors import ConfigError, ExitCode, MigrationFileError
from tests.support.cli import CliRunner, run_cli_process, write_migrations
from tests.support.databases import fetch, has_table
from tests.support.paths import REPO

CURRENT = "nothing to apply; the schema is current"
WIDGETS = "CREATE TABLE widgets (id INTEGER PRIMARY KEY);\n"
GADGETS = "-- migrate:depends 001\nCREATE TABLE gadgets (id INTEGER PRIMARY KEY);\n"
ORDER_BOOKS = "-- migrate:feature order_books\nCREATE TABLE order_books (id INTEGER PRIMARY KEY);\n"
INFRA = REPO / "cex_arbitrage" / "db" / "migrations" / "000_create_migration_infrastructure.sql"


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


async def applied(db: DatabaseConfig) -> list[str] | None:
    """Versions in migration_history, or None when there is no history table."""
    if not await has_table(db, "public.migration_history"):
        return None
    rows = await fetch(db, "SELECT version FROM migration_history ORDER BY version")
    return [r["version"] for r in rows]


async def public_tables(db: DatabaseConfig) -> list[str]:
    rows = await fetch(db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return sorted(r["tablename"] for r in rows)


def refused(result: subprocess.CompletedProcess[str], code: ExitCode, *words: str) -> None:
    """The run exited with `code` and said every one of `words` on stderr."""
    assert result.returncode == code, explain(result)
    for word in words:
        assert word in result.stderr, f"{word!r} missing\n{explain(result)}"


@pytest.fixture
def small_set(tmp_path: Path) -> Path:
    return write_migrations(
        tmp_path / "migrations", {"001_widgets.sql": WIDGETS, "002_gadgets.sql": GADGETS}
    )


# --------------------------------------------------------------------------
# 1. feature names


async def test_misspelt_feature_in_config_is_refused_before_anything_runs(
    run_cli: CliRunner, db: DatabaseConfig, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("features: {trade_colection: false}\n", encoding="utf-8")

    for args in ((), ("status",), ("--dry-run",)):
        result = run_cli(*args, "--config", str(config))
        refused(
            result,
            ExitCode.USAGE,
            "features.trade_colection: unknown feature; did you mean 'trade_collection'?",
        )
    assert await applied(db) is None
    assert await public_tables(db) == []


async def test_misspelt_feature_override_is_refused_before_anything_runs(
    run_cli: CliRunner, db: DatabaseConfig
) -> None:
    result = run_cli("--feature", "trade_colection=off")

    refused(
        result,
        ExitCode.USAGE,
        "--feature trade_colection=off: unknown feature; did you mean 'trade_collection'?",
    )
    assert await applied(db) is None
    assert await public_tables(db) == []


async def test_a_migration_sets_own_features_are_known_to_the_cli(
    run_cli: CliRunner, db: DatabaseConfig, tmp_path: Path
) -> None:
    migrations = write_migrations(tmp_path / "books", {"001_order_books.sql": ORDER_BOOKS})
    config = tmp_path / "config.yaml"
    config.write_text("features:\n  order_books: false\n", encoding="utf-8")
    common = ("--config", str(config), "--migrations-dir", str(migrations))

    off = run_cli(*common)
    assert off.returncode == ExitCode.OK, explain(off)
    assert "skipped 001_order_books.sql: feature order_books is disabled" in off.stdout
    assert await applied(db) == ["000"]
    assert not await has_table(db, "order_books")

    typo = run_cli(*common, "--feature", "order_book=on")
    refused(typo, ExitCode.USAGE, "--feature order_book=on", "did you mean 'order_books'?")
    assert await applied(db) == ["000"]

    # The shipped set declares no order_books: the same config is refused there.
    shipped = run_cli("--config", str(config))
    refused(shipped, ExitCode.USAGE, "features.order_books: unknown feature", "trade_collection")
    assert await applied(db) == ["000"]

    on = run_cli(*common, "--feature", "order_books=on")
    assert on.returncode == ExitCode.OK, explain(on)
    assert await applied(db) == ["000", "001"]
    assert await has_table(db, "order_books")


def test_config_loader_accepts_default_feature_names_only_unless_told_more(
    tmp_path: Path,
) -> None:
    (tmp_path / "config.yaml").write_text("features:\n  order_books: true\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"features\.order_books: unknown feature"):
        load_config(env={}, cwd=tmp_path)
    config = load_config(env={}, cwd=tmp_path, known_features=["trade_collection", "order_books"])
    assert config.feature_enabled("order_books") is True


# --------------------------------------------------------------------------
# 2. empty, missing or mistyped migration directories


COMMANDS = (
    (),
    ("status",),
    ("status", "--exit-code"),
    ("status", "--json"),
    ("background",),
    ("accept-checksum", "000"),
    ("--dry-run",),
)


async def test_a_directory_without_migration_files_is_refused_by_every_command(
    run_cli: CliRunner, db: DatabaseConfig, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    readme_only = tmp_path / "readme-only"
    readme_only.mkdir()
    (readme_only / "README.md").write_text("migrations go here\n", encoding="utf-8")

    for directory in (empty, readme_only):
        for args in COMMANDS:
            result = run_cli(*args, "--migrations-dir", str(directory))
            refused(result, ExitCode.REFUSED, str(directory), "holds no migration files")
    assert await applied(db) is None
    assert await public_tables(db) == []


async def test_a_missing_mistyped_or_empty_migrations_dir_is_refused(
    run_cli: CliRunner, cli_env: dict[str, str], db: DatabaseConfig, tmp_path: Path
) -> None:
    a_file = tmp_path / "not-a-dir.sql"
    a_file.write_text(WIDGETS, encoding="utf-8")
    typo = tmp_path / "migratoins"
    cases: list[tuple[tuple[str, ...], dict[str, str], tuple[str, ...]]] = [
        (("--migrations-dir", str(typo)), {}, (str(typo), "--migrations-dir", "does not exist")),
        ((), {"CEX_MIGRATIONS_DIR": str(typo)}, (str(typo), "$CEX_MIGRATIONS_DIR")),
        (("--migrations-dir", str(a_file)), {}, (str(a_file), "is not a directory")),
        (("--migrations-dir", ""), {}, ("--migrations-dir is empty",)),
        ((), {"CEX_MIGRATIONS_DIR": ""}, ("$CEX_MIGRATIONS_DIR is empty",)),
    ]
    for args, extra, words in cases:
        for command in COMMANDS:
            result = run_cli(*command, *args, env={**cli_env, **extra})
            refused(result, ExitCode.REFUSED, *words)
    assert await applied(db) is None
    assert await public_tables(db) == []


# --------------------------------------------------------------------------
# 3. options the command would ignore


async def test_status_options_without_status_are_usage_errors_and_migrate_nothing(
    run_cli: CliRunner, db: DatabaseConfig
) -> None:
    for option, only in (("--exit-code", "status command"), ("--json", "status and lint commands")):
        result = run_cli(option)
        refused(result, ExitCode.USAGE, f"error: {option} is for the {only} only, not apply")
        assert f"status {option}" in result.stderr, explain(result)
        for command in (("background",), ("accept-checksum", "000")):
            refused(run_cli(*command, option), ExitCode.USAGE, option)
    assert await applied(db) is None
    assert await public_tables(db) == []


async def test_target_and_dry_run_outside_apply_are_usage_errors(
    run_cli: CliRunner, db: DatabaseConfig
) -> None:
    refused(run_cli("status", "--target", "000"), ExitCode.USAGE, "--target", "status")
    for command in (("status",), ("background",), ("accept-checksum", "000")):
        result = run_cli(*command, "--dry-run")
        refused(
            result, ExitCode.USAGE, f"--dry-run is for the apply command only, not {command[0]}"
        )
    assert await applied(db) is None

    # In their place they still work.
    assert run_cli("--dry-run", "--target", "000").returncode == ExitCode.OK
    assert await applied(db) is None
    assert run_cli("status", "--exit-code").returncode == ExitCode.PENDING
    assert await applied(db) is None


# --------------------------------------------------------------------------
# 4. files that are not UTF-8, not `.sql`, or a directive without its colon


async def test_a_file_that_is_not_utf8_is_refused_naming_file_and_offset(
    run_cli: CliRunner, db: DatabaseConfig, tmp_path: Path
) -> None:
    migrations = write_migrations(tmp_path / "latin1", {})
    (migrations / "001_cafe.sql").write_bytes(b"-- caf\xe9 orders\nCREATE TABLE cafe (id int);\n")

    for args in ((), ("status",)):
        result = run_cli(*args, "--migrations-dir", str(migrations))
        refused(result, ExitCode.REFUSED, "001_cafe.sql", "not UTF-8", "0xe9 at offset 6")
        assert "Traceback" not in result.stderr, explain(result)
    assert await applied(db) is None
    assert await public_tables(db) == []


def test_a_package_file_that_is_not_utf8_is_refused_naming_file_and_offset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "cex_test_latin1_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / INFRA.name).write_text(INFRA.read_text(encoding="utf-8"), encoding="utf-8")
    (package / "001_bad.sql").write_bytes(b"SELECT 1; -- \xff\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(MigrationFileError) as caught:
        load_catalog(PackageSource(package.name))
    assert caught.value.filename == "001_bad.sql"
    assert "001_bad.sql (package cex_test_latin1_pkg)" in caught.value.message
    assert "0xff at offset 13" in caught.value.message
    assert caught.value.exit_code == ExitCode.REFUSED


async def test_an_upper_case_sql_extension_is_refused_not_skipped(
    run_cli: CliRunner, db: DatabaseConfig, small_set: Path
) -> None:
    (small_set / "002_gadgets.sql").rename(small_set / "002_gadgets.SQL")

    for args in ((), ("status", "--exit-code")):
        result = run_cli(*args, "--migrations-dir", str(small_set))
        refused(
            result,
            ExitCode.REFUSED,
            str(small_set / "002_gadgets.SQL"),
            "rename it to 002_gadgets.sql",
        )
    assert await applied(db) is None
    assert await public_tables(db) == []


async def test_a_directive_without_its_colon_is_refused_with_file_and_line(
    run_cli: CliRunner, db: DatabaseConfig, tmp_path: Path
) -> None:
    sql = "CREATE TABLE widgets (id int);\n\n-- migrate step index transaction:false\nSELECT 1;\n"
    migrations = write_migrations(tmp_path / "no-colon", {"001_widgets.sql": sql})

    result = run_cli("--migrations-dir", str(migrations))

    refused(result, ExitCode.REFUSED, "001_widgets.sql:3", "without its colon", "-- migrate:step")
    assert await applied(db) is None
    assert await public_tables(db) == []


async def test_comments_that_merely_start_with_migrate_are_still_comments(
    run_cli: CliRunner, db: DatabaseConfig, tmp_path: Path
) -> None:
    sql = (
        "-- migrate the data to the new layout\n"
        "-- migrated rows keep their ids\n"
        "-- migrate features later; migrate stepwise\n"
        "CREATE TABLE widgets (id int);\n"
    )
    migrations = write_migrations(tmp_path / "comments", {"001_widgets.sql": sql})

    result = run_cli("--migrations-dir", str(migrations))

    assert result.returncode == ExitCode.OK, explain(result)
    assert await applied(db) == ["000", "001"]
    assert await has_table(db, "widgets")


# --------------------------------------------------------------------------
# 5. --target without leading zeros


async def test_target_without_leading_zeros_means_that_version(
    run_cli: CliRunner, db: DatabaseConfig, small_set: Path
) -> None:
    dry = run_cli("--migrations-dir", str(small_set), "--dry-run", "--target", "1")
    assert dry.returncode == ExitCode.OK, explain(dry)
    assert "apply 001_widgets.sql" in dry.stdout and "002_gadgets" not in dry.stdout
    assert await applied(db) is None

    first = run_cli("--migrations-dir", str(small_set), "--target", "1")
    assert first.returncode == ExitCode.OK, explain(first)
    assert "--target 1: version 001" in first.stderr
    assert await applied(db) == ["000", "001"]
    assert await has_table(db, "widgets") and not await has_table(db, "gadgets")

    unknown = run_cli("--migrations-dir", str(small_set), "--target", "7")
    refused(unknown, ExitCode.REFUSED, "unknown target version '7'", "known versions: 000")
    assert await applied(db) == ["000", "001"]

    rest = run_cli("--migrations-dir", str(small_set), "--target", "0002")
    assert rest.returncode == ExitCode.OK, explain(rest)
    assert await applied(db) == ["000", "001", "002"]
    assert await has_table(db, "gadgets")


# --------------------------------------------------------------------------
# 6. "the schema is current", once


async def test_schema_is_current_is_printed_once_on_stdout(
    run_cli: CliRunner, db: DatabaseConfig, small_set: Path
) -> None:
    assert run_cli("--migrations-dir", str(small_set)).returncode == ExitCode.OK
    assert await applied(db) == ["000", "001", "002"]

    again = run_cli("--migrations-dir", str(small_set))

    assert again.returncode == ExitCode.OK, explain(again)
    assert again.stdout.count(CURRENT) == 1, explain(again)
    assert CURRENT not in again.stderr, explain(again)
    assert await applied(db) == ["000", "001", "002"]


# --------------------------------------------------------------------------
# 7. help


def test_help_says_where_the_connection_comes_from_and_what_each_command_does(
    tmp_path: Path,
) -> None:
    result = run_cli_process(["--help"], os.environ, cwd=tmp_path)

    assert result.returncode == 0, explain(result)
    text = " ".join(result.stdout.split())
    for words in (
        "config.yaml",
        "$CEX_CONFIG",
        "DATABASE_URL",
        "PGHOST",
        "embedded PostgreSQL",
        "apply (default) apply pending migrations",
        "status each migration's state; changes nothing",
        "background run unfinished background steps",
        "accept-checksum VERSION: record the checksum",
        "5 lock timeout",
    ):
        assert words in text, f"{words!r} missing\n{result.stdout}"


def test_engine_help_points_at_the_migrate_cli(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cex_arbitrage", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, explain(result)
    assert "python -m cex_arbitrage.db.migrate" in result.stdout
