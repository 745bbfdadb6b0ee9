"""The database connection from a URL, the PG* environment, or the file's `database:` section."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from cex_arbitrage.config.values import (
    _choice,
    _Convert,
    _integer,
    _seconds,
    _text,
    _type_name,
)
from cex_arbitrage.db.structs import SSL_MODES, DatabaseConfig
from cex_arbitrage.errors import ConfigError
from cex_arbitrage.features import unknown_key as _unknown_key

# --------------------------------------------------------------------------
# database connection: URL, PG* environment, file section


_DATABASE_KEYS: dict[str, _Convert] = {
    "host": _text(),
    "port": _integer(1, 65535),
    "database": _text(),
    "user": _text(),
    "password": _text(secret=True),
    "sslmode": _choice(*SSL_MODES),
    "connect_timeout": _seconds(positive=True),
    "statement_timeout_ms": _integer(0),
    "lock_timeout_ms": _integer(0),
    "lock_retries": _integer(0),
    "pool_min_size": _integer(0),
    "pool_max_size": _integer(1),
    "application_name": _text(),
}
_DATABASE_ALIASES = {"name": "database"}
_SECRET_KEYS = frozenset({"password", "url"})

# libpq environment variables we honour, and the field each one sets.
_PG_VARS = {
    "PGHOST": "host",
    "PGPORT": "port",
    "PGDATABASE": "database",
    "PGUSER": "user",
    "PGPASSWORD": "password",
    "PGSSLMODE": "sslmode",
    "PGCONNECT_TIMEOUT": "connect_timeout",
    "PGAPPNAME": "application_name",
}

# libpq URL query parameters we honour; anything else is refused rather than
# silently dropped (a dropped sslrootcert would weaken TLS without a word).
_URL_PARAMS = {
    "host": "host",
    "port": "port",
    "dbname": "database",
    "user": "user",
    "password": "password",
    "sslmode": "sslmode",
    "connect_timeout": "connect_timeout",
    "application_name": "application_name",
}


def _url_fields(url: str, where: str) -> dict[str, Any]:
    """The DatabaseConfig fields a postgresql:// URL sets (missing parts are not set)."""
    text = url.strip()
    scheme = text.split("://", 1)[0] if "://" in text else ""
    if scheme.lower() not in ("postgresql", "postgres"):
        shown = f"'{scheme}://'" if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,20}", scheme) else None
        got = f"; got {shown}" if shown else ""
        raise ConfigError(
            f"{where}: expected a URL like postgresql://user:password@host:5432/dbname{got}"
        )
    try:
        parts = urlsplit(text)
    except ValueError:
        raise ConfigError(f"{where}: not a valid URL (check the host part)") from None
    # A raw / ? or # in the password ends the host part early, so the error shows up
    # as a bad port, fragment or parameter: say what the likely cause is.
    cut = "@" in text.split("://", 1)[1] and "@" not in parts.netloc
    hint = (
        "; if the password contains / ? # @ : % or spaces, percent-encode them "
        "(/ is %2F, ? %3F, # %23, @ %40, : %3A, % %25)"
        if cut
        else ""
    )
    fields: dict[str, Any] = {}
    hostinfo = parts.netloc.rpartition("@")[2]
    if "," in hostinfo:
        raise ConfigError(f"{where}: several hosts in one URL are not supported")
    if parts.hostname:
        fields["host"] = unquote(parts.hostname)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{where}: the port must be a number between 1 and 65535{hint}") from None
    if port is not None:
        if port == 0:
            raise ConfigError(f"{where}: the port must be a number between 1 and 65535")
        fields["port"] = port
    if parts.username:
        fields["user"] = unquote(parts.username)
    if parts.password:
        fields["password"] = unquote(parts.password)
    dbname = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
    if dbname:
        fields["database"] = dbname
    if parts.fragment:
        raise ConfigError(f"{where}: a URL fragment ('#...') is not allowed{hint}")
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        field = _URL_PARAMS.get(name)
        if field is None:
            raise ConfigError(
                f"{where}: query parameter '{name}' is not supported "
                f"(supported: {', '.join(_URL_PARAMS)}){hint}"
            )
        if value == "":
            continue
        fields[field] = _DATABASE_KEYS[field](value, f"{where}: parameter {name}")
    return fields


def database_from_url(url: str, *, source: str = "DATABASE_URL") -> DatabaseConfig:
    """A DatabaseConfig from a postgresql:// or postgres:// URL; defaults fill the gaps.

    Supports `?sslmode=`, `?host=/socket/dir` and the other libpq parameters in
    `_URL_PARAMS`. Errors name `source` and never repeat the URL (it may hold
    the password).
    """
    return dataclasses.replace(DatabaseConfig(), **_url_fields(url, source))


def _env_fields(env: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Fields set by PG* variables, and the names of the variables that were used."""
    fields: dict[str, Any] = {}
    used: list[str] = []
    for var, field in _PG_VARS.items():
        value = env.get(var, "")
        if value == "":
            continue  # libpq too treats an empty variable as unset
        fields[field] = _DATABASE_KEYS[field](value, f"environment variable {var}")
        used.append(var)
    return fields, used


def _file_database_fields(section: Mapping[str, object], where: str) -> dict[str, Any]:
    """Fields set by the file's `database:` section (its `url:` first, then single keys)."""
    fields: dict[str, Any] = {}
    known = [*_DATABASE_KEYS, *_DATABASE_ALIASES, "url"]
    for alias, field in _DATABASE_ALIASES.items():
        if section.get(alias) not in (None, "") and section.get(field) not in (None, ""):
            raise ConfigError(
                f"{where}.{alias}: give the database name once, as {where}.{field} or "
                f"{where}.{alias}, not both"
            )
    url = section.get("url")
    if url not in (None, ""):
        if not isinstance(url, str):
            raise ConfigError(f"{where}.url: expected a string, got {_type_name(url)}")
        fields.update(_url_fields(url, f"{where}.url"))
    for key, value in section.items():
        if key == "url":
            continue
        field = _DATABASE_ALIASES.get(key, key)
        if field not in _DATABASE_KEYS:
            raise _unknown_key(f"{where}.{key}", key, known)
        if value is None or value == "":
            continue  # empty means "not set here": lower layers apply
        fields[field] = _DATABASE_KEYS[field](value, f"{where}.{key}")
    return fields
