"""load_config: defaults < PG* variables < DATABASE_URL < the file, into one AppConfig."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import cast

from cex_arbitrage.config.connection import (
    _PG_VARS,
    _env_fields,
    _file_database_fields,
    _url_fields,
)
from cex_arbitrage.config.sections import (
    _COLLECTOR_KEYS,
    _MIGRATION_KEYS,
    _features,
    _section_values,
)
from cex_arbitrage.config.settings import (
    AppConfig,
    CollectorSettings,
    MigrationSettings,
)
from cex_arbitrage.config.yaml_file import CONFIG_ENV as CONFIG_ENV
from cex_arbitrage.config.yaml_file import _locate, _read_yaml, _sections, _substituted
from cex_arbitrage.db.structs import DEFAULT_FEATURES, DatabaseConfig
from cex_arbitrage.errors import ConfigError

_PG_VAR_OF = {field: var for var, field in _PG_VARS.items()}

# Variables whose presence means "the operator told us where the database is".
_LOCATION_VARS = ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD")


def _origins(located: tuple[Path, str] | None, url: bool, pg_used: bool) -> str:
    """Where the settings came from, for `status --verbose` and logs."""
    origins: list[str] = []
    if located is not None:
        resolved = located[0].resolve()
        label = located[1]
        origins.append(label if label == str(resolved) else f"{label} ({resolved})")
    if url:
        origins.append("DATABASE_URL")
    if pg_used:
        origins.append("PG* environment")
    return " + ".join(origins) if origins else "defaults"


def _database(
    env: Mapping[str, str],
    sections: Mapping[str, Mapping[str, object]],
    located: tuple[Path, str] | None,
    prefix: str,
) -> tuple[DatabaseConfig, list[str]]:
    """The connection, layered (PG* < DATABASE_URL < the file), with where each field came
    from; and the PG* variables used."""
    pg_fields, pg_used = _env_fields(env)
    fields = dict(pg_fields)
    origins = {field: _PG_VAR_OF.get(field, "PG* environment") for field in pg_fields}
    url = env.get("DATABASE_URL", "")
    if url:
        url_fields = _url_fields(url, "environment variable DATABASE_URL")
        fields.update(url_fields)
        origins.update(dict.fromkeys(url_fields, "DATABASE_URL"))
    file_fields = _file_database_fields(sections.get("database", {}), f"{prefix}database")
    fields.update(file_fields)
    if located is not None:
        origins.update({f: f"database.{f} in {located[1]}" for f in file_fields})
    database = dataclasses.replace(
        DatabaseConfig(), **fields, origins=tuple(sorted(origins.items()))
    )
    return database, pg_used


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    *,
    known_features: Iterable[str] | None = None,
) -> AppConfig:
    """Read the configuration the way the engine and `./migrate.sh` both do.

    The file is `path` (--config), else $CEX_CONFIG, else ./config.yaml if it
    exists, else none. Relative paths are taken from `cwd`. The `features:`
    section may name `known_features` only (default: DEFAULT_FEATURES' names;
    the migrate CLI adds the features its migration set declares).
    """
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    located = _locate(path, env, cwd)

    sections: dict[str, Mapping[str, object]] = {}
    if located is not None:
        file, label = located
        raw = _read_yaml(file, label)
        sections = _sections(cast(dict[str, object], _substituted(raw, env, label, [])), label)
    prefix = f"{located[1]}: " if located is not None else ""

    database, pg_used = _database(env, sections, located, prefix)
    url = env.get("DATABASE_URL", "")
    if database.pool_min_size > database.pool_max_size:
        raise ConfigError(
            f"{prefix}database: pool_min_size ({database.pool_min_size}) is larger than "
            f"pool_max_size ({database.pool_max_size})"
        )

    known = list(known_features) if known_features is not None else list(DEFAULT_FEATURES)
    features = _features(sections.get("features", {}), f"{prefix}features", known)
    migrations = dataclasses.replace(
        MigrationSettings(),
        **_section_values(sections.get("migrations", {}), f"{prefix}migrations", _MIGRATION_KEYS),
    )
    collectors = dataclasses.replace(
        CollectorSettings(),
        **_section_values(sections.get("collectors", {}), f"{prefix}collectors", _COLLECTOR_KEYS),
    )

    configured = located is not None or bool(url) or any(env.get(var) for var in _LOCATION_VARS)
    return AppConfig(
        database=database,
        features=MappingProxyType(features),
        migrations=migrations,
        collectors=collectors,
        source=_origins(located, bool(url), bool(pg_used)),
        database_configured=configured,
        path=located[0].resolve() if located is not None else None,
    )
