"""Checks on a `kraken_trades_history` partition, made on what landed in the topic.

Both checks read the pair's records back from the topic, bounded to the partition's day by
message timestamp (the producer sets it to the trade time), so they prove what consumers see,
not what the asset meant to write.
"""

# No `from __future__ import annotations` here: Dagster reads the check's annotations at import.

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import orjson
from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetRecordsFilter,
    MetadataValue,
    multi_asset_check,
)
from pydantic import ValidationError

from trades_platform.backfill.asset import kraken_trades_history
from trades_platform.backfill.partitions import TRADES_HISTORY_PARTITIONS, PartitionWindow
from trades_platform.backfill.readback import WindowRecord, read_pair_window
from trades_platform.id_counts import count_ids
from trades_platform.resources import RedpandaResource
from trades_platform.trade import Trade

IDS_CHECK = "trade_ids_contiguous"
RECORDS_CHECK = "records_match_trade_schema"
_EXAMPLES = 5

_ASSET_KEY = kraken_trades_history.key


@dataclass(frozen=True)
class IdSequenceReport:
    """How a pair's trade ids in a window line up; holes are lost trades."""

    count: int
    distinct: int
    first_id: int | None
    last_id: int | None
    holes: int  # ids missing between the first and the last one
    hole_examples: list[str]  # "after 41 comes 44"
    duplicates: int  # records beyond the first one of the same id
    not_increasing: int  # records whose id is not above the previous one in the same partition
    missing_edges: list[str] = field(default_factory=list)  # reported by the asset, not found

    @property
    def lost_trades(self) -> bool:
        """Trades are missing: worse than duplicates, which lose nothing."""
        return bool(self.holes or self.missing_edges)

    @property
    def passed(self) -> bool:
        """Strictly increasing, without holes, and covering what the asset reported."""
        return not (self.lost_trades or self.duplicates or self.not_increasing)


def id_sequence_report(
    ids_by_partition: Mapping[int, Sequence[int]],
    expected_first: int | None = None,
    expected_last: int | None = None,
    expected_count: int | None = None,
) -> IdSequenceReport:
    """Holes, duplicates and disorder of trade ids given in topic order per Kafka partition.

    `expected_*`: what the asset's materialization found in the window (first and last id, and
    how many trades); fewer read back is reported as missing.
    """
    not_increasing = 0
    for ids in ids_by_partition.values():
        not_increasing += sum(1 for before, after in pairwise(ids) if after <= before)
    counted = count_ids(trade_id for ids in ids_by_partition.values() for trade_id in ids)
    first, last = counted.first_id, counted.last_id
    missing_edges: list[str] = []
    if expected_first is not None and (first is None or first > expected_first):
        missing_edges.append(f"first trade {expected_first} written by the asset is missing")
    if expected_last is not None and (last is None or last < expected_last):
        missing_edges.append(f"last trade {expected_last} written by the asset is missing")
    if expected_count is not None and counted.distinct < expected_count:
        missing_edges.append(
            f"{expected_count} trades found by the asset, {counted.distinct} read back"
        )
    return IdSequenceReport(
        count=counted.in_topic,
        distinct=counted.distinct,
        first_id=first,
        last_id=last,
        holes=counted.lost,
        hole_examples=[
            f"after {low - 1} comes {high + 1}" for low, high in counted.holes[:_EXAMPLES]
        ],
        duplicates=counted.duplicated,
        not_increasing=not_increasing,
        missing_edges=missing_edges,
    )


def invalid_records(records: Sequence[WindowRecord], window: PartitionWindow) -> Counter[str]:
    """Why records fail the `Trade` schema or do not belong to the window, counted by reason."""
    reasons: Counter[str] = Counter()
    for record in records:
        reason = _invalid_reason(record, window)
        if reason is not None:
            reasons[reason] += 1
    return reasons


def _invalid_reason(record: WindowRecord, window: PartitionWindow) -> str | None:
    checked = checked_trade(record, window)
    return checked if isinstance(checked, str) else None


def checked_trade(record: WindowRecord, window: PartitionWindow) -> Trade | str:
    """The record's `Trade` if it is a valid trade of the window's pair, else why it is not."""
    try:
        trade = Trade.model_validate(orjson.loads(record.value))
    except orjson.JSONDecodeError:
        return "value is not JSON"
    except ValidationError as error:
        first = error.errors()[0]
        location = ".".join(str(part) for part in first["loc"]) or "record"
        return f"{location}: {first['msg']}"
    if trade.pair != window.pair:
        return f"pair {trade.pair!r} under the key of {window.pair!r}"
    if trade.timestamp_ms != record.timestamp_ms:
        return "message timestamp differs from the trade time"
    return trade


def _ids_by_partition(records: Sequence[WindowRecord]) -> dict[int, list[int]]:
    by_partition: dict[int, list[int]] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        try:
            trade_id = orjson.loads(record.value).get("trade_id")
        except (orjson.JSONDecodeError, AttributeError):
            continue  # counted by the schema check
        if type(trade_id) is int:
            by_partition.setdefault(record.partition, []).append(trade_id)
    return by_partition


@dataclass(frozen=True)
class ReportedWindow:
    """What the partition's latest materialization found in its window (None: not reported)."""

    trades: int | None = None
    first_id: int | None = None
    last_id: int | None = None


