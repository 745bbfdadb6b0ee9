"""Clear what an interrupted `CREATE INDEX CONCURRENTLY` leaves: an INVALID index.

PostgreSQL keeps the half-built index (marked INVALID) when a concurrent
build fails or its session dies; `IF NOT EXISTS` would then skip the build
and leave it unusable, so the runner drops it first.
"""

from __future__ import annotations

from cex_arbitrage.db.migrator.failures import execute, wrap
from cex_arbitrage.db.migrator.model import Migration
from cex_arbitrage.db.migrator.session import RunContext

_INVALID_INDEX = """
SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE c.relname = $1 AND NOT i.indisvalid AND pg_table_is_visible(c.oid)
"""


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def drop_invalid_index(ctx: RunContext, m: Migration, name: str) -> None:
    """Drop index `name` if it exists INVALID, so the build that follows starts clean."""
    try:
        found = await ctx.conn.fetchval(_INVALID_INDEX, name)
    except Exception as exc:
        raise wrap(ctx, exc, m, None) from exc
    if found:
        ctx.say(
            f"{ctx.database}: {m.label}: dropping INVALID index {name} left by an "
            "interrupted build, then building it again"
        )
        await execute(ctx, f"DROP INDEX CONCURRENTLY IF EXISTS {quote_identifier(name)}", m)
