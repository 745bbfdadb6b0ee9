"""The migration file parser: statements, header directives, steps, checksums, file names.

No database needed: these are the rules docs/migration-files.md states, checked on
the parser itself. A malformed file must be refused with the file and line named
(exit code 4), before anything runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cex_arbitrage.db.migrator.model import checksum_of
from cex_arbitrage.db.migrator.parse import parse_migration
from cex_arbitrage.db.migrator.source import DirectorySource, load_migrations
from cex_arbitrage.db.migrator.split import concurrent_index_name, split_statements
from cex_arbitrage.errors import ExitCode, TransactionControlError, ValidationError
from tests.support.paths import REPO

REPO = REPO
INFRA = REPO / "cex_arbitrage" / "db" / "migrations" / "000_create_migration_infrastructure.sql"


def refused(filename: str, text: str) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        parse_migration(filename, text)
    assert info.value.exit_code == ExitCode.REFUSED == 4
    return info.value


# ---- statement splitting -----------------------------------------------------------


def test_semicolons_inside_dollar_quoted_bodies_do_not_split() -> None:
    sql = (
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$\n"
        "BEGIN PERFORM 1; RETURN 2; END;\n"
        "$body$;\n"
        "SELECT $$a;b$$, $t$ $$ ; $t$;\n"
        "SELECT 3"
    )
    assert split_statements(sql) == [
        "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$\n"
        "BEGIN PERFORM 1; RETURN 2; END;\n$body$;",
        "SELECT $$a;b$$, $t$ $$ ; $t$;",
        "SELECT 3;",
    ]


def test_positional_parameters_and_dollar_in_identifiers_are_not_dollar_quotes() -> None:
    sql = "PREPARE p AS SELECT $1; SELECT a$b$ FROM t; SELECT 1"
    assert split_statements(sql) == [
        "PREPARE p AS SELECT $1;",
        "SELECT a$b$ FROM t;",
        "SELECT 1;",
    ]


def test_semicolons_in_strings_and_quoted_identifiers_do_not_split() -> None:
    sql = """SELECT 'a;b', 'it''s; fine' AS "col;umn", "we""ird;" FROM t; SELECT 2"""
    assert split_statements(sql) == [
        """SELECT 'a;b', 'it''s; fine' AS "col;umn", "we""ird;" FROM t;""",
        "SELECT 2;",
    ]


def test_escape_strings_may_contain_backslash_quoted_quotes() -> None:
    sql = r"SELECT E'it\'s; still one', e'\\'; SELECT 'plain\'; SELECT 3"
    # E'' knows backslash escapes; a standard string ends at the first lone quote.
    assert split_statements(sql) == [
        r"SELECT E'it\'s; still one', e'\\';",
        r"SELECT 'plain\';",
        "SELECT 3;",
    ]


def test_identifier_ending_in_e_before_a_string_is_not_an_escape_string() -> None:
    # `some'...'` is not E'' syntax: the backslash is an ordinary character.
    sql = r"SELECT type'x\'; SELECT 2"
    assert split_statements(sql) == [r"SELECT type'x\';", "SELECT 2;"]


def test_nested_block_comments_and_line_comments_hide_semicolons() -> None:
    sql = (
        "/* outer; /* inner; */ still comment; */ SELECT 1;\n"
        "-- a comment; with a semicolon\n"
        "SELECT 2; -- trailing; comment\n"
    )
    assert split_statements(sql) == [
        "/* outer; /* inner; */ still comment; */ SELECT 1;",
        "-- a comment; with a semicolon\nSELECT 2;",
    ]


def test_comment_only_fragments_are_not_statements() -> None:
    assert split_statements("-- nothing here;\n/* nor; here */\n ;\n") == []


def test_last_statement_without_semicolon_is_kept() -> None:
    assert split_statements("SELECT 1;\nSELECT 2\n") == ["SELECT 1;", "SELECT 2;"]


# ---- file names --------------------------------------------------------------------


@pytest.mark.parametrize(
    "filename",
    [
        "01_too_short.sql",
        "001-dash.sql",
        "001_Upper.sql",
        "001_.sql",
        "001.sql",
        "abc_name.sql",
        "001_name.SQL",
        "001_name.sql.bak",
    ],
)
def test_bad_file_names_are_refused_with_the_expected_pattern(filename: str) -> None:
    error = refused(filename, "SELECT 1;")
    assert filename in error.message
    assert "NNN_snake_case_name.sql" in error.message


def test_version_and_name_come_from_the_file_name() -> None:
    m = parse_migration("0042_add_things.sql", "SELECT 1;")
    assert (m.version, m.name, m.label) == ("0042", "add_things", "0042_add_things")
    assert m.description == "add things"
    assert m.feature is None
    assert m.depends == ("000",)


def test_000_depends_on_nothing_by_default() -> None:
    m = parse_migration(INFRA.name, INFRA.read_text())
    assert m.depends == ()
    assert [s.name for s in m.steps] == ["infrastructure"]


# ---- header directives -------------------------------------------------------------


def test_header_directives_are_read_in_any_order() -> None:
    m = parse_migration(
        "005_feature_thing.sql",
        "-- Leading prose is allowed.\n"
        "-- migrate:description Adds the thing\n"
        "-- migrate:depends 000, 002 003\n"
        "-- migrate:feature trade_collection\n"
        "\n"
        "CREATE TABLE thing (id int);\n",
    )
    assert m.feature == "trade_collection"
    assert m.depends == ("000", "002", "003")
    assert m.description == "Adds the thing"


def test_unknown_directive_is_refused_with_file_and_line() -> None:
    error = refused("003_x.sql", "-- header\n-- migrate:feautre trade_collection\nSELECT 1;\n")
    assert "003_x.sql:2" in error.message
    assert "migrate:feautre" in error.message
    assert "known:" in error.message


def test_repeated_header_key_is_refused_with_file_and_line() -> None:
    error = refused(
        "003_x.sql",
        "-- migrate:feature a\n-- migrate:description d\n-- migrate:feature b\nSELECT 1;",
    )
    assert "003_x.sql:3" in error.message
    assert "given twice" in error.message


def test_header_directive_without_value_is_refused() -> None:
    error = refused("003_x.sql", "-- migrate:depends\nSELECT 1;")
    assert "003_x.sql:1" in error.message
    assert "needs a value" in error.message


def test_header_directive_after_the_first_statement_is_refused() -> None:
    error = refused("003_x.sql", "SELECT 1;\n-- migrate:feature trade_collection\nSELECT 2;")
    assert "003_x.sql:2" in error.message
    assert "header" in error.message


def test_header_directive_inside_a_step_is_refused() -> None:
    error = refused("003_x.sql", "-- migrate:step a\n-- migrate:depends 000\nSELECT 1;")
    assert "003_x.sql:2" in error.message


def test_malformed_feature_name_is_refused() -> None:
    error = refused("003_x.sql", "-- migrate:feature Trade-Collection\nSELECT 1;")
    assert "003_x.sql" in error.message
    assert "Trade-Collection" in error.message


def test_dependency_that_is_not_a_version_is_refused() -> None:
    error = refused("003_x.sql", "-- migrate:depends 000, abc\nSELECT 1;")
    assert "003_x.sql" in error.message
    assert "'abc'" in error.message


@pytest.mark.parametrize("dep", ["003", "004", "0004"])
def test_dependency_on_itself_or_a_later_version_is_refused(dep: str) -> None:
    error = refused("003_x.sql", f"-- migrate:depends {dep}\nSELECT 1;")
    assert "003_x.sql" in error.message
    assert "not an earlier version" in error.message


@pytest.mark.parametrize(
    "line",
    [
        "-- migrate:Feature trade_collection",
        "-- migrate: feature trade_collection",
        "-- migrate:STEP build transaction:false",
        "  -- migrate:step build transaction:false",
        "-- migrate:featuretrade_collection",
    ],
)
def test_misspelt_directive_is_refused_not_taken_for_a_comment(line: str) -> None:
    # Silently ignoring it would, e.g., run a feature's migration as core.
    error = refused("003_x.sql", f"{line}\nSELECT 1;\n")
    assert "003_x.sql:1" in error.message


# ---- steps -------------------------------------------------------------------------


def test_steps_carry_their_flags_and_sql_before_the_first_step_is_main() -> None:
    m = parse_migration(
        "003_steps.sql",
        "-- migrate:description steps\n"
        "CREATE TABLE t (id int);\n"
        "-- migrate:step build transaction:false\n"
        "CREATE INDEX CONCURRENTLY t_id ON t (id);\n"
        "-- migrate:step backfill background\n"
        "UPDATE t SET id = id;\n"
        "-- migrate:step validate background transaction:false\n"
        "SELECT 1; SELECT 2;\n",
    )
    got = [(s.name, s.transactional, s.background, s.line) for s in m.steps]
    assert got == [
        ("main", True, False, 1),
        ("build", False, False, 3),
        ("backfill", True, True, 5),
        ("validate", False, True, 7),
    ]
    assert [s.name for s in m.foreground_steps] == ["main", "build"]
    assert [s.name for s in m.background_steps] == ["backfill", "validate"]
    assert not m.single_transaction
    assert m.steps[3].statements == ["SELECT 1;", "SELECT 2;"]


def test_background_steps_run_after_all_foreground_steps() -> None:
    m = parse_migration(
        "003_order.sql",
        "-- migrate:step a background\nSELECT 1;\n-- migrate:step b\nSELECT 2;\n",
    )
    assert [s.name for s in m.execution_order] == ["b", "a"]
    assert m.single_transaction


def test_bad_step_flag_is_refused_with_file_and_line() -> None:
    error = refused("003_x.sql", "SELECT 1;\n-- migrate:step build transaction:off\nSELECT 2;")
    assert "003_x.sql:2" in error.message
    assert "transaction:off" in error.message
    assert "transaction:false" in error.message


def test_parallel_flag_is_read_and_needs_a_non_transactional_step() -> None:
    m = parse_migration(
        "003_p.sql",
        "SELECT 1;\n-- migrate:step fill transaction:false background parallel\nCALL f();\n",
    )
    assert [(s.name, s.parallel) for s in m.steps] == [("main", False), ("fill", True)]
    error = refused("003_x.sql", "SELECT 1;\n-- migrate:step fill background parallel\nSELECT 2;")
    assert "003_x.sql:2" in error.message
    assert "parallel but transactional" in error.message


def test_repeated_step_flag_is_refused() -> None:
    error = refused("003_x.sql", "-- migrate:step a background background\nSELECT 1;")
    assert "003_x.sql:1" in error.message


def test_step_without_name_is_refused() -> None:
    error = refused("003_x.sql", "-- migrate:step transaction:false\nSELECT 1;")
    assert "003_x.sql:1" in error.message


def test_step_name_used_twice_is_refused() -> None:
    error = refused("003_x.sql", "-- migrate:step a\nSELECT 1;\n-- migrate:step a\nSELECT 2;")
    assert "003_x.sql:3" in error.message
    assert "'a'" in error.message


def test_explicit_step_called_main_after_implicit_main_is_refused() -> None:
    error = refused("003_x.sql", "SELECT 1;\n-- migrate:step main\nSELECT 2;")
    assert "003_x.sql:2" in error.message


def test_empty_step_is_refused() -> None:
    error = refused(
        "003_x.sql", "-- migrate:step a\n-- only a comment\n-- migrate:step b\nSELECT 1;"
    )
    assert "003_x.sql:1" in error.message
    assert "'a'" in error.message


def test_file_without_statements_is_refused() -> None:
    error = refused("003_x.sql", "-- migrate:description nothing\n-- just comments\n")
    assert "003_x.sql" in error.message
    assert "no SQL statement" in error.message


@pytest.mark.parametrize(
    ("statement", "word"),
    [
        ("BEGIN;", "BEGIN"),
        ("begin transaction isolation level serializable;", "BEGIN"),
        ("START  TRANSACTION;", "START TRANSACTION"),
        ("COMMIT;", "COMMIT"),
        ("commit and chain;", "COMMIT"),
        ("ROLLBACK;", "ROLLBACK"),
        ("ABORT;", "ABORT"),
        ("END;", "END"),
        ("end work;", "END"),
        ("END TRANSACTION AND CHAIN;", "END"),
        ("PREPARE TRANSACTION 'x';", "PREPARE TRANSACTION"),
    ],
)
def test_transaction_control_is_refused_with_file_and_line(statement: str, word: str) -> None:
    # An explicit COMMIT would commit half a migration: the runner owns transactions.
    text = (
        "-- migrate:description x\n"
        "CREATE TABLE a (id int);\n"
        "-- migrate:step build transaction:false\n"
        "CREATE INDEX CONCURRENTLY a_id ON a (id);\n"
        f"/* why */ {statement}\n"
    )
    error = refused("003_x.sql", text)
    assert error.message.startswith(f"003_x.sql:5: {word} is not allowed in a migration")
    assert "transaction:false" in error.message


def test_transaction_control_in_the_main_step_names_its_line() -> None:
    error = refused("003_x.sql", "BEGIN;\nCREATE TABLE a (id int);\n\n  COMMIT;\n")
    assert error.message.startswith("003_x.sql:1: BEGIN is not allowed")
    error = refused("003_x.sql", "-- header\nCREATE TABLE a (id int);\n\n  COMMIT;\n")
    assert error.message.startswith("003_x.sql:4: COMMIT is not allowed")


def test_savepoints_and_transaction_words_inside_bodies_are_allowed() -> None:
    m = parse_migration(
        "003_x.sql",
        "SAVEPOINT s;\n"
        "ROLLBACK TO SAVEPOINT s;\n"
        "RELEASE SAVEPOINT s;\n"
        "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN COMMIT; ROLLBACK; END $$;\n"
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;\n"
        "SELECT 'COMMIT;';\n"
        "-- COMMIT;\n",
    )
    assert len(m.steps) == 1


def test_end_after_a_begin_atomic_body_is_part_of_it_but_a_top_level_end_is_refused() -> None:
    body = (
        "CREATE FUNCTION f(x int) RETURNS int LANGUAGE sql\n"
        "BEGIN ATOMIC\n  SELECT CASE WHEN x > 0 THEN 1 ELSE 2 END;\n  SELECT 3;\nEND;\n"
    )
    m = parse_migration("003_x.sql", body + "SELECT 'END;';\n")
    assert [s.split()[0] for s in m.steps[0].statements] == ["CREATE", "SELECT"]
    assert m.steps[0].statements[0].endswith("END;")
    # The END PostgreSQL would read as COMMIT (the case that committed half a migration).
    error = refused("003_x.sql", "CREATE TABLE a (id int);\nEND;\nCREATE TABLE b (id int);\n")
    assert error.message.startswith("003_x.sql:2: END is not allowed")
    assert isinstance(error, TransactionControlError) and error.line == 2


def test_psql_only_tail_may_manage_its_own_transaction() -> None:
    m = parse_migration("003_x.sql", "SELECT 1;\n-- migrate:psql-only\nBEGIN;\nCOMMIT;\n")
    assert m.steps[0].statements == ["SELECT 1;"]


# ---- psql-only tail ----------------------------------------------------------------


def test_psql_only_tail_is_not_run_by_the_runner() -> None:
    m = parse_migration(
        "003_x.sql",
        "CREATE TABLE t (id int);\n"
        "-- migrate:psql-only\n"
        "SELECT migration_record_manual('003', 'x');\n",
    )
    assert len(m.steps) == 1
    assert "migration_record_manual" not in m.steps[0].sql
    assert m.steps[0].statements == ["CREATE TABLE t (id int);"]


def test_psql_only_tail_of_000_records_the_manual_run() -> None:
    m = parse_migration(INFRA.name, INFRA.read_text())
    assert "migration_record_manual('000'" in INFRA.read_text()
    assert all("SELECT migration_record_manual('000'" not in s.sql for s in m.steps)


def test_directive_after_psql_only_is_refused() -> None:
    error = refused("003_x.sql", "SELECT 1;\n-- migrate:psql-only\nSELECT 2;\n-- migrate:step b\n")
    assert "003_x.sql:4" in error.message
    assert "psql-only" in error.message


# ---- checksums ---------------------------------------------------------------------


def test_checksum_ignores_line_ending_style() -> None:
    lf = "-- migrate:description x\nSELECT 1;\nSELECT 2;\n"
    assert checksum_of(lf) == checksum_of(lf.replace("\n", "\r\n"))
    assert checksum_of(lf) == checksum_of(lf.replace("\n", "\r"))
    assert checksum_of(lf) != checksum_of(lf.replace("SELECT 2", "SELECT 3"))
    assert len(checksum_of(lf)) == 64


def test_crlf_checkout_of_a_file_has_the_same_checksum(tmp_path: Path) -> None:
    lf_dir, crlf_dir = tmp_path / "lf", tmp_path / "crlf"
    lf_dir.mkdir()
    crlf_dir.mkdir()
    text = INFRA.read_text()
    (lf_dir / INFRA.name).write_bytes(text.encode())
    (crlf_dir / INFRA.name).write_bytes(text.replace("\n", "\r\n").encode())
    [lf] = load_migrations(DirectorySource(lf_dir))
    [crlf] = load_migrations(DirectorySource(crlf_dir))
    assert lf.checksum == crlf.checksum
    assert [s.statements for s in lf.steps] == [s.statements for s in crlf.steps]


# ---- CREATE INDEX CONCURRENTLY -----------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "name"),
    [
        ("CREATE INDEX CONCURRENTLY trades_ts ON trades (ts);", "trades_ts"),
        ("create unique index concurrently Trades_TS on trades (ts);", "trades_ts"),
        ("CREATE INDEX CONCURRENTLY IF NOT EXISTS t_a ON t (a);", "t_a"),
        ('CREATE INDEX CONCURRENTLY "Odd ""Name""" ON t (a);', 'Odd "Name"'),
        ("-- build it\n/* quietly */\nCREATE INDEX CONCURRENTLY t_b ON t (b);", "t_b"),
        ("CREATE INDEX t_c ON t (c);", None),
        ("CREATE INDEX CONCURRENTLY ON t (c);", None),
        ("DROP INDEX CONCURRENTLY t_c;", None),
    ],
)
def test_concurrent_index_name_is_the_index_a_statement_builds(
    statement: str, name: str | None
) -> None:
    assert concurrent_index_name(statement) == name


