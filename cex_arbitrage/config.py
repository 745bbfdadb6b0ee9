"""Settings of the engine and the migrate CLI, from config.yaml, the environment and defaults.

One loader for both, so that `./migrate.sh` reaches exactly the database the
engine will use. The connection follows libpq's habits, each layer overriding
only the fields it sets: defaults < PG* variables < DATABASE_URL < the file's
`database:` section. Every error is a `ConfigError` that names the file and key
(or the environment variable) at fault, and never contains a password.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml

from cex_arbitrage.db.migrations.errors import ConfigError
from cex_arbitrage.db.structs import DEFAULT_FEATURES, SSL_MODES, DatabaseConfig

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_FEATURES",
    "AppConfig",
    "CollectorSettings",
    "MigrationSettings",
    "database_from_url",
    "load_config",
]

CONFIG_ENV = "CEX_CONFIG"
"""Environment variable naming the config file when --config is not given."""

DEFAULT_CONFIG_NAME = "config.yaml"

# Variables whose presence means "the operator told us where the database is".
_LOCATION_VARS = ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD")


@dataclass(frozen=True)
class MigrationSettings:
    """How the engine and the CLI run migrations (`migrations:` section)."""

    mode: Literal["apply", "wait"] = "apply"  # apply on boot, or only wait for schema
    lock_wait_timeout: float = 300.0  # seconds to wait for the runner's advisory lock
    wait_timeout: float = 600.0  # follower mode: give up after this
    boot_wait_timeout: float = 60.0  # database not up yet at boot: retry this long
    progress_interval: float = 10.0  # log a progress line this often while migrating
    app_role: str = "cex_app"
    readonly_role: str = "cex_readonly"
    backfill_batch_size: int = 50000
    backfill_sleep_ms: int = 0
    # Sessions a `parallel` step runs on at once (the 001 backfill shares its
    # chunks out among them); 1 runs it on the runner's connection only.
    parallel_sessions: int = 2
    run_background: bool = True


@dataclass(frozen=True)
class CollectorSettings:
    """Batching of the collectors' database writers (`collectors:` section)."""

    batch_size: int = 500
    flush_interval: float = 0.5
    max_retries: int = 5


@dataclass(frozen=True)
class AppConfig:
    """Everything the engine and the migrate CLI read from configuration."""

    database: DatabaseConfig
    features: Mapping[str, bool]
    migrations: MigrationSettings
    collectors: CollectorSettings
    source: str  # where the settings came from, for `status --verbose` and logs
    database_configured: bool  # False: nothing told us where the database is
    path: Path | None  # the config file used, if any

    def feature_enabled(self, name: str) -> bool:
        """Whether feature `name` is on; a feature nobody configured is off."""
        return self.features.get(name, DEFAULT_FEATURES.get(name, False))


# --------------------------------------------------------------------------
# value conversion: every converter gets the value and where it came from


_Convert = Callable[[object, str], object]


