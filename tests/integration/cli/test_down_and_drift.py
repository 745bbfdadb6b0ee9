"""`down --target VERSION` and `status --drift`, through the CLI as an operator runs it.

Each test runs the CLI (or ./migrate.sh) as a subprocess against a database
of its own on the real server, and checks the exit code, what was printed,
and what the database holds after: nothing undone when the walk is refused.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from cex_arbitrage.db.structs import DatabaseConfig
from cex_arbitrage.errors import ExitCode
from tests.support.cli import run_cli_process, write_migrations
from tests.support.databases import (
    fetch,
    fresh_database,
    has_table,
    pg_env,
    timescale_database,
)
from tests.support.legacy_data import make_legacy_dataset, prepare_legacy
from tests.support.paths import MIGRATIONS, REPO

TRADES_OFF = ["--feature", "trade_collection=off"]


def cli(db: DatabaseConfig, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli_process(list(args), pg_env(db), cwd=REPO)


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, explain(result)
    return result


async def versions(db: DatabaseConfig) -> list[str]:
    rows = await fetch(db, "SELECT version FROM migration_history WHERE version !~ '^R__'")
    return sorted(r["version"] for r in rows)


async def execute(db: DatabaseConfig, sql: str) -> None:
    await fetch(db, sql)


def drift_json(db: DatabaseConfig, *extra: str) -> dict[str, object]:
    result = ok(cli(db, "status", "--drift", "--json", *extra))
    drift: dict[str, object] = json.loads(result.stdout)["drift"]
    return drift


@pytest.fixture
async def second_db(admin_config: DatabaseConfig) -> AsyncIterator[DatabaseConfig]:
    async for config in fresh_database(admin_config):
        yield config


# --------------------------------------------------------------------------
# down


async def test_down_of_003_and_002_and_back_up_again(db: DatabaseConfig) -> None:
    ok(cli(db, *TRADES_OFF))
    assert await versions(db) == ["000", "002", "003", "006"]

    walked = ok(cli(db, "down", "--target", "002", *TRADES_OFF))
    assert "undone 006" in walked.stdout and "003 (" in walked.stdout, explain(walked)
    assert "the schema is at 002" in walked.stdout
    assert await versions(db) == ["000", "002"]
    assert not await has_table(db, "book_ticker_snapshots")
    assert await has_table(db, "ingest_batch_log")

    ok(cli(db, "down", "--target", "0", *TRADES_OFF))  # `0` is 000, as for apply
    assert await versions(db) == ["000"]
    assert not await has_table(db, "ingest_batch_log")
    assert not (await fetch(db, "SELECT to_regprocedure('ingest_batch_log_prune(interval)') p"))[0][
        "p"
    ]

    again = ok(cli(db, *TRADES_OFF))
    assert "applied 002" in again.stdout, explain(again)
    assert await versions(db) == ["000", "002", "003", "006"]
    ok(cli(db, "status", "--exit-code", *TRADES_OFF))
    assert drift_json(db, *TRADES_OFF)["drifted"] is False


async def test_003_keeps_the_table_001_needs_and_a_vacuum_undoes_nothing(
    db: DatabaseConfig,
) -> None:
    ok(cli(db))
    await execute(db, "INSERT INTO book_ticker_snapshots (timestamp, exchange, symbol_base, "
                      "symbol_quote, bid_price, bid_qty, ask_price, ask_qty) "
                      "VALUES (now(), 'x', 'BTC', 'USDT', 1, 1, 1, 1)")  # fmt: skip
    dry = ok(cli(db, "down", "--target", "002", "--dry-run"))
    assert "down 004_vacuum_after_trade_backfill.down.sql [applied]: undo: nothing" in dry.stdout
    assert "drops table public.book_ticker_snapshots:" not in dry.stdout  # 001 needs it
    walked = ok(cli(db, "down", "--target", "002"))  # no rows lost: no flag needed
    assert await versions(db) == ["000", "001", "002"], explain(walked)
    assert (await fetch(db, "SELECT count(*) AS n FROM book_ticker_snapshots"))[0]["n"] == 1
    ok(cli(db))
    assert await versions(db) == ["000", "001", "002", "003", "004", "005", "006"]
    assert drift_json(db)["drifted"] is False


async def test_irreversible_001_stops_the_walk_before_anything_ran(db: DatabaseConfig) -> None:
    ok(cli(db))
    before = await fetch(db, "SELECT * FROM migration_history ORDER BY version")
    refused = cli(db, "down", "--target", "000")
    assert refused.returncode == ExitCode.REFUSED, explain(refused)
    assert "001_add_trade_collection_support.down.sql marks it irreversible" in refused.stderr
    assert "restore a backup taken before 001" in refused.stderr
    assert "the walk (006, 005, 004, 003, 002, 001, newest first)" in refused.stderr
    assert "Nothing was undone" in refused.stderr
    assert await fetch(db, "SELECT * FROM migration_history ORDER BY version") == before
    for table in ("migration_schema_fingerprint", "ingest_batch_log", "book_ticker_snapshots"):
        assert await has_table(db, table), table
    dry = cli(db, "down", "--target", "000", "--dry-run")
    assert dry.returncode == ExitCode.REFUSED, explain(dry)


async def test_a_down_that_drops_rows_needs_the_flag_and_says_how_many(
    db: DatabaseConfig,
) -> None:
    ok(cli(db, *TRADES_OFF))
    await execute(db, "INSERT INTO book_ticker_snapshots (timestamp, exchange, symbol_base, "
                      "symbol_quote, bid_price, bid_qty, ask_price, ask_qty) "
                      "SELECT now() + i * interval '1 s', 'x', 'BTC', 'USDT', 1, 1, 1, 1 "
                      "FROM generate_series(1, 3) i")  # fmt: skip
    before = await fetch(db, "SELECT * FROM migration_history ORDER BY version")

    refused = cli(db, "down", "--target", "002", *TRADES_OFF)
    assert refused.returncode == ExitCode.REFUSED, explain(refused)
    assert "down of 003 drops table public.book_ticker_snapshots with 3 row(s)" in refused.stderr
    assert "--allow-data-loss" in refused.stderr and "Nothing was undone" in refused.stderr
    # not even 006, the first in the walk: the walk was rehearsed and rolled back
    assert await fetch(db, "SELECT * FROM migration_history ORDER BY version") == before
    assert await has_table(db, "migration_schema_fingerprint")

    dry = ok(cli(db, "down", "--target", "002", "--dry-run", *TRADES_OFF))
    assert "drops table public.book_ticker_snapshots: 3 row(s) (needs --allow-data-loss)" in (
        dry.stdout
    )
    assert "migration_schema_fingerprint: 0 row(s) (the runner's fingerprint" in dry.stdout

    done = ok(cli(db, "down", "--target", "002", "--allow-data-loss", *TRADES_OFF))
    assert "drops table public.book_ticker_snapshots with 3 row(s)" in done.stderr
    assert not await has_table(db, "book_ticker_snapshots")
    assert await versions(db) == ["000", "002"]


def test_down_needs_a_target_and_its_flag_belongs_to_it(db: DatabaseConfig) -> None:
    no_target = cli(db, "down")
    assert no_target.returncode == ExitCode.USAGE and "down needs --target" in no_target.stderr
    stray = cli(db, "--allow-data-loss")
    assert stray.returncode == ExitCode.USAGE
    assert "--allow-data-loss is for the down command only" in stray.stderr


def test_down_through_migrate_sh(db: DatabaseConfig) -> None:
    env = pg_env(db)
    run = subprocess.run(
        ["./migrate.sh", "--feature", "trade_collection=off"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, explain(run)
    down = subprocess.run(
        ["./migrate.sh", "down", "--target", "003", "--feature", "trade_collection=off"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert down.returncode == 0, explain(down)
    assert "undone 006" in down.stdout


# --------------------------------------------------------------------------
# status --drift


async def test_drift_outside_migrations_is_named_and_exits_6(db: DatabaseConfig) -> None:
    ok(cli(db))
    clean = ok(cli(db, "status", "--drift", "--exit-code"))
    assert "no drift: the schema matches the fingerprint" in clean.stdout
    recorded_at = await fetch(db, "SELECT max(recorded_at) AS t FROM migration_schema_fingerprint")
    ok(cli(db))  # nothing to apply: nothing recorded (a boot with nothing to do stays one trip)
    assert recorded_at == await fetch(
        db, "SELECT max(recorded_at) AS t FROM migration_schema_fingerprint"
    )

    await execute(db, "ALTER TABLE trades ADD COLUMN note text")
    await execute(db, "CREATE INDEX idx_manual ON trades (price)")
    await execute(
        db,
        "CREATE OR REPLACE FUNCTION ingest_batch_log_prune(p_keep INTERVAL DEFAULT "
        "INTERVAL '1 day') RETURNS BIGINT LANGUAGE sql AS 'SELECT 0::bigint'",
    )
    await execute(db, "ALTER TABLE trades DROP CONSTRAINT trades_price_positive")

    drifted = cli(db, "status", "--drift", "--exit-code")
    assert drifted.returncode == ExitCode.PENDING == 6, explain(drifted)
    text = drifted.stdout
    assert "DRIFT: 4 schema object(s) changed outside migrations" in text
    assert "added    column public.trades.note: text" in text
    assert "added    index public.idx_manual: CREATE INDEX idx_manual ON public.trades" in text
    assert "changed  function public.ingest_batch_log_prune(p_keep interval)" in text
    assert "removed  constraint public.trades CHECK ((price > (0)::numeric))" in text
    assert cli(db, "status", "--drift").returncode == 0  # without --exit-code: a report

    drift = drift_json(db)
    assert drift["drifted"] is True
    assert [(a["kind"], a["name"]) for a in drift["added"]] == [  # type: ignore[attr-defined]
        ("column", "public.trades.note"),
        ("index", "public.idx_manual"),
    ]

    ok(cli(db, "down", "--target", "004"))  # a run that changes the schema records anew
    ok(cli(db))
    assert drift_json(db)["drifted"] is False
    await execute(db, "DROP INDEX idx_manual")
    assert cli(db, "status", "--drift", "--exit-code").returncode == ExitCode.PENDING
    accepted = ok(cli(db, "accept-drift"))  # a deliberate change: take the schema as it is
    assert "recorded the schema as it is now" in accepted.stdout
    assert drift_json(db)["drifted"] is False


async def test_accept_drift_before_006_is_refused(db: DatabaseConfig) -> None:
    ok(cli(db, "--target", "004"))
    refused = cli(db, "accept-drift")
    assert refused.returncode == ExitCode.REFUSED, explain(refused)
    assert "apply migration 006" in refused.stderr


async def test_fresh_and_legacy_upgraded_databases_show_no_drift_and_one_fingerprint(
    db: DatabaseConfig, second_db: DatabaseConfig
) -> None:
    await prepare_legacy(db, make_legacy_dataset(5_000))
    ok(cli(db))  # legacy: 001 upgrades the existing tables, backfills, indexes in background
    ok(cli(second_db))  # fresh: 001 creates the tables
    legacy, fresh = drift_json(db), drift_json(second_db)
    assert legacy["drifted"] is False and fresh["drifted"] is False
    assert legacy["recorded"] is True and fresh["recorded"] is True
    assert legacy["digest"] == fresh["digest"]


async def test_drift_is_unknown_before_006_and_not_an_error(db: DatabaseConfig) -> None:
    ok(cli(db, "--target", "004"))
    result = ok(cli(db, "status", "--drift"))
    assert "drift unknown: no schema fingerprint is recorded" in result.stdout


async def test_new_down_scaffolds_a_down_file_that_down_runs(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    directory = tmp_path / "migrations"
    directory.mkdir()
    for path in MIGRATIONS.glob("*.sql"):
        shutil.copy(path, directory / path.name)
    dir_args = ["--migrations-dir", str(directory), *TRADES_OFF]
    new = ok(cli(db, "new", "add_widgets", "--down", "--migrations-dir", str(directory)))
    up, down = (Path(line) for line in new.stdout.split())
    assert (up.name, down.name) == ("008_add_widgets.sql", "008_add_widgets.down.sql")
    up.write_text(up.read_text().replace("\nSELECT 1;\n", "\nCREATE TABLE widgets (id int);\n", 1))
    down.write_text(down.read_text().replace("\nSELECT 1;\n", "\nDROP TABLE widgets;\n", 1))
    ok(cli(db, *dir_args))
    assert await has_table(db, "widgets")
    walked = ok(cli(db, "down", "--target", "006", *dir_args))
    assert "undone 008" in walked.stdout, explain(walked)
    assert not await has_table(db, "widgets")
    assert await versions(db) == ["000", "002", "003", "006"]
    # the down's transaction recorded the fingerprint it left: widgets is not "removed"
    assert drift_json(db, *dir_args)["drifted"] is False


async def test_down_refusals_of_a_set_of_ones_own_leave_everything_applied(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    directory = write_migrations(
        tmp_path / "m",
        {
            "001_a.sql": "CREATE TABLE a (id int);\n",
            "002_b.sql": "CREATE TABLE b (id int);\n",
            "002_b.down.sql": "DROP TABLE nope;\n",
        },
    )
    dir_args = ["--migrations-dir", str(directory)]
    ok(cli(db, *dir_args))
    before = await fetch(db, "SELECT * FROM migration_history ORDER BY version")

    no_down = cli(db, "down", "--target", "000", *dir_args)
    assert no_down.returncode == ExitCode.REFUSED, explain(no_down)
    assert "001_a.sql, and it has no down file (001_a.down.sql)" in no_down.stderr

    failing = cli(db, "down", "--target", "001", *dir_args)
    assert failing.returncode == ExitCode.MIGRATION_FAILED, explain(failing)
    assert "002_b.down.sql fails when the walk is rehearsed" in failing.stderr
    assert 'table "nope" does not exist' in failing.stderr
    assert "nothing was undone" in failing.stderr

    unknown = cli(db, "down", "--target", "009", *dir_args)
    assert unknown.returncode == ExitCode.REFUSED, explain(unknown)
    assert "unknown target version '009'" in unknown.stderr

    assert await fetch(db, "SELECT * FROM migration_history ORDER BY version") == before
    assert await has_table(db, "a") and await has_table(db, "b")


@pytest.fixture
async def second_ts_db(timescale_admin: DatabaseConfig) -> AsyncIterator[DatabaseConfig]:
    async for config in timescale_database(timescale_admin):
        yield config


@pytest.mark.timescale
async def test_timescale_fresh_and_legacy_hypertables_share_one_fingerprint(
    ts_db: DatabaseConfig, second_ts_db: DatabaseConfig
) -> None:
    await prepare_legacy(ts_db, make_legacy_dataset(5_000), hypertables=True)
    ok(cli(ts_db))
    ok(cli(second_ts_db))
    legacy, fresh = drift_json(ts_db), drift_json(second_ts_db)
    assert legacy["drifted"] is False and fresh["drifted"] is False
    assert legacy["digest"] == fresh["digest"]
    # the continuous aggregates are views over numbered internal hypertables: masked
    rows = await fetch(
        ts_db, "SELECT name FROM migration_schema_fingerprint WHERE kind = 'view' ORDER BY 1"
    )
    assert [r["name"] for r in rows] == ["public.trades_ohlcv_1h", "public.trades_ohlcv_1m"]


async def test_a_table_lock_held_elsewhere_times_out_the_rehearsal_with_exit_5(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    ok(cli(db, *TRADES_OFF))
    config = tmp_path / "config.yaml"
    config.write_text("database:\n  lock_timeout_ms: 100\n  lock_retries: 1\n")
    before = await fetch(db, "SELECT * FROM migration_history ORDER BY version")
    holder = await asyncpg.connect(**db.connect_kwargs())
    try:
        await holder.execute("BEGIN; LOCK TABLE ingest_batch_log IN ACCESS SHARE MODE")
        pid = await holder.fetchval("SELECT pg_backend_pid()")
        result = cli(db, "down", "--target", "001", "--config", str(config), *TRADES_OFF)
        assert result.returncode == ExitCode.LOCK_TIMEOUT, explain(result)
        assert "rehearsing 002_add_ingest_batch_log.down.sql" in result.stderr
        assert "could not get a table lock within 100 ms after 2 attempts" in result.stderr
        assert f"pid {pid}" in result.stderr
    finally:
        await holder.close()
    assert await fetch(db, "SELECT * FROM migration_history ORDER BY version") == before
    assert await has_table(db, "book_ticker_snapshots")


async def test_the_rehearsal_sees_the_history_as_the_walk_will(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    """001's down drops its table only once 002 is undone: the rehearsal, which undoes
    002 first too, must see that, or the rows would go without --allow-data-loss."""
    directory = write_migrations(
        tmp_path / "m",
        {
            "001_a.sql": "CREATE TABLE a (id int);\nINSERT INTO a VALUES (1), (2);\n",
            "001_a.down.sql": "DO $$ BEGIN IF NOT migration_is_applied('002') THEN "
            "DROP TABLE a; END IF; END $$;\n",
            "002_b.sql": "CREATE TABLE b (id int);\n",
            "002_b.down.sql": "DROP TABLE b;\n",
        },
    )
    dir_args = ["--migrations-dir", str(directory)]
    ok(cli(db, *dir_args))
    refused = cli(db, "down", "--target", "000", *dir_args)
    assert refused.returncode == ExitCode.REFUSED, explain(refused)
    assert "down of 001 drops table public.a with 2 row(s)" in refused.stderr
    assert await has_table(db, "a") and await has_table(db, "b")
    ok(cli(db, "down", "--target", "000", "--allow-data-loss", *dir_args))
    assert not await has_table(db, "a") and not await has_table(db, "b")
