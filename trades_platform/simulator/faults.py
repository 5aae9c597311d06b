"""Fault switches (settable from the CLI and at runtime) and the malformed frames they emit."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Trade ids used in malformed items: never a real id (real ids start at 1), so a client that
# drops malformed items loses nothing real.
FAKE_TRADE_ID = 0

MALFORMED_KINDS: tuple[str, ...] = (
    "invalid_json",
    "missing_price",
    "string_qty",
    "negative_price",
    "non_finite_price",
    "unknown_channel",
    "oversized",
)
OVERSIZED_BYTES = (1 << 20) + 4096  # just over the 1 MiB that common clients accept

HOSTILE_KINDS: tuple[str, ...] = (
    # A text frame whose bytes are not UTF-8 (clients that skip UTF-8 checks for speed see them).
    "invalid_utf8",
    # A trade item nested a thousand levels deep: recursion in the client's error handling.
    "deeply_nested",
    # One frame of JUNK_ITEMS items that are all invalid: a flood of rejections from one frame.
    "junk_items",
)
# 349,500 empty objects ("{}", 3 bytes with the comma): a junk frame of just under 1 MiB
# (1,048,544 bytes), the size of frame that gave issue 12 its 520,000 warning events.
JUNK_ITEMS = 349_500
# The slow-message fault sends a heartbeat message this long, one character per fragment...
SLOW_MESSAGE_CHARACTERS = 60
# ...this many seconds apart: 30 s for the message, far past any client's watchdog.
SLOW_MESSAGE_INTERVAL_SECONDS = 0.5
# The giant-message fault's size: past the 16 MiB a client reads of one message.
GIANT_MESSAGE_BYTES = 17 << 20

# REST rate-limit answers the rest_rate_limit_next fault cycles through: (HTTP status, error).
RATE_LIMIT_ANSWERS: tuple[tuple[int, str], ...] = (
    (200, "EAPI:Rate limit exceeded"),
    (200, "EGeneral:Too many requests"),
    (429, "EAPI:Rate limit exceeded"),
)


@dataclass(slots=True)
class FaultSwitches:
    """Faults to inject; None or 0 switches a fault off."""

    # Close each WebSocket abruptly (no close frame, the client sees 1006) after N trades.
    drop_after_trades: int | None = None
    # Once per connection, after N trades, send nothing at all for stall_seconds.
    stall_after_trades: int | None = None
    stall_seconds: float = 5.0
    # After every N-th trade frame, send one extra malformed frame (kinds cycle).
    malformed_every_frames: int | None = None
    # After every N-th trade frame, send one hostile frame (HOSTILE_KINDS cycle): input meant
    # to crash or flood a client, not just bad data.
    hostile_every_frames: int | None = None
    # After every N-th trade frame, send one message a character per fragment, 0.5 s apart.
    slow_message_every_frames: int | None = None
    # After every N-th trade frame, send one message of GIANT_MESSAGE_BYTES.
    giant_message_every_frames: int | None = None
    # Answer the next N REST data requests with rate-limit errors.
    rest_rate_limit_next: int = 0
    # Leave out of update frames every trade whose id is a multiple of N (krakenfx/api-go #36).
    omit_every_nth_id: int | None = None
    # Leave out of update frames every trade sharing its timestamp with the id before it, so
    # only the first fill of each match arrives (krakenfx/api-go #36).
    omit_same_timestamp_followers: bool = False
    # Send the first trade after each left-out one this many seconds early (WebSocket only;
    # REST keeps its true time): a gap whose time runs backwards.
    backdate_after_gap_seconds: float = 0.0
    # Answer every /0/public/Trades request with HTTP 503 EService:Unavailable.
    rest_unavailable: bool = False
    # Hold every /0/public/Trades answer this long before sending it.
    rest_delay_seconds: float = 0.0
    # Answer every /0/public/Trades request with HTTP 302 to this URL (None: off).
    rest_redirect_to: str | None = None
    # Answer every /0/public/Trades request with a small gzip body that inflates to ~50 MB.
    rest_gzip_bomb: bool = False
    # Send every /0/public/Trades answer's body this many bytes per second (0: all at once).
    rest_trickle_bytes_per_second: float = 0.0
    # Answer every /0/public/Trades request with its rows but a `last` 2 ns past `since`.
    rest_stuck_pages: bool = False
    # Which RATE_LIMIT_ANSWERS entry the next forced rate-limit error uses.
    rate_limit_cycle: int = dataclasses.field(default=0, repr=False)

    def to_json(self) -> dict[str, Any]:
        """Return the public switches as a JSON-ready dict."""
        return {
            "drop_after_trades": self.drop_after_trades,
            "stall_after_trades": self.stall_after_trades,
            "stall_seconds": self.stall_seconds,
            "malformed_every_frames": self.malformed_every_frames,
            "hostile_every_frames": self.hostile_every_frames,
            "slow_message_every_frames": self.slow_message_every_frames,
            "giant_message_every_frames": self.giant_message_every_frames,
            "rest_rate_limit_next": self.rest_rate_limit_next,
            "omit_every_nth_id": self.omit_every_nth_id,
            "omit_same_timestamp_followers": self.omit_same_timestamp_followers,
            "backdate_after_gap_seconds": self.backdate_after_gap_seconds,
            "rest_unavailable": self.rest_unavailable,
            "rest_delay_seconds": self.rest_delay_seconds,
            "rest_redirect_to": self.rest_redirect_to,
            "rest_gzip_bomb": self.rest_gzip_bomb,
            "rest_trickle_bytes_per_second": self.rest_trickle_bytes_per_second,
            "rest_stuck_pages": self.rest_stuck_pages,
        }

    @property
    def omits_trades(self) -> bool:
        """Whether any switch leaves trades out of update frames."""
        return bool(self.omit_every_nth_id) or self.omit_same_timestamp_followers

    def update(self, changes: Mapping[str, Any]) -> None:
        """Apply a subset of switches atomically; ValueError (nothing applied) if invalid."""
        parsed: dict[str, Any] = {}
        for name, value in changes.items():
            if name in (
                "drop_after_trades",
                "stall_after_trades",
                "malformed_every_frames",
                "hostile_every_frames",
                "slow_message_every_frames",
                "giant_message_every_frames",
                "omit_every_nth_id",
            ):
                parsed[name] = _optional_count(name, value)
            elif name in ("stall_seconds", "rest_delay_seconds", "backdate_after_gap_seconds"):
                parsed[name] = _seconds(name, value)
            elif name in ("omit_same_timestamp_followers", "rest_unavailable"):
                parsed[name] = _flag(name, value)
            elif name == "rest_rate_limit_next":
                parsed[name] = _optional_count(name, value) or 0
            elif name == "rest_redirect_to":
                parsed[name] = _optional_url(name, value)
            elif name in ("rest_gzip_bomb", "rest_stuck_pages"):
                parsed[name] = _flag(name, value)
            elif name == "rest_trickle_bytes_per_second":
                parsed[name] = _seconds(name, value)  # any finite number >= 0; 0 is off
            else:
                raise ValueError(f"unknown fault field: {name!r}")
        for name, value in parsed.items():
            setattr(self, name, value)

    def take_rate_limit_answer(self) -> tuple[int, str] | None:
        """Consume one forced REST rate-limit answer, if any are pending."""
        if self.rest_rate_limit_next <= 0:
            return None
        self.rest_rate_limit_next -= 1
        answer = RATE_LIMIT_ANSWERS[self.rate_limit_cycle % len(RATE_LIMIT_ANSWERS)]
        self.rate_limit_cycle += 1
        return answer


def _optional_count(name: str, value: Any) -> int | None:
    """Accept None, or an int >= 0 where 0 means off (None)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer or null, got {value!r}")
    return value or None