def _type_name(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _integer(minimum: int, maximum: int | None = None) -> _Convert:
    def convert(value: object, where: str) -> object:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            number = int(value)
        if number is None:
            raise ConfigError(
                f"{where}: expected an integer, got {_type_name(value)} {_shown(value)}"
            )
        if number < minimum or (maximum is not None and number > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ConfigError(f"{where}: must be {bound}, got {number}")
        return number

    return convert


def _seconds(positive: bool = False) -> _Convert:
    def convert(value: object, where: str) -> object:
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if number is None or not math.isfinite(number):
            raise ConfigError(
                f"{where}: expected a number of seconds, got {_type_name(value)} {_shown(value)}"
            )
        if number < 0 or (positive and number == 0):
            bound = "greater than 0" if positive else "0 or more"
            raise ConfigError(f"{where}: must be {bound} seconds, got {value}")
        return number

    return convert


_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0"})


def _boolean(value: object, where: str) -> object:
    # Strings are accepted so that `${TRADES_ENABLED:-true}` works: substitution
    # always yields text.
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
    raise ConfigError(
        f"{where}: expected a boolean (true or false), got {_type_name(value)} {_shown(value)}"
    )


def _text(secret: bool = False) -> _Convert:
    def convert(value: object, where: str) -> object:
        if isinstance(value, str):
            if not value.strip() and not secret:
                raise ConfigError(f"{where}: must not be empty")
            return value
        shown = "" if secret else " " + _shown(value)
        hint = "; put it in quotes" if isinstance(value, (int, float)) else ""
        raise ConfigError(f"{where}: expected a string, got {_type_name(value)}{shown}{hint}")

    return convert


def _choice(*choices: str) -> _Convert:
    def convert(value: object, where: str) -> object:
        if isinstance(value, str) and value in choices:
            return value
        raise ConfigError(f"{where}: must be one of {', '.join(choices)}; got {_shown(value)}")

    return convert


def _unknown_key(where: str, key: str, known: list[str], what: str = "key") -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else f"known {what}s: {', '.join(known)}"
    return ConfigError(f"{where}: unknown {what}; {hint}")


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
    fields: dict[str, Any] = {}
    hostinfo = parts.netloc.rpartition("@")[2]
    if "," in hostinfo:
        raise ConfigError(f"{where}: several hosts in one URL are not supported")
    if parts.hostname:
        fields["host"] = unquote(parts.hostname)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{where}: the port must be a number between 1 and 65535") from None
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
        raise ConfigError(f"{where}: a URL fragment ('#...') is not allowed")
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        field = _URL_PARAMS.get(name)
        if field is None:
            raise ConfigError(
                f"{where}: query parameter '{name}' is not supported "
                f"(supported: {', '.join(_URL_PARAMS)})"
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


# --------------------------------------------------------------------------
# the other sections


_MIGRATION_KEYS: dict[str, _Convert] = {
    "mode": _choice("apply", "wait"),
    "lock_wait_timeout": _seconds(),
    "wait_timeout": _seconds(),
    "boot_wait_timeout": _seconds(),
    "progress_interval": _seconds(positive=True),
    "app_role": _text(),
    "readonly_role": _text(),
    "backfill_batch_size": _integer(1),
    "backfill_sleep_ms": _integer(0),
    "parallel_sessions": _integer(1),
    "run_background": _boolean,
}

_COLLECTOR_KEYS: dict[str, _Convert] = {
    "batch_size": _integer(1),
    "flush_interval": _seconds(),
    "max_retries": _integer(0),
}


def _section_values(
    section: Mapping[str, object], where: str, keys: Mapping[str, _Convert]
) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in section.items():
        convert = keys.get(key)
        if convert is None:
            raise _unknown_key(f"{where}.{key}", key, list(keys))
        if value is None:
            continue
        values[key] = convert(value, f"{where}.{key}")
    return values


def _features(section: Mapping[str, object], where: str) -> dict[str, bool]:
    features = dict(DEFAULT_FEATURES)
    for key, value in section.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ConfigError(f"{where}.{key}: a feature name is letters, digits and '_'")
        features[key] = cast(bool, _boolean(value, f"{where}.{key}"))
    return features


# --------------------------------------------------------------------------
# the file: lookup, YAML, ${VAR} substitution


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice (YAML would keep the last silently)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
            continue
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"found the key '{key}' twice",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

_TOKEN = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_VARIABLE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(:-(.*))?", re.DOTALL)


def _substitute(text: str, env: Mapping[str, str], where: str, secret: bool) -> str:
    """Replace ${VAR} and ${VAR:-default}; `$${` stands for a literal `${`."""

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "$${":
            return "${"
        body = match.group(1)
        shown = "" if secret else f" '{token}'"
        form = "write ${VAR} or ${VAR:-default}, or $${ for a literal '${'"
        if body is None:
            raise ConfigError(f"{where}: unclosed substitution{shown}; {form}")
        variable = _VARIABLE.fullmatch(body)
        if variable is None or "${" in (variable.group(3) or ""):
            raise ConfigError(f"{where}: malformed substitution{shown}; {form}")
        name, default = variable.group(1), variable.group(3)
        value = env.get(name)
        if default is not None:
            return value if value else default  # shell rule: unset or empty
        if value is None:
            raise ConfigError(
                f"{where}: environment variable {name} is not set "
                f"(use ${{{name}:-default}} to give a default)"
            )
        return value

    return _TOKEN.sub(replace, text)


def _substituted(node: object, env: Mapping[str, str], label: str, keys: list[str]) -> object:
    """A copy of the parsed YAML with substitution applied to every string value."""
    where = f"{label}: {'.'.join(keys)}" if keys else label
    if isinstance(node, dict):
        result: dict[str, object] = {}
        for key, value in node.items():
            if not isinstance(key, str):
                raise ConfigError(f"{where}: key {key!r} must be a string")
            result[key] = _substituted(value, env, label, [*keys, key])
        return result
    if isinstance(node, list):
        return [_substituted(item, env, label, [*keys, str(i)]) for i, item in enumerate(node)]
    if isinstance(node, str):
        secret = bool(keys) and keys[-1] in _SECRET_KEYS
        return _substitute(node, env, where, secret)
    return node


def _locate(path: str | Path | None, env: Mapping[str, str], cwd: Path) -> tuple[Path, str] | None:
    """The config file to read and the label errors use for it, or None."""
    if path is not None:
        given, origin = Path(path), "--config"
    elif env.get(CONFIG_ENV):
        given, origin = Path(env[CONFIG_ENV]), CONFIG_ENV
    else:
        default = cwd / DEFAULT_CONFIG_NAME
        return (default, DEFAULT_CONFIG_NAME) if default.is_file() else None
    full = given if given.is_absolute() else cwd / given
    if not full.exists():
        raise ConfigError(f"config file {given} (from {origin}) does not exist")
    if not full.is_file():
        raise ConfigError(f"config file {given} (from {origin}) is not a file")
    return full, str(given)


def _read_yaml(file: Path, label: str) -> dict[str, object]:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{label}: cannot read the config file: {reason}") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        place = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or "malformed"
        context = f" ({exc.context}" if exc.context else ""
        start = exc.context_mark
        if context and start is not None and (mark is None or start.line != mark.line):
            context += f" that starts at line {start.line + 1}"
        context += ")" if context else ""
        raise ConfigError(f"{label}: {place}invalid YAML: {problem}{context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{label}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{label}: the top level must be a mapping of sections "
            f"(database:, features:, migrations:, collectors:), got {_type_name(data)}"
        )
    return cast(dict[str, object], data)


_SECTIONS = ("database", "features", "migrations", "collectors")


def _sections(data: Mapping[str, object], label: str) -> dict[str, Mapping[str, object]]:
    sections: dict[str, Mapping[str, object]] = {}
    for name, body in data.items():
        if name not in _SECTIONS:
            raise _unknown_key(f"{label}: {name}", name, list(_SECTIONS), "section")
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ConfigError(
                f"{label}: {name}: expected a mapping of keys, got {_type_name(body)}"
            )
        sections[name] = body
    return sections


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> AppConfig:
    """Read the configuration the way the engine and `./migrate.sh` both do.

    The file is `path` (--config), else $CEX_CONFIG, else ./config.yaml if it
    exists, else none. Relative paths are taken from `cwd`.
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

    pg_fields, pg_used = _env_fields(env)
    fields = dict(pg_fields)
    url = env.get("DATABASE_URL", "")
    if url:
        fields.update(_url_fields(url, "environment variable DATABASE_URL"))
    fields.update(_file_database_fields(sections.get("database", {}), f"{prefix}database"))
    database = dataclasses.replace(DatabaseConfig(), **fields)
    if database.pool_min_size > database.pool_max_size:
        raise ConfigError(
            f"{prefix}database: pool_min_size ({database.pool_min_size}) is larger than "
            f"pool_max_size ({database.pool_max_size})"
        )

    features = _features(sections.get("features", {}), f"{prefix}features")
    migrations = dataclasses.replace(
        MigrationSettings(),
        **_section_values(sections.get("migrations", {}), f"{prefix}migrations", _MIGRATION_KEYS),
    )
    collectors = dataclasses.replace(
        CollectorSettings(),
        **_section_values(sections.get("collectors", {}), f"{prefix}collectors", _COLLECTOR_KEYS),
    )

    origins: list[str] = []
    if located is not None:
        resolved = located[0].resolve()
        label = located[1]
        origins.append(label if label == str(resolved) else f"{label} ({resolved})")
    if url:
        origins.append("DATABASE_URL")
    if pg_used:
        origins.append("PG* environment")
    configured = located is not None or bool(url) or any(env.get(var) for var in _LOCATION_VARS)
    return AppConfig(
        database=database,
        features=MappingProxyType(features),
        migrations=migrations,
        collectors=collectors,
        source=" + ".join(origins) if origins else "defaults",
        database_configured=configured,
        path=located[0].resolve() if located is not None else None,
    )
