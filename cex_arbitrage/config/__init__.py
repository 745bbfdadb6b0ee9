"""Settings of the engine and the migrate CLI, from config.yaml, the environment and defaults.

One loader for both, so that `./migrate.sh` reaches exactly the database the
engine will use. The connection follows libpq's habits, each layer overriding
only the fields it sets: defaults < PG* variables < DATABASE_URL < the file's
`database:` section. Every error is a `ConfigError` that names the file and key
(or the environment variable) at fault, and never contains a password.
"""

from __future__ import annotations

from cex_arbitrage.config.connection import database_from_url
from cex_arbitrage.config.load import load_config
from cex_arbitrage.config.settings import (
    MIGRATED_TABLES,
    AppConfig,
    CollectorSettings,
    MigrationSettings,
)
from cex_arbitrage.config.yaml_file import CONFIG_ENV
from cex_arbitrage.db.structs import DEFAULT_FEATURES

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_FEATURES",
    "MIGRATED_TABLES",
    "AppConfig",
    "CollectorSettings",
    "MigrationSettings",
    "database_from_url",
    "load_config",
]
