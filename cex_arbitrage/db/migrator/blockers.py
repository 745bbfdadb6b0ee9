"""Who holds up a statement that timed out waiting for a lock, for the operator's message.

`pg_blocking_pids` only answers while the statement still waits; once the lock
timeout fired nothing waits any more. So the suspects are read afterwards:
other sessions of this database with an open transaction that hold a lock on
a relation of it, oldest transaction first.
"""

from __future__ import annotations

import asyncpg

_SUSPECTS = """
SELECT a.pid, a.usename, a.application_name, a.state,
       extract(epoch FROM now() - a.xact_start)::int AS xact_seconds,
       to_char(a.query_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS query_start,
       left(regexp_replace(a.query, '\\s+', ' ', 'g'), 100) AS query
FROM pg_stat_activity a
WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
  AND a.xact_start IS NOT NULL
  AND EXISTS (SELECT 1 FROM pg_locks l
               WHERE l.pid = a.pid AND l.granted AND l.locktype = 'relation'
                 AND l.database = (SELECT oid FROM pg_database
                                    WHERE datname = current_database()))
ORDER BY a.xact_start
LIMIT 5
"""


async def find_blockers(conn: asyncpg.Connection) -> tuple[tuple[int, ...], str]:
    """(pids, text) of the sessions likely holding the lock; ((), "") when none or unknown."""
    try:
        rows = await conn.fetch(_SUSPECTS)
    except Exception:  # the message matters more than the lookup: never hide the lock error
        return (), ""
    if not rows:
        return (), ""
    parts = [
        f"pid {r['pid']} (user {r['usename']}, application {r['application_name']!r}, "
        f"{r['state']}, transaction open {r['xact_seconds']}s, query started "
        f"{r['query_start']} UTC: {r['query']})"
        for r in rows
    ]
    pids = tuple(int(r["pid"]) for r in rows)
    ends = ", ".join(f"`SELECT pg_terminate_backend({pid})`" for pid in pids)
    text = (
        f" Sessions with open transactions holding locks here: {'; '.join(parts)}. "
        f"Let them finish, or end one with {ends}."
    )
    return pids, text
