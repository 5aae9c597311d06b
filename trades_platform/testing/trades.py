"""The product's trade records of the simulated market's trades, for tests that write them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from trades_platform.simulator.market import SimulatedMarket
from trades_platform.trade import OrderType, Side, Source, Trade


def simulated_trades(
    market: SimulatedMarket, pair: str, ids: Iterable[int], source: Source = "backfill"
) -> list[Trade]:
    """The records a writer would produce for these trade ids of `pair` in `market`."""
    trades = []
    for trade_id in ids:
        simulated = market.trade(pair, trade_id)
        trades.append(
            Trade.from_parts(
                pair=pair,
                price=simulated.price,
                volume=simulated.qty,
                time_us=simulated.time_us,
                trade_id=trade_id,
                # The simulator draws only these values; its record keeps them as plain strings.
                side=cast(Side, simulated.side),
                ord_type=cast(OrderType, simulated.ord_type),
                source=source,
            )
        )
    return trades
