"""Plain data types of the database layer: connection settings without behaviour."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

# Features and whether they are on when config says nothing: one definition
# for the config loader, the runner and ensure_schema.
DEFAULT_FEATURES: Mapping[str, bool] = MappingProxyType({"trade_collection": True})

# The tables an existing deployment already has, with data, before any migration ran
# (the engine's old init script; tests/support/legacy-schema.sql, held to this by a
# test). `migrate lint` treats them as live tables.
LEGACY_TABLES = ("book_ticker_snapshots", "trades")

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


@dataclasses.dataclass(frozen=True)
class DatabaseConfig:
    """How to reach one PostgreSQL database.

    `dsn` is for asyncpg and psql; `display` is for logs and never contains
    the password.
    """

    host: str = "localhost"
    port: int = 5432
    database: str = "cex_arbitrage"
    user: str = "postgres"
    password: str | None = None
    sslmode: str = "prefer"
    connect_timeout: float = 10.0
    statement_timeout_ms: int = 0  # 0 = server default (none) for migrations
    lock_timeout_ms: int = 2000  # a DDL lock wait never stalls inserts longer
    lock_retries: int = 10
    pool_min_size: int = 1
    pool_max_size: int = 10
    application_name: str = "cex_arbitrage"

    @property
    def dsn(self) -> str:
        """A libpq URL with the password, for asyncpg and psql."""
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        host = self.host
        if host.startswith("/"):
            # Unix socket directory: libpq takes it as a query parameter.
            return (
                f"postgresql://{auth}@/{quote(self.database, safe='')}"
                f"?host={quote(host, safe='')}&port={self.port}&sslmode={self.sslmode}"
            )
        return (
            f"postgresql://{auth}@{host}:{self.port}/{quote(self.database, safe='')}"
            f"?sslmode={self.sslmode}"
        )

    @property
    def display(self) -> str:
        """user@host:port/database, with the password hidden."""
        secret = ":***" if self.password else ""
        return f"{self.user}{secret}@{self.host}:{self.port}/{self.database}"

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for asyncpg.connect / create_pool."""
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "database": self.database,
            "user": self.user,
            "timeout": self.connect_timeout,
            "server_settings": {"application_name": self.application_name},
        }
        if self.password is not None:
            kwargs["password"] = self.password
        if self.sslmode != "prefer":
            kwargs["ssl"] = self.sslmode
        return kwargs

    def with_database(self, database: str) -> DatabaseConfig:
        """The same server and credentials, another database."""
        return dataclasses.replace(self, database=database)

    def __repr__(self) -> str:
        return f"DatabaseConfig({self.display}, sslmode={self.sslmode})"
