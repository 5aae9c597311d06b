"""The writer every path uses: it sends only trades whose id is not in the topic yet."""

from __future__ import annotations

from collections import Counter
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
        self.written_per_pair: Counter[str] = Counter()
        self.skipped_present = 0

    def write(self, trades: Iterable[Trade]) -> list[Trade]:
        """Send the trades not yet present; return them."""
        fresh: list[Trade] = []
        for trade in trades:
            ids = self.present.setdefault(trade.pair, IdRanges())
            if trade.trade_id in ids:
                self.skipped_present += 1
                continue
            ids.add(trade.trade_id)
            self.written_per_pair[trade.pair] += 1
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
