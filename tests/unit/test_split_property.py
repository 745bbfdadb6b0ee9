"""The runner's statement splitter held to PostgreSQL's own (libpg_query, through pglast).

The runner splits a file into statements by hand (`migrator.split`), the way
psql does. A generated corpus of files (standard and E'' strings with escapes,
quoted identifiers, dollar quotes with tags, nested block comments, line
comments, DO blocks, BEGIN ATOMIC bodies, positional parameters) must split
into the statements PostgreSQL's parser finds; psql meta-commands, which the
runner does not run, split as PostgreSQL's scanner splits them (the server
then refuses them, as the parser does here). The shipped files split
identically too.
"""

from __future__ import annotations

import os

import pytest

pglast = pytest.importorskip("pglast", reason="the lint extra (pglast) is not installed")
hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from cex_arbitrage.db.migrator.parse import parse_migration  # noqa: E402
from cex_arbitrage.db.migrator.split import split_statements, strip_leading_comments  # noqa: E402
from cex_arbitrage.errors import MigrationFileError  # noqa: E402
from tests.support.paths import MIGRATIONS  # noqa: E402

# Characters that end, open or escape something somewhere: the splitter's whole job.
_TRICKY = st.lists(
    st.sampled_from([*"ab ;'\"$-/*\\\nE", "END", "BEGIN", "CASE", "$$", "$q$", "*/", "/*", "--"]),
    max_size=10,
).map("".join)


def standard_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"  # a backslash is an ordinary character here


def escape_string(text: str) -> str:
    return "E'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quoted_identifier(text: str) -> str:
    return '"' + (text or "x").replace('"', '""') + '"'


def dollar_quoted(text: str, tag: str) -> str | None:
    close = f"${tag}$"
    return None if (text + close).find(close) != len(text) else f"{close}{text}{close}"


def block_comment(text: str, nested: bool) -> str:
    body = text.replace("*/", "* /").replace("/*", "/ *")
    return f"/* {body}{' /* inner; */ ' if nested else ''} */"


def line_comment(text: str) -> str:
    return "-- " + text.replace("\n", " ") + "\n"


@st.composite
def literal(draw: st.DrawFn) -> str:
    text = draw(_TRICKY)
    kind = draw(st.sampled_from(["standard", "escape", "dollar"]))
    if kind == "standard":
        return standard_string(text)
    if kind == "escape":
        return escape_string(text)
    quoted = dollar_quoted(text, draw(st.sampled_from(["", "q", "body_1", "x"])))
    return quoted if quoted is not None else standard_string(text)


@st.composite
def statement(draw: st.DrawFn) -> str:
    value = draw(literal())
    gap = draw(
        st.sampled_from([" ", "\n", " /* c; */ ", "\n-- c; 'x\n"])
        | _TRICKY.map(line_comment)
        | st.builds(block_comment, _TRICKY, st.booleans())
    )
    forms = [
        f"SELECT{gap}{value}",
        f"SELECT {value} AS {quoted_identifier(draw(_TRICKY))}",
        f"SELECT 1{gap}+ 2",
        f"SELECT $1::int,{gap}col$1 FROM t$x",
        f"SELECT 1 AS a$$b,{gap}e{escape_string(draw(_TRICKY))[1:]}",
        f"CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $f$ SELECT {value}; SELECT 2 $f$",
        f"DO $do$\nBEGIN\n    PERFORM {value};{gap}\nEND\n$do$",
        "CREATE FUNCTION g() RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n    SELECT 1;"
        f"{gap}SELECT CASE WHEN {value} IS NULL THEN 1 ELSE 2 END;\nEND",
        f"CREATE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES ({value}); END",
        f"CREATE FUNCTION h() RETURNS int LANGUAGE sql BEGIN ATOMIC{gap}SELECT 1 AS "
        f"{quoted_identifier(draw(_TRICKY))};{gap}END",
    ]
    return draw(st.sampled_from(forms))


@st.composite
def sql_file(draw: st.DrawFn) -> str:
    parts = []
    for stmt in draw(st.lists(statement(), min_size=1, max_size=5)):
        lead = draw(st.sampled_from(["", "\n", "-- lead;\n", "/* lead; /* n */ */\n"]))
        end = draw(st.sampled_from([";", ";\n", " ;\n\n", "; -- after;\n", ";/* c */\n"]))
        parts.append(lead + stmt + end)
    tail = draw(st.sampled_from(["", "\n", "-- tail\n", "-- tail;", "SELECT 'last'", "/* t */"]))
    return "".join(parts) + tail


def ours(sql: str) -> list[str]:
    """The runner's statements as PostgreSQL reports them: no leading comment, no `;`."""
    return [strip_leading_comments(s[:-1]).strip() for s in split_statements(sql)]


def theirs(sql: str) -> list[str]:
    return [s.strip() for s in pglast.split(sql)]


# A few seconds by default; CEX_SPLIT_EXAMPLES=5000 for a long hunt.
_SETTINGS = settings(
    max_examples=int(os.environ.get("CEX_SPLIT_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@_SETTINGS
@given(sql_file())
def test_the_splitter_finds_the_statements_postgresql_finds(sql: str) -> None:
    assert ours(sql) == theirs(sql)


@_SETTINGS
@given(sql_file(), st.sampled_from(["\\set ON_ERROR_STOP 1", "\\timing on", "\\x"]))
def test_a_psql_meta_command_splits_as_the_scanner_splits_it_and_the_runner_refuses_it(
    sql: str, meta: str
) -> None:
    text = meta + "\n" + sql
    scanned = [s.strip() for s in pglast.split(text, with_parser=False)]
    assert ours(text)[0] == scanned[0]
    with pytest.raises(pglast.parser.ParseError):
        pglast.parse_sql(text)  # the server would refuse it mid-run: the runner refuses it first
    with pytest.raises(MigrationFileError) as refused:
        parse_migration("005_meta.sql", f"-- migrate:description meta\n{text}")
    assert refused.value.line == 2 and "psql meta-command" in refused.value.message


@pytest.mark.parametrize("path", sorted(MIGRATIONS.glob("*.sql")), ids=lambda p: p.name)
def test_the_shipped_files_split_as_postgresql_splits_them(path: object) -> None:
    from pathlib import Path

    assert isinstance(path, Path)
    sql = path.read_text(encoding="utf-8")
    assert ours(sql) == theirs(sql)


def test_found_by_the_corpus_a_nested_leading_comment_hides_nothing() -> None:
    from cex_arbitrage.errors import TransactionControlError

    assert strip_leading_comments("/* a /* b */ c */ COMMIT") == "COMMIT"
    with pytest.raises(TransactionControlError):
        parse_migration("005_x.sql", "/* a /* b */ c */ COMMIT;\n")


def test_found_by_the_corpus_an_escaped_quote_in_an_atomic_body_is_not_code() -> None:
    sql = (
        "CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC "
        "SELECT CASE WHEN E'\\'END' IS NULL THEN 1 ELSE 2 END;\nEND;\nSELECT 2;"
    )
    assert len(split_statements(sql)) == 2 == len(pglast.split(sql))
