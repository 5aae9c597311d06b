"""A deterministic market: every trade is a pure function of (config, pair, trade_id).

Nothing is stored, so WebSocket and REST agree on every trade by construction, any past
range can be served in O(1) per trade, and restarts reproduce the same history.

Trades may come in matches of `trades_per_match` consecutive ids sharing one timestamp, as the
fills of one taker order do on Kraken; the average rate stays `trades_per_second`.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction

from trades_platform.simulator.pairs import PairInfo, resolve_pair

EPOCH_US: int = int(datetime(2020, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000

_TWO_PI = 2.0 * math.pi
# Slow swings (days, hours, minutes) make charts look like a market; periods are in seconds.
_WAVES: tuple[tuple[float, float], ...] = ((0.10, 3.1 * 86400), (0.04, 5.3 * 3600), (0.01, 1020))
_NOISE = 0.0004  # +-0.02% per-trade jitter around the waves


@dataclass(frozen=True, slots=True)
class SimulatedTrade:
    """One trade as the simulated exchange recorded it."""

    pair: str  # WebSocket v2 name, e.g. "BTC/USD"
    trade_id: int  # sequential per pair, starting at 1 at the epoch
    time_us: int  # UTC microseconds since the Unix epoch
    price: float  # already rounded to the pair's price decimals
    qty: float  # rounded to 8 decimals, > 0
    side: str  # "buy" | "sell"
    ord_type: str  # "market" | "limit"


@dataclass(frozen=True, slots=True)
class _PairModel:
    info: PairInfo
    offset_us: int
    phases: tuple[float, ...]


def trade_time_iso(time_us: int) -> str:
    """Format UTC microseconds as RFC 3339 with exactly 6 fractional digits and "Z"."""
    seconds, micros = divmod(time_us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


def _hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def _unit(chunk: bytes) -> float:
    """Map bytes to a float in [0, 1)."""
    return int.from_bytes(chunk, "big") / float(1 << (8 * len(chunk)))


class SimulatedMarket:
    """Trade times, ids and values for a set of pairs at a fixed rate per pair."""

    def __init__(
        self,
        pairs: Sequence[str],
        trades_per_second: float,
        epoch_us: int = EPOCH_US,
        trades_per_match: int = 1,
    ) -> None:
        if not trades_per_second > 0 or not math.isfinite(trades_per_second):
            raise ValueError(f"trades_per_second must be a positive number: {trades_per_second}")
        if (
            isinstance(trades_per_match, bool)
            or not isinstance(trades_per_match, int)
            or trades_per_match < 1
        ):
            raise ValueError(f"trades_per_match must be an integer >= 1: {trades_per_match!r}")
        # Exact rational rate: (i - 1) * 1e6 / rate == (i - 1) * _num_us / _den, integer maths
        # only, so that time -> id inversion is exact at every boundary (floats are not).
        rate = Fraction(str(float(trades_per_second)))
        self.trades_per_second = float(trades_per_second)
        self.epoch_us = epoch_us
        self.trades_per_match = trades_per_match
        self._num_us = 1_000_000 * rate.denominator
        self._den = rate.numerator
        interval_floor = self._num_us // self._den
        self._models: dict[str, _PairModel] = {}
        for name in pairs:
            info = resolve_pair(name)
            digest = _hash(f"pair:{name}")
            # Less than one interval, so pairs interleave instead of ticking in lock-step.
            offset = int.from_bytes(digest[:8], "big") % max(1, interval_floor)
            phases = tuple(_TWO_PI * _unit(digest[8 + 2 * k : 10 + 2 * k]) for k in range(3))
            self._models[name] = _PairModel(info, offset, phases)

    @property
    def pairs(self) -> tuple[str, ...]:
        """The v2 names of the pairs this market trades, in configuration order."""
        return tuple(self._models)

    def info(self, pair: str) -> PairInfo:
        """Return the catalogue entry of a traded pair (KeyError if not traded)."""
        return self._models[pair].info

    def time_us(self, pair: str, trade_id: int) -> int:
        """Return the time of a trade without computing its other fields."""
        if trade_id < 1:
            raise ValueError(f"trade ids start at 1: {trade_id}")
        model = self._models[pair]
        # A match's trades all take the time its first id would have had without matches.
        k = trade_id - 1
        k -= k % self.trades_per_match
        return self.epoch_us + model.offset_us + k * self._num_us // self._den

    def first_id_at_or_after(self, pair: str, time_us: int) -> int:
        """Return the smallest trade id whose time_us >= time_us (at least 1)."""
        delta = time_us - self.epoch_us - self._models[pair].offset_us
        if delta <= 0:
            return 1
        # Match m (ids m*K+1 .. m*K+K) is at floor(m * K * num / den), and that is >= delta
        # <=>  m * K * num >= delta * den  (delta is an integer): m = ceil(delta * den / (K * num)).
        per_match = self.trades_per_match
        first_match = -((-delta * self._den) // (per_match * self._num_us))
        return first_match * per_match + 1

    def last_id_at_or_before(self, pair: str, time_us: int) -> int:
        """Return the largest trade id whose time_us <= time_us (0 if none yet)."""
        return self.first_id_at_or_after(pair, time_us + 1) - 1

    def trade(self, pair: str, trade_id: int) -> SimulatedTrade:
        """Return trade number trade_id of pair."""
        model = self._models[pair]
        info = model.info
        time_us = self.time_us(pair, trade_id)
        digest = _hash(f"{pair}:{trade_id}")
        seconds = (time_us - self.epoch_us) / 1e6
        swing = sum(
            amplitude * math.sin(_TWO_PI * seconds / period + phase)
            for (amplitude, period), phase in zip(_WAVES, model.phases, strict=True)
        )
        noise = (_unit(digest[0:4]) - 0.5) * _NOISE
        tick = 10.0**-info.price_decimals
        price = max(
            tick, round(info.base_price * math.exp(swing) * (1.0 + noise), info.price_decimals)
        )
        # Log-uniform sizes over three decades around the pair's typical size.
        qty = round(info.typical_qty * 10.0 ** (3.0 * _unit(digest[4:8]) - 1.5), 8)
        return SimulatedTrade(
            pair=pair,
            trade_id=trade_id,
            time_us=time_us,
            price=price,
            qty=max(qty, 1e-8),
            side="buy" if digest[8] & 1 else "sell",
            ord_type="market" if digest[9] < 102 else "limit",  # about 40% market orders
        )

    def trades_by_id(self, pair: str, first_id: int, last_id: int) -> Iterator[SimulatedTrade]:
        """Yield trades first_id..last_id inclusive, in id order."""
        for trade_id in range(max(1, first_id), last_id + 1):
            yield self.trade(pair, trade_id)

    def trades_between(self, pair: str, start_us: int, end_us: int) -> Iterator[SimulatedTrade]:
        """Yield the trades whose time is in [start_us, end_us), in id order."""
        first = self.first_id_at_or_after(pair, start_us)
        stop = self.first_id_at_or_after(pair, end_us)
        return self.trades_by_id(pair, first, stop - 1)