# ---- a whole migration set ---------------------------------------------------------


def test_shipped_migrations_parse() -> None:
    from cex_arbitrage.db.migrator.source import PackageSource

    migrations = load_migrations(PackageSource("cex_arbitrage.db.migrations"))
    assert migrations[0].version == "000"
    versions = [m.version for m in migrations]
    assert versions == sorted(versions, key=int)


def test_session_directive_marks_the_next_statement_of_a_non_transactional_step() -> None:
    m = parse_migration(
        "001_s.sql",
        "-- migrate:step s transaction:false\nSELECT 1;\n-- migrate:session\n"
        "SET search_path TO x;\nSELECT 2;\n",
    )
    assert m.steps[0].session_statements == frozenset({1})


def test_session_directive_in_a_transactional_step_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"001_s.sql:2: migrate:session only belongs"):
        parse_migration("001_s.sql", "SELECT 1;\n-- migrate:session\nSET x.y = 1;\n")


def test_a_byte_order_mark_neither_hides_the_first_directive_nor_reaches_the_server() -> None:
    text = "\ufeff-- migrate:feature trade_collection\nCREATE TABLE t (id int);\n"
    m = parse_migration("001_t.sql", text)
    assert m.feature == "trade_collection"
    assert not m.steps[0].statements[0].startswith("\ufeff")
    assert m.checksum == checksum_of(text)  # of the file as it is


def test_the_catalog_cache_notices_an_upper_case_sql_file_added_later(tmp_path: Path) -> None:
    from cex_arbitrage.db.migrator.catalog import cached_catalog

    (tmp_path / "000_infra.sql").write_text("SELECT 1;\n")
    source = DirectorySource(tmp_path)
    assert [m.version for m in cached_catalog(source).migrations] == ["000"]
    (tmp_path / "001_more.SQL").write_text("SELECT 2;\n")
    with pytest.raises(ValidationError, match=r"001_more\.SQL"):
        cached_catalog(source)
