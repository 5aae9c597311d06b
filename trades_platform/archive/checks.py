"""Checks on the archive, made on the files as written and against the topic itself.

The Parquet day is read back from the archive and compared with the topic's records of that
day (validated and de-duplicated as the asset does): the same ids, each once, nothing else. Its
ids must also run without a hole (Kraken's ids are sequential per pair, so a hole is a trade the
archive lacks, whether the topic lacks it too or not), and cover the first and last trade the
day's backfill reported. The candles are read back and compared with the Parquet day: as many
trades and the same volume, and no minute outside the day. The Parquet checks are blocking: in
a run that also builds the candles, a failed one stops them.
"""

# No `from __future__ import annotations` here: Dagster reads the checks' annotations at import.

import math
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import pyarrow as pa
from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    MetadataValue,
    multi_asset_check,
)

from trades_platform.archive.assets import kraken_candles_1m, kraken_trades_parquet
from trades_platform.archive.candles import MINUTE_US
from trades_platform.archive.parquet import build_day_trades, invalid_examples, read_parquet_bytes
from trades_platform.archive.storage import CANDLES_DATASET, TRADES_DATASET
from trades_platform.backfill.checks import judge_each_partition, reported_window
from trades_platform.backfill.partitions import TRADES_HISTORY_PARTITIONS, PartitionWindow
from trades_platform.backfill.readback import read_pair_window
from trades_platform.id_counts import count_ids
from trades_platform.resources import ArchiveResource, RedpandaResource
from trades_platform.trade import format_time_us

PARQUET_TOPIC_CHECK = "parquet_matches_topic"
PARQUET_IDS_CHECK = "parquet_trade_ids_contiguous"
CANDLES_TRADES_CHECK = "candles_match_trades"
CANDLES_DAY_CHECK = "candles_within_day"
# Float sums of the same volumes in another grouping differ in the last bits, no more.
VOLUME_RELATIVE_TOLERANCE = 1e-9
_EXAMPLES = 5

_PARQUET_KEY = kraken_trades_parquet.key
_CANDLES_KEY = kraken_candles_1m.key


def _examples(ids: list[int]) -> list[int]:
    return ids[:_EXAMPLES]


@multi_asset_check(
    specs=[
        AssetCheckSpec(
            PARQUET_TOPIC_CHECK,
            asset=_PARQUET_KEY,
            partitions_def=TRADES_HISTORY_PARTITIONS,
            blocking=True,
            description=(
                "The Parquet day read back from the archive holds exactly the trade ids the "
                "topic holds for that pair and day (valid records, each id once): same count, "
                "same set, ascending, every row inside the day."
            ),
        ),
        AssetCheckSpec(
            PARQUET_IDS_CHECK,
            asset=_PARQUET_KEY,
            partitions_def=TRADES_HISTORY_PARTITIONS,
            blocking=True,
            description=(
                "The Parquet day's trade ids run without a hole (a hole is a trade the archive "
                "lacks) and include the first and last trade the day's backfill reported. An "
                "empty day passes only if the backfill ran and found no trade."
            ),
        ),
    ],
    can_subset=True,
)
def kraken_trades_parquet_checks(
    context: AssetCheckExecutionContext, redpanda: RedpandaResource, archive: ArchiveResource
) -> Iterator[AssetCheckResult | AssetCheckEvaluation]:
    """Compare each partition's Parquet file with the topic's records of its day."""
    yield from judge_each_partition(
        context, lambda key: _judge_parquet(context, key, redpanda, archive)
    )