def reported_window(context: AssetCheckExecutionContext, key: str) -> ReportedWindow:
    """What the partition's latest materialization reported; nothing if it has none."""
    result = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=_ASSET_KEY, asset_partitions=[key]),
        limit=1,
    )
    if not result.records:
        return ReportedWindow()
    materialization = result.records[0].asset_materialization
    metadata: Mapping[str, Any] = materialization.metadata if materialization else {}

    def reported(name: str) -> int | None:
        entry = metadata.get(name)
        value = entry.value if entry is not None else None
        return value if type(value) is int else None

    return ReportedWindow(
        trades=reported("dagster/row_count"),
        first_id=reported("first_trade_id"),
        last_id=reported("last_trade_id"),
    )


@multi_asset_check(
    specs=[
        AssetCheckSpec(
            IDS_CHECK,
            asset=_ASSET_KEY,
            partitions_def=TRADES_HISTORY_PARTITIONS,
            description=(
                "Read back from the topic: the pair's trade ids in the day are strictly "
                "increasing and without holes (a hole is a lost trade), and include the first "
                "and last trade the asset reported and as many trades as it found. A day that "
                "reads back nothing passes only if the asset ran and found no trade in it."
            ),
        ),
        AssetCheckSpec(
            RECORDS_CHECK,
            asset=_ASSET_KEY,
            partitions_def=TRADES_HISTORY_PARTITIONS,
            description=(
                "Read back from the topic: every record of the pair in the day is a valid "
                "`Trade` of that pair whose message timestamp is its trade time."
            ),
        ),
    ],
    can_subset=True,
)
def kraken_trades_history_checks(
    context: AssetCheckExecutionContext, redpanda: RedpandaResource
) -> Iterator[AssetCheckResult | AssetCheckEvaluation]:
    """Judge each partition of the run (one, or a backfill's range) on what it reads back."""
    yield from judge_each_partition(context, lambda key: _judge_partition(context, key, redpanda))


def judge_each_partition(
    context: AssetCheckExecutionContext, judge: Callable[[str], Iterator[AssetCheckResult]]
) -> Iterator[AssetCheckResult | AssetCheckEvaluation]:
    """Judge each partition of the run; in a run over a range each verdict names its partition."""
    keys = list(context.partition_keys)
    for key in keys:
        for result in judge(key):
            if len(keys) == 1:
                yield result
                continue
            if result.asset_key is None:
                raise ValueError(f"check {result.check_name!r}: a verdict must name its asset")
            yield AssetCheckEvaluation(
                asset_key=result.asset_key,
                check_name=result.check_name or "",
                passed=result.passed,
                metadata=result.metadata,
                severity=result.severity,
                partition=key,
            )


def _judge_partition(
    context: AssetCheckExecutionContext, key: str, redpanda: RedpandaResource
) -> Iterator[AssetCheckResult]:
    """Read the partition's window back once and judge it twice."""
    window = PartitionWindow.from_key(key)
    settings = redpanda.kafka_settings()
    read = read_pair_window(settings, window.pair, window.start_ms, window.end_ms)
    context.log.info(
        f"Read back {len(read.records)} records of {window.describe()} from topic "
        f"{redpanda.topic!r} (scanned {read.scanned} messages)"
    )
    common: dict[str, Any] = {
        "window": window.describe(),
        "topic": redpanda.topic,
        "scanned": read.scanned,
    }
    selected = {key.name for key in context.selected_asset_check_keys}

    if IDS_CHECK in selected:
        reported = reported_window(context, key)
        report = id_sequence_report(
            _ids_by_partition(read.records), reported.first_id, reported.last_id, reported.trades
        )
        # A day that reads back nothing has no holes, but proves nothing either: it passes only
        # when the asset ran and found no trade in the window.
        unproven = report.count == 0 and reported.trades != 0
        yield AssetCheckResult(
            check_name=IDS_CHECK,
            asset_key=_ASSET_KEY,
            passed=report.passed and not unproven,
            # Duplicates alone lose nothing (issue 4 removes them); holes lose trades.
            severity=AssetCheckSeverity.ERROR if report.lost_trades else AssetCheckSeverity.WARN,
            metadata={
                **common,
                "records": report.count,
                "distinct_ids": report.distinct,
                "first_id": report.first_id if report.first_id is not None else "none",
                "last_id": report.last_id if report.last_id is not None else "none",
                "holes": report.holes,
                "duplicates": report.duplicates,
                "not_increasing": report.not_increasing,
                "found_by_asset": reported.trades if reported.trades is not None else "unknown",
                "problems": MetadataValue.json(
                    {
                        "holes": report.hole_examples,
                        "missing": report.missing_edges,
                        "unproven": (
                            ["no trade of the day read back, and no materialization found one"]
                            if unproven
                            else []
                        ),
                    }
                ),
            },
        )

    if RECORDS_CHECK in selected:
        reasons = invalid_records(read.records, window)
        yield AssetCheckResult(
            check_name=RECORDS_CHECK,
            asset_key=_ASSET_KEY,
            passed=not reasons,
            metadata={
                **common,
                "records": len(read.records),
                "invalid": reasons.total(),
                "reasons": MetadataValue.json(dict(reasons.most_common(_EXAMPLES))),
            },
        )
