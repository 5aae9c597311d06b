"""Kraken's public REST endpoints, as pure functions of the simulator state and the query."""

from __future__ import annotations

import functools
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from trades_platform.simulator.core import SimulatorCore
from trades_platform.simulator.pairs import PairInfo

INVALID_ARGUMENTS = "EGeneral:Invalid arguments"
UNKNOWN_PAIR = "EQuery:Unknown asset pair"
RATE_LIMITED = "EAPI:Rate limit exceeded"
UNAVAILABLE = "EService:Unavailable"  # with HTTP 503, when Kraken's backend is down
MAX_COUNT = 1000
# Kraken reads a `since` below this as seconds, at or above it as nanoseconds.
_SECONDS_LIMIT = Decimal(10**12)
# Whitespace inside the rest_gzip_bomb answer: about 50 MB inflated, about 50 kB compressed.
GZIP_BOMB_PADDING_BYTES = 48 * 1024 * 1024

Params = Mapping[str, Sequence[str]]


@dataclass(frozen=True, slots=True)
class RestAnswer:
    """An HTTP status and a JSON body."""

    status: int
    body: dict[str, Any]


def error(message: str, status: int = 200) -> RestAnswer:
    """Kraken's error envelope; Kraken mostly uses HTTP 200 for errors."""
    return RestAnswer(status, {"error": [message]})


def ok(result: Any) -> RestAnswer:
    """Kraken's success envelope."""
    return RestAnswer(200, {"error": [], "result": result})


def first_param(params: Params, name: str) -> str | None:
    """The first value of query parameter `name`, or None."""
    values = params.get(name)
    return values[0] if values else None


