"""One pair's trades of one UTC day as a Parquet table: typed, sorted and unique by trade id.

Columns (`TRADES_SCHEMA`): `pair` string; `trade_id` int64; `timestamp` timestamp[us, UTC] (the
trade's exact time); `price` and `volume` float64, the topic's JSON numbers as parsed (the
nearest double to what Kraken printed: exact to its 8-10 significant digits, not a decimal
type); `side` (`buy`/`sell`), `ord_type` (`market`/`limit`), `exchange`, `source`
(`live`/`backfill`/`heal`) strings; `received_ms` int64, null in records older than that field.

The same records always give the same bytes: rows in trade-id order, fixed writer settings, and
nothing of the moment of writing in the file (pyarrow's `created_by` names its version, so
bytes may change with a pyarrow upgrade; the rows do not).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from trades_platform.backfill.checks import checked_trade
from trades_platform.backfill.partitions import PartitionWindow
from trades_platform.backfill.readback import WindowRecord
from trades_platform.trade import Trade

TRADES_SCHEMA = pa.schema(
    [
        pa.field("pair", pa.string(), nullable=False),
        pa.field("trade_id", pa.int64(), nullable=False),
        pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("price", pa.float64(), nullable=False),
        pa.field("volume", pa.float64(), nullable=False),
        pa.field("side", pa.string(), nullable=False),
        pa.field("ord_type", pa.string(), nullable=False),
        pa.field("exchange", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("received_ms", pa.int64(), nullable=True),
    ]
)
# What the UI shows for each column (the asset's `dagster/column_schema`).
TRADES_COLUMNS = {
    "pair": "WebSocket v2 pair name, e.g. BTC/USD",
    "trade_id": "Kraken's trade id, sequential per pair; unique and ascending in the file",
    "timestamp": "Trade time, UTC, microseconds",
    "price": "Price, float64 (the topic's JSON number)",
    "volume": "Volume in the base currency, float64",
    "side": "buy or sell (the taker's side)",
    "ord_type": "market or limit",
    "exchange": "kraken",
    "source": "How the trade reached the topic: live, backfill or heal",
    "received_ms": "When the platform received it from Kraken, ms since the epoch (or null)",
}
# The writer's settings, fixed so that a re-run writes the same bytes.
_WRITE_OPTIONS = {
    "compression": "zstd",
    "compression_level": 3,
    "write_statistics": True,
    "row_group_size": 1_000_000,
    "version": "2.6",
    "data_page_version": "1.0",
    "store_schema": True,
}
# Short repeated strings: dictionary-encoded where a table has them.
_DICTIONARY_COLUMNS = ("pair", "side", "ord_type", "exchange", "source")
_EXAMPLES = 5


@dataclass
class DayTrades:
    """A day's trades as read from the topic, and what was left out of the table and why."""

    table: pa.Table
    records: int  # records under the pair's key in the window, valid or not
    invalid: Counter[str] = field(default_factory=Counter)  # reason -> records
    duplicates_dropped: int = 0  # valid records of an id already taken (the first is kept)
    duplicates_differing: int = 0  # of those, ones whose trade differs beyond source/received


def build_day_trades(records: Sequence[WindowRecord], window: PartitionWindow) -> DayTrades:
    """Validate each record as the backfill's checks do, keep the first of each id, sort by id.

    Records that are not valid trades of the window are counted by reason and skipped: a bad
    record costs its row, never the day.
    """
    invalid: Counter[str] = Counter()
    kept: dict[int, Trade] = {}
    dropped = differing = 0
    # Topic order decides which copy of a duplicate is kept, whatever order the read returned.
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        checked = checked_trade(record, window)
        if isinstance(checked, str):
            invalid[checked] += 1
            continue
        first = kept.setdefault(checked.trade_id, checked)
        if first is not checked:
            dropped += 1
            differing += _same_trade(first, checked) is False
    trades = [kept[trade_id] for trade_id in sorted(kept)]
    return DayTrades(
        table=trades_table(trades),
        records=len(records),
        invalid=invalid,
        duplicates_dropped=dropped,
        duplicates_differing=differing,
    )


def _same_trade(first: Trade, other: Trade) -> bool:
    """Equal but for how and when it arrived (`source`, `received_ms`)."""
    ignored = {"source", "received_ms"}
    return first.model_dump(exclude=ignored) == other.model_dump(exclude=ignored)


def trades_table(trades: Sequence[Trade]) -> pa.Table:
    """The trades, in the given order, as a table of `TRADES_SCHEMA`."""
    columns: dict[str, list[object]] = {name: [] for name in TRADES_SCHEMA.names}
    for trade in trades:
        columns["pair"].append(trade.pair)
        columns["trade_id"].append(trade.trade_id)
        columns["timestamp"].append(trade.time_us)
        columns["price"].append(trade.price)
        columns["volume"].append(trade.volume)
        columns["side"].append(trade.side)
        columns["ord_type"].append(trade.ord_type)
        columns["exchange"].append(trade.exchange)
        columns["source"].append(trade.source)
        columns["received_ms"].append(trade.received_ms)
    # Microseconds since the epoch are exactly timestamp[us]'s storage: ints convert as they are.
    arrays = [pa.array(columns[column.name], type=column.type) for column in TRADES_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=TRADES_SCHEMA)


def parquet_bytes(table: pa.Table) -> bytes:
    """The table as a Parquet file, written with fixed settings (same table, same bytes)."""
    sink = pa.BufferOutputStream()
    dictionary = [name for name in _DICTIONARY_COLUMNS if name in table.schema.names]
    pq.write_table(table, sink, use_dictionary=dictionary, **_WRITE_OPTIONS)
    data: bytes = sink.getvalue().to_pybytes()
    return data


def read_parquet_bytes(data: bytes) -> pa.Table:
    """A Parquet file's bytes -> its table."""
    table: pa.Table = pq.read_table(pa.BufferReader(data))
    return table


def invalid_examples(invalid: Counter[str]) -> dict[str, int]:
    """The most common reasons records were skipped, for metadata and logs."""
    return dict(invalid.most_common(_EXAMPLES))
