"""State shared by the WebSocket and REST sides: market, clock, faults, counters, names."""

from __future__ import annotations

import functools
import json
from typing import Any

from trades_platform.simulator.config import SimClock, SimulatorConfig, Stats, real_now_us
from trades_platform.simulator.market import SimulatedMarket, SimulatedTrade, trade_time_iso
from trades_platform.simulator.pairs import DARK_POOL, PairInfo, resolve_pairs


def format_decimal(value: float, decimals: int) -> str:
    """Format a number as Kraken's WebSocket does: plain decimal, no exponent, at least "x.0"."""
    text = f"{value:.{decimals}f}"
    if "." not in text:
        return text + ".0"
    text = text.rstrip("0")
    return text + "0" if text.endswith(".") else text


def dumps(payload: Any) -> str:
    """Serialise compactly, as Kraken does."""
    return json.dumps(payload, separators=(",", ":"))


class SimulatorCore:
    """The simulated exchange: one market, one clock, one set of faults and counters."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.pairs: tuple[PairInfo, ...] = resolve_pairs(config.pairs)
        self.market = SimulatedMarket(
            [p.name for p in self.pairs],
            config.trades_per_second,
            config.epoch_us,
            config.trades_per_match,
        )
        start = config.start_time_us if config.start_time_us is not None else real_now_us()
        self.clock = SimClock(start, config.speed)
        self.faults = config.faults
        self.stats = Stats()
        self._by_symbol = {p.name: p for p in self.pairs}
        # REST accepts the altname or the canonical key; Kraken does not care about case.
        self._by_rest_name: dict[str, PairInfo] = {}
        for info in self.pairs:
            self._by_rest_name[info.key.upper()] = info
            self._by_rest_name[info.altname.upper()] = info
        # Many connections usually watch the same pairs: format each trade once.
        self.trade_item_json = functools.lru_cache(maxsize=1 << 16)(self._trade_item_json)

    def by_symbol(self, symbol: str) -> PairInfo | None:
        """Return a traded pair by its WebSocket v2 symbol."""
        return self._by_symbol.get(symbol)

    def by_rest_name(self, name: str) -> PairInfo | None:
        """Return a traded pair by its REST altname or canonical key."""
        return self._by_rest_name.get(name.upper())

    def asset_pair_entries(self) -> list[PairInfo]:
        """Return the pairs AssetPairs lists: the traded ones plus a dark-pool book."""
        return sorted([*self.pairs, DARK_POOL], key=lambda p: p.key)

    def now_us(self) -> int:
        """Return the simulated time in microseconds."""
        return self.clock.now_us()

    def now_iso(self) -> str:
        """Return the simulated time as RFC 3339 with microseconds."""
        return trade_time_iso(self.clock.now_us())

    def trade(self, symbol: str, trade_id: int) -> SimulatedTrade:
        """Return one trade of a traded pair."""
        return self.market.trade(symbol, trade_id)

    def left_out(self, symbol: str, trade_id: int) -> bool:
        """Whether the omit_* faults keep this trade out of update frames."""
        nth = self.faults.omit_every_nth_id
        if nth and trade_id % nth == 0:
            return True
        # Decided by id, not by position in a frame: a match split across two frames (or two
        # ticks) still loses exactly its followers.
        return (
            self.faults.omit_same_timestamp_followers
            and trade_id > 1
            and self.market.time_us(symbol, trade_id - 1) == self.market.time_us(symbol, trade_id)
        )

    def update_item_json(self, symbol: str, trade_id: int) -> str:
        """A trade as an update frame's item: backdated when it follows a left-out trade."""
        backdate_us = int(self.faults.backdate_after_gap_seconds * 1_000_000)
        if backdate_us and trade_id > 1 and self.left_out(symbol, trade_id - 1):
            self.stats.trades_backdated += 1
            return self._trade_item_json(symbol, trade_id, backdate_us)
        return self.trade_item_json(symbol, trade_id)

    def _trade_item_json(self, symbol: str, trade_id: int, backdate_us: int = 0) -> str:
        trade = self.market.trade(symbol, trade_id)
        decimals = self._by_symbol[symbol].price_decimals
        # Built by hand: json.dumps would write small quantities as 1e-05.
        return (
            f'{{"symbol":"{symbol}","side":"{trade.side}",'
            f'"price":{format_decimal(trade.price, decimals)},'
            f'"qty":{format_decimal(trade.qty, 8)},"ord_type":"{trade.ord_type}",'
            f'"trade_id":{trade_id},"timestamp":"{trade_time_iso(trade.time_us - backdate_us)}"}}'
        )
