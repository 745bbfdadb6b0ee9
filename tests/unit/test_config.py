"""config.yaml, ${VAR} substitution, PG* / DATABASE_URL layering and the errors an operator sees."""

from __future__ import annotations

import textwrap
from pathlib import Path

import asyncpg
import pytest

from cex_arbitrage.config import (
    AppConfig,
    CollectorSettings,
    MigrationSettings,
    database_from_url,
    load_config,
)
from cex_arbitrage.db.structs import DatabaseConfig
from cex_arbitrage.errors import ConfigError, ExitCode
from tests.support.databases import pg_env
from tests.support.paths import REPO

SECRET = "s3cr3t-Pa55"


def write_config(directory: Path, text: str, name: str = "config.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def config_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    """The message load_config gives for ./config.yaml holding `text`."""
    write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(env=env or {}, cwd=tmp_path)
    assert caught.value.exit_code == ExitCode.USAGE
    return str(caught.value)


# --- no configuration at all ---------------------------------------------------


def test_without_file_or_environment_defaults_apply_and_database_is_unconfigured(
    tmp_path: Path,
) -> None:
    config = load_config(env={}, cwd=tmp_path)
    assert config.database == DatabaseConfig()
    assert config.migrations == MigrationSettings()
    assert config.collectors == CollectorSettings()
    assert config.source == "defaults"
    assert config.database_configured is False
    assert config.path is None
    assert config.feature_enabled("trade_collection") is True
    assert config.feature_enabled("no_such_feature") is False


@pytest.mark.parametrize("var", ["PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD"])
def test_any_pg_location_variable_counts_as_configured(tmp_path: Path, var: str) -> None:
    config = load_config(env={var: "5433" if var == "PGPORT" else "x"}, cwd=tmp_path)
    assert config.database_configured is True
    assert config.source == "PG* environment"


def test_pgsslmode_alone_does_not_say_where_the_database_is(tmp_path: Path) -> None:
    config = load_config(env={"PGSSLMODE": "require"}, cwd=tmp_path)
    assert config.database.sslmode == "require"
    assert config.database_configured is False


def test_database_url_alone_is_configured(tmp_path: Path) -> None:
    config = load_config(env={"DATABASE_URL": "postgresql://u@db1/app"}, cwd=tmp_path)
    assert config.database_configured is True
    assert config.source == "DATABASE_URL"


# --- which file ---------------------------------------------------------------


def test_config_yaml_in_cwd_is_found(tmp_path: Path) -> None:
    path = write_config(tmp_path, "database:\n  host: from-cwd\n")
    config = load_config(env={}, cwd=tmp_path)
    assert config.database.host == "from-cwd"
    assert config.path == path.resolve()
    assert config.database_configured is True
    assert config.source == f"config.yaml ({path.resolve()})"


def test_cex_config_wins_over_cwd_file(tmp_path: Path) -> None:
    write_config(tmp_path, "database:\n  host: from-cwd\n")
    other = write_config(tmp_path, "database:\n  host: from-env\n", "other.yaml")
    config = load_config(env={"CEX_CONFIG": str(other)}, cwd=tmp_path)
    assert config.database.host == "from-env"
    assert config.path == other.resolve()


def test_explicit_path_wins_over_cex_config(tmp_path: Path) -> None:
    chosen = write_config(tmp_path, "database:\n  host: explicit\n", "chosen.yaml")
    other = write_config(tmp_path, "database:\n  host: from-env\n", "other.yaml")
    config = load_config("chosen.yaml", env={"CEX_CONFIG": str(other)}, cwd=tmp_path)
    assert config.database.host == "explicit"
    assert config.path == chosen.resolve()


def test_missing_explicit_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file prod\.yaml \(from --config\) does not"):
        load_config("prod.yaml", env={}, cwd=tmp_path)


def test_missing_cex_config_file_is_an_error_naming_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"/nowhere/c\.yaml \(from CEX_CONFIG\) does not exist"):
        load_config(env={"CEX_CONFIG": "/nowhere/c.yaml"}, cwd=tmp_path)


def test_directory_given_as_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a file"):
        load_config(tmp_path, env={}, cwd=tmp_path)


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    write_config(tmp_path, "# nothing yet\n")
    config = load_config(env={}, cwd=tmp_path)
    assert config.database == DatabaseConfig()
    assert config.database_configured is True


# --- layering -----------------------------------------------------------------


def test_pg_variables_set_the_connection(tmp_path: Path) -> None:
    env = {
        "PGHOST": "pg.internal",
        "PGPORT": "6432",
        "PGDATABASE": "markets",
        "PGUSER": "collector",
        "PGPASSWORD": SECRET,
        "PGSSLMODE": "require",
        "PGCONNECT_TIMEOUT": "3",
        "PGAPPNAME": "engine-1",
    }
    db = load_config(env=env, cwd=tmp_path).database
    assert (db.host, db.port, db.database, db.user) == ("pg.internal", 6432, "markets", "collector")
    assert (db.password, db.sslmode, db.connect_timeout) == (SECRET, "require", 3.0)
    assert db.application_name == "engine-1"


def test_database_url_overrides_only_what_it_sets(tmp_path: Path) -> None:
    env = {"PGHOST": "pg-env", "PGUSER": "env-user", "PGPORT": "6000"}
    env["DATABASE_URL"] = "postgresql://url-user@url-host/urldb"
    db = load_config(env=env, cwd=tmp_path).database
    assert (db.host, db.user, db.database) == ("url-host", "url-user", "urldb")
    assert db.port == 6000  # the URL named no port: PGPORT still applies


def test_file_overrides_database_url_and_pg_variables(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        """
        database:
          host: file-host
          pool_max_size: 20
        """,
    )
    env = {"PGHOST": "pg-env", "PGUSER": "env-user", "DATABASE_URL": "postgres://u@url-host:7/d"}
    config = load_config(env=env, cwd=tmp_path)
    db = config.database
    assert (db.host, db.port, db.user, db.database) == ("file-host", 7, "u", "d")
    assert db.pool_max_size == 20
    assert config.source == (
        f"config.yaml ({(tmp_path / 'config.yaml').resolve()}) + DATABASE_URL + PG* environment"
    )


def test_file_url_is_layered_under_the_files_single_keys(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        """
        database:
          url: postgresql://app@url-host:5433/appdb?sslmode=require
          port: 5434
        """,
    )
    db = load_config(env={"PGHOST": "env-host"}, cwd=tmp_path).database
    assert (db.host, db.port, db.user, db.database, db.sslmode) == (
        "url-host",
        5434,
        "app",
        "appdb",
        "require",
    )


def test_empty_file_value_lets_the_environment_apply(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        """
        database:
          host: ${DB_HOST:-}
          password:
        """,
    )
    db = load_config(env={"PGHOST": "env-host", "PGPASSWORD": SECRET}, cwd=tmp_path).database
    assert db.host == "env-host"
    assert db.password == SECRET


def test_name_is_an_alias_for_database(tmp_path: Path) -> None:
    write_config(tmp_path, "database:\n  name: analytics\n")
    assert load_config(env={}, cwd=tmp_path).database.database == "analytics"


def test_every_section_is_read(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        """
        features:
          trade_collection: false
          order_books: true
        migrations:
          mode: wait
          lock_wait_timeout: 12
          wait_timeout: 1.5
          boot_wait_timeout: 0
          progress_interval: 2
          app_role: app_rw
          readonly_role: app_ro
          backfill_batch_size: 1000
          backfill_sleep_ms: 25
          run_background: no
        collectors:
          batch_size: 100
          flush_interval: 0.1
          max_retries: 0
        """,
    )
    # order_books is not a DEFAULT_FEATURES name: a migration set must declare it.
    config = load_config(env={}, cwd=tmp_path, known_features=["trade_collection", "order_books"])
    assert config.feature_enabled("trade_collection") is False
    assert config.feature_enabled("order_books") is True
    assert config.migrations == MigrationSettings(
        mode="wait",
        lock_wait_timeout=12.0,
        wait_timeout=1.5,
        boot_wait_timeout=0.0,
        progress_interval=2.0,
        app_role="app_rw",
        readonly_role="app_ro",
        backfill_batch_size=1000,
        backfill_sleep_ms=25,
        run_background=False,
    )
    assert config.collectors == CollectorSettings(batch_size=100, flush_interval=0.1, max_retries=0)


def test_features_cannot_be_changed_after_loading(tmp_path: Path) -> None:
    config = load_config(env={}, cwd=tmp_path)
    with pytest.raises(TypeError):
        config.features["trade_collection"] = False  # type: ignore[index]


def test_example_config_loads(tmp_path: Path) -> None:
    example = REPO / "config.example.yaml"
    config = load_config(example, env={"CEX_TRADE_COLLECTION": "off"}, cwd=tmp_path)
    assert isinstance(config, AppConfig)
    assert config.feature_enabled("trade_collection") is False
    assert config.database.password is None


# --- substitution -------------------------------------------------------------


def test_variables_and_defaults_are_substituted(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        """
        database:
          host: ${DB_HOST}
          port: ${DB_PORT:-6543}
          user: ${DB_USER:-fallback}
          application_name: ${APP}-${REGION:-eu}
        features:
          trade_collection: ${TRADES:-true}
        """,
    )
    env = {"DB_HOST": "h1", "DB_USER": "", "APP": "engine"}
    config = load_config(env=env, cwd=tmp_path)
    assert config.database.host == "h1"
    assert config.database.port == 6543  # substituted text becomes the key's type
    assert config.database.user == "fallback"  # :- also covers a set but empty variable
    assert config.database.application_name == "engine-eu"
    assert config.feature_enabled("trade_collection") is True


def test_boolean_from_a_variable(tmp_path: Path) -> None:
    write_config(tmp_path, "features:\n  trade_collection: ${TRADES}\n")
    for text, expected in [("false", False), ("OFF", False), ("0", False), ("yes", True)]:
        config = load_config(env={"TRADES": text}, cwd=tmp_path)
        assert config.feature_enabled("trade_collection") is expected


def test_double_dollar_escapes_a_literal(tmp_path: Path) -> None:
    write_config(tmp_path, "database:\n  password: 'a$${NOT_A_VAR}b$c'\n")
    config = load_config(env={}, cwd=tmp_path)
    assert config.database.password == "a${NOT_A_VAR}b$c"


def test_values_from_the_environment_are_not_substituted_again(tmp_path: Path) -> None:
    write_config(tmp_path, "database:\n  password: ${DB_PASSWORD}\n")
    config = load_config(env={"DB_PASSWORD": "x${HOME}y"}, cwd=tmp_path)
    assert config.database.password == "x${HOME}y"


def test_unset_variable_names_variable_file_and_key(tmp_path: Path) -> None:
    message = config_error(tmp_path, "database:\n  password: ${DB_PASSWORD}\n")
    assert message == (
        "config.yaml: database.password: environment variable DB_PASSWORD is not set "
        "(use ${DB_PASSWORD:-default} to give a default)"
    )


def test_unset_variable_in_explicit_file_names_that_file(tmp_path: Path) -> None:
    write_config(tmp_path, "migrations:\n  app_role: ${APP_ROLE}\n", "prod.yaml")
    with pytest.raises(ConfigError) as caught:
        load_config("prod.yaml", env={}, cwd=tmp_path)
    assert str(caught.value).startswith("prod.yaml: migrations.app_role: environment variable")


def test_malformed_substitution_is_refused(tmp_path: Path) -> None:
    message = config_error(tmp_path, "database:\n  host: ${DB HOST}\n")
    assert message.startswith("config.yaml: database.host: malformed substitution '${DB HOST}'")


def test_unclosed_substitution_is_refused(tmp_path: Path) -> None:
    message = config_error(tmp_path, "database:\n  host: ${DB_HOST\n")
    assert message.startswith("config.yaml: database.host: unclosed substitution")
    assert "$${" in message


# --- errors name the file and key ---------------------------------------------


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    message = config_error(tmp_path, "database:\n  host: a\n   port: 5\n")
    assert message.startswith("config.yaml: line 3, column ")
    assert "invalid YAML" in message


def test_unclosed_quote_names_where_it_started(tmp_path: Path) -> None:
    message = config_error(tmp_path, 'database:\n  host: "a\n')
    assert "invalid YAML" in message
    assert "starts at line 2" in message


def test_duplicate_key_is_refused(tmp_path: Path) -> None:
    message = config_error(tmp_path, "database:\n  host: a\n  host: b\n")
    assert message.startswith("config.yaml: line 3")
    assert "'host' twice" in message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    message = config_error(tmp_path, "- database\n")
    assert message.startswith("config.yaml: the top level must be a mapping")


def test_unknown_section_suggests_the_close_one(tmp_path: Path) -> None:
    message = config_error(tmp_path, "databse:\n  host: a\n")
    assert message == "config.yaml: databse: unknown section; did you mean 'database'?"


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    message = config_error(tmp_path, "migrations:\n  lock_wait_timout: 5\n")
    assert message == (
        "config.yaml: migrations.lock_wait_timout: unknown key; did you mean 'lock_wait_timeout'?"
    )


def test_unknown_key_without_close_match_lists_the_known_ones(tmp_path: Path) -> None:
    message = config_error(tmp_path, "collectors:\n  zzz: 5\n")
    assert message.startswith("config.yaml: collectors.zzz: unknown key; known keys: batch_size")


def test_section_must_be_a_mapping(tmp_path: Path) -> None:
    message = config_error(tmp_path, "database: localhost\n")
    assert message == "config.yaml: database: expected a mapping of keys, got a string"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("database:\n  port: abc\n", "config.yaml: database.port: expected an integer"),
        ("database:\n  port: 70000\n", "config.yaml: database.port: must be between 1 and 65535"),
        ("database:\n  port: true\n", "config.yaml: database.port: expected an integer"),
        ("database:\n  sslmode: sometimes\n", "config.yaml: database.sslmode: must be one of"),
        ("database:\n  user: 42\n", "config.yaml: database.user: expected a string"),
        ("database:\n  host: '  '\n", "config.yaml: database.host: must not be empty"),
        ("database:\n  connect_timeout: 0\n", "config.yaml: database.connect_timeout: must be"),
        ("database:\n  lock_timeout_ms: -1\n", "config.yaml: database.lock_timeout_ms: must be"),
        ("features:\n  trade_collection: maybe\n", "config.yaml: features.trade_collection: exp"),
        ("features:\n  trade_collection: 1\n", "config.yaml: features.trade_collection: exp"),
        ("features:\n  trade-collection: true\n", "config.yaml: features.trade-collection: a "),
        ("migrations:\n  mode: sometimes\n", "config.yaml: migrations.mode: must be one of apply"),
        ("migrations:\n  wait_timeout: -5\n", "config.yaml: migrations.wait_timeout: must be 0"),
        ("migrations:\n  lock_wait_timeout: soon\n", "config.yaml: migrations.lock_wait_timeout"),
        ("migrations:\n  progress_interval: 0\n", "config.yaml: migrations.progress_interval"),
        ("migrations:\n  backfill_batch_size: 0\n", "config.yaml: migrations.backfill_batch_size"),
        ("migrations:\n  run_background: sure\n", "config.yaml: migrations.run_background: exp"),
        ("collectors:\n  flush_interval: -0.1\n", "config.yaml: collectors.flush_interval: must"),
        ("collectors:\n  batch_size: 1.5\n", "config.yaml: collectors.batch_size: expected an int"),
        ("database:\n  url: mysql://x/y\n", "config.yaml: database.url: expected a URL like"),
    ],
)
def test_wrong_values_name_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    assert config_error(tmp_path, text).startswith(expected)


def test_name_and_database_together_are_refused(tmp_path: Path) -> None:
    message = config_error(tmp_path, "database:\n  name: a\n  database: b\n")
    assert message.startswith("config.yaml: database.name: give the database name once")


def test_pool_min_above_max_is_refused(tmp_path: Path) -> None:
    message = config_error(tmp_path, "database:\n  pool_min_size: 5\n  pool_max_size: 2\n")
    assert message.startswith("config.yaml: database: pool_min_size (5) is larger")


def test_invalid_pgport_names_pgport(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^environment variable PGPORT: expected an integer"):
        load_config(env={"PGPORT": "fivefourthreetwo"}, cwd=tmp_path)


def test_invalid_pgsslmode_names_pgsslmode(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^environment variable PGSSLMODE: must be one of"):
        load_config(env={"PGSSLMODE": "always"}, cwd=tmp_path)


@pytest.mark.parametrize(
    "url",
    [
        "mysql://root@h/db",
        f"postgresql://u:{SECRET}@h:notaport/db",
        f"postgresql://u:{SECRET}@h:99999/db",
        f"postgresql://u:{SECRET}@h1,h2/db",
        f"postgresql://u:{SECRET}@h/db?sslrootcert=/x",
        f"postgresql://u:{SECRET}@h/db?sslmode=sometimes",
        f"u:{SECRET}@h/db",
    ],
)
def test_invalid_database_url_names_database_url_and_hides_the_password(
    tmp_path: Path, url: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env={"DATABASE_URL": url}, cwd=tmp_path)
    message = str(caught.value)
    assert message.startswith("environment variable DATABASE_URL: ")
    assert SECRET not in message


# --- the password stays secret ------------------------------------------------


def test_password_is_never_displayed(tmp_path: Path) -> None:
    write_config(tmp_path, "database:\n  password: ${DB_PASSWORD}\n")
    config = load_config(env={"DB_PASSWORD": SECRET}, cwd=tmp_path)
    assert config.database.password == SECRET
    assert SECRET not in config.database.display
    assert SECRET not in repr(config)
    assert SECRET not in config.source


@pytest.mark.parametrize(
    "text",
    [
        f"database:\n  password: [{SECRET}]\n",
        "database:\n  password: 12345678\n",
        f"database:\n  password: '{SECRET}${{oops'\n",
        f"database:\n  password: '{SECRET}${{bad name}}'\n",
        f"database:\n  url: 'postgresql://u:{SECRET}@h:port/db'\n",
        f"database:\n  url: 'postgresql://u:{SECRET}@h/db?bogus=1'\n",
    ],
)
def test_password_is_not_in_error_messages(tmp_path: Path, text: str) -> None:
    message = config_error(tmp_path, text)
    assert SECRET not in message
    assert "12345678" not in message
    assert message.startswith("config.yaml: database.")


def test_numeric_password_must_be_quoted(tmp_path: Path) -> None:
    message = config_error(tmp_path, "database:\n  password: 12345678\n")
    assert message == (
        "config.yaml: database.password: expected a string, got an integer; put it in quotes"
    )


# --- database_from_url ----------------------------------------------------------


def test_database_from_url_reads_every_part() -> None:
    db = database_from_url(
        "postgres://bob:p%40ss%3Aword@db.example:6543/my%20db?sslmode=verify-full"
    )
    assert (db.user, db.password, db.host, db.port) == ("bob", "p@ss:word", "db.example", 6543)
    assert (db.database, db.sslmode) == ("my db", "verify-full")


def test_database_from_url_fills_gaps_with_defaults() -> None:
    assert database_from_url("postgresql://") == DatabaseConfig()
    assert database_from_url("postgresql://h/") == DatabaseConfig(host="h")


def test_database_from_url_accepts_a_unix_socket_directory() -> None:
    db = database_from_url("postgresql:///app?host=%2Fvar%2Frun%2Fpostgresql&port=5433&user=me")
    assert (db.host, db.port, db.database, db.user) == ("/var/run/postgresql", 5433, "app", "me")


def test_database_from_url_query_parameters() -> None:
    db = database_from_url(
        "postgresql://h/d?connect_timeout=4&application_name=probe&dbname=other&password=pw"
    )
    assert (db.connect_timeout, db.application_name, db.database) == (4.0, "probe", "other")
    assert db.password == "pw"


def test_database_from_url_errors_name_the_given_source() -> None:
    with pytest.raises(ConfigError, match=r"^CEX_TEST_DSN: the port must be a number"):
        database_from_url("postgresql://h:x/d", source="CEX_TEST_DSN")


# --- against the real server ------------------------------------------------------


async def test_config_from_the_environment_reaches_the_database(
    db: DatabaseConfig, tmp_path: Path
) -> None:
    write_config(tmp_path, "database:\n  application_name: ${APP:-config-test}\n")
    config = load_config(env=pg_env(db), cwd=tmp_path)
    conn = await asyncpg.connect(**config.database.connect_kwargs())
    try:
        row = await conn.fetchrow(
            "SELECT current_database() AS db, current_setting('application_name') AS app"
        )
    finally:
        await conn.close()
    assert row is not None
    assert (row["db"], row["app"]) == (db.database, "config-test")


@pytest.mark.parametrize("url", [
    "postgresql://u:p/ss@host:5432/db",
    "postgresql://u:p#ss@host:5432/db",
    "postgresql://u:p?ss@host:5432/db",
])  # fmt: skip
def test_raw_special_character_in_url_password_hints_percent_encoding(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        database_from_url(url)
    assert "percent-encode" in caught.value.message and "%2F" in caught.value.message
    secret = url.split("u:", 1)[1].split("@", 1)[0]
    assert secret not in caught.value.message  # the password is never echoed


def test_percent_encoded_password_is_read() -> None:
    assert database_from_url("postgresql://u:p%2Fss%40x@host/db").password == "p/ss@x"


@pytest.mark.parametrize("role", ["CexApp", "cex-app", "cex app", "1cex", '"cex"'])
def test_role_names_that_would_create_a_new_role_are_refused(tmp_path: Path, role: str) -> None:
    write_config(tmp_path, f"migrations:\n  app_role: '{role}'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "config.yaml", env={})
    assert "migrations.app_role" in caught.value.message
    assert "not a plain role name" in caught.value.message
