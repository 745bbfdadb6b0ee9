"""Read and write migration_history, the single truth of what is applied.

A database before 000 has no history table, and a plain SELECT of it fails
with an ERROR that lands in the operator's server log on every boot of a
fresh database. So no read ever names a table that may be missing:

- The boot check (`read_history_lean`) stays ONE round trip: the statement
  asks `to_regclass` and hands the SELECT to `ts_stat()` as text, a core
  function that runs a query given as a string (so a missing table is never
  parsed). The query returns each row as one space-separated word in a tsvector
  (`array_to_tsvector`), and ts_stat gives the lexemes back as words; the
  installed extensions come along as words `extension NAME`. Core
  only: `query_to_xml` would do the same but needs a server built with
  libxml, which the embedded PostgreSQL is not.
- The full reads (apply under the lock, status) first ask whether the table
  exists: one more round trip, off the boot path.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import asyncpg

from cex_arbitrage.db.migrator.model import ROUTINE_PREFIX, Routine
from cex_arbitrage.db.migrator.states import MigrationState

# A dict lookup, not MigrationState(value): the boot check converts every row.
_STATE = {s.value: s for s in MigrationState}

_READ_STATE = """
SELECT version, name, feature, checksum, state, applied_at, finished_at, execution_ms,
       background_ms, applied_by, applied_from, steps_done, statements_done,
       step_timings::text AS step_timings, last_error, failed_statement
FROM migration_history
ORDER BY version
"""

# The boot check: only what planning needs, so the usual "nothing pending"
# answer costs about one bare round trip (bench/bench_boot.py). Through ts_stat
# (module docstring): one word per row, no rows before 000 ran. A
# lexeme holds at most 2047 bytes; a lean row is under 200.
_EXTENSIONS = "SELECT array_to_tsvector(array_agg(''extension '' || extname)) FROM pg_extension"
_BOOT_CHECK = f"""
SELECT word FROM ts_stat(CASE WHEN to_regclass('migration_history') IS NULL
    THEN '{_EXTENSIONS}'
    ELSE 'SELECT array_to_tsvector(ARRAY[concat_ws('' '', version, state, '
         'coalesce(checksum, ''-''), steps_done, statements_done)]) FROM migration_history '
         'UNION ALL {_EXTENSIONS}'
    END)
"""


_STATE_FIRST = """
SELECT to_regclass('migration_history') IS NOT NULL,
       (SELECT array_agg(extname::text) FROM pg_extension)
