"""The plan as table tests: history rows x features x target -> plan, or the refusal.

No database: the history is a value, the files are parsed from text.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from cex_arbitrage.db.migrator.history import HistoryRow
from cex_arbitrage.db.migrator.model import Catalog, Migration, checksum_of
from cex_arbitrage.db.migrator.parse import parse_migration, parse_routine
from cex_arbitrage.db.migrator.plan import Plan, make_plan
from cex_arbitrage.db.migrator.states import RECORDED_STATES, MigrationState
from cex_arbitrage.errors import (
    AbandonedAttemptError,
    ChecksumMismatchError,
    DatabaseAheadError,
    ExitCode,
    MigrationError,
    MigrationFileError,
    MissingDependencyError,
    TargetBelowAppliedError,
    UnknownTargetError,
)
from tests.support.paths import REPO

S = MigrationState
INFRA = parse_migration("000_infra.sql", "CREATE TABLE migration_history (version text);")
CORE = parse_migration(
    "001_core.sql",
    "-- migrate:step a\nCREATE TABLE a ();\n-- migrate:step b transaction:false\n"
    "CREATE INDEX CONCURRENTLY i ON a ((1));\n"
    "-- migrate:step fill transaction:false background\nSELECT 1;\n",
)
TRADES = parse_migration(
    "002_trades.sql", "-- migrate:feature trade_collection\nCREATE TABLE t ();\n"
)
AFTER = parse_migration("003_after.sql", "-- migrate:depends 002\nCREATE TABLE u ();\n")
ROUTINE = parse_routine("R__fns.sql", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';")
CATALOG = Catalog((INFRA, CORE, TRADES, AFTER), (ROUTINE,))
ON = {"trade_collection": True}
OFF = {"trade_collection": False}


def row(
    m: Migration | str,
    state: MigrationState = S.APPLIED,
    *,
    checksum: str | None = "",
    steps: int = 0,
    statements: int = 0,
) -> HistoryRow:
    version = m if isinstance(m, str) else m.version
    if checksum == "":
        checksum = m.checksum if isinstance(m, Migration) else ROUTINE.checksum
    return HistoryRow(version, "x", None, checksum, state, None, None, None, None, None, None,
                      steps, statements, {}, None, None)  # fmt: skip


def history(*rows: HistoryRow) -> dict[str, HistoryRow]:
    return {r.version: r for r in rows}


def plan(
    rows: dict[str, HistoryRow], features: dict[str, bool] = ON, target: str | None = None
) -> Plan:
    return make_plan(CATALOG, rows, features, "db", target)


def shape(p: Plan) -> dict[str, object]:
    return {
        "fg": [(pm.migration.version, pm.start_step, pm.start_statement) for pm in p.foreground],
        "bg": [pm.migration.version for pm in p.background],
        "disabled": [m.version for m in p.disabled],
        "adopt": [m.version for m in p.adopt_checksum],
        "routines": [r.key for r in p.routines],
    }


CASES = [
    ("empty database, all on", {}, ON, None,
     {"fg": [("000", 0, 0), ("001", 0, 0), ("002", 0, 0), ("003", 0, 0)], "bg": ["001"],
      "disabled": [], "adopt": [], "routines": ["R__fns"]}),
    ("empty database, trades off: 003 depends on it", {}, OFF, None, MissingDependencyError),
    ("empty database, target 001", {}, ON, "001",
     {"fg": [("000", 0, 0), ("001", 0, 0)], "bg": ["001"], "disabled": [], "adopt": [],
      "routines": ["R__fns"]}),
    ("current", history(row(INFRA), row(CORE), row(TRADES), row(AFTER), row("R__fns")), ON,
     None, {"fg": [], "bg": [], "disabled": [], "adopt": [], "routines": []}),
    ("interrupted at step 2 statement 1",
     history(row(INFRA), row(CORE, S.RUNNING, steps=1, statements=1)), ON, "001",
     {"fg": [("001", 1, 1)], "bg": ["001"], "disabled": [], "adopt": [], "routines": ["R__fns"]}),
    ("background pending", history(row(INFRA), row(CORE, S.BACKGROUND, steps=2)), ON, "001",
     {"fg": [], "bg": ["001"], "disabled": [], "adopt": [], "routines": ["R__fns"]}),
    ("failed in the background step", history(row(INFRA), row(CORE, S.FAILED, steps=2)), ON,
     "001", {"fg": [], "bg": ["001"], "disabled": [], "adopt": [], "routines": ["R__fns"]}),
    ("applied by psql: checksum adopted", history(row(INFRA, checksum=None)), ON, "000",
     {"fg": [], "bg": [], "disabled": [], "adopt": ["000"], "routines": ["R__fns"]}),
    ("trades off: skipped, shown disabled", history(row(INFRA), row(CORE)), OFF, "002",
     {"fg": [], "bg": [], "disabled": ["002"], "adopt": [], "routines": ["R__fns"]}),
    ("routine changed", history(row(INFRA), row("R__fns", checksum="old")), ON, "000",
     {"fg": [], "bg": [], "disabled": [], "adopt": [], "routines": ["R__fns"]}),
    ("routine failed last time", history(row(INFRA), row("R__fns", S.FAILED)), ON, "000",
     {"fg": [], "bg": [], "disabled": [], "adopt": [], "routines": ["R__fns"]}),
    ("edited applied file", history(row(INFRA, checksum="0" * 64)), ON, None,
     ChecksumMismatchError),
    ("database ahead", history(row(INFRA), row("007")), ON, None, DatabaseAheadError),
    ("abandoned attempt", history(row(INFRA), row("007", S.FAILED)), ON, None,
     AbandonedAttemptError),
    ("unknown target", {}, ON, "009", UnknownTargetError),
    ("target below applied", history(row(INFRA), row(CORE)), ON, "000", TargetBelowAppliedError),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "features", "target", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_plan(
    rows: dict[str, HistoryRow],
    features: dict[str, bool],
    target: str | None,
    expected: dict[str, object] | type[MigrationError],
) -> None:
    if isinstance(expected, dict):
        assert shape(plan(rows, features, target)) == expected
    else:
        with pytest.raises(expected) as info:
            plan(rows, features, target)
        assert info.value.exit_code is ExitCode.REFUSED


def test_refusals_carry_their_fields() -> None:
    with pytest.raises(ChecksumMismatchError) as edited:
        plan(history(row(INFRA, checksum="0" * 64)))
    assert (edited.value.version, edited.value.recorded, edited.value.current) == (
        "000",
        "0" * 64,
        INFRA.checksum,
    )
    with pytest.raises(MissingDependencyError) as missing:
        plan({}, OFF)
    assert (missing.value.version, missing.value.dependency) == ("003", "002")
    assert "disabled" in missing.value.reason
    with pytest.raises(TargetBelowAppliedError) as below:
        plan(history(row(INFRA), row(CORE)), ON, "000")
    assert below.value.applied_above == ("001",)


def test_a_checksum_the_file_declares_it_replaces_is_current_and_recorded() -> None:
    old = "a" * 64
    text = f"-- migrate:replaces {old} moved functions out, same schema\nCREATE TABLE t ();\n"
    replacing = parse_migration("001_core.sql", text)
    catalog = Catalog((INFRA, replacing))
    p = make_plan(catalog, history(row(INFRA), row("001", checksum=old)), ON, "db")
    assert [m.version for m in p.replaced_checksum] == ["001"]
    assert not p.foreground and p.has_bookkeeping
    with pytest.raises(ChecksumMismatchError):
        make_plan(catalog, history(row(INFRA), row("001", checksum="b" * 64)), ON, "db")


def test_dry_run_text_lists_routines_steps_and_skips() -> None:
    text = plan({}, ON, None).describe(sql=False)
    assert "routine R__fns.sql: create or replace" in text
    assert "apply 001_core.sql" in text and "  step b: statement by statement" in text
    assert "background 001_core.sql: fill" in text


def test_recorded_states_are_exactly_those_000_allows() -> None:
    sql = (REPO / "cex_arbitrage" / "db" / "migrations" /
           "000_create_migration_infrastructure.sql").read_text()  # fmt: skip
    match = re.search(r"CHECK \(state IN \(([^)]*)\)\)", sql)
    assert match is not None
    allowed = {v.strip().strip("'") for v in match.group(1).split(",")}
    assert allowed == {s.value for s in RECORDED_STATES}
    assert {s for s in MigrationState if s.is_applied} == {S.APPLIED, S.BACKGROUND}


def test_checksum_ignores_line_endings() -> None:
    assert checksum_of("a\r\nb\r\n") == checksum_of("a\nb\n")
    assert dataclasses.replace(CORE, replaces=frozenset({"x"})).checksum_matches("x")


CITUS_ONLY = parse_migration(
    "004_distribute.sql",
    "-- migrate:feature trade_collection\n-- migrate:extension citus\n-- migrate:depends 002\n"
    "SELECT 1;\n",
)
AFTER_CITUS = parse_migration("005_on_shards.sql", "-- migrate:depends 004\nSELECT 1;\n")


@pytest.mark.parametrize(
    ("extensions", "features", "runs", "skipped_because"),
    [
        ({"plpgsql"}, ON, [], "extension citus is not installed"),
        ({"plpgsql", "citus"}, ON, ["004"], None),
        ({"plpgsql", "citus"}, OFF, [], "feature trade_collection is disabled"),
    ],
    ids=["no-citus", "citus", "citus-feature-off"],
)
def test_a_migration_for_an_extension_applies_only_where_it_is_installed(
    extensions: set[str], features: dict[str, bool], runs: list[str], skipped_because: str | None
) -> None:
    """Not run and not recorded without it; pending once it appears (a restored database)."""
    catalog = Catalog((INFRA, CORE, TRADES, AFTER, CITUS_ONLY))
    applied = history(row(INFRA), row(CORE), row(TRADES), row(AFTER))
    p = make_plan(catalog, applied, features, "db", extensions=extensions)
    assert [pm.migration.version for pm in p.foreground] == runs
    if skipped_because is None:
        assert not p.disabled
    else:
        assert [m.version for m in p.disabled] == ["004"]
        assert p.skipped_because["004"] == skipped_because
        assert f"skip 004_distribute.sql: {skipped_because}" in p.describe()


def test_a_dependency_on_a_missing_extension_is_refused_naming_it() -> None:
    catalog = Catalog((INFRA, CORE, TRADES, AFTER, CITUS_ONLY, AFTER_CITUS))
    applied = history(row(INFRA), row(CORE), row(TRADES), row(AFTER))
    with pytest.raises(MissingDependencyError) as refused:
        make_plan(catalog, applied, ON, "db", extensions={"plpgsql"})
    assert refused.value.dependency == "004"
    assert refused.value.reason == "it is for extension citus, which is not installed"


def test_an_extension_name_is_checked_when_the_file_is_read() -> None:
    with pytest.raises(MigrationFileError, match="is not an extension name"):
        parse_migration("004_x.sql", "-- migrate:extension Citus!\nSELECT 1;\n")
