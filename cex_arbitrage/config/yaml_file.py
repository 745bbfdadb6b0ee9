"""Reading config.yaml: duplicate keys refused, `${VAR}` / `${VAR:-default}` substituted."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import cast

from cex_arbitrage.config.connection import _SECRET_KEYS
from cex_arbitrage.config.values import (
    _type_name,
)
from cex_arbitrage.errors import ConfigError
from cex_arbitrage.features import unknown_key as _unknown_key

# --------------------------------------------------------------------------
# the file: lookup, YAML, ${VAR} substitution


CONFIG_ENV = "CEX_CONFIG"
"""Environment variable naming the config file when --config is not given."""

DEFAULT_CONFIG_NAME = "config.yaml"


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
    # PyYAML is imported only when there is a file to read: most runs have
    # none, and the import is a good part of the CLI's start-up.
    from cex_arbitrage.config.yaml_parse import parse_yaml

    data = parse_yaml(text, label)
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
