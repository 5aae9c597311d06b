"""A sample trade record for tests of the record itself."""

from __future__ import annotations

from trades_platform.trade import Trade


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