def _judge_parquet(
    context: AssetCheckExecutionContext,
    key: str,
    redpanda: RedpandaResource,
    archive: ArchiveResource,
) -> Iterator[AssetCheckResult]:
    window = PartitionWindow.from_key(key)
    store = archive.store()
    url = store.day_url(TRADES_DATASET, window)
    data = store.read(TRADES_DATASET, window)
    table = read_parquet_bytes(data) if data is not None else None
    file_ids: list[int] = table.column("trade_id").to_pylist() if table is not None else []
    selected = {check.name for check in context.selected_asset_check_keys}
    common: dict[str, Any] = {"url": url, "window": window.describe(), "rows": len(file_ids)}

    if PARQUET_TOPIC_CHECK in selected:
        read = read_pair_window(
            redpanda.kafka_settings(), window.pair, window.start_ms, window.end_ms
        )
        topic_day = build_day_trades(read.records, window)
        topic_ids: list[int] = topic_day.table.column("trade_id").to_pylist()
        in_file, in_topic = set(file_ids), set(topic_ids)
        missing = sorted(in_topic - in_file)
        extra = sorted(in_file - in_topic)
        not_ascending = sum(1 for before, after in pairwise(file_ids) if after <= before)
        outside = _outside_day(table, "timestamp", window) if table is not None else 0
        context.log.info(
            f"{url}: {len(file_ids)} rows; topic {redpanda.topic!r}: {len(topic_ids)} trades "
            f"of {window.describe()} ({read.scanned} messages scanned)"
        )
        yield AssetCheckResult(
            check_name=PARQUET_TOPIC_CHECK,
            asset_key=_PARQUET_KEY,
            passed=table is not None
            and not (missing or extra or not_ascending or outside)
            and len(file_ids) == len(topic_ids),
            metadata={
                **common,
                "file_found": table is not None,
                "topic_trades": len(topic_ids),
                "missing_from_parquet": len(missing),
                "not_in_topic": len(extra),
                "not_ascending": not_ascending,
                "rows_outside_day": outside,
                "topic_invalid_records": topic_day.invalid.total(),
                "topic_duplicates": topic_day.duplicates_dropped,
                "examples": MetadataValue.json(
                    {
                        "missing_from_parquet": _examples(missing),
                        "not_in_topic": _examples(extra),
                        "topic_invalid": invalid_examples(topic_day.invalid),
                    }
                ),
            },
        )

    if PARQUET_IDS_CHECK in selected:
        reported = reported_window(context, key)
        counted = count_ids(file_ids, reported.first_id, reported.last_id)
        # An empty day has no hole, but proves nothing either: it passes only when the day's
        # backfill ran and found no trade (the backfill's own ids check says the same).
        unproven = not file_ids and reported.trades != 0
        lost = bool(counted.lost) or table is None
        yield AssetCheckResult(
            check_name=PARQUET_IDS_CHECK,
            asset_key=_PARQUET_KEY,
            passed=not (lost or unproven or counted.duplicated),
            severity=AssetCheckSeverity.ERROR if lost else AssetCheckSeverity.WARN,
            metadata={
                **common,
                "file_found": table is not None,
                "first_id": counted.first_id if counted.first_id is not None else "none",
                "last_id": counted.last_id if counted.last_id is not None else "none",
                "holes_ids": counted.lost,
                "duplicates": counted.duplicated,
                "backfill_found": reported.trades if reported.trades is not None else "unknown",
                "problems": MetadataValue.json(
                    {
                        "holes": [f"{low}..{high}" for low, high in counted.holes[:_EXAMPLES]],
                        "unproven": (
                            ["no trade in the file, and no backfill of the day found none"]
                            if unproven
                            else []
                        ),
                    }
                ),
            },
        )


@multi_asset_check(
    specs=[
        AssetCheckSpec(
            CANDLES_TRADES_CHECK,
            asset=_CANDLES_KEY,
            partitions_def=TRADES_HISTORY_PARTITIONS,
            description=(
                "The candles read back from the archive add up to the Parquet day: the sum of "
                "trade_count is its row count, the sum of volume its volume (to 1e-9 relative), "
                "one candle per minute that has trades."
            ),
        ),
        AssetCheckSpec(
            CANDLES_DAY_CHECK,
            asset=_CANDLES_KEY,
            partitions_def=TRADES_HISTORY_PARTITIONS,
            description=(
                "Every candle's minute is a whole UTC minute inside the partition's day, each "
                "minute once, in ascending order."
            ),
        ),
    ],
    can_subset=True,
)
def kraken_candles_1m_checks(
    context: AssetCheckExecutionContext, archive: ArchiveResource
) -> Iterator[AssetCheckResult | AssetCheckEvaluation]:
    """Compare each partition's candles with its Parquet day."""
    yield from judge_each_partition(context, lambda key: _judge_candles(context, key, archive))


