"""Deterministic Kraken v2 trade frames and REST `/0/public/Trades` rows for the benchmark.

The shapes are exactly Kraken's (see /work/shared/kraken-api.md); values are synthetic but
plausible, and every trade id is sequential per pair so the stream's de-duplication keeps them all.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from trades_platform.trade import format_time_us

# 2024-01-02T00:00:00Z: a closed day, so the product's backfill accepts the window.
BASE_TIME_US = 1_704_153_600_000_000
# Trades per frame, cycled: mostly one to a few trades, now and then a burst (mean 5.7).
FRAME_SIZES: tuple[int, ...] = (1, 1, 2, 3, 5, 8, 20)
# Spacing of consecutive trades in replayed frames and REST rows.
TRADE_SPACING_US = 1_000
REST_PAIR = "BTC/USD"
REST_KEY = "XXBTZUSD"
REST_ALTNAME = "XBTUSD"

STATUS_FRAME = orjson.dumps(
    {
        "channel": "status",
        "type": "update",
        "data": [
            {
                "api_version": "v2",
                "connection_id": 18266300427528990701,
                "system": "online",
                "version": "2.0.9",
            }
        ],
    }
)
HEARTBEAT_FRAME = b'{"channel":"heartbeat"}'


def pair_names(count: int) -> list[str]:
    """`count` WebSocket v2 pair names: BTC/USD alone, or SYM001/USD... for more."""
    if count < 1:
        raise ValueError(f"need at least one pair, got {count}")
    if count == 1:
        return [REST_PAIR]
    return [f"SYM{index:03d}/USD" for index in range(1, count + 1)]


def subscribe_ack(symbol: str, req_id: int | None) -> bytes:
    """Kraken's per-symbol subscribe acknowledgment."""
    return orjson.dumps(
        {
            "method": "subscribe",
            "req_id": req_id,
            "result": {"channel": "trade", "snapshot": True, "symbol": symbol},
            "success": True,
            "time_in": "2024-01-02T00:00:00.000000Z",
            "time_out": "2024-01-02T00:00:00.000100Z",
        }
    )


def trade_item(symbol: str, trade_id: int, timestamp: str) -> dict[str, Any]:
    """One v2 `trade` data item; price and qty vary with the id so values are not constant."""
    return {
        "symbol": symbol,
        "side": "buy" if trade_id % 2 else "sell",
        "price": round(100.0 + (trade_id % 997) * 0.1, 1),
        "qty": round(0.00012345 * (1 + trade_id % 89), 8),
        "ord_type": "limit" if trade_id % 3 == 0 else "market",
        "trade_id": trade_id,
        "timestamp": timestamp,
    }


def trade_frame(items: list[dict[str, Any]]) -> bytes:
    """A `trade` update frame holding `items`."""
    # Copied to its size: orjson 3.13 leaves each result in a ~4 KB allocation.
    return bytes(memoryview(orjson.dumps({"channel": "trade", "type": "update", "data": items})))


class FrameSource:
    """Yields frames of consecutive trades, pairs round-robin, sizes cycling `FRAME_SIZES`."""

    def __init__(self, pairs: Sequence[str], sizes: Sequence[int] = FRAME_SIZES) -> None:
        self.pairs = list(pairs)
        self.sizes = tuple(sizes)
        self._next_id = dict.fromkeys(self.pairs, 1)
        self._frame_index = 0

    def next_items(self, limit: int, timestamp_of: Iterator[str]) -> list[dict[str, Any]]:
        """The next frame's items, at most `limit` of them."""
        index = self._frame_index
        self._frame_index += 1
        pair = self.pairs[index % len(self.pairs)]
        size = min(self.sizes[index % len(self.sizes)], limit)
        first = self._next_id[pair]
        self._next_id[pair] = first + size
        return [trade_item(pair, first + k, next(timestamp_of)) for k in range(size)]


def replay_frames(
    total_trades: int, pairs: Sequence[str], sizes: Sequence[int] = FRAME_SIZES
) -> list[bytes]:
    """`total_trades` trades as pre-serialized frames, timestamps `TRADE_SPACING_US` apart."""
    source = FrameSource(pairs, sizes)
    timestamps = (
        format_time_us(BASE_TIME_US + index * TRADE_SPACING_US) for index in range(total_trades)
    )
    frames: list[bytes] = []
    remaining = total_trades
    while remaining > 0:
        items = source.next_items(remaining, timestamps)
        remaining -= len(items)
        frames.append(trade_frame(items))
    return frames


def rest_rows(total_trades: int) -> list[bytes]:
    """`total_trades` REST rows of `REST_PAIR`, each pre-serialized, ids from 1.

    Times carry a 7th decimal (100 ns), as Kraken's do: `1688669597.8277369`.
    """
    rows: list[bytes] = []
    for index in range(total_trades):
        trade_id = index + 1
        item = trade_item(REST_PAIR, trade_id, "")
        row = [
            f"{item['price']:.1f}",
            f"{item['qty']:.8f}",
            rest_row_time_ns(index) / 1e9,
            "b" if item["side"] == "buy" else "s",
            "m" if item["ord_type"] == "market" else "l",
            "",
            trade_id,
        ]
        # A copy: orjson 3.13 leaves each result in a ~4 KB allocation, 800 MB for 200k rows.
        rows.append(bytes(memoryview(orjson.dumps(row))))
    return rows


def rest_row_time_ns(index: int) -> int:
    """Time of the REST row at `index` (0-based), to 100 ns."""
    return (BASE_TIME_US + index * TRADE_SPACING_US) * 1000 + (index % 10) * 100


def rest_row_time_us(index: int) -> int:
    """The first microsecond at or after every row before `index`: a window end."""
    return BASE_TIME_US + index * TRADE_SPACING_US
