"""The down walk as table tests: history rows x down files x target -> walk, or the refusal.

No database: the history is a value, the files are parsed from text. And the
down file format: what parses, what is refused, and the shipped downs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cex_arbitrage.db.migrator.down_plan import DownPlan, make_down_plan
from cex_arbitrage.db.migrator.history import HistoryRow
from cex_arbitrage.db.migrator.model import Catalog, Down, Migration
from cex_arbitrage.db.migrator.parse import parse_migration
from cex_arbitrage.db.migrator.parse_down import parse_down
from cex_arbitrage.db.migrator.source import DirectorySource, PackageSource, load_catalog
from cex_arbitrage.db.migrator.states import MigrationState
from cex_arbitrage.errors import (
    ChecksumMismatchError,
    DatabaseAheadError,
    ExitCode,
    IrreversibleMigrationError,
    MigrationError,
    MigrationFileError,
    TransactionControlError,
    UnknownTargetError,
)

S = MigrationState
INFRA = parse_migration("000_infra.sql", "CREATE TABLE migration_history (version text);")
A = parse_migration("001_a.sql", "CREATE TABLE a ();")
B = parse_migration("002_b.sql", "-- migrate:feature trade_collection\nCREATE TABLE b ();")
C = parse_migration("003_c.sql", "CREATE TABLE c ();")
D = parse_migration("004_d.sql", "CREATE TABLE d ();")
IRREVERSIBLE = "-- migrate:irreversible it tracks everything\n"
DOWNS = {
    "000": parse_down("000_infra.down.sql", IRREVERSIBLE),
    "001": parse_down("001_a.down.sql", "DROP TABLE a;"),
    "002": parse_down("002_b.down.sql", "DROP TABLE b;"),
    "003": parse_down("003_c.down.sql", "-- nothing to undo\n"),
}
FILES = (INFRA, A, B, C, D)


def catalog(*without: str) -> Catalog:
    return Catalog(FILES, (), tuple(d for v, d in DOWNS.items() if v not in without))


def row(m: Migration | str, state: MigrationState = S.APPLIED, checksum: str = "") -> HistoryRow:
    version = m if isinstance(m, str) else m.version
    if not checksum and isinstance(m, Migration):
        checksum = m.checksum
    return HistoryRow(version, "x", None, checksum or "0" * 64, state, None, None, None, None,
                      None, None, 0, 0, {}, None, None)  # fmt: skip


def history(*rows: HistoryRow) -> dict[str, HistoryRow]:
    return {r.version: r for r in rows}


ALL = history(row(INFRA), row(A), row(B), row(C))


def walk(p: DownPlan) -> list[tuple[str, str]]:
    return [(s.migration.version, s.state.value) for s in p.steps]


CASES = [
    ("one step down", ALL, catalog(), "002", [("003", "applied")]),
    ("newest first, to 000", ALL, catalog(), "000",
     [("003", "applied"), ("002", "applied"), ("001", "applied")]),
    ("target at the top: nothing to undo", ALL, catalog(), "003", []),
    ("target above what is recorded: nothing", history(row(INFRA), row(A)), catalog(), "004", []),
    ("unrecorded versions are not walked (feature off)",
     history(row(INFRA), row(A), row(C)), catalog("002"), "000",
     [("003", "applied"), ("001", "applied")]),
    ("a failed or background migration is undone too",
     history(row(INFRA), row(A, S.FAILED), row(B, S.BACKGROUND)), catalog(), "000",
     [("002", "background"), ("001", "failed")]),
    ("target 1 is not 001 here (the CLI maps it)", ALL, catalog(), "1", UnknownTargetError),
    ("unknown target", ALL, catalog(), "009", UnknownTargetError),
    ("below 000 is no target", history(row(INFRA)), catalog(), "-1", UnknownTargetError),
    ("no down file stops the walk", ALL, catalog("002"), "000", IrreversibleMigrationError),
    ("irreversible below the target does not matter", ALL, catalog("001"), "001",
     [("003", "applied"), ("002", "applied")]),
    ("an edited applied file", history(row(INFRA), row(A, checksum="f" * 64)), catalog(), "000",
     ChecksumMismatchError),
    ("a version no file has", history(row(INFRA), row("009")), catalog(), "000",
     DatabaseAheadError),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "cat", "target", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_down_plan(
    rows: dict[str, HistoryRow],
    cat: Catalog,
    target: str,
    expected: list[tuple[str, str]] | type[MigrationError],
) -> None:
    if isinstance(expected, list):
        assert walk(make_down_plan(cat, rows, "db", target)) == expected
    else:
        with pytest.raises(expected) as info:
            make_down_plan(cat, rows, "db", target)
        assert info.value.exit_code is ExitCode.REFUSED


def test_the_refusal_names_the_migration_that_stops_the_walk_and_why() -> None:
    with pytest.raises(IrreversibleMigrationError) as missing:
        make_down_plan(catalog("002"), ALL, "db", "000")
    assert (missing.value.version, missing.value.reason) == ("002", None)
    assert missing.value.filename == "002_b.down.sql"
    assert "has no down file (002_b.down.sql)" in missing.value.message
    assert "Nothing was undone" in missing.value.message
    rows = history(row(INFRA), row(A))
    with pytest.raises(IrreversibleMigrationError) as marked:
        make_down_plan(
            Catalog(FILES, (), (parse_down("001_a.down.sql", IRREVERSIBLE),)), rows, "db", "000"
        )
    assert marked.value.reason == "it tracks everything"
    assert "marks it irreversible: it tracks everything" in marked.value.message


def test_dry_run_text_lists_the_walk() -> None:
    text = make_down_plan(catalog(), ALL, "db", "000").describe(sql=True)
    assert text.splitlines()[0].startswith("down 003_c.down.sql [applied]: undo: nothing")
    assert "down 002_b.down.sql [applied]: undo (one transaction" in text
    assert "    DROP TABLE b;" in text
    assert text.endswith("db: then at 000")
    assert "nothing to undo" in make_down_plan(catalog(), ALL, "db", "003").describe()


DOWN_FILES = [
    ("plain", "002_b.down.sql", "DROP TABLE b;\n", Down("002", "b", "002_b.down.sql",
                                                        "DROP TABLE b;\n")),
    ("empty: undoes only the history row", "002_b.down.sql", "-- nothing\n",
     Down("002", "b", "002_b.down.sql", "")),
    ("psql-only tail skipped", "002_b.down.sql",
     "DROP TABLE b;\n-- migrate:psql-only\nDELETE FROM migration_history;\n",
     Down("002", "b", "002_b.down.sql", "DROP TABLE b;\n")),
    ("irreversible", "002_b.down.sql", "-- migrate:irreversible why\n",
     Down("002", "b", "002_b.down.sql", "", irreversible="why")),
    ("irreversible with SQL", "002_b.down.sql", "-- migrate:irreversible why\nDROP TABLE b;\n",
     MigrationFileError),
    ("steps", "002_b.down.sql", "-- migrate:step x\nDROP TABLE b;\n", MigrationFileError),
    ("a header of migrations", "002_b.down.sql", "-- migrate:feature x\nDROP TABLE b;\n",
     MigrationFileError),
    ("no reason", "002_b.down.sql", "-- migrate:irreversible\n", MigrationFileError),
    ("COMMIT", "002_b.down.sql", "DROP TABLE b;\nCOMMIT;\n", TransactionControlError),
    ("bad name", "002_B.down.sql", "SELECT 1;\n", MigrationFileError),
]  # fmt: skip


@pytest.mark.parametrize(
    ("filename", "text", "expected"),
    [c[1:] for c in DOWN_FILES],
    ids=[c[0] for c in DOWN_FILES],
)
def test_down_file(filename: str, text: str, expected: Down | type[MigrationError]) -> None:
    if isinstance(expected, Down):
        assert parse_down(filename, text) == expected
    else:
        with pytest.raises(expected):
            parse_down(filename, text)


def test_irreversible_belongs_only_in_a_down_file() -> None:
    with pytest.raises(MigrationFileError, match="does not belong"):
        parse_migration("002_b.sql", "-- migrate:irreversible no\nSELECT 1;\n")


def test_a_down_file_without_its_migration_is_refused(tmp_path: Path) -> None:
    directory = tmp_path
    (directory / "000_infra.sql").write_text("SELECT 1;\n")
    (directory / "001_a.down.sql").write_text("DROP TABLE a;\n")
    with pytest.raises(MigrationFileError, match=r"no migration 001_a\.sql to undo"):
        load_catalog(DirectorySource(directory))


def test_shipped_downs_say_honestly_what_can_be_undone() -> None:
    shipped = load_catalog(PackageSource("cex_arbitrage.db.migrations"))
    downs = {d.version: d for d in shipped.downs}
    assert {m.version for m in shipped.migrations} == set(downs), "every migration decides"
    assert downs["000"].irreversible and downs["001"].irreversible
    assert "backup" in (downs["001"].irreversible or "")
    assert not downs["002"].irreversible and "DROP TABLE" in downs["002"].sql
    assert "migration_is_applied('001')" in downs["003"].sql  # 001's table stays
    assert downs["004"].sql == "" and not downs["004"].irreversible  # a VACUUM: nothing
    # 005: its indexes and the book-ticker archive go; the rows it archived are not put back
    assert not downs["005"].irreversible and "uq_trades_natural_key" in downs["005"].sql
