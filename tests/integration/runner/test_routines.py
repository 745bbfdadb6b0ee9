"""Repeatable routines (R__name.sql): re-applied when they change, before the steps that call them.

The field case this exists for: a database whose 001 foreground ran with the
released 0.3.0 file (procedure bodies installed by 001 itself, recorded with
that file's checksum) and whose backfill was left half done. The next run
must install the current bodies without `accept-checksum`, and finish the
backfill with them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import asyncpg
import pytest

from cex_arbitrage.db.migrations import MigrationRunner
from cex_arbitrage.db.migrator import DirectorySource, MigrationState
from cex_arbitrage.db.migrator.model import checksum_of
from cex_arbitrage.db.migrator.parse import parse_migration
from cex_arbitrage.db.structs import DatabaseConfig
from cex_arbitrage.errors import ExitCode
from tests.support.cli import run_cli_process, write_migrations
from tests.support.databases import pg_env
from tests.support.legacy_data import (
    MIGRATION_000,
    MIGRATION_001,
    MIGRATIONS,
    ROUTINES,
    assert_legacy_outcome,
    make_legacy_dataset,
    prepare_legacy,
    run_psql,
)
from tests.support.paths import REPO

# The commit of the released 0.3.0 tree, whose 001 still installed its procedures itself.
RELEASE_0_3_0 = "76fce883bdd97afff8eec8597ecd0507efddf119"
RELEASED_001_CHECKSUM = "300d1f099be0beb6195ba7e6cab0d89b0577584cd8d481a47bd2a4a16a0138e3"


# The commit of the migrator-package release: routines kept the backfill's counters in
# migration_progress.detail only (no typed counter tables yet).
RELEASE_MIGRATOR = "2f047cd"
MIGRATOR_001_CHECKSUM = "fa432004001e4ca35eb48de0391f94c92087c8eb48898b1e595cfc6b2b560e98"


def released_file(commit: str, name: str) -> str:
    """A shipped file as COMMIT had it (a fresh clone has the history); skip without it."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git history of the checkout for released files")
    shown = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{commit}:cex_arbitrage/db/migrations/{name}"],
        capture_output=True,
        text=True,
    )
    if shown.returncode != 0:
        pytest.skip(f"the release commit is not in this clone's history: {shown.stderr.strip()}")
    return shown.stdout


def released_001() -> str:
    """The 0.3.0 file, whose 001 still installed its procedures itself."""
    return released_file(RELEASE_0_3_0, MIGRATION_001.name)


def test_current_001_declares_it_replaces_the_released_file() -> None:
    text = released_001()
    assert checksum_of(text) == RELEASED_001_CHECKSUM
    current = parse_migration(MIGRATION_001.name, MIGRATION_001.read_text())
    assert RELEASED_001_CHECKSUM in current.replaces
    # Same steps at the same positions: a half-done history row resumes at the same step.
    old = parse_migration(MIGRATION_001.name, text)
    assert [s.transactional for s in old.steps] == [s.transactional for s in current.steps]
    assert [s.background for s in old.steps] == [s.background for s in current.steps]
    assert [s.name for s in old.background_steps] == [s.name for s in current.background_steps]


async def public_helpers(conn: asyncpg.Connection) -> list[str]:
    """The cex_ functions and procedures left in public."""
    rows = await conn.fetch(
        "SELECT DISTINCT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace "
        "AND proname LIKE 'cex\\_%' ORDER BY proname"
    )
    return [r["proname"] for r in rows]


async def _half_done_backfill_of_released_001(
    db: DatabaseConfig,
    text: str,
    work: Path,
    checksum: str = RELEASED_001_CHECKSUM,
    routines: tuple[str, ...] = (),
) -> None:
    """000 by psql (then ROUTINES, the released routine files), the released 001's
    foreground recorded as its runner did, half a backfill, killed."""
    result = await run_psql(db, file=MIGRATION_000)
    assert result.returncode == 0, result.stderr
    # On PostgreSQL 13 no 001 ran without date_bin from this routine (a no-op from 14 on).
    result = await run_psql(db, file=MIGRATIONS / "R__compat_date_bin.sql")
    assert result.returncode == 0, result.stderr
    for n, routine in enumerate(routines):
        path = work / f"released_routine_{n}.sql"
        path.write_text(routine)
        result = await run_psql(db, file=path)
        assert result.returncode == 0, result.stderr
    old = parse_migration(MIGRATION_001.name, text)
    script = []
    for step in old.foreground_steps:
        if step.transactional:
            script.append(f"BEGIN;\n{step.sql}\n;\nCOMMIT;\n")
        else:
            script.extend(s + "\n" for s in step.statements)
    script.append(
        "INSERT INTO migration_history (version, name, feature, checksum, state, steps_done, "
        f"applied_from) VALUES ('001', '{old.name}', 'trade_collection', "
        f"'{checksum}', 'background', {len(old.foreground_steps)}, 'cex-migrate');\n"
    )
    foreground = work / "released_001_foreground.sql"
    foreground.write_text("".join(script))
    result = await run_psql(db, file=foreground, timeout=300)
    assert result.returncode == 0, result.stderr
    backfill = await asyncio.create_subprocess_exec(
        "psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", "CALL cex_backfill_trade_symbols()",
        env=pg_env(db, {"PGOPTIONS": "-c cex.backfill_batch_size=500 -c cex.backfill_sleep_ms=40",
                        "PGAPPNAME": "old-backfill"}),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    conn = await asyncpg.connect(**db.connect_kwargs())
    try:
        for _ in range(2400):  # 2 minutes: the set-up scans the table first (a busy CI machine)
            done = await conn.fetchval(
                "SELECT rows_done FROM migration_progress WHERE version = '001' "
                "AND task = 'backfill_symbols'"
            )
            if done and done >= 4000:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the released backfill made no progress")
        backfill.send_signal(signal.SIGKILL)
        await backfill.wait()
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'old-backfill'"
        )
        # The released body with a bug only a new body fixes: without routines, nothing
        # could ever replace it (001's step that installed it never runs again).
        await conn.execute(
            "CREATE OR REPLACE PROCEDURE cex_backfill_trade_symbols(p_batch_size integer "
            "DEFAULT NULL) LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION "
            "'released body: this bug is fixed in R__trade_backfill.sql'; END $$"
        )
    finally:
        await conn.close()


