"""Market-data records as the collectors pass them from a source to a writer.

Records are validated when they are built, at the edge where exchange data
enters the engine, so a malformed message is refused with the field named
instead of failing a whole database batch later.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Literal

__all__ = ["BookTicker", "RecordError", "Side", "Trade", "parse_record"]

Side = Literal["buy", "sell"]

# numeric(20,8) holds at most 12 integer digits; a larger value would fail the
# whole COPY batch with "numeric field overflow", so it is refused here.
_NUMERIC_LIMIT = Decimal(10) ** 12


class RecordError(ValueError):
    """A market-data message cannot become a record; the message names the field."""


@dataclasses.dataclass(frozen=True, slots=True)
class BookTicker:
    """Best bid and ask of one pair on one exchange at one moment."""

    timestamp: dt.datetime
    exchange: str
    symbol_base: str
    symbol_quote: str
    bid_price: Decimal
    bid_qty: Decimal
    ask_price: Decimal
    ask_qty: Decimal

    def __post_init__(self) -> None:
        _check_common(self.timestamp, self.exchange, self.symbol_base, self.symbol_quote)
        for name in ("bid_price", "bid_qty", "ask_price", "ask_qty"):
            _check_amount(name, getattr(self, name), allow_zero=True)

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> BookTicker:
        """Build from a decoded JSON message (replay files, websocket payloads)."""
        base, quote = _pair(data)
        return cls(
            timestamp=_timestamp(data.get("timestamp")),
            exchange=_text(data, "exchange").upper(),
            symbol_base=base,
            symbol_quote=quote,
            bid_price=_decimal(data, "bid_price"),
            bid_qty=_decimal(data, "bid_qty"),
            ask_price=_decimal(data, "ask_price"),
            ask_qty=_decimal(data, "ask_qty"),
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Trade:
    """One executed trade as the exchange reported it.

    `symbol` is the exchange's raw symbol (e.g. 'BTC_USDT'); when absent the
    writer stores 'BASE/QUOTE'. `trade_id` is the exchange's id and the key of
    deduplication: the same trade replayed after a reconnect is stored once.
    """

    timestamp: dt.datetime
    exchange: str
    symbol_base: str
    symbol_quote: str
    price: Decimal
    quantity: Decimal
    side: Side
    trade_id: str | None = None
    symbol: str | None = None
    quote_quantity: Decimal | None = None
    is_buyer: bool | None = None
    is_maker: bool | None = None

    def __post_init__(self) -> None:
        _check_common(self.timestamp, self.exchange, self.symbol_base, self.symbol_quote)
        _check_amount("price", self.price, allow_zero=False)
        _check_amount("quantity", self.quantity, allow_zero=False)
        if self.quote_quantity is not None:
            _check_amount("quote_quantity", self.quote_quantity, allow_zero=True)
        if self.side not in ("buy", "sell"):
            raise RecordError(f"side must be 'buy' or 'sell', got {self.side!r}")
        if self.trade_id is not None and not 0 < len(self.trade_id) <= 100:
            raise RecordError(f"trade_id must be 1..100 characters, got {self.trade_id!r}")
        if self.symbol is not None and not 0 < len(self.symbol) <= 50:
            raise RecordError(f"symbol must be 1..50 characters, got {self.symbol!r}")

    @property
    def stored_symbol(self) -> str:
        """What goes into trades.symbol: the raw symbol, else 'BASE/QUOTE'."""
        return self.symbol or f"{self.symbol_base}/{self.symbol_quote}"

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Trade:
        """Build from a decoded JSON message (replay files, websocket payloads)."""
        base, quote = _pair(data)
        trade_id = data.get("trade_id")
        symbol = data.get("symbol")
        side = str(data.get("side", "")).lower()
        if side not in ("buy", "sell"):
            raise RecordError(f"side must be 'buy' or 'sell', got {data.get('side')!r}")
        return cls(
            timestamp=_timestamp(data.get("timestamp")),
            exchange=_text(data, "exchange").upper(),
            symbol_base=base,
            symbol_quote=quote,
            price=_decimal(data, "price"),
            quantity=_decimal(data, "quantity"),
            side="buy" if side == "buy" else "sell",
            trade_id=None if trade_id is None else str(trade_id),
            symbol=None if symbol is None else str(symbol),
            quote_quantity=(
                None if data.get("quote_quantity") is None else _decimal(data, "quote_quantity")
            ),
            is_buyer=_optional_bool(data, "is_buyer"),
            is_maker=_optional_bool(data, "is_maker"),
        )


def parse_record(data: Mapping[str, object]) -> BookTicker | Trade:
    """Dispatch on the message's "type": "book_ticker" or "trade"."""
    kind = data.get("type")
    if kind == "book_ticker":
        return BookTicker.from_json(data)
    if kind == "trade":
        return Trade.from_json(data)
    raise RecordError(f"type must be 'book_ticker' or 'trade', got {kind!r}")


def _check_common(timestamp: dt.datetime, exchange: str, base: str, quote: str) -> None:
    # A naive datetime would be read in the session time zone: silently wrong.
    if timestamp.tzinfo is None or timestamp.utcoffset() is None:
        raise RecordError(f"timestamp must carry a time zone, got {timestamp.isoformat()}")
    if not 0 < len(exchange) <= 50:
        raise RecordError(f"exchange must be 1..50 characters, got {exchange!r}")
    for name, value in (("symbol_base", base), ("symbol_quote", quote)):
        if not 0 < len(value) <= 20:
            raise RecordError(f"{name} must be 1..20 characters, got {value!r}")


def _check_amount(name: str, value: Decimal, *, allow_zero: bool) -> None:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise RecordError(f"{name} must be a finite Decimal, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise RecordError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    if value >= _NUMERIC_LIMIT:
        raise RecordError(f"{name} {value} does not fit numeric(20,8)")


def _text(data: Mapping[str, object], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise RecordError(f"{key} must be a non-empty string, got {value!r}")
    return value


def _pair(data: Mapping[str, object]) -> tuple[str, str]:
    return _text(data, "symbol_base").upper(), _text(data, "symbol_quote").upper()


def _decimal(data: Mapping[str, object], key: str) -> Decimal:
    value = data.get(key)
    # Floats go through str() so 0.1 stays 0.1 rather than its binary expansion.
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RecordError(f"{key} must be a number or numeric string, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise RecordError(f"{key} must be finite, got {value!r}")
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise RecordError(f"{key} is not a number: {value!r}") from None


def _optional_bool(data: Mapping[str, object], key: str) -> bool | None:
    value = data.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise RecordError(f"{key} must be true, false or absent, got {value!r}")


def _timestamp(value: object) -> dt.datetime:
    """ISO 8601 text, or epoch milliseconds as exchanges send them."""
    if isinstance(value, bool):
        raise RecordError(f"timestamp must be ISO 8601 or epoch milliseconds, got {value!r}")
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value / 1000, tz=dt.timezone.utc)
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise RecordError(f"timestamp is not ISO 8601: {value!r}") from None
        if parsed.tzinfo is None:
            raise RecordError(f"timestamp must carry a time zone, got {value!r}")
        return parsed
    raise RecordError(f"timestamp must be ISO 8601 or epoch milliseconds, got {value!r}")
