"""`new NAME`: the next version, the checks, a scaffold that parses; no database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cex_arbitrage.db import cli_new, migrate
from cex_arbitrage.db.migrator.model import Catalog
from cex_arbitrage.db.migrator.parse import parse_migration, parse_routine
from cex_arbitrage.db.migrator.scaffold import (
    new_migration,
    next_version,
    scaffold_text,
    write_migration,
)
from cex_arbitrage.db.migrator.source import DirectorySource, load_catalog
from cex_arbitrage.errors import ConfigError, ExitCode, ValidationError
from tests.support.paths import REPO

REPO = REPO
SHIPPED = REPO / "cex_arbitrage" / "db" / "migrations"
INFRA = parse_migration("000_infra.sql", "SELECT 1;")
CORE = parse_migration("001_core.sql", "SELECT 1;")
TRADES = parse_migration(
    "002_trades.sql", "-- migrate:feature trade_collection\n-- migrate:depends 000\nSELECT 1;\n"
)
CATALOG = Catalog((INFRA, CORE, TRADES), (parse_routine("R__helpers.sql", "SELECT 1;"),))


def a_set(directory: Path, *names: str) -> Path:
    """A migration directory: the shipped 000, then `names` as one-statement files."""
    directory.mkdir(parents=True, exist_ok=True)
    infra = "000_create_migration_infrastructure.sql"
    (directory / infra).write_text((SHIPPED / infra).read_text())
    for name in names:
        (directory / name).write_text("SELECT 1;\n")
    return directory


@pytest.mark.parametrize(
    ("versions", "expected"),
    [
        (["000"], "001"),
        (["000", "001", "002"], "003"),
        (["000", "099"], "100"),
        (["0000", "0009"], "0010"),
        (["000", "0041"], "0042"),
        ([], "000"),
    ],
)
def test_next_version_is_highest_plus_one_at_the_widest_width(
    versions: list[str], expected: str
) -> None:
    assert next_version(versions) == expected


@pytest.mark.parametrize("non_transactional", [False, True])
@pytest.mark.parametrize("feature", [None, "trade_collection"])
def test_the_scaffold_parses_as_written(feature: str | None, non_transactional: bool) -> None:
    text = scaffold_text(
        "004", "add_x", feature=feature, depends=("000", "002"), non_transactional=non_transactional
    )
    m = parse_migration("004_add_x.sql", text)
    assert (m.version, m.name, m.feature, m.depends) == ("004", "add_x", feature, ("000", "002"))
    assert m.description == "Add x"
    assert [s.name for s in m.steps] == ["main"] + (["outside_transaction"] * non_transactional)
    assert [s.transactional for s in m.steps] == [True] + [False] * non_transactional
    assert all(len(s.statements) == 1 for s in m.steps)  # the placeholder, documented
    assert all(s.statements[0].endswith("\nSELECT 1;") for s in m.steps)
    tail = text.split("-- migrate:psql-only\n", 1)[1]
    expected = "'004', 'add_x'" + (", 'trade_collection'" if feature else "")
    assert f"SELECT migration_record_manual({expected});" in tail
    for word in ("transaction:false", "background", "parallel", "migrate:session", "psql-only"):
        assert word in text


def test_new_migration_fills_in_the_header_from_the_set() -> None:
    new = new_migration(CATALOG, "add_order_index", feature="trade_collection", depends=["2", "1"])
    assert (new.version, new.filename) == ("003", "003_add_order_index.sql")
    m = parse_migration(new.filename, new.text)
    assert m.depends == ("002", "001") and m.feature == "trade_collection"
    assert new_migration(CATALOG, "plain").text.count("-- migrate:depends 000\n") == 1


@pytest.mark.parametrize("name", ["Bad", "_x", "a-b", "x.sql", "add x", "ä"])
def test_a_name_that_is_not_snake_case_is_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="not snake_case"):
        new_migration(CATALOG, name)


@pytest.mark.parametrize(("name", "used_by"), [("core", "001_core.sql"), ("helpers", "R__")])
def test_a_name_another_file_uses_is_refused(name: str, used_by: str) -> None:
    with pytest.raises(ValidationError, match=f"already used by {used_by}"):
        new_migration(CATALOG, name)


@pytest.mark.parametrize("depends", [["9"], ["003"], ["x"], ["000", "7"]])
def test_a_dependency_on_a_missing_version_is_refused(depends: list[str]) -> None:
    with pytest.raises(ValidationError, match="no migration has that version") as info:
        new_migration(CATALOG, "x", depends=depends)
    assert info.value.exit_code == ExitCode.REFUSED


def test_features_are_the_defaults_and_those_of_the_set() -> None:
    new_migration(CATALOG, "x", feature="trade_collection")  # declared by 002
    new_migration(Catalog((INFRA,)), "x", feature="other", default_features=["other"])
    with pytest.raises(ValidationError, match="did you mean 'trade_collection'"):
        new_migration(CATALOG, "x", feature="trade_colection")
    with pytest.raises(ValidationError, match="known features: trade_collection"):
        new_migration(CATALOG, "x", feature="zzz")


def test_a_version_that_would_sort_before_the_last_file_is_refused(tmp_path: Path) -> None:
    directory = a_set(tmp_path / "m", "999_last.sql")
    with pytest.raises(ValidationError, match=r"1000_next\.sql would sort before 999_last\.sql"):
        write_migration(directory, "next")
    assert sorted(p.name for p in directory.iterdir())[-1] == "999_last.sql"


def test_write_migration_writes_the_next_file_which_the_set_then_holds(tmp_path: Path) -> None:
    directory = a_set(tmp_path / "m", "001_a.sql", "002_b.sql")
    path = write_migration(directory, "add_c", non_transactional=True)
    assert path == directory / "003_add_c.sql"
    catalog = load_catalog(DirectorySource(directory))
    assert [m.version for m in catalog.migrations] == ["000", "001", "002", "003"]
    assert not catalog.migrations[-1].single_transaction
    with pytest.raises(ValidationError, match=r"already used by 003_add_c\.sql"):
        write_migration(directory, "add_c")


def test_write_migration_refuses_a_malformed_set_and_writes_nothing(tmp_path: Path) -> None:
    directory = a_set(tmp_path / "m", "001_a.sql")
    (directory / "002_b.sql").write_text("-- migrate:feture x\nSELECT 1;\n")
    with pytest.raises(ValidationError, match=r"002_b\.sql"):
        write_migration(directory, "c")
    assert not list(directory.glob("003_*"))


def test_an_installed_package_needs_migrations_dir(tmp_path: Path) -> None:
    installed = tmp_path / "lib" / "python3.12" / "site-packages" / "cex_arbitrage" / "db"
    installed.mkdir(parents=True)
    with pytest.raises(ConfigError, match="--migrations-dir") as info:
        cli_new.package_migrations_dir(installed)
    assert info.value.exit_code == ExitCode.USAGE
    if os.access(SHIPPED, os.W_OK):  # a writable checkout is the default
        assert cli_new.package_migrations_dir(SHIPPED) == SHIPPED


def test_the_env_variable_names_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CEX_MIGRATIONS_DIR", str(tmp_path))
    assert cli_new.target_dir(None) == tmp_path
    monkeypatch.setenv("CEX_MIGRATIONS_DIR", " ")
    with pytest.raises(ValidationError, match="is empty"):
        cli_new.target_dir(None)


@pytest.mark.parametrize("features", [["a", "b"], ["trade_collection=on"]])
def test_new_takes_one_plain_feature_name(features: list[str]) -> None:
    with pytest.raises(ConfigError):
        cli_new.feature_option(features)


def test_cli_new_prints_the_path_and_refuses_with_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = a_set(tmp_path / "m")
    assert migrate.main(["new", "first", "--migrations-dir", str(directory)]) == 0
    assert capsys.readouterr().out.strip() == str(directory / "001_first.sql")
    assert migrate.main(["new", "first", "--migrations-dir", str(directory)]) == 4
    assert migrate.main(["new", "--migrations-dir", str(directory)]) == 2
    assert "new needs NAME" in capsys.readouterr().err
    assert migrate.main(["status", "--depends", "000"]) == 2
    assert migrate.main(["apply", "--non-transactional"]) == 2
    assert "for the new command only" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args", [["--help"], ["status", "--json", "--target", "1"], ["new", "Not_Snake"]]
)
def test_help_and_usage_errors_do_not_load_asyncpg_or_the_runner(args: list[str]) -> None:
    code = (
        "import sys\nfrom cex_arbitrage.db import migrate\n"
        f"try:\n    migrate.main({args!r})\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('asyncpg', 'yaml') "
        "or m.startswith(('cex_arbitrage.config', 'cex_arbitrage.db.migrator.run'))))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_write_migration_with_down_writes_both_and_the_set_holds_the_down(
    tmp_path: Path,
) -> None:
    directory = a_set(tmp_path / "m", "001_a.sql")
    path = write_migration(directory, "add_c", down=True)
    down = directory / "002_add_c.down.sql"
    assert path.name == "002_add_c.sql" and down.is_file()
    catalog = load_catalog(DirectorySource(directory))
    parsed = catalog.down_of("002")
    assert parsed is not None and parsed.irreversible is None
    assert len(parsed.statements) == 1 and parsed.statements[0].endswith("SELECT 1;")
    text = down.read_text()
    assert "-- migrate:irreversible REASON" in text  # explained, in a comment
    assert "DELETE FROM migration_history WHERE version = '002';" in text


def test_write_migration_with_down_writes_nothing_when_the_down_exists(tmp_path: Path) -> None:
    directory = a_set(tmp_path / "m", "001_a.sql")
    (directory / "002_add_c.down.sql").write_text("SELECT 1;\n")
    with pytest.raises(ValidationError):
        write_migration(directory, "add_c", down=True)
    assert sorted(p.name for p in directory.iterdir()) == [
        "000_create_migration_infrastructure.sql",
        "001_a.sql",
        "002_add_c.down.sql",
    ]
