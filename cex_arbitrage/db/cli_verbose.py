"""`--verbose`: where the settings came from and which server was reached (password hidden)."""

from __future__ import annotations

from cex_arbitrage.config import MIGRATED_TABLES, AppConfig
from cex_arbitrage.db.migrator.connect import connect
from cex_arbitrage.db.migrator.preflight import run_preflight
from cex_arbitrage.db.structs import DatabaseConfig


async def verbose_report(db: DatabaseConfig, config: AppConfig, source: str) -> None:
    """Print the run's sources, then pre-flight's view of the server (refusals raise)."""
    print(f"config:     {config.source}")
    print(f"database:   {db.display} (sslmode {db.sslmode})")
    print(f"migrations: {source}")
    features = ", ".join(f"{k}={'on' if v else 'off'}" for k, v in sorted(config.features.items()))
    print(f"features:   {features or 'none'}")
    conn = await connect(db)
    try:
        pre = await run_preflight(conn, db.display, MIGRATED_TABLES)
        print(f"server:     PostgreSQL {pre.server_version_text}")
        print(f"cluster:    {pre.citus.describe() if pre.citus else 'single server (no Citus)'}")
        print(f"user:       {pre.user}")
        print(f"extensions: {', '.join(pre.extensions) or 'none'}")
        for warning in pre.warnings:
            print(f"warning:    {warning}")
    finally:
        await conn.close()
