"""1-minute candles of one pair's day, from its Parquet trades, by trade time (UTC).

A trade belongs to the minute its own `timestamp` falls in ([hh:mm:00, hh:mm+1:00), as the
day's partition owns [00:00, next 00:00)), never to the minute it arrived in. Within a minute,
trades are taken in time order (ties by trade id): `open`/`close` are the first and last trade's
prices, `first_trade_id`/`last_trade_id` their ids. Minutes without a trade have **no row**: a
reader that wants a regular grid reindexes (pandas: `.asfreq("1min")`, then forward-fills
`close` if that is the convention it wants).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from trades_platform.backfill.partitions import PartitionWindow

MINUTE_US = 60_000_000

CANDLES_SCHEMA = pa.schema(
    [
        pa.field("pair", pa.string(), nullable=False),
        pa.field("minute", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("open", pa.float64(), nullable=False),
        pa.field("high", pa.float64(), nullable=False),
        pa.field("low", pa.float64(), nullable=False),
        pa.field("close", pa.float64(), nullable=False),
        pa.field("volume", pa.float64(), nullable=False),
        pa.field("vwap", pa.float64(), nullable=False),
        pa.field("trade_count", pa.int64(), nullable=False),
        pa.field("first_trade_id", pa.int64(), nullable=False),
        pa.field("last_trade_id", pa.int64(), nullable=False),
    ]
)
CANDLES_COLUMNS = {
    "pair": "WebSocket v2 pair name",
    "minute": "Start of the minute, UTC (trade time); minutes without trades have no row",
    "open": "Price of the minute's first trade (time order, ties by trade id)",
    "high": "Highest price",
    "low": "Lowest price",
    "close": "Price of the minute's last trade",
    "volume": "Sum of the trades' volumes",
    "vwap": "Volume-weighted average price: sum(price x volume) / volume",
    "trade_count": "Trades in the minute",
    "first_trade_id": "Id of the open trade",
    "last_trade_id": "Id of the close trade",
}


def candles_1m(trades: pa.Table, window: PartitionWindow) -> pa.Table:
    """Per-minute OHLCV, VWAP, count and first/last id of a day's trades (`TRADES_SCHEMA`)."""
    count = trades.num_rows
    if count == 0:
        return CANDLES_SCHEMA.empty_table()
    times = trades.column("timestamp").cast(pa.int64()).to_numpy()
    ids = trades.column("trade_id").to_numpy()
    # Time order, ties by id: ids are sequential per pair, so this is Kraken's own order too.
    order = np.lexsort((ids, times))
    times, ids = times[order], ids[order]
    prices = trades.column("price").to_numpy()[order]
    volumes = trades.column("volume").to_numpy()[order]
    minutes = times - times % MINUTE_US
    starts = np.flatnonzero(np.concatenate(([True], minutes[1:] != minutes[:-1])))
    ends = np.append(starts[1:], count)
    volume = np.add.reduceat(volumes, starts)
    notional = np.add.reduceat(prices * volumes, starts)
    values = {
        "open": prices[starts],
        "high": np.maximum.reduceat(prices, starts),
        "low": np.minimum.reduceat(prices, starts),
        "close": prices[ends - 1],
        "volume": volume,
        "vwap": notional / volume,  # volumes are > 0 (the trade schema), so is every sum
        "trade_count": (ends - starts).astype(np.int64),
        "first_trade_id": ids[starts],
        "last_trade_id": ids[ends - 1],
    }
    arrays = [
        pa.array([window.pair] * len(starts), type=pa.string()),
        # Microseconds since the epoch are timestamp[us]'s storage.
        pa.array(minutes[starts], type=pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        *(pa.array(values[field.name], type=field.type) for field in list(CANDLES_SCHEMA)[2:]),
    ]
    return pa.Table.from_arrays(arrays, schema=CANDLES_SCHEMA)