"""


async def _exists(conn: asyncpg.Connection, table: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table))


_READ_PROGRESS = """
SELECT version, task, position, rows_done, rows_total, done, detail::text AS detail, updated_at
FROM migration_progress ORDER BY version, task
"""


@dataclasses.dataclass(frozen=True)
class HistoryRow:
    """One row of migration_history."""

    version: str
    name: str
    feature: str | None
    checksum: str | None
    state: MigrationState
    applied_at: dt.datetime | None
    finished_at: dt.datetime | None
    execution_ms: int | None
    background_ms: int | None
    applied_by: str | None
    applied_from: str | None
    steps_done: int
    statements_done: int
    step_timings: dict[str, int]
    last_error: str | None
    failed_statement: str | None

    @property
    def is_applied(self) -> bool:
        """Foreground part done: the schema new writes need is there."""
        return self.state.is_applied

    @property
    def is_routine(self) -> bool:
        return self.version.startswith(ROUTINE_PREFIX)


@dataclasses.dataclass(frozen=True)
class ProgressRow:
    version: str
    task: str
    position: str | None
    rows_done: int
    rows_total: int | None
    done: bool
    detail: dict[str, Any]
    updated_at: dt.datetime

    def describe(self) -> str:
        total = f"/{self.rows_total}" if self.rows_total is not None else ""
        pct = ""
        if self.rows_total:
            pct = f" ({min(100.0, 100.0 * self.rows_done / self.rows_total):.1f}%)"
        return f"{self.task} {self.rows_done}{total}{pct}{' done' if self.done else ''}"


@dataclasses.dataclass(frozen=True)
class DatabaseState:
    """The whole history, and whether migration 000 has created its table."""

    has_history: bool
    history: dict[str, HistoryRow]
    # Installed extensions: a migration for one (migrate:extension) applies only where it is.
    extensions: frozenset[str] = frozenset()


async def read_state(conn: asyncpg.Connection) -> DatabaseState:
    """All history rows; whether 000 has created the table, asked first (no failed SELECT),
    together with the installed extensions."""
    has_history, installed = await conn.fetchrow(_STATE_FIRST)
    extensions = frozenset(installed or ())
    if not has_history:
        return DatabaseState(False, {}, extensions)
    rows = await conn.fetch(_READ_STATE)
    return DatabaseState(True, {r["version"]: _history_row(r) for r in rows}, extensions)


async def read_history_lean(conn: asyncpg.Connection) -> DatabaseState:
    """The history with just the fields planning needs, and the extensions. One round trip."""
    history: dict[str, HistoryRow] = {}
    extensions: set[str] = set()
    for (word,) in await conn.fetch(_BOOT_CHECK):
        # Versions (digits, R__snake_case), states and hex checksums hold no space.
        if word.startswith("extension "):
            extensions.add(word.removeprefix("extension "))
            continue
        version, state, checksum, steps_done, statements_done = word.split(" ")
        history[version] = HistoryRow(
            version=version,
            name="",
            feature=None,
            checksum=None if checksum == "-" else checksum,
            state=_STATE[state],
            applied_at=None,
            finished_at=None,
            execution_ms=None,
            background_ms=None,
            applied_by=None,
            applied_from=None,
            steps_done=int(steps_done),
            statements_done=int(statements_done),
            step_timings={},
            last_error=None,
            failed_statement=None,
        )
    return DatabaseState(bool(history), history, frozenset(extensions))


def _history_row(r: asyncpg.Record) -> HistoryRow:
    return HistoryRow(
        version=r["version"],
        name=r["name"],
        feature=r["feature"],
        checksum=r["checksum"],
        state=_STATE[r["state"]],
        applied_at=r["applied_at"],
        finished_at=r["finished_at"],
        execution_ms=r["execution_ms"],
        background_ms=r["background_ms"],
        applied_by=r["applied_by"],
        applied_from=r["applied_from"],
        steps_done=r["steps_done"],
        statements_done=r["statements_done"],
        step_timings=json.loads(r["step_timings"] or "{}"),
        last_error=r["last_error"],
        failed_statement=r["failed_statement"],
    )


async def read_progress(conn: asyncpg.Connection) -> list[ProgressRow]:
    """Checkpoints of long background work (empty before 000 ran)."""
    if not await _exists(conn, "migration_progress"):
        return []
    rows = await conn.fetch(_READ_PROGRESS)
    return [
        ProgressRow(
            r["version"],
            r["task"],
            r["position"],
            r["rows_done"],
            r["rows_total"],
            r["done"],
            json.loads(r["detail"] or "{}"),
            r["updated_at"],
        )
        for r in rows
    ]


def literal(value: str | int | None) -> str:
    """A SQL literal for the runner's own bookkeeping statements.

    The history updates travel in the same simple-query message as the
    migration's SQL (one round trip, one transaction), where bind parameters
    are not available. Only the runner's own values pass through here, never
    SQL from input; strings are quoted with standard_conforming_strings, which
    the message sets for itself.
    """
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(int(value))
    return "'" + value.replace("'", "''").replace("\x00", "") + "'"


def record_statement(
    *,
    version: str,
    name: str,
    feature: str | None,
    checksum: str,
    state: MigrationState,
    steps_done: int,
    statements_done: int,
    applied_from: str,
    execution_ms_sql: str = "NULL",
    step_name: str | None = None,
    step_ms_sql: str | None = None,
) -> str:
    """Upsert of the history row, sent in the same message as the SQL it records.

    `*_sql` arguments are SQL expressions made by the runner (e.g. the
    step's elapsed time measured by the server with clock_timestamp()).
    """
    timing = "h.step_timings"
    initial_timings = "'{}'::jsonb"
    if step_name is not None and step_ms_sql is not None:
        initial_timings = f"jsonb_build_object({literal(step_name)}, {step_ms_sql})"
        timing = f"h.step_timings || {initial_timings}"
    finished = "now()" if state is MigrationState.APPLIED else "NULL"
    exec_ms = execution_ms_sql
    return f"""
INSERT INTO migration_history AS h
    (version, name, feature, checksum, state, applied_at, finished_at, execution_ms,
     applied_by, applied_from, steps_done, statements_done, step_timings)
VALUES ({literal(version)}, {literal(name)}, {literal(feature)}, {literal(checksum)},
        {literal(state.value)}, now(), {finished}, {exec_ms}, current_user, {literal(applied_from)},
        {int(steps_done)}, {int(statements_done)}, {initial_timings})
ON CONFLICT (version) DO UPDATE SET
    name = EXCLUDED.name, feature = EXCLUDED.feature, checksum = EXCLUDED.checksum,
    state = EXCLUDED.state, finished_at = EXCLUDED.finished_at,
    execution_ms = coalesce(EXCLUDED.execution_ms, h.execution_ms),
    applied_by = EXCLUDED.applied_by, applied_from = EXCLUDED.applied_from,
    steps_done = EXCLUDED.steps_done, statements_done = EXCLUDED.statements_done,
    step_timings = {timing}, last_error = NULL, failed_statement = NULL;
"""


async def record_failure(
    conn: asyncpg.Connection,
    *,
    version: str,
    name: str,
    feature: str | None,
    checksum: str,
    applied_from: str,
    error: str,
    statement: str | None,
    background: bool,
) -> None:
    """Record a failure with the error and the statement, for status and resume.

    A failed background step leaves the migration in state `background`: the
    schema new writes need is in place, only old-row work is unfinished.
    """
    await conn.execute(
        """
        INSERT INTO migration_history AS h
            (version, name, feature, checksum, state, applied_from, last_error,
             failed_statement)
        VALUES ($1, $2, $3, $4, 'failed', $5, $6, $7)
        ON CONFLICT (version) DO UPDATE
           SET state = CASE WHEN $8 THEN h.state ELSE 'failed' END,
               last_error = EXCLUDED.last_error, failed_statement = EXCLUDED.failed_statement
         WHERE h.state <> 'applied'
        """,
        version,
        name,
        feature,
        checksum,
        applied_from,
        error[:4000],
        statement[:4000] if statement else None,
        background,
    )


def record_routine_statement(routine: Routine, applied_from: str, elapsed_ms_sql: str) -> str:
    """The history upsert of a routine, sent in the same message as its SQL."""
    return record_statement(
        version=routine.key,
        name=routine.name,
        feature=routine.feature,
        checksum=routine.checksum,
        state=MigrationState.APPLIED,
        steps_done=1,
        statements_done=0,
        applied_from=applied_from,
        execution_ms_sql=elapsed_ms_sql,
    )
