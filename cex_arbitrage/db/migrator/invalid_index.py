"""What an interrupted index command leaves, read from the catalog before it runs again.

PostgreSQL keeps the half-built index (marked INVALID) when a concurrent
build fails or its session dies; `IF NOT EXISTS` would then skip the build
and leave it unusable, so the runner drops it first. A build (or drop) that
finished while its runner died before recording it is done: the catalog
says so, and the resume records it instead of failing on "already exists"
("does not exist") (repeat.py).
"""

from __future__ import annotations

from cex_arbitrage.db.migrator.failures import execute, wrap
from cex_arbitrage.db.migrator.model import Migration, Step
from cex_arbitrage.db.migrator.repeat import StatementKind
from cex_arbitrage.db.migrator.session import RunContext

_INVALID_INDEX = """
SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE c.relname = $1 AND NOT i.indisvalid AND pg_table_is_visible(c.oid)
"""

_VALID_INDEX = """
SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE c.relname = $1 AND pg_table_is_visible(c.oid)
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


async def done_before(ctx: RunContext, m: Migration, step: Step, kind: StatementKind) -> bool:
    """The index this resumed statement builds is there and valid (or the one it drops is gone)."""
    try:
        if kind.builds_index is not None:
            done = bool(await ctx.conn.fetchval(_VALID_INDEX, kind.builds_index))
            what = f"index {kind.builds_index} exists and is valid"
        elif kind.drops_index is not None:
            done = await ctx.conn.fetchval("SELECT to_regclass($1) IS NULL", kind.drops_index)
            what = f"index {kind.drops_index} is already gone"
        else:
            return False
    except Exception as exc:
        raise wrap(ctx, exc, m, step) from exc
    if done:
        ctx.say(
            f"{ctx.database}: {m.label}: step {step.name}: {what}: an earlier run finished "
            "this statement and stopped before recording it; recorded as done"
        )
    return bool(done)
