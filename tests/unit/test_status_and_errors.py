"""Status rendering and the error hierarchy, without a database."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from cex_arbitrage import errors
from cex_arbitrage.db.migrator.history import HistoryRow, ProgressRow
from cex_arbitrage.db.migrator.lock import Holder
from cex_arbitrage.db.migrator.model import Catalog
from cex_arbitrage.db.migrator.parse import parse_migration, parse_routine
from cex_arbitrage.db.migrator.states import MigrationState
from cex_arbitrage.db.migrator.status import (
    APPLYING,
    BACKGROUND_ORPHANED,
    BACKGROUND_RUNNING,
    INTERRUPTED,
    collect_status,
    format_table,
    to_json,
)

S = MigrationState
AT = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
INFRA = parse_migration("000_infra.sql", "SELECT 1;")
TRADES = parse_migration(
    "001_trades.sql",
    "-- migrate:feature trade_collection\nSELECT 1;\n"
    "-- migrate:step fill transaction:false background\nSELECT 2;\n",
)
ROUTINE = parse_routine("R__fns.sql", "SELECT 1;")
CATALOG = Catalog((INFRA, TRADES), (ROUTINE,))


def row(version: str, state: MigrationState, checksum: str | None, **kw: object) -> HistoryRow:
    fields: dict[str, object] = dict(
        version=version, name="x", feature=None, checksum=checksum, state=state,
        applied_at=AT, finished_at=None, execution_ms=12, background_ms=None,
        applied_by="ops", applied_from=None, steps_done=1, statements_done=0,
        step_timings={}, last_error=None, failed_statement=None,
    )  # fmt: skip
    fields.update(kw)
    return HistoryRow(**fields)  # type: ignore[arg-type]


def test_status_rows_versions_then_routines_with_their_states() -> None:
    history = {
        "000": row("000", S.APPLIED, INFRA.checksum),
        "001": row("001", S.BACKGROUND, TRADES.checksum, background_ms=5),
        "R__fns": row("R__fns", S.APPLIED, "old"),
    }
    progress = [ProgressRow("001", "backfill", "10", 10, 40, False, {}, AT)]
    rows = collect_status(CATALOG, history, progress, {"trade_collection": True})
    assert [(r.version, r.state) for r in rows] == [
        ("000", S.APPLIED),
        ("001", S.BACKGROUND),
        ("R__fns", S.PENDING),  # changed since recorded: due again
    ]
    assert rows[1].progress == "backfill 10/40 (25.0%)"
    assert [r.needs_attention for r in rows] == [False, False, True]
    table = format_table(rows)
    assert table.splitlines()[0].split() == [
        "VERSION", "NAME", "FEATURE", "STATE", "APPLIED", "AT", "DURATION", "CHECKSUM"
    ]  # fmt: skip
    assert "001 progress: backfill 10/40 (25.0%)" in table
    assert "12 ms (+5 ms bg)" in table and "2026-01-02 03:04:05Z" in table
    data = json.loads(to_json(rows, {"database": "db"}))
    assert data["needs_attention"] is True
    assert [m["state"] for m in data["migrations"]] == ["applied", "background", "pending"]


HOLDER = Holder(4242, "ops", "cex-migrate", None, AT)


def test_status_tells_work_in_hand_from_work_nobody_is_doing() -> None:
    history = {
        "000": row("000", S.APPLIED, INFRA.checksum),
        "001": row("001", S.BACKGROUND, TRADES.checksum),
    }
    features = {"trade_collection": True}
    orphaned = collect_status(CATALOG, history, [], features, locks=(None, None))
    assert orphaned[1].activity == BACKGROUND_ORPHANED and orphaned[1].needs_attention
    assert "001 background steps unfinished and nobody is running them" in format_table(orphaned)
    running = collect_status(CATALOG, history, [], features, locks=(None, HOLDER))
    assert running[1].activity == BACKGROUND_RUNNING and not running[1].needs_attention
    assert (
        "001 background steps being run now by pid 4242 (user ops, application "
        "'cex-migrate', since 2026-01-02 03:04:05Z)" in format_table(running)
    )
    assert json.loads(to_json(running))["migrations"][1]["runner"]["pid"] == 4242

    # A single-transaction migration has no row until it commits: pending, yet in hand.
    fresh = {"000": row("000", S.APPLIED, INFRA.checksum)}
    applying = collect_status(CATALOG, fresh, [], features, locks=(HOLDER, None))
    assert (applying[1].state, applying[1].activity) == (S.RUNNING, APPLYING)
    assert "001 being applied now by pid 4242" in format_table(applying)
    # Started, and nobody holds the lock: interrupted.
    half = {**fresh, "001": row("001", S.RUNNING, TRADES.checksum)}
    stopped = collect_status(CATALOG, half, [], features, locks=(None, None))
    assert (stopped[1].state, stopped[1].activity) == (S.RUNNING, INTERRUPTED)
    assert "001 interrupted: no runner holds the migration lock; run again" in format_table(stopped)


def test_status_of_an_edited_file_a_disabled_feature_and_an_unknown_row() -> None:
    history = {
        "000": row("000", S.APPLIED, "0" * 64),
        "007": row("007", S.APPLIED, "x"),
    }
    rows = collect_status(CATALOG, history, [], {"trade_collection": False})
    states = {r.version: (r.state, r.checksum_ok) for r in rows}
    assert states == {
        "000": (S.APPLIED, False),
        "001": (S.DISABLED, None),
        "007": (S.UNKNOWN, None),
        "R__fns": (S.PENDING, None),
    }
    assert "CHANGED" in format_table(rows)


def test_a_failed_step_shows_its_error_and_statement() -> None:
    history = {
        "000": row("000", S.APPLIED, INFRA.checksum),
        "001": row("001", S.FAILED, TRADES.checksum, last_error="boom",
                   failed_statement="SELECT\n  2;"),
    }  # fmt: skip
    rows = collect_status(CATALOG, history, [], {"trade_collection": True})
    assert rows[1].error == "boom (at: SELECT 2;)"
    assert "001 error: boom (at: SELECT 2;)" in format_table(rows)


EXIT_CODES = {
    errors.ConfigError: 2,
    errors.ConnectError: 3,
    errors.ValidationError: 4,
    errors.MigrationFileError: 4,
    errors.TransactionControlError: 4,
    errors.DuplicateVersionError: 4,
    errors.MissingDependencyError: 4,
    errors.UnknownTargetError: 4,
    errors.TargetBelowAppliedError: 4,
    errors.DatabaseAheadError: 4,
    errors.AbandonedAttemptError: 4,
    errors.ChecksumMismatchError: 4,
    errors.NotAppliedError: 4,
    errors.LintFindingsError: 4,
    errors.IrreversibleMigrationError: 4,
    errors.DataLossRefusedError: 4,
    errors.LockTimeoutError: 5,
    errors.MigrationLockTimeoutError: 5,
    errors.TableLockTimeoutError: 5,
    errors.SchemaNotReadyError: 6,
    errors.PreflightError: 7,
    errors.MigrationFailedError: 1,
    errors.ConnectionLostError: 8,
    errors.RunInterruptedError: 8,
}


@pytest.mark.parametrize(
    ("cls", "code"), EXIT_CODES.items(), ids=lambda x: getattr(x, "__name__", str(x))
)
def test_each_error_class_carries_its_exit_code(
    cls: type[errors.MigrationError], code: int
) -> None:
    assert cls.exit_code == code
    assert issubclass(cls, errors.MigrationError)


def test_every_error_class_is_in_the_table() -> None:
    classes = {
        c for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, errors.MigrationError)
    }  # fmt: skip
    assert classes - {errors.MigrationError} == set(EXIT_CODES)


def test_errors_keep_their_fields() -> None:
    failed = errors.MigrationFailedError(
        "m", version="001", step="s", statement_index=2, statement="SELECT 1;",
        sqlstate="42601", rolled_back=False,
    )  # fmt: skip
    assert (failed.version, failed.step, failed.statement_index, failed.sqlstate) == (
        "001", "s", 2, "42601"
    )  # fmt: skip
    assert failed.message == str(failed) == "m" and not failed.rolled_back
    lock = errors.TableLockTimeoutError(
        "m", version="001", step=None, statement_index=None, attempts=3, blocking_pids=[7]
    )
    assert lock.blocking_pids == (7,) and lock.attempts == 3


def test_down_refusals_keep_their_fields() -> None:
    irreversible = errors.IrreversibleMigrationError(
        "m", version="001", filename="001_a.down.sql", reason="why"
    )
    assert (irreversible.version, irreversible.filename, irreversible.reason) == (
        "001", "001_a.down.sql", "why"
    )  # fmt: skip
    loss = errors.DataLossRefusedError("m", losses=[("003", "table public.t", 3)])
    assert loss.losses == (("003", "table public.t", 3),)
    assert loss.exit_code is errors.ExitCode.REFUSED


def test_a_migration_for_a_missing_extension_shows_disabled_with_its_extension() -> None:
    citus_only = parse_migration(
        "004_distribute.sql",
        "-- migrate:feature trade_collection\n-- migrate:extension citus\nSELECT 1;\n",
    )
    catalog = Catalog((*CATALOG.migrations, citus_only), CATALOG.routines)
    features = {"trade_collection": True}
    (row,) = [r for r in collect_status(catalog, {}, [], features) if r.version == "004"]
    assert (row.state, row.scope) == (MigrationState.DISABLED, "trade_collection+citus")
    assert not row.needs_attention
    (row,) = [
        r
        for r in collect_status(catalog, {}, [], features, extensions={"citus"})
        if r.version == "004"
    ]
    assert row.state is MigrationState.PENDING and row.needs_attention
