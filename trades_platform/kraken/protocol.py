"""Kraken's wire formats: the one place that turns a Kraken message into trade records.

WebSocket v2 frames go through `parse_frame`; REST `/0/public/Trades` rows go through
`parse_rest_row`. Both validate every field, so a malformed message becomes a counted
rejection with a reason, never an exception in the caller and never a lost good trade.
"""

from __future__ import annotations

import math
import re
import reprlib
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError

from trades_platform.trade import (
    CLOCK_MARGIN_MS,
    EARLIEST_TRADE_MS,
    MAX_ID_BURST,
    MAX_TRADE_ID,
    MAX_TRADES_PER_SECOND,
    PAIR_PATTERN,
    OrderType,
    Side,
    Source,
    Trade,
    canonical_time_us,
    implausible_reason,
    parse_time_iso,
    seconds_to_time_us,
)

# Rejection reasons show input values through this: bounded in length and in depth, so an item
# nested a thousand levels deep cannot make the reason itself fail (RecursionError).
_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxstring, _SHORT_REPR.maxother, _SHORT_REPR.maxlong = (
    2,
    60,
    60,
    40,
)
_SHORT_REPR.maxlist = _SHORT_REPR.maxtuple = _SHORT_REPR.maxdict = 4


def short_repr(value: Any) -> str:
    """A short repr of any input value (rejection reasons, dead letters); never raises."""
    return _SHORT_REPR.repr(value)


# Frames larger than this are rejected unparsed: Kraken's largest real frames are a few kB.
MAX_FRAME_BYTES = 1_048_576


class _KrakenTradeItem(BaseModel):
    """One element of a `trade` frame's `data` array, as Kraken documents it."""

    model_config = ConfigDict(extra="ignore")

    symbol: str = Field(pattern=PAIR_PATTERN)
    side: Literal["buy", "sell"]
    # Strict: Kraken sends JSON numbers; a string here means the format changed under us.
    price: StrictFloat | StrictInt = Field(gt=0)
    qty: StrictFloat | StrictInt = Field(gt=0)
    ord_type: Literal["market", "limit"]
    trade_id: StrictInt = Field(gt=0)
    timestamp: str


@dataclass(frozen=True, slots=True)
class RejectedItem:
    """A part of a message that could not be turned into a trade, and why."""

    reason: str
    raw: Any


@dataclass(frozen=True, slots=True)
class TradesMessage:
    """A `trade` channel frame: its valid trades and whatever items were rejected."""

    trades: list[Trade]
    rejected: list[RejectedItem]
    is_snapshot: bool


@dataclass(frozen=True, slots=True)
class StatusMessage:
    """The `status` frame Kraken sends on connect and when the system state changes."""

    system: str
    api_version: str | None
    version: str | None


@dataclass(frozen=True, slots=True)
class SubscribeAck:
    """The acknowledgment of one symbol of a subscribe request."""

    symbol: str | None
    success: bool
    error: str | None
    req_id: int | None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Kraken's once-a-second liveness frame."""


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to our application-level ping."""

    req_id: int | None


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    """A method response with `success: false` that is not a subscribe ack."""

    method: str | None
    error: str


@dataclass(frozen=True, slots=True)
class IgnoredMessage:
    """A well-formed frame this platform has no use for (another channel, another method)."""

    description: str


@dataclass(frozen=True, slots=True)
class MalformedMessage:
    """A frame that is not valid Kraken JSON at all; the raw text goes to the dead-letter log."""

    reason: str
    raw: str | bytes = field(repr=False)


KrakenMessage = (
    TradesMessage
    | StatusMessage
    | SubscribeAck
    | Heartbeat
    | Pong
    | ErrorMessage
    | IgnoredMessage
    | MalformedMessage
)


def parse_frame(
    raw: str | bytes, source: Source = "live", received_ms: int | None = None
) -> KrakenMessage:
    """Parse one WebSocket v2 frame (arrived at `received_ms`); never raises on bad input."""
    if len(raw) > MAX_FRAME_BYTES:
        return MalformedMessage(f"frame of {len(raw)} bytes exceeds {MAX_FRAME_BYTES}", raw)
    try:
        frame = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        return MalformedMessage(f"invalid JSON: {error}", raw)
    if not isinstance(frame, dict):
        return MalformedMessage(f"frame is a JSON {type(frame).__name__}, not an object", raw)

    channel = frame.get("channel")
    if channel == "trade":
        return _trades_message(frame, raw, source, received_ms)
    if channel == "heartbeat":
        return Heartbeat()
    if channel == "status":
        return _status_message(frame, raw)
    if channel is not None:
        return IgnoredMessage(f"channel {short_repr(channel)}")

    method = frame.get("method")
    if method == "pong":
        return Pong(req_id=_optional_int(frame.get("req_id")))
    if method == "subscribe":
        return _subscribe_ack(frame)
    if frame.get("success") is False:
        return ErrorMessage(method=_optional_str(method), error=str(frame.get("error")))
    if method is not None:
        return IgnoredMessage(f"method {short_repr(method)}")
    return MalformedMessage("frame has neither a channel nor a method", raw)


def _trades_message(
    frame: dict[str, Any], raw: str | bytes, source: Source, received_ms: int | None
) -> KrakenMessage:
    frame_type = frame.get("type")
    data = frame.get("data")
    if frame_type not in ("snapshot", "update"):
        return MalformedMessage(f"trade frame with type {short_repr(frame_type)}", raw)
    if not isinstance(data, list):
        return MalformedMessage("trade frame without a data array", raw)
    trades: list[Trade] = []
    rejected: list[RejectedItem] = []
    for item in data:
        trade = _well_formed_trade(item, source, received_ms) if type(item) is dict else None
        if trade is None:
            verdict = _validated_trade(item, source, received_ms)
            if isinstance(verdict, str):
                rejected.append(RejectedItem(verdict, item))
                continue
            trade = verdict
        trades.append(trade)
    return TradesMessage(trades=trades, rejected=rejected, is_snapshot=frame_type == "snapshot")


# What `_KrakenTradeItem` accepts, checked by hand: a pydantic model per item cost about 1.6 µs,
# these checks about a third of that. Only the exact types orjson produces take this way.
_SYMBOL = re.compile(PAIR_PATTERN)
# A lookup instead of a membership test: it also gives the value its Literal type.
_SIDES: dict[str, Side] = {"buy": "buy", "sell": "sell"}
_ORDER_TYPES: dict[str, OrderType] = {"market": "market", "limit": "limit"}
# Symbols already matched; a connection sees the same few again and again.
_KNOWN_SYMBOLS: set[str] = set()
_KNOWN_SYMBOLS_MAX = 10_000
_INF = math.inf
# orjson reads larger integers as floats, so bigger ints never come from a frame; any that do
# take the slow way (where float() of a huge one overflows into a rejection).
_MAX_FAST_INT = 2**63


_EARLIEST_TRADE_US = EARLIEST_TRADE_MS * 1000


def _latest_trade_us() -> int:
    """The latest time a trade arriving now may carry: now plus the clocks' margin."""
    return time.time_ns() // 1000 + CLOCK_MARGIN_MS * 1000


