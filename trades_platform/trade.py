"""The trade record: what every writer (live, backfill, heal) puts on the `trades` topic.

The first five fields are the original trades service's contract; candle services downstream read
exactly those, so they are never renamed. New fields are only ever added.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

Source = Literal["live", "backfill", "heal"]
Side = Literal["buy", "sell"]
OrderType = Literal["market", "limit"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PAIR_PATTERN = r"^[A-Z0-9]{1,16}/[A-Z0-9]{1,16}$"


class Trade(BaseModel):
    """One Kraken trade, as written to the topic (JSON value, key `BTC-USD`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pair: str = Field(pattern=_PAIR_PATTERN, description="WebSocket v2 pair name, e.g. BTC/USD")
    price: float = Field(gt=0, allow_inf_nan=False)
    volume: float = Field(gt=0, allow_inf_nan=False)
    timestamp: str = Field(description="Trade time, ISO-8601 UTC with microseconds and a Z")
    timestamp_ms: int = Field(ge=0, description="Trade time, milliseconds since the Unix epoch")
    trade_id: int = Field(gt=0, description="Kraken's trade id, sequential per pair")
    side: Side
    ord_type: OrderType
    exchange: Literal["kraken"] = "kraken"
    source: Source

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
    ) -> Trade:
        """Build a record from already-validated Kraken fields, deriving both timestamps."""
        # The caller validated every field (see kraken.protocol); re-validating here would double
        # the cost of the hot path for nothing.
        return cls.model_construct(
            pair=pair,
            price=price,
            volume=volume,
            timestamp=format_time_us(time_us),
            timestamp_ms=time_us // 1000,
            trade_id=trade_id,
            side=side,
            ord_type=ord_type,
            exchange="kraken",
            source=source,
        )

    @property
    def message_key(self) -> str:
        """The Kafka message key: the pair with a dash, as the original service wrote it."""
        return message_key_for(self.pair)

    def to_json(self) -> bytes:
        """The JSON message value."""
        return orjson.dumps(self.model_dump())


def message_key_for(pair: str) -> str:
    """`BTC/USD` -> `BTC-USD`."""
    return pair.replace("/", "-")


def format_time_us(time_us: int) -> str:
    """Microseconds since the epoch -> `2023-09-25T07:49:37.708706Z`."""
    moment = _EPOCH + timedelta(microseconds=time_us)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
    """Kraken REST float seconds -> integer microseconds, without float drift past the 6th digit."""
    if not math.isfinite(seconds):
        raise ValueError(f"time {seconds!r} is not finite")
    # repr() gives the shortest decimal that round-trips, which is what Kraken printed.
    whole, _, fraction = repr(float(seconds)).partition(".")
    if "e" in whole or "e" in fraction:
        return round(seconds * 1_000_000)
    micros = (fraction + "0000000")[:7]
    value = int(whole) * 1_000_000 + int(micros[:6])
    return value + (1 if int(micros[6]) >= 5 else 0)