def parse_since_ns(text: str) -> int:
    """Parse Kraken's `since`: nanoseconds, or seconds (possibly fractional) below 1e12."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation as exc:
        raise ValueError(text) from exc
    if not value.is_finite() or value < 0:
        raise ValueError(text)
    return int(value * 10**9) if value < _SECONDS_LIMIT else int(value)


def trades(core: SimulatorCore, params: Params) -> RestAnswer:
    """GET /0/public/Trades: trades with time >= since (inclusive) and <= now, at most count."""
    pair_name = first_param(params, "pair")
    if not pair_name:
        return error(INVALID_ARGUMENTS)
    info = core.by_rest_name(pair_name)
    if info is None:
        return error(UNKNOWN_PAIR)
    count_text = first_param(params, "count")
    since_text = first_param(params, "since")
    try:
        count = MAX_COUNT if count_text is None else int(count_text)
        since_ns = None if since_text is None else parse_since_ns(since_text)
    except ValueError:
        return error(INVALID_ARGUMENTS)
    if not 1 <= count <= MAX_COUNT:
        return error(INVALID_ARGUMENTS)

    market = core.market
    now_us = core.now_us()
    newest = market.last_id_at_or_before(info.name, now_us)
    if since_ns is None:
        first = max(1, newest - count + 1)
    else:
        # time_us * 1000 >= since_ns  <=>  time_us >= ceil(since_ns / 1000)
        first = market.first_id_at_or_after(info.name, -(-since_ns // 1000))
    last = min(newest, first + count - 1)
    rows: list[list[Any]] = []
    for trade in market.trades_by_id(info.name, first, last):
        rows.append(
            [
                f"{trade.price:.{info.price_decimals}f}",
                f"{trade.qty:.8f}",
                trade.time_us / 1e6,
                "b" if trade.side == "buy" else "s",
                "m" if trade.ord_type == "market" else "l",
                "",
                trade.trade_id,
            ]
        )
    core.stats.rest_trades_sent[info.name] += len(rows)
    if rows:
        last_ns = market.time_us(info.name, last) * 1000
    else:
        last_ns = since_ns if since_ns is not None else now_us * 1000
    return ok({info.key: rows, "last": str(last_ns)})


def stuck_page(answer: RestAnswer, params: Params) -> RestAnswer:
    """A Trades answer's rows with a `last` 2 ns past `since` (the rest_stuck_pages fault).

    A client that asks again from `last` (or, like ours, 1 ns before it) moves on by a
    nanosecond or two and gets the same rows again: no trade is that close to the next one.
    """
    result = answer.body.get("result")
    if not isinstance(result, dict):
        return answer  # an error: nothing to page on
    since_text = first_param(params, "since")
    since_ns = parse_since_ns(since_text) if since_text is not None else 0
    return ok({**result, "last": str(since_ns + 2)})


@functools.lru_cache(maxsize=16)
def gzip_bomb_body(key: str) -> bytes:
    """A gzip body (about 50 kB) of an empty Trades page padded to about 50 MB with whitespace.

    Valid JSON once inflated, so only a client that bounds what it decodes is safe from it.
    Compressed a block at a time: the simulator never holds the 50 MB itself.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # gzip framing
    parts = [compressor.compress(f'{{"error":[],"result":{{"{key}":['.encode())]
    block = b" " * (1024 * 1024)
    parts += [compressor.compress(block) for _ in range(GZIP_BOMB_PADDING_BYTES // len(block))]
    parts += [compressor.compress(b'],"last":"0"}}'), compressor.flush()]
    return b"".join(parts)


def _asset_pair_entry(info: PairInfo) -> dict[str, Any]:
    entry: dict[str, Any] = {"altname": info.altname}
    if info.wsname is not None:
        entry["wsname"] = info.wsname
    tick = f"{10.0**-info.price_decimals:.{info.price_decimals}f}"
    entry.update(
        {
            "aclass_base": "currency",
            "base": info.base,
            "aclass_quote": "currency",
            "quote": info.quote,
            "lot": "unit",
            "cost_decimals": 5,
            "pair_decimals": info.price_decimals,
            "lot_decimals": 8,
            "lot_multiplier": 1,
            "ordermin": f"{info.typical_qty / 100:.8f}".rstrip("0").rstrip("."),
            "costmin": "0.5",
            "tick_size": tick,
            "status": "online",
        }
    )
    return entry


def asset_pairs(core: SimulatorCore, params: Params) -> RestAnswer:
    """GET /0/public/AssetPairs, optionally filtered by `pair` (comma-separated REST names)."""
    entries = core.asset_pair_entries()
    wanted = first_param(params, "pair")
    if wanted:
        names = {n.strip().upper() for n in wanted.split(",") if n.strip()}
        known = {n for p in entries for n in (p.key.upper(), p.altname.upper())}
        if not names or not names <= known:
            return error(UNKNOWN_PAIR)
        entries = [p for p in entries if p.key.upper() in names or p.altname.upper() in names]
    return ok({p.key: _asset_pair_entry(p) for p in entries})


def server_time(core: SimulatorCore, params: Params) -> RestAnswer:
    """GET /0/public/Time, in simulated time."""
    seconds = core.now_us() // 1_000_000
    rfc1123 = time.strftime("%a, %d %b %y %H:%M:%S +0000", time.gmtime(seconds))
    return ok({"unixtime": seconds, "rfc1123": rfc1123})


def system_status(core: SimulatorCore, params: Params) -> RestAnswer:
    """GET /0/public/SystemStatus, in simulated time."""
    seconds = core.now_us() // 1_000_000
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
    return ok({"status": "online", "timestamp": stamp})


# Endpoints the rest_rate_limit_next fault applies to (the data endpoints).
RATE_LIMITED_BY_FAULT = frozenset({"Trades", "AssetPairs"})
# Endpoints the rest_unavailable and rest_delay_seconds faults apply to (what backfills page).
DOWN_OR_DELAYED_BY_FAULT = frozenset({"Trades"})
# Endpoints the hostile REST faults apply to: rest_redirect_to, rest_gzip_bomb,
# rest_trickle_bytes_per_second and rest_stuck_pages (the one that pages, and the biggest).
HOSTILE_BY_FAULT = frozenset({"Trades"})

ENDPOINTS = {
    "Trades": trades,
    "AssetPairs": asset_pairs,
    "Time": server_time,
    "SystemStatus": system_status,
}


class TokenBucket:
    """Per-key token bucket: `rate` calls per second with bursts of up to `burst` calls."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str, now: float) -> bool:
        """Take one token for key at monotonic time now; False if none is left."""
        tokens, stamp = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        return allowed
