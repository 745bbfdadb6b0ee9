"""Database side of the engine: connection config, migrations, the migrate CLI."""

from cex_arbitrage.db.structs import DatabaseConfig

__all__ = ["DatabaseConfig"]
