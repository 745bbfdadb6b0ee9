"""The `features:`, `migrations:` and `collectors:` sections."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, cast

from cex_arbitrage.config.values import (
    _boolean,
    _choice,
    _Convert,
    _integer,
    _role_name,
    _seconds,
)
from cex_arbitrage.db.structs import DEFAULT_FEATURES
from cex_arbitrage.errors import ConfigError
from cex_arbitrage.features import check_feature_name
from cex_arbitrage.features import unknown_key as _unknown_key

# --------------------------------------------------------------------------
# the other sections


_MIGRATION_KEYS: dict[str, _Convert] = {
    "mode": _choice("apply", "wait"),
    "lock_wait_timeout": _seconds(),
    "wait_timeout": _seconds(),
    "boot_wait_timeout": _seconds(),
    "progress_interval": _seconds(positive=True),
    "app_role": _role_name,
    "readonly_role": _role_name,
    "backfill_batch_size": _integer(1),
    "backfill_sleep_ms": _integer(0),
    "parallel_sessions": _integer(1),
    "run_background": _boolean,
    "background_retry_interval": _seconds(positive=True),
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


def _features(section: Mapping[str, object], where: str, known: Iterable[str]) -> dict[str, bool]:
    features = dict(DEFAULT_FEATURES)
    for key, value in section.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ConfigError(f"{where}.{key}: a feature name is letters, digits and '_'")
        check_feature_name(key, f"{where}.{key}", known)
        features[key] = cast(bool, _boolean(value, f"{where}.{key}"))
    return features
