"""Reading the OHLCV aggregates over trades, refreshed first where they are materialized."""

from __future__ import annotations

import datetime as dt

import asyncpg


async def fetch_ohlcv(
    conn: asyncpg.Connection,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int = 10,
    view: str = "trades_ohlcv_1m",
) -> list[dict[str, object]]:
    """Rows of an OHLCV aggregate, refreshing it first over [since, until] if it is materialized.

    On TimescaleDB the view is a continuous aggregate that may not have
    materialized recent buckets yet; on plain PostgreSQL it may be a
    materialized view. A plain view needs nothing.
    """
    if view not in ("trades_ohlcv_1m", "trades_ohlcv_1h"):
        raise ValueError(f"unknown OHLCV view {view!r}")
    width = dt.timedelta(minutes=1) if view.endswith("1m") else dt.timedelta(hours=1)
    await _refresh(conn, view, since, until, width)
    rows = await conn.fetch(
        f"SELECT * FROM {view} "
        "WHERE ($1::timestamptz IS NULL OR bucket >= $1::timestamptz - $3::interval) "
        "  AND ($2::timestamptz IS NULL OR bucket <= $2::timestamptz) "
        "ORDER BY bucket, exchange, symbol_base, symbol_quote LIMIT $4",
        since,
        until,
        width,
        limit,
    )
    return [dict(row) for row in rows]


async def _refresh(
    conn: asyncpg.Connection,
    view: str,
    since: dt.datetime | None,
    until: dt.datetime | None,
    width: dt.timedelta,
) -> None:
    """Materialize `view` over [since, until] if it is a continuous aggregate or matview."""
    is_cagg = await conn.fetchval(
        "SELECT to_regclass('timescaledb_information.continuous_aggregates') IS NOT NULL"
    )
    if is_cagg:
        is_cagg = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM timescaledb_information.continuous_aggregates "
            "WHERE view_name = $1)",
            view,
        )
    if is_cagg:
        # A refresh window must cover whole buckets, or it refreshes nothing.
        await conn.execute(
            "CALL refresh_continuous_aggregate($1::regclass, $2::timestamptz, $3::timestamptz)",
            view,
            None if since is None else since - width,
            None if until is None else until + width,
        )
    elif await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_matviews WHERE matviewname = $1)", view
    ):
        await conn.execute(f"REFRESH MATERIALIZED VIEW {view}")
