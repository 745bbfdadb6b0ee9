"""Converters: each takes a value and where it came from; returns it typed, or says why not."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from cex_arbitrage.errors import ConfigError

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


_ROLE_NAME = re.compile(r"[a-z_][a-z0-9_$]{0,62}")


def _role_name(value: object, where: str) -> object:
    """A role name as SQL writes it unquoted (lower case): a typo'd or quoted-only name
    would be created as a new role, cluster-wide, and the real one left without grants."""
    text = _text()(value, where)
    assert isinstance(text, str)
    if not _ROLE_NAME.fullmatch(text):
        raise ConfigError(
            f"{where}: {text!r} is not a plain role name; use lower-case letters, digits, "
            "_ and $ (starting with a letter or _), at most 63 characters, as the role "
            "is named in PostgreSQL (\\du in psql lists them)"
        )
    return text