def _optional_url(name: str, value: Any) -> str | None:
    """Accept None or "" (off), or an http(s) URL fit for a Location header."""
    if value is None or value == "":
        return None
    if (
        not isinstance(value, str)
        or not value.startswith(("http://", "https://"))
        or not value.isascii()
        or not value.isprintable()
        or " " in value
    ):
        raise ValueError(f"{name} must be an http:// or https:// URL or null, got {value!r}")
    return value


def _flag(name: str, value: Any) -> bool:
    """Accept true or false only: a 0/1 or a string is more likely a mistake than intent."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return float(value)


def malformed_frame(kind_index: int, symbol: str, timestamp: str) -> str:
    """Return the text of malformed frame number kind_index (cycling through MALFORMED_KINDS)."""
    kind = MALFORMED_KINDS[kind_index % len(MALFORMED_KINDS)]
    item = _fake_item(symbol, timestamp)
    if kind == "invalid_json":
        good = json.dumps(_trade_frame(item), separators=(",", ":"))
        return good[: len(good) // 2]  # cut mid-object
    if kind == "missing_price":
        del item["price"]
    elif kind == "string_qty":
        item["qty"] = "1.0"
    elif kind == "negative_price":
        item["price"] = -1.0
    elif kind == "non_finite_price":
        # json.dumps would write the non-standard token Infinity; real parsers see 1e999.
        text = json.dumps(_trade_frame(item), separators=(",", ":"))
        return text.replace('"price":1.0', '"price":1e999')
    elif kind == "unknown_channel":
        return json.dumps(
            {"channel": "simulator_bogus", "type": "update", "data": [{"note": "malformed"}]},
            separators=(",", ":"),
        )
    elif kind == "oversized":
        # A trade frame with no trades, padded past 1 MiB.
        frame = {"channel": "trade", "type": "update", "data": [], "padding": ""}
        text = json.dumps(frame, separators=(",", ":"))
        return text.replace('"padding":""', '"padding":"' + "x" * OVERSIZED_BYTES + '"')
    return json.dumps(_trade_frame(item), separators=(",", ":"))


def _fake_item(symbol: str, timestamp: str) -> dict[str, Any]:
    """A valid-looking trade item with an id no real trade has, for faults to spoil."""
    return {
        "symbol": symbol,
        "side": "buy",
        "price": 1.0,
        "qty": 1.0,
        "ord_type": "market",
        "trade_id": FAKE_TRADE_ID,
        "timestamp": timestamp,
    }


def _trade_frame(item: dict[str, Any]) -> dict[str, Any]:
    return {"channel": "trade", "type": "update", "data": [item]}


def slow_message_fragments() -> list[str]:
    """A heartbeat message cut into SLOW_MESSAGE_CHARACTERS one-character fragments."""
    head = '{"channel":"heartbeat","padding":"'
    text = head + "x" * (SLOW_MESSAGE_CHARACTERS - len(head) - 2) + '"}'
    return list(text)


def giant_message() -> str:
    """A heartbeat message of GIANT_MESSAGE_BYTES."""
    head = '{"channel":"heartbeat","padding":"'
    return head + "x" * (GIANT_MESSAGE_BYTES - len(head) - 2) + '"}'


def hostile_frame(kind_index: int, symbol: str, timestamp: str) -> bytes:
    """The bytes of hostile frame number kind_index (HOSTILE_KINDS in turn), sent as text."""
    kind = HOSTILE_KINDS[kind_index % len(HOSTILE_KINDS)]
    item = _fake_item(symbol, timestamp)
    text = json.dumps(_trade_frame(item), separators=(",", ":"))
    if kind == "invalid_utf8":
        return text.replace('"buy"', '"bu\udcff"').encode("utf-8", "surrogateescape")
    if kind == "deeply_nested":
        return text.replace('"buy"', "[" * 1000 + "]" * 1000).encode()
    junk = ",".join(["{}"] * JUNK_ITEMS)
    return f'{{"channel":"trade","type":"update","data":[{junk}]}}'.encode()
