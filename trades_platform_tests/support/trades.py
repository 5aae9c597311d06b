"""Sample trades for tests: a Kraken WebSocket v2 trade item, and a topic record."""

from __future__ import annotations

from typing import Any

from trades_platform.trade import Trade

# A valid item of a Kraken v2 `trade` frame's data list; tests spoil one field at a time.
KRAKEN_TRADE_ITEM: dict[str, Any] = {
    "symbol": "BTC/USD",
    "side": "buy",
    "price": 100.5,
    "qty": 0.25,
    "ord_type": "limit",
    "trade_id": 7,
    "timestamp": "2024-01-02T00:00:00.000000Z",
}


def sample_trade(**overrides: object) -> Trade:
    """The documentation's BTC/USD trade, with any field overridden."""
    fields: dict[str, object] = {
        "pair": "BTC/USD",
        "price": 67000.1,
        "volume": 0.0123,
        "time_us": 1695628177708706,
        "trade_id": 4665906,
        "side": "buy",
        "ord_type": "market",
        "source": "live",
    }
    fields.update(overrides)
    return Trade.from_parts(**fields)  # type: ignore[arg-type]