def _judge_candles(
    context: AssetCheckExecutionContext, key: str, archive: ArchiveResource
) -> Iterator[AssetCheckResult]:
    window = PartitionWindow.from_key(key)
    store = archive.store()
    candles_data = store.read(CANDLES_DATASET, window)
    trades_data = store.read(TRADES_DATASET, window)
    candles = read_parquet_bytes(candles_data) if candles_data is not None else None
    trades = read_parquet_bytes(trades_data) if trades_data is not None else None
    selected = {check.name for check in context.selected_asset_check_keys}
    common: dict[str, Any] = {
        "url": store.day_url(CANDLES_DATASET, window),
        "window": window.describe(),
        "candles": candles.num_rows if candles is not None else 0,
    }

    if CANDLES_TRADES_CHECK in selected:
        found = candles is not None and trades is not None
        counted = sum(candles.column("trade_count").to_pylist()) if candles is not None else 0
        rows = trades.num_rows if trades is not None else 0
        candle_volume = _fsum(candles, "volume")
        trade_volume = _fsum(trades, "volume")
        minutes_with_trades = _distinct_minutes(trades) if trades is not None else 0
        volume_agrees = math.isclose(
            candle_volume, trade_volume, rel_tol=VOLUME_RELATIVE_TOLERANCE, abs_tol=0.0
        )
        yield AssetCheckResult(
            check_name=CANDLES_TRADES_CHECK,
            asset_key=_CANDLES_KEY,
            passed=found
            and counted == rows
            and volume_agrees
            and common["candles"] == minutes_with_trades,
            metadata={
                **common,
                "files_found": found,
                "trade_count_sum": counted,
                "parquet_rows": rows,
                "volume_sum": candle_volume,
                "parquet_volume": trade_volume,
                "minutes_with_trades": minutes_with_trades,
            },
        )

    if CANDLES_DAY_CHECK in selected:
        minutes: list[int] = (
            candles.column("minute").cast(pa.int64()).to_pylist() if candles is not None else []
        )
        outside = sum(1 for minute in minutes if not window.start_us <= minute < window.end_us)
        not_whole = sum(1 for minute in minutes if minute % MINUTE_US)
        not_ascending = sum(1 for before, after in pairwise(minutes) if after <= before)
        yield AssetCheckResult(
            check_name=CANDLES_DAY_CHECK,
            asset_key=_CANDLES_KEY,
            passed=candles is not None and not (outside or not_whole or not_ascending),
            metadata={
                **common,
                "file_found": candles is not None,
                "minutes_outside_day": outside,
                "minutes_not_whole": not_whole,
                "minutes_not_ascending": not_ascending,
                "first_minute": format_time_us(minutes[0]) if minutes else "none",
                "last_minute": format_time_us(minutes[-1]) if minutes else "none",
            },
        )


def _fsum(table: pa.Table | None, column: str) -> float:
    """The column's exact sum, rounded once (independent of the order it is added in)."""
    return math.fsum(table.column(column).to_pylist()) if table is not None else 0.0


def _distinct_minutes(trades: pa.Table) -> int:
    times: list[int] = trades.column("timestamp").cast(pa.int64()).to_pylist()
    return len({time_us - time_us % MINUTE_US for time_us in times})


def _outside_day(table: pa.Table, column: str, window: PartitionWindow) -> int:
    times: list[int] = table.column(column).cast(pa.int64()).to_pylist()
    return sum(1 for time_us in times if not window.start_us <= time_us < window.end_us)
