"""The trade record: what every writer (live, backfill, heal) puts on the `trades` topic.

The first five fields are the original trades service's contract; candle services downstream read
exactly those, so they are never renamed. New fields are only ever added.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

Source = Literal["live", "backfill", "heal"]
Side = Literal["buy", "sell"]
OrderType = Literal["market", "limit"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Per-second caches of the timestamp conversions; bounded, and trades come in time order.
_CACHE_SIZE = 4096
_SECOND_TEXT: dict[int, str] = {}
_SECOND_US: dict[str, int] = {}
# Clocks of different hosts (Kraken's, the writers', the readers') agree within this
# (ARCHITECTURE.md, assumption 2): claims, leases and trade times are judged with this margin.
CLOCK_MARGIN_MS = 10 * 60 * 1000
# Kraken's trade ids count up from 1 per pair (about 5e9 in 2026). One at or past 2**53 (the
# largest integer JSON readers keep exactly) is no Kraken id, and as a resume point it would make
# every later trade look like a repeat.
MAX_TRADE_ID = 2**53 - 1
# No trade on Kraken is older than this (2013-01-01 UTC).
EARLIEST_TRADE_MS = 1_356_998_400_000
# A pace no pair keeps up (Kraken's busiest trade a few hundred times a second at their peaks):
# ids cannot run ahead of it, from 2013 to a trade's time nor from one trade to the next.
MAX_TRADES_PER_SECOND = 10_000
# Ids allowed on top of that pace: a burst, and the clocks' margin between two trades' times.
MAX_ID_BURST = 1_000_000
# What a WebSocket v2 pair name looks like; the settings, the parsers and the record check it.
PAIR_PATTERN = r"^[A-Z0-9]{1,16}/[A-Z0-9]{1,16}$"


class Trade(BaseModel):
    """One Kraken trade, as written to the topic (JSON value, key `BTC-USD`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pair: str = Field(pattern=PAIR_PATTERN, description="WebSocket v2 pair name, e.g. BTC/USD")
    price: float = Field(gt=0, allow_inf_nan=False)
    volume: float = Field(gt=0, allow_inf_nan=False)
    timestamp: str = Field(description="Trade time, ISO-8601 UTC with microseconds and a Z")
    timestamp_ms: int = Field(ge=0, description="Trade time, milliseconds since the Unix epoch")
    trade_id: int = Field(gt=0, description="Kraken's trade id, sequential per pair")
    side: Side
    ord_type: OrderType
    exchange: Literal["kraken"] = "kraken"
    source: Source
    received_ms: int | None = Field(
        default=None,
        ge=0,
        description="When the platform received the trade from Kraken, ms since the Unix epoch "
        "(wall clock): the WebSocket frame's arrival for `live`, the REST answer's for `heal` and "
        "`backfill`; null in records written before this field existed",
    )

    @model_validator(mode="after")
    def _timestamps_agree(self) -> Trade:
        """Reject a record whose two timestamps disagree or whose ISO form is not canonical."""
        expected_iso = format_time_us(parse_time_iso(self.timestamp))
        if self.timestamp != expected_iso:
            raise ValueError(f"timestamp {self.timestamp!r} is not canonical ({expected_iso!r})")
        if self.timestamp_ms != parse_time_iso(self.timestamp) // 1000:
            raise ValueError("timestamp_ms does not match timestamp")
        return self

    @classmethod
    def from_parts(
        cls,
        *,
        pair: str,
        price: float,
        volume: float,
        time_us: int,
        trade_id: int,
        side: Side,
        ord_type: OrderType,
        source: Source,
        received_ms: int | None = None,
        timestamp: str | None = None,
    ) -> Trade:
        """Build a record from already-validated Kraken fields, deriving both timestamps.

        `timestamp`, when the caller already has it, must be `format_time_us(time_us)`.
        """
        # The caller validated every field (see kraken.protocol); re-validating here would double
        # the cost of the hot path for nothing.
        return trade_from_fields(
            {
                "pair": pair,
                "price": price,
                "volume": volume,
                "timestamp": format_time_us(time_us) if timestamp is None else timestamp,
                "timestamp_ms": time_us // 1000,
                "trade_id": trade_id,
                "side": side,
                "ord_type": ord_type,
                "exchange": "kraken",
                "source": source,
                "received_ms": received_ms,
            }
        )

    @property
    def time_us(self) -> int:
        """The trade's exact time, µs since the Unix epoch (`timestamp_ms` is cut to the ms)."""
        exact = canonical_time_us(self.timestamp)
        return exact if exact is not None else parse_time_iso(self.timestamp)

    @property
    def message_key(self) -> str:
        """The Kafka message key: the pair with a dash, as the original service wrote it."""
        return message_key_for(self.pair)

    def to_json(self) -> bytes:
        """The JSON message value."""
        # Every field is a plain str/int/float, so the field dict serializes exactly as
        # `model_dump()` would, without pydantic's serializer pass.
        return orjson.dumps(self.__dict__)


_FIELD_NAMES = frozenset(Trade.model_fields)
_new_model = object.__new__
_set = object.__setattr__


def trade_from_fields(fields: dict[str, Any]) -> Trade:
    """A Trade holding `fields` as they are: every field, in declaration order, validated.

    What `Trade.model_construct` does, minus its generic per-field loop (aliases, defaults), which
    was about a third of its cost.
    """
    trade = _new_model(Trade)
    _set(trade, "__dict__", fields)
    _set(trade, "__pydantic_fields_set__", set(_FIELD_NAMES))
    _set(trade, "__pydantic_extra__", None)
    _set(trade, "__pydantic_private__", None)
    return trade


def message_key_for(pair: str) -> str:
    """`BTC/USD` -> `BTC-USD`."""
    return pair.replace("/", "-")


def format_time_us(time_us: int) -> str:
    """Microseconds since the epoch -> `2023-09-25T07:49:37.708706Z`."""
    seconds, micros = divmod(time_us, 1_000_000)
    prefix = _SECOND_TEXT.get(seconds)
    if prefix is None:
        # strftime is the slow part, and consecutive trades mostly share their second.
        prefix = (_EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
        if len(_SECOND_TEXT) >= _CACHE_SIZE:
            _SECOND_TEXT.clear()
        _SECOND_TEXT[seconds] = prefix
    return f"{prefix}.{micros:06d}Z"


def canonical_time_us(text: str) -> int | None:
    """Microseconds of a timestamp already in the record's form (`...37.708706Z`), else None.

    Kraken's v2 timestamps are in exactly that form, so the record can reuse the text as it is;
    None sends the caller to the general `parse_time_iso` + `format_time_us`.
    """
    if len(text) != 27 or text[19] != "." or text[26] != "Z":
        return None
    micros = text[20:26]
    if not (micros.isascii() and micros.isdigit()):
        return None
    prefix = text[:19]
    second_us = _SECOND_US.get(prefix)
    if second_us is None:
        try:
            second_us = parse_time_iso(prefix + "Z")
        except ValueError:
            return None
        # Only a prefix that formats back to itself is canonical (not `2024-01-02 00:00:00`).
        if format_time_us(second_us)[:19] != prefix:
            return None
        if len(_SECOND_US) >= _CACHE_SIZE:
            _SECOND_US.clear()
        _SECOND_US[prefix] = second_us
    return second_us + int(micros)


def parse_time_iso(text: str) -> int:
    """RFC 3339 UTC text (`...Z` or `+00:00`) -> microseconds since the epoch."""
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        raise ValueError(f"timestamp {text!r} is not RFC 3339") from None
    if moment.tzinfo is None or moment.utcoffset() != timedelta(0):
        raise ValueError(f"timestamp {text!r} is not UTC")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def seconds_to_time_us(seconds: float) -> int:
    """Kraken REST float seconds -> integer microseconds, without float drift past the 6th digit.

    The value is that of the shortest decimal that round-trips (what Kraken printed), rounded
    half up on its 7th decimal.
    """
    if not math.isfinite(seconds):
        raise ValueError(f"time {seconds!r} is not finite")
    value = float(seconds)
    if _EXACT_FROM <= value < _EXACT_UNTIL:
        # In 1987..2106 a double's spacing is 119-477 ns, so the shortest round-trip decimal has
        # at most 7 decimals and is the 100 ns step nearest the double (or a shorter decimal
        # within 110 ns of it, which rounds to the same microsecond). Integer maths finds that
        # step exactly, without repr().
        numerator, denominator = value.as_integer_ratio()
        steps = (numerator * 10_000_000 + denominator // 2) // denominator
        return (steps + 5) // 10
    # repr() gives the shortest decimal that round-trips, which is what Kraken printed.
    text = repr(value)
    if "e" in text:
        return round(seconds * 1_000_000)
    whole, _, fraction = text.partition(".")
    if len(fraction) > 6:
        # Half up on the 7th decimal (digits compare like their values).
        return int(whole) * 1_000_000 + int(fraction[:6]) + (fraction[6] >= "5")
    return int(whole) * 1_000_000 + int(fraction.ljust(6, "0"))


# Where `seconds_to_time_us` may skip repr(): [2**29, 2**32) seconds, 1987-01-05 to 2106-02-07.
_EXACT_FROM = float(2**29)
_EXACT_UNTIL = float(2**32)


def implausible_reason(trade_id: object, timestamp_ms: object, latest_ms: int) -> str | None:
    """Why a trade id and time read back from somewhere cannot be a Kraken trade, or None.

    `latest_ms`: the latest time a trade may have (now plus the clocks' margin).
    """
    if type(trade_id) is not int:
        return f"trade_id is not a whole number: {str(trade_id)[:40]!r}"
    if not 0 < trade_id <= MAX_TRADE_ID:
        return f"trade_id {str(trade_id)[:40]} is out of range (1 to {MAX_TRADE_ID})"
    if type(timestamp_ms) is not int:
        return f"timestamp_ms is not a whole number: {str(timestamp_ms)[:40]!r}"
    if not EARLIEST_TRADE_MS <= timestamp_ms <= latest_ms:
        return f"timestamp_ms {timestamp_ms} is before 2013 or in the future"
    # As if id 0 had traded in 2013: an id beyond what any pair could have counted up to by then.
    jump = implausible_jump(trade_id, timestamp_ms, 0, EARLIEST_TRADE_MS)
    return None if jump is None else f"more ids than any pair traded since 2013: {jump}"


def implausible_jump(higher_id: int, higher_ms: int, lower_id: int, lower_ms: int) -> str | None:
    """Why `higher_id` cannot follow `lower_id` of the same pair in that time, or None."""
    seconds = max(higher_ms - lower_ms, 0) // 1000
    allowed = MAX_TRADES_PER_SECOND * seconds + MAX_ID_BURST
    if higher_id - lower_id <= allowed:
        return None
    return (
        f"trade_id {higher_id} is {higher_id - lower_id} ids past {lower_id} in {seconds} s "
        f"(at most {allowed}: {MAX_TRADES_PER_SECOND} trades a second and {MAX_ID_BURST} more)"
    )