async def test_database_that_ran_the_released_001_gets_new_bodies_and_finishes(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    await _released_001_field_case(db, tmp_path, hypertables=False)


@pytest.mark.timescale
async def test_timescale_database_that_ran_the_released_001_gets_new_bodies_and_finishes(
    ts_db: DatabaseConfig, tmp_path: Path
) -> None:
    await _released_001_field_case(ts_db, tmp_path, hypertables=True)


async def _released_001_field_case(db: DatabaseConfig, tmp_path: Path, hypertables: bool) -> None:
    text = released_001()
    data = make_legacy_dataset(20_000)
    await prepare_legacy(db, data, hypertables=hypertables)
    await _half_done_backfill_of_released_001(db, text, tmp_path)

    result = run_cli_process(["--verbose"], pg_env(db), tmp_path)

    assert result.returncode == ExitCode.OK, result.stderr
    assert "replaces the release recorded for it" in result.stderr
    for path in ROUTINES:
        assert f"routine {path.name} created or replaced" in result.stderr
    assert "background steps of 001_add_trade_collection_support.sql resume" in result.stderr
    conn = await asyncpg.connect(**db.connect_kwargs())
    try:
        rows = {
            r["version"]: r
            for r in await conn.fetch("SELECT version, state, checksum FROM migration_history")
        }
        assert rows["001"]["state"] == MigrationState.APPLIED.value
        assert rows["001"]["checksum"] == checksum_of(MIGRATION_001.read_text())
        for path in ROUTINES:
            key = path.name.removesuffix(".sql")
            assert rows[key]["checksum"] == checksum_of(path.read_text()), key
        # the released bodies in public are gone; the helpers live in cex_migration
        assert await public_helpers(conn) == ["cex_split_symbol", "cex_trades_fill_symbol_parts"]
        body = await conn.fetchval(
            "SELECT prosrc FROM pg_proc WHERE proname = 'backfill_trade_symbols' "
            "AND pronamespace = 'cex_migration'::regnamespace"
        )
        assert "this bug is fixed" not in body
        await assert_legacy_outcome(conn, data)
    finally:
        await conn.close()
    status = run_cli_process(["status", "--exit-code"], pg_env(db), tmp_path)
    assert status.returncode == ExitCode.OK, status.stdout + status.stderr


async def test_backfill_half_done_with_counters_in_json_resumes_with_typed_counters(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    """The migrator-package release kept the backfill's counters in migration_progress.detail
    only; its half-done backfill resumes with the counter tables seeded from that detail,
    and the final counts are those of the whole table."""
    names = ("R__migration_functions.sql", "R__trade_helpers.sql", "R__trade_symbols.sql",
             "R__trade_backfill.sql", "R__trade_maintenance.sql")  # fmt: skip
    routines = tuple(released_file(RELEASE_MIGRATOR, n) for n in names)
    text = released_file(RELEASE_MIGRATOR, MIGRATION_001.name)
    assert checksum_of(text) == MIGRATOR_001_CHECKSUM
    data = make_legacy_dataset(20_000)
    await prepare_legacy(db, data)
    await _half_done_backfill_of_released_001(
        db, text, tmp_path, checksum=MIGRATOR_001_CHECKSUM, routines=routines
    )
    conn = await asyncpg.connect(**db.connect_kwargs())
    try:
        assert await conn.fetchval("SELECT to_regclass('cex_backfill_chunks')") is not None
        assert await conn.fetchval("SELECT to_regclass('cex_backfill_totals')") is None

        # up to 004: 005 would archive id-less repeats too, which 001's counters do not count
        result = run_cli_process(["--target", "004"], pg_env(db), tmp_path)

        assert result.returncode == ExitCode.OK, result.stderr
        await assert_legacy_outcome(conn, data)
        progress = await conn.fetchrow(
            "SELECT rows_done, done, detail FROM migration_progress "
            "WHERE version = '001' AND task = 'backfill_symbols'"
        )
        detail = json.loads(progress["detail"])
        assert progress["done"] and progress["rows_done"] == len(data.by_id)
        archived = await conn.fetchval("SELECT count(*) FROM trades_duplicates_removed")
        unsplit = await conn.fetchval("SELECT count(*) FROM trades WHERE symbol_base IS NULL")
        split = await conn.fetchval("SELECT count(*) FROM trades WHERE symbol_base IS NOT NULL")
        assert detail["duplicates_archived"] == archived == len(data.expected_removed())
        assert detail["unsplittable_rows"] == unsplit
        assert detail["rows_split"] == split
        assert sum(detail["unsplittable_symbols"].values()) == unsplit
        for table in ("chunks", "dup_ids", "totals", "unsplittable", "violating"):
            for name in (f"cex_backfill_{table}", f"cex_migration.backfill_{table}"):
                assert await conn.fetchval("SELECT to_regclass($1)", name) is None
        assert await public_helpers(conn) == ["cex_split_symbol", "cex_trades_fill_symbol_parts"]
    finally:
        await conn.close()


ROUTINE_V1 = """-- migrate:description the answer
CREATE OR REPLACE FUNCTION answer() RETURNS integer LANGUAGE sql AS $$ SELECT 1 $$;
"""
ROUTINE_BROKEN = """CREATE OR REPLACE FUNCTION answer() RETURNS integer
LANGUAGE sql AS $$ SELECT $$;
"""
ANSWERS = """-- migrate:step table
CREATE TABLE answers (value integer);
-- migrate:step fill transaction:false background
INSERT INTO answers SELECT answer();
"""


async def test_changed_routine_is_reapplied_before_pending_background_steps(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    directory = write_migrations(
        tmp_path / "m", {"R__answer.sql": ROUTINE_V1, "001_answers.sql": ANSWERS}
    )
    runner = MigrationRunner(db, source=DirectorySource(directory))
    first = await runner.migrate(background=False)
    assert first.routines == ["R__answer"]
    assert first.background_pending == ["001"]
    (directory / "R__answer.sql").write_text(ROUTINE_V1.replace("SELECT 1", "SELECT 2"))

    second = await runner.migrate()  # the routine first, then the background step

    assert second.routines == ["R__answer"] and second.background_done == ["001"]
    conn = await asyncpg.connect(**db.connect_kwargs())
    try:
        assert await conn.fetchval("SELECT value FROM answers") == 2
    finally:
        await conn.close()
    statuses = {s.version: s for s in await runner.get_migration_status()}
    assert statuses["R__answer"].state is MigrationState.APPLIED
    third = await runner.migrate()
    assert third.routines == [] and not third.plan.has_bookkeeping


async def test_failed_routine_is_recorded_and_stops_the_run_before_migrations(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    directory = write_migrations(
        tmp_path / "m", {"R__answer.sql": ROUTINE_BROKEN, "001_answers.sql": ANSWERS}
    )
    result = run_cli_process(["--migrations-dir", str(directory)], pg_env(db), tmp_path)
    assert result.returncode == ExitCode.MIGRATION_FAILED, result.stderr
    assert "R__answer" in result.stderr and "rolled back" in result.stderr
    conn = await asyncpg.connect(**db.connect_kwargs())
    try:
        assert await conn.fetchval("SELECT to_regclass('answers')") is None
        row = await conn.fetchrow("SELECT state, last_error FROM migration_history "
                                  "WHERE version = 'R__answer'")  # fmt: skip
        assert row["state"] == "failed" and "return type mismatch" in row["last_error"]
    finally:
        await conn.close()
    status = run_cli_process(
        ["status", "--exit-code", "--migrations-dir", str(directory)], pg_env(db), tmp_path
    )
    assert status.returncode == ExitCode.PENDING
    assert "R__answer" in status.stdout and "failed" in status.stdout
    (directory / "R__answer.sql").write_text(ROUTINE_V1)
    fixed = run_cli_process(["--migrations-dir", str(directory)], pg_env(db), tmp_path)
    assert fixed.returncode == ExitCode.OK, fixed.stderr


def test_routine_files_run_by_plain_psql_in_the_documented_order() -> None:
    """Each shipped routine names itself in its psql-only tail, as 000's function expects."""
    for path in sorted(MIGRATIONS.glob("R__*.sql")):
        text = path.read_text()
        key = path.name.removesuffix(".sql")
        assert f"SELECT migration_record_manual('{key}'," in text, path.name
    assert os.path.exists(MIGRATION_000)
