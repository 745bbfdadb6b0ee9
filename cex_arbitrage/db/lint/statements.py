"""A migration or routine file as parsed statements, each with its line and its step.

The runner's own parser (`migrator.parse`) says which step is transactional
and which runs in the background; PostgreSQL's parser (pglast) reads the SQL.
The file is parsed whole, so positions are exact; a statement belongs to the
step whose `-- migrate:step` line comes before it. The psql-only tail is not
run by the runner and is not linted. Statements inside DO blocks and routine
bodies follow their parent (`bodies`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pglast

from cex_arbitrage.db.lint.bodies import nested_statements
from cex_arbitrage.db.lint.model import Place, SqlSyntaxError, Stmt
from cex_arbitrage.db.migrator.model import Migration, Routine
from cex_arbitrage.db.migrator.split import strip_leading_comments

_PSQL_ONLY_RE = re.compile(r"^--\s*migrate:psql-only\s*$", re.MULTILINE)


def runnable_text(text: str) -> str:
    """The file without its psql-only tail (lines kept as blanks would be; the tail is cut)."""
    match = _PSQL_ONLY_RE.search(text)
    return text if match is None else text[: match.start()]


def _places(parsed: Migration | Routine) -> list[tuple[int, Place]]:
    """(first line, place) of each step, in file order."""
    if isinstance(parsed, Routine):
        return [(1, Place(parsed.filename, "routine", transactional=True, background=False))]
    return sorted(
        (
            step.line,
            Place(parsed.filename, step.name, step.transactional, step.background),
        )
        for step in parsed.steps
    )


def file_statements(parsed: Migration | Routine, text: str) -> Iterator[Stmt]:
    """Every statement the runner sends for this file, in order, nested ones after their parent."""
    body = runnable_text(text)
    try:
        raw = pglast.parse_sql(body)
    except pglast.parser.ParseError as exc:
        at = int(exc.args[1]) if len(exc.args) > 1 else 0  # a character offset
        raise SqlSyntaxError(str(exc.args[0]), body.count("\n", 0, at) + 1) from None
    places = _places(parsed)
    for item in raw:
        # pglast gives character offsets (libpg_query's byte offsets, converted)
        location = int(item.stmt_location or 0)
        end = len(body) if not item.stmt_len else location + int(item.stmt_len)
        fragment = body[location:end]
        stripped = strip_leading_comments(fragment)
        start = location + len(fragment) - len(stripped)
        line = body.count("\n", 0, max(start, 0)) + 1
        place = places[0][1]
        for first_line, candidate in places:
            if first_line <= line:
                place = candidate
        stmt = Stmt(item.stmt, stripped.strip(), line, place)
        yield stmt
        yield from nested_statements(stmt)
