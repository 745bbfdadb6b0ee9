"""Split SQL text into statements the way psql does, and read what a statement builds.

Understands quoted strings (with E'' escapes), quoted identifiers, dollar
quoting, line and nested block comments.
"""

from __future__ import annotations

import re

_INDEX_CONCURRENTLY_RE = re.compile(
    r"^\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"(?!ON\b)"  # `CREATE INDEX CONCURRENTLY ON t (...)` has no name to look for
    r"(?P<name>\"(?:[^\"]|\"\")+\"|[A-Za-z_][A-Za-z0-9_$]*)",
    re.IGNORECASE,
)
_DOLLAR_TAG_RE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
# The characters that can start a comment, a quote, a dollar tag or end a statement:
# everything between two of them is skipped in one step (the split runs on every start).
_SPECIAL_RE = re.compile(r"[-/'\"$;]")


def concurrent_index_name(statement: str) -> str | None:
    """The index a `CREATE INDEX CONCURRENTLY` builds, so an INVALID leftover can be dropped."""
    match = _INDEX_CONCURRENTLY_RE.match(strip_leading_comments(statement))
    if not match:
        return None
    name = match["name"]
    if name.startswith('"'):
        return name[1:-1].replace('""', '"')
    return name.lower()


def strip_leading_comments(sql: str) -> str:
    """The statement without the comments and blank lines before it (block comments nest)."""
    out = sql.lstrip()
    while out.startswith("--") or out.startswith("/*"):
        if out.startswith("--"):
            nl = out.find("\n")
            out = "" if nl < 0 else out[nl + 1 :].lstrip()
        else:
            out = out[_after_block_comment(out, 0) :].lstrip()
    return out


def split_statements(sql: str) -> list[str]:
    """Split SQL into statements on top-level semicolons.

    Understands what psql understands: quoted strings (with E'' escapes),
    quoted identifiers, dollar quoting, line and nested block comments.
    Comment-only fragments are dropped. A SQL-standard body
    (`CREATE FUNCTION ... BEGIN ATOMIC ...; END`) stays one statement, as psql
    keeps it: its semicolons are inside the body.
    """
    statements: list[str] = []
    i, start, n = 0, 0, len(sql)
    while i < n:
        skipped = _after_quoted(sql, i)
        if skipped is not None:
            i = skipped
        elif sql[i] == ";":
            if not _inside_atomic_body(sql[start:i]):
                _append(statements, sql[start:i])
                start = i + 1
            i += 1
        else:
            special = _SPECIAL_RE.search(sql, i + 1)
            i = n if special is None else special.start()
    _append(statements, sql[start:])
    return statements


def _after_quoted(sql: str, i: int) -> int | None:
    """The index after the comment, string, quoted identifier or dollar quote at i, if one is."""
    ch, n = sql[i], len(sql)
    if ch == "-" and sql.startswith("--", i):
        nl = sql.find("\n", i)
        return n if nl < 0 else nl + 1
    if ch == "/" and sql.startswith("/*", i):
        return _after_block_comment(sql, i)
    if ch == "'":
        return _after_string(sql, i)
    if ch == '"':
        end = sql.find('"', i + 1)
        while end >= 0 and sql.startswith('""', end):
            end = sql.find('"', end + 2)
        return n if end < 0 else end + 1
    if ch == "$" and (i == 0 or not _ident_char(sql[i - 1])):
        match = _DOLLAR_TAG_RE.match(sql, i)
        if match:
            tag = match.group(0)
            end = sql.find(tag, i + len(tag))
            return n if end < 0 else end + len(tag)
    return None


def _code_only(sql: str) -> str:
    """`sql` with every comment, string, quoted identifier and dollar quote blanked."""
    parts: list[str] = []
    i, kept, n = 0, 0, len(sql)
    while i < n:
        skipped = _after_quoted(sql, i)
        if skipped is not None:
            parts += [sql[kept:i], " "]
            i = kept = skipped
        else:
            special = _SPECIAL_RE.search(sql, i + 1)
            i = n if special is None else special.start()
    parts.append(sql[kept:])
    return "".join(parts)


def _after_block_comment(sql: str, i: int) -> int:
    """The index after the (nested) block comment that starts at i."""
    depth, i, n = 1, i + 2, len(sql)
    while i < n and depth:
        if sql.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif sql.startswith("*/", i):
            depth, i = depth - 1, i + 2
        else:
            i += 1
    return i


def _after_string(sql: str, i: int) -> int:
    """The index after the string literal that starts at i ('' doubled; E'' escapes)."""
    escapes = i > 0 and sql[i - 1] in "eE" and (i < 2 or not _ident_char(sql[i - 2]))
    i, n = i + 1, len(sql)
    while i < n:
        if escapes and sql[i] == "\\":
            i += 2
            continue
        if sql[i] == "'":
            if i + 1 < n and sql[i + 1] == "'":
                i += 2
                continue
            break
        i += 1
    return i + 1


_ROUTINE_START_RE = re.compile(
    r"CREATE\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|PROCEDURE)\b", re.IGNORECASE
)
_BLOCK_WORD_RE = re.compile(r"\b(BEGIN|CASE|END)\b", re.IGNORECASE)


def _inside_atomic_body(fragment: str) -> bool:
    """True while a CREATE FUNCTION/PROCEDURE's BEGIN ATOMIC body is open.

    Counted as psql counts it: BEGIN opens, CASE opens inside a body, END closes.
    """
    if not _ROUTINE_START_RE.match(strip_leading_comments(fragment)):
        return False
    depth = 0
    for word in _BLOCK_WORD_RE.findall(_code_only(fragment)):
        word = word.upper()
        if word == "BEGIN" or (word == "CASE" and depth > 0):
            depth += 1
        elif word == "END" and depth > 0:
            depth -= 1
    return depth > 0


def _ident_char(ch: str) -> bool:
    return ch.isalnum() or ch in "_$"


def _append(statements: list[str], fragment: str) -> None:
    if strip_leading_comments(fragment).strip():
        statements.append(fragment.strip() + ";")
