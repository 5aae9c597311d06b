"""The writer every path uses: it sends only trades whose id is not in the topic yet."""

from __future__ import annotations

from collections.abc import Iterable

from trades_platform.coverage.id_ranges import IdRanges
from trades_platform.producer import TradeProducer
from trades_platform.trade import Trade


class DeduplicatingWriter:
    """Wraps the producer with the set of ids known to be in the topic, per pair."""

    def __init__(self, producer: TradeProducer, present: dict[str, IdRanges]) -> None:
        self.producer = producer
        self.present = present
        self.written = 0
        self.skipped_present = 0

    def write(self, trades: Iterable[Trade], *, below_id: int | None = None) -> list[Trade]:
        """Send the trades not yet present (and below `below_id`, if given); return them."""
        fresh: list[Trade] = []
        for trade in trades:
            ids = self.present.setdefault(trade.pair, IdRanges())
            if trade.trade_id in ids:
                self.skipped_present += 1
                continue
            if below_id is not None and trade.trade_id >= below_id:
                continue
            ids.add(trade.trade_id)
            fresh.append(trade)
        if fresh:
            self.producer.send(fresh)
            self.written += len(fresh)
        return fresh

    def replace_present(self, pair: str, ids: IdRanges) -> None:
        """Adopt a fresh reading of the topic for one pair (after a re-scan)."""
        known = self.present.get(pair)
        merged = IdRanges(ids)
        if known is not None:
            for first, last in known:
                merged.add_range(first, last)
        self.present[pair] = merged
