"""Checks against the live database before anything runs.

Refuses (exit code 7) what would certainly fail halfway: a server older than
the supported majors (a newer, untested one is a warning), a standby or a
read-only default (default_transaction_read_only), a Citus worker node
(cluster.py), a user that may not create objects. Warns about what would slow
or block a migration: INVALID indexes from an earlier interrupted build,
long open transactions that a DDL lock would queue behind (while queued, that
lock request blocks the collectors' inserts; lock_timeout bounds it), and on
large tables a kernel that lets gigabytes of dirty page cache build up
(writeback.py: the collectors' COMMITs would wait behind its writeback).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import asyncpg

from cex_arbitrage.db.migrator.cluster import CitusNode, detect_citus, refuse_worker
from cex_arbitrage.db.migrator.writeback import check_writeback
from cex_arbitrage.errors import PreflightError

# The majors the migrations are tested on (README, "Supported PostgreSQL versions").
OLDEST_MAJOR = 13
NEWEST_TESTED_MAJOR = 18
MIN_SERVER_VERSION = OLDEST_MAJOR * 10000

_CHECKS = """
SELECT current_setting('server_version_num')::int AS server_version,
       current_setting('server_version') AS server_version_text,
       current_user AS usr,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS is_superuser,
       has_database_privilege(current_database(), 'CREATE') AS can_create_schema,
       pg_is_in_recovery() AS in_recovery, quote_ident(current_database()) AS dbname,
       current_setting('transaction_read_only')::bool AS read_only,
       (SELECT source FROM pg_settings
         WHERE name = 'default_transaction_read_only') AS read_only_source,
       has_schema_privilege('public', 'CREATE') AS can_create_in_public,
       (SELECT coalesce(array_agg(c.relname::text ORDER BY c.relname), '{}')
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
           AND c.relname = ANY($1::text[])
           AND NOT pg_has_role(current_user, c.relowner, 'USAGE')) AS not_owned,
       (SELECT coalesce(array_agg(c.relname::text ORDER BY c.relname), '{}')
          FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE NOT i.indisvalid AND n.nspname NOT IN ('pg_catalog', 'information_schema')
       ) AS invalid_indexes,
       (SELECT coalesce(array_agg(extname || ' ' || extversion ORDER BY extname), '{}')
          FROM pg_extension) AS extensions,
       -- Rows in the watched tables and their partitions or chunks (inheritance
       -- children): the planner's estimate, no scan.
       (WITH RECURSIVE tree(oid) AS (
            SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relname = ANY($1::text[])
            UNION
            SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.oid)
        SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint
          FROM tree JOIN pg_class c ON c.oid = tree.oid) AS watched_rows,
       has_function_privilege('pg_read_file(text, bigint, bigint, boolean)', 'EXECUTE')
         AND ((SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
              OR pg_has_role(current_user, 'pg_read_server_files', 'MEMBER')) AS can_read_files
"""

_LONG_TRANSACTIONS = """
SELECT pid, usename, application_name, state,
       extract(epoch FROM now() - xact_start)::int AS seconds,
       left(regexp_replace(query, '\\s+', ' ', 'g'), 120) AS query
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND xact_start < now() - make_interval(secs => $1)
ORDER BY xact_start
LIMIT 5
"""


@dataclasses.dataclass(frozen=True)
class Preflight:
    server_version: int
    server_version_text: str
    user: str
    extensions: tuple[str, ...]
    invalid_indexes: tuple[str, ...]
    warnings: tuple[str, ...]
    # Estimated rows in the watched tables with their partitions or chunks.
    watched_rows: int = 0
    citus: CitusNode | None = None  # None: not a Citus node


def check_server_version(database: str, version_num: int, version_text: str) -> str | None:
    """Refuse a major below the supported range (exit 7); a warning for one above it.

    13 is the oldest major the migrations are tested on (12 reached its end of
    life in November 2024), so an older server is refused before anything
    runs rather than left to fail halfway. A major newer than the newest
    tested one goes ahead with a warning, as Flyway does: a server upgrade must
    not lock the schema out until this code is released again.
    """
    supported = f"supported: PostgreSQL {OLDEST_MAJOR} to {NEWEST_TESTED_MAJOR}"
    major = version_num // 10000
    if major < OLDEST_MAJOR:
        raise PreflightError(
            f"{database}: PostgreSQL {version_text} (major {major}) is not supported "
            f"({supported}); nothing was changed. Upgrade the server to "
            f"PostgreSQL {OLDEST_MAJOR} or newer"
        )
    if major > NEWEST_TESTED_MAJOR:
        return (
            f"{database}: PostgreSQL {version_text} (major {major}) is newer than the newest "
            f"tested major ({supported}); going ahead"
        )
    return None


def _refuse_read_only(row: asyncpg.Record, database: str, user: str) -> None:
    """A standby, or sessions read-only by default: every write would fail (exit 7)."""
    if row["in_recovery"]:
        raise PreflightError(
            f"{database}: the server is a standby (pg_is_in_recovery() is true) and accepts "
            "no writes; nothing was changed. Point the migration at the primary (check "
            "PGHOST / DATABASE_URL / database.host; with several hosts, "
            "target_session_attrs=read-write)"
        )
    if row["read_only"]:
        source = row["read_only_source"] or "unknown"
        raise PreflightError(
            f"{database}: sessions of user {user!r} are read-only "
            f"(default_transaction_read_only = on, set by: {source}); nothing was changed. "
            f"If the database is meant to be writable: ALTER DATABASE {row['dbname']} "
            f"SET default_transaction_read_only = off; (or ALTER ROLE {user} SET ..., or "
            "PGOPTIONS / postgresql.conf, whichever set it), then run again"
        )


async def _slowdowns(
    conn: asyncpg.Connection,
    database: str,
    invalid: tuple[str, ...],
    long_transaction_seconds: float,
) -> list[str]:
    """Warnings about what would make the migration slow or make it wait."""
    warnings: list[str] = []
    if invalid:
        warnings.append(
            f"{database}: INVALID index(es) left by an interrupted build: {', '.join(invalid)}; "
            "a migration that builds one of them drops and rebuilds it"
        )
    for tx in await conn.fetch(_LONG_TRANSACTIONS, long_transaction_seconds):
        warnings.append(
            f"{database}: transaction open for {tx['seconds']}s in pid {tx['pid']} "
            f"(user {tx['usename']}, application {tx['application_name']!r}, {tx['state']}: "
            f"{tx['query']}); a lock the migration needs may queue behind it, bounded by "
            "lock_timeout and retries"
        )
    return warnings


async def run_preflight(
    conn: asyncpg.Connection,
    database: str,
    watched_tables: Sequence[str] = (),
    long_transaction_seconds: float = 30.0,
    writeback_check_rows: int = 5_000_000,
) -> Preflight:
    """Refuse what cannot work; return warnings for what may be slow.

    `watched_tables` are the tables the migrations alter (the application
    names them, RunnerSettings.watched_tables): the user must own them. When
    they hold at least `writeback_check_rows` rows, the host's kernel
    writeback threshold is checked too (one more round trip).
    """
    row = await conn.fetchrow(_CHECKS, list(watched_tables))
    assert row is not None
    warnings: list[str] = []
    untested = check_server_version(database, row["server_version"], row["server_version_text"])
    if untested:
        warnings.append(untested)
    user = row["usr"]
    _refuse_read_only(row, database, user)
    citus = await detect_citus(conn, tuple(row["extensions"]))
    if citus is not None:
        refuse_worker(citus, database)
    if not row["is_superuser"]:
        if not row["can_create_in_public"]:
            raise PreflightError(
                f"{database}: user {user!r} may not create objects in schema public. "
                f"Grant it: GRANT CREATE ON SCHEMA public TO {user}; (or migrate as the "
                "owner of the database)"
            )
        if row["not_owned"]:
            tables = ", ".join(row["not_owned"])
            raise PreflightError(
                f"{database}: user {user!r} does not own table(s) {tables}, which the "
                "migrations alter. Migrate as their owner, or "
                f"ALTER TABLE ... OWNER TO {user};"
            )
    invalid = tuple(row["invalid_indexes"])
    warnings += await _slowdowns(conn, database, invalid, long_transaction_seconds)
    if row["watched_rows"] >= writeback_check_rows and row["can_read_files"]:
        writeback = await check_writeback(conn, database, row["watched_rows"])
        if writeback:
            warnings.append(writeback)
    return Preflight(
        server_version=row["server_version"],
        server_version_text=row["server_version_text"],
        user=user,
        extensions=tuple(row["extensions"]),
        invalid_indexes=invalid,
        warnings=tuple(warnings),
        watched_rows=row["watched_rows"],
        citus=citus,
    )
