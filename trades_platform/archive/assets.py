"""`kraken_trades_parquet` and `kraken_candles_1m`: a finished day of the topic, as files.

Both are partitioned like `kraken_trades_history` (UTC day x pair) and sit below it in the
asset graph. The Parquet day is built from the topic, not from Kraken, so a day the live run
covered is archived the same way as a backfilled one; the candles are built from the Parquet
day. Declarative automation runs them after their upstream partition is updated (a backfill,
then the Parquet), and each carries a freshness policy the UI shows.
"""

# No `from __future__ import annotations` here: Dagster reads the assets' annotations at import.

import time
from typing import Any

from dagster import (
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableSchema,
    asset,
)

from trades_platform.archive.automation import ARCHIVE_AUTOMATION, ARCHIVE_FRESHNESS, ARCHIVE_GROUP
from trades_platform.archive.candles import CANDLES_COLUMNS, CANDLES_SCHEMA, candles_1m
from trades_platform.archive.parquet import (
    TRADES_COLUMNS,
    TRADES_SCHEMA,
    build_day_trades,
    invalid_examples,
    parquet_bytes,
    read_parquet_bytes,
)
from trades_platform.archive.storage import CANDLES_DATASET, TRADES_DATASET
from trades_platform.backfill.asset import kraken_trades_history
from trades_platform.backfill.partitions import TRADES_HISTORY_PARTITIONS, PartitionWindow
from trades_platform.backfill.readback import read_pair_window
from trades_platform.resources import ArchiveResource, RedpandaResource
from trades_platform.trade import format_time_us


def _column_schema(columns: dict[str, str], schema: Any) -> TableSchema:
    return TableSchema(
        columns=[
            TableColumn(name, str(schema.field(name).type), description=description)
            for name, description in columns.items()
        ]
    )


@asset(
    partitions_def=TRADES_HISTORY_PARTITIONS,
    deps=[kraken_trades_history],
    description=(
        "One pair's trades of one UTC day, read from the trades topic (whatever wrote them: "
        "backfill, live, heal), as one Parquet file under ARCHIVE_URL: "
        "`trades/<PAIR>/<YYYY-MM-DD>.parquet`. Every record is validated against the trade "
        "schema (invalid ones are counted and skipped); rows are unique by trade_id and sorted "
        "by it. Written atomically; a re-run writes the same bytes."
    ),
    kinds={"parquet", "kafka"},
    group_name=ARCHIVE_GROUP,
    automation_condition=ARCHIVE_AUTOMATION,
    freshness_policy=ARCHIVE_FRESHNESS,
    metadata={"dagster/column_schema": _column_schema(TRADES_COLUMNS, TRADES_SCHEMA)},
)
def kraken_trades_parquet(
    context: AssetExecutionContext, redpanda: RedpandaResource, archive: ArchiveResource
) -> MaterializeResult[None]:
    """Read the partition's day back from the topic and write it as one Parquet file."""
    started = time.monotonic()
    window = PartitionWindow.from_key(context.partition_key)
    read = read_pair_window(redpanda.kafka_settings(), window.pair, window.start_ms, window.end_ms)
    read_seconds = time.monotonic() - started
    day = build_day_trades(read.records, window)
    if not read.topic_exists:
        context.log.warning(f"Topic {redpanda.topic!r} does not exist: the day is empty")
    if day.invalid:
        context.log.warning(
            f"Skipped {day.invalid.total()} records of {window.describe()} that are not valid "
            f"trades: {invalid_examples(day.invalid)}"
        )
    if day.duplicates_dropped:
        context.log.warning(
            f"Dropped {day.duplicates_dropped} repeated records of trade ids already in the "
            f"day ({day.duplicates_differing} of them differ beyond source/received_ms)"
        )
    store = archive.store()
    written = store.write(TRADES_DATASET, window, parquet_bytes(day.table))
    ids = day.table.column("trade_id")
    rows = day.table.num_rows
    context.log.info(
        f"{rows} trades of {window.describe()} -> {written.url} ({written.size} bytes, "
        f"{'written' if written.rewritten else 'unchanged'})"
    )
    times = day.table.column("timestamp")
    return MaterializeResult(
        metadata={
            "dagster/row_count": rows,
            "url": MetadataValue.path(written.url),
            "bytes": written.size,
            "sha256": written.sha256,
            "rewritten": written.rewritten,
            "first_trade_id": ids[0].as_py() if rows else "none",
            "last_trade_id": ids[-1].as_py() if rows else "none",
            "first_trade_time": format_time_us(times[0].value) if rows else "none",
            "last_trade_time": format_time_us(times[-1].value) if rows else "none",
            "records_read": day.records,
            "scanned": read.scanned,
            "invalid_records": day.invalid.total(),
            "invalid_reasons": MetadataValue.json(invalid_examples(day.invalid)),
            "duplicates_dropped": day.duplicates_dropped,
            "duplicates_differing": day.duplicates_differing,
            "read_seconds": round(read_seconds, 3),
            "seconds": round(time.monotonic() - started, 3),
        }
    )


@asset(
    partitions_def=TRADES_HISTORY_PARTITIONS,
    deps=[kraken_trades_parquet],
    description=(
        "1-minute candles (open, high, low, close, volume, vwap, trade_count, first/last "
        "trade id) of one pair's UTC day, by trade time, from its Parquet day; minutes without "
        "trades have no row. One Parquet file under ARCHIVE_URL: "
        "`candles_1m/<PAIR>/<YYYY-MM-DD>.parquet`."
    ),
    kinds={"parquet", "pandas"},
    group_name=ARCHIVE_GROUP,
    automation_condition=ARCHIVE_AUTOMATION,
    freshness_policy=ARCHIVE_FRESHNESS,
    metadata={"dagster/column_schema": _column_schema(CANDLES_COLUMNS, CANDLES_SCHEMA)},
)
def kraken_candles_1m(
    context: AssetExecutionContext, archive: ArchiveResource
) -> MaterializeResult[None]:
    """Compute the day's candles from its Parquet file and write them as Parquet."""
    started = time.monotonic()
    window = PartitionWindow.from_key(context.partition_key)
    store = archive.store()
    data = store.read(TRADES_DATASET, window)
    if data is None:
        raise FileNotFoundError(
            f"no Parquet day at {store.day_url(TRADES_DATASET, window)}: materialize "
            f"kraken_trades_parquet for {context.partition_key} first"
        )
    trades = read_parquet_bytes(data)
    candles = candles_1m(trades, window)
    written = store.write(CANDLES_DATASET, window, parquet_bytes(candles))
    minutes = candles.column("minute")
    context.log.info(
        f"{candles.num_rows} minutes of {window.describe()} from {trades.num_rows} trades -> "
        f"{written.url} ({'written' if written.rewritten else 'unchanged'})"
    )
    return MaterializeResult(
        metadata={
            "dagster/row_count": candles.num_rows,
            "trades": trades.num_rows,
            "url": MetadataValue.path(written.url),
            "bytes": written.size,
            "sha256": written.sha256,
            "rewritten": written.rewritten,
            "first_minute": format_time_us(minutes[0].value) if candles.num_rows else "none",
            "last_minute": format_time_us(minutes[-1].value) if candles.num_rows else "none",
            "seconds": round(time.monotonic() - started, 3),
        }
    )
