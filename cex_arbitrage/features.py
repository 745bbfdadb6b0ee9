"""Feature flag names: which exist, and refusing a misspelt one with a suggestion.

A feature exists when `DEFAULT_FEATURES` names it or a migration of the set
being run declares it (`-- migrate:feature NAME`). A misspelt name must not be
accepted silently: `trade_colection: false` would leave `trade_collection` on
and run its migration. The config loader checks the `features:` section, the
migrate CLI checks that section and its `--feature` overrides against the
migration set it runs.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from cex_arbitrage.db.structs import DEFAULT_FEATURES
from cex_arbitrage.errors import ConfigError

__all__ = ["check_feature_name", "known_features", "unknown_key"]


def unknown_key(where: str, key: str, known: list[str], what: str = "key") -> ConfigError:
    """A ConfigError for an unknown `key`: the close known one, or all of them."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else f"known {what}s: {', '.join(known)}"
    return ConfigError(f"{where}: unknown {what}; {hint}")


def known_features(declared: Iterable[str | None] = ()) -> list[str]:
    """DEFAULT_FEATURES' names plus the features a migration set declares, sorted."""
    return sorted({*DEFAULT_FEATURES, *(name for name in declared if name)})


def check_feature_name(name: str, where: str, known: Iterable[str]) -> None:
    """Refuse a feature name no one defines, naming `where` it was given."""
    names = sorted(set(known))
    if name not in names:
        raise unknown_key(where, name, names, "feature")