def _well_formed_trade(
    item: dict[str, Any], source: Source, received_ms: int | None
) -> Trade | None:
    """The trade of an item that is well-formed beyond doubt; None to let pydantic decide.

    Whatever this accepts, `_validated_trade` accepts too, into an equal Trade. Anything else, a
    bad item or an unusual valid one (a `+00:00` time, a bytes symbol), goes there for its
    verdict and, if rejected, its reason.
    """
    try:
        # Subscripts, not .get(): cheaper, and a missing key is a KeyError (pydantic's call).
        symbol, price, qty = item["symbol"], item["price"], item["qty"]
        side, ord_type = item["side"], item["ord_type"]
        trade_id, timestamp = item["trade_id"], item["timestamp"]
    except KeyError:
        return None
    if type(symbol) is not str:
        return None
    if symbol not in _KNOWN_SYMBOLS:
        if _SYMBOL.fullmatch(symbol) is None:
            return None
        if len(_KNOWN_SYMBOLS) >= _KNOWN_SYMBOLS_MAX:
            _KNOWN_SYMBOLS.clear()
        _KNOWN_SYMBOLS.add(symbol)
    # Inline rather than a helper per number: this runs for every trade.
    if type(price) is float:
        if not 0.0 < price < _INF:
            return None
    elif type(price) is int and 0 < price < _MAX_FAST_INT:
        price = float(price)
    else:
        return None
    if type(qty) is float:
        if not 0.0 < qty < _INF:
            return None
    elif type(qty) is int and 0 < qty < _MAX_FAST_INT:
        qty = float(qty)
    else:
        return None
    if type(side) is not str or type(ord_type) is not str:
        return None
    trade_side, trade_ord_type = _SIDES.get(side), _ORDER_TYPES.get(ord_type)
    if (
        trade_side is None
        or trade_ord_type is None
        or type(trade_id) is not int
        or not 0 < trade_id <= MAX_TRADE_ID
        or type(timestamp) is not str
    ):
        return None
    time_us = canonical_time_us(timestamp)
    if time_us is None or not _EARLIEST_TRADE_US <= time_us <= _latest_trade_us():
        return None
    # `implausible_reason`'s pace bound, inline: more ids than any pair could have had by then.
    if (
        trade_id
        > MAX_TRADES_PER_SECOND * ((time_us - _EARLIEST_TRADE_US) // 1_000_000) + MAX_ID_BURST
    ):
        return None
    return Trade.from_parts(
        pair=symbol,
        price=price,
        volume=qty,
        time_us=time_us,
        trade_id=trade_id,
        side=trade_side,
        ord_type=trade_ord_type,
        source=source,
        received_ms=received_ms,
        timestamp=timestamp,
    )


def _validated_trade(item: Any, source: Source, received_ms: int | None) -> Trade | str:
    """Validate with `_KrakenTradeItem`: the reference verdict, with a reason when it rejects."""
    try:
        checked = _KrakenTradeItem.model_validate(item)
        price, qty = float(checked.price), float(checked.qty)
        if not (math.isfinite(price) and math.isfinite(qty)):
            return "price or qty is not finite"
        time_us = parse_time_iso(checked.timestamp)
    except ValidationError as error:
        return _short_validation_reason(error)
    except (TypeError, ValueError, OverflowError) as error:
        return f"invalid trade: {error}"
    # Well-formed is not enough: an id past MAX_TRADE_ID or a time no trade can have would
    # become the writer's resume point (every later trade a "repeat") or a wrong candle.
    implausible = implausible_reason(checked.trade_id, time_us // 1000, _latest_trade_us() // 1000)
    if implausible is not None:
        return f"implausible trade: {implausible}"
    return Trade.from_parts(
        pair=checked.symbol,
        price=price,
        volume=qty,
        time_us=time_us,
        trade_id=checked.trade_id,
        side=checked.side,
        ord_type=checked.ord_type,
        source=source,
        received_ms=received_ms,
    )


def _status_message(frame: dict[str, Any], raw: str | bytes) -> KrakenMessage:
    data = frame.get("data")
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        return MalformedMessage("status frame without data", raw)
    status = data[0]
    return StatusMessage(
        system=str(status.get("system")),
        api_version=_optional_str(status.get("api_version")),
        version=_optional_str(status.get("version")),
    )


def _subscribe_ack(frame: dict[str, Any]) -> SubscribeAck:
    result = frame.get("result")
    symbol = frame.get("symbol")
    if symbol is None and isinstance(result, dict):
        symbol = result.get("symbol")
    return SubscribeAck(
        symbol=_optional_str(symbol),
        success=frame.get("success") is True,
        error=_optional_str(frame.get("error")),
        req_id=_optional_int(frame.get("req_id")),
    )


_REST_SIDES: dict[str, Literal["buy", "sell"]] = {"b": "buy", "s": "sell"}
_REST_ORDER_TYPES: dict[str, Literal["market", "limit"]] = {"m": "market", "l": "limit"}


@dataclass(frozen=True, slots=True)
class RestTradeRow:
    """A validated REST trade row, before it becomes a record (its time decides its partition)."""

    trade_id: int
    time_us: int
    price: float
    volume: float
    side: Literal["buy", "sell"]
    ord_type: Literal["market", "limit"]

    def to_trade(self, pair: str, source: Source, received_ms: int | None = None) -> Trade:
        """The topic record for this row (its REST answer arrived at `received_ms`)."""
        return Trade.from_parts(
            pair=pair,
            price=self.price,
            volume=self.volume,
            time_us=self.time_us,
            trade_id=self.trade_id,
            side=self.side,
            ord_type=self.ord_type,
            source=source,
            received_ms=received_ms,
        )


def parse_rest_row(row: Any) -> RestTradeRow | str:
    """One `/0/public/Trades` row `[price, volume, time, b|s, m|l, misc, id]` -> row or reason."""
    if not isinstance(row, list) or len(row) < 7:
        return "row is not a list of 7 fields"
    # Unpacking the row itself saves a copy in the usual case of exactly 7 fields.
    fields = row if len(row) == 7 else row[:7]
    price_text, volume_text, time_s, side, ord_type, _misc, trade_id = fields
    if not isinstance(price_text, str) or not isinstance(volume_text, str):
        return "price and volume must be decimal strings"
    # A str check first: an unhashable side (a list, say) must be a reason, not a TypeError.
    rest_side = _REST_SIDES.get(side) if isinstance(side, str) else None
    rest_ord_type = _REST_ORDER_TYPES.get(ord_type) if isinstance(ord_type, str) else None
    if rest_side is None or rest_ord_type is None:
        return f"unknown side {short_repr(side)} or order type {short_repr(ord_type)}"
    if type(trade_id) is not int or trade_id <= 0:
        return f"trade id {short_repr(trade_id)} is not a positive integer"
    if type(time_s) not in (int, float) or not 0 < time_s < _INF:
        return f"time {short_repr(time_s)} is not a positive number"
    reason = implausible_reason(trade_id, int(time_s * 1000), _latest_trade_us() // 1000)
    if reason is not None:
        return f"implausible trade: {reason}"
    try:
        price, volume = float(price_text), float(volume_text)
    except ValueError:
        return f"price {short_repr(price_text)} or volume {short_repr(volume_text)} is not a number"
    if not (0.0 < price < _INF and 0.0 < volume < _INF):
        return (
            f"price {short_repr(price_text)} and volume {short_repr(volume_text)} must be "
            "finite and positive"
        )
    return RestTradeRow(
        trade_id, seconds_to_time_us(time_s), price, volume, rest_side, rest_ord_type
    )


def _short_validation_reason(error: ValidationError) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "item"
    return f"invalid trade: {location}: {first['msg']} (got {short_repr(first.get('input'))})"


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _optional_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
