"""Which trade ids of which pairs are in the topic: the source of truth every writer starts from."""

from __future__ import annotations

import contextlib
import heapq
import logging
import time
from dataclasses import dataclass, field

import orjson
from confluent_kafka import Consumer, KafkaException, Message

from trades_platform.coverage.coverage_log import compact_coverage_log
from trades_platform.coverage.id_ranges import IdRanges
from trades_platform.coverage.topic_index import (
    CHECKPOINT_AFTER_RECORDS,
    MAX_ID_RANGES,
    MAX_INDEXED_KEYS,
    TOP_IDS_CHECKED,
    KeyState,
    PartitionState,
    TopRecord,
    indexable_key,
    load_index,
    publish_checkpoints,
)
from trades_platform.settings import KafkaSettings
from trades_platform.topic_reader import RejectedRecords, read_to_end, topic_partitions
from trades_platform.trade import (
    CLOCK_MARGIN_MS,
    implausible_jump,
    implausible_reason,
    message_key_for,
    parse_time_iso,
)

logger = logging.getLogger(__name__)


@dataclass
class PairIds:
    """The ids of one pair present in the topic, and the exact time of the highest one.

    Records under the pair's key that are not plausible trades (not JSON, not an object, an id
    or a time no Kraken trade has, an id that jumps past the one below it faster than any pair
    trades) are skipped: they never stop a writer and never become its resume point. `rejected`
    counts them and keeps the first few with their offsets.
    """

    ids: IdRanges = field(default_factory=IdRanges)
    highest_time_us: int | None = None
    duplicates: int = 0
    rejected: RejectedRecords = field(default_factory=RejectedRecords)


@dataclass
class ScanCost:
    """What a scan read: the trades topic's records and the coverage log's, and where it began."""

    records_read: int = 0
    coverage_records_fetched: int = 0
    coverage_snapshot_due: bool = False
    # Partitions read from a checkpoint (the rest from offset 0).
    partitions_from_checkpoint: int = 0
    checkpoints_published: int = 0


def scan_topic_ids(
    settings: KafkaSettings,
    pairs: list[str],
    *,
    timeout_seconds: float = 120.0,
    checkpoint_after_records: int = CHECKPOINT_AFTER_RECORDS,
    cost: ScanCost | None = None,
) -> dict[str, PairIds]:
    """Each pair's ids in the topic: the index's checkpoints, then every record after them.

    The result is what reading every partition from offset 0 would give (topic_index.py). A
    partition read `checkpoint_after_records` or more past its checkpoint gets a new one, and the
    coverage log a snapshot when it is due: both only restate what was read. `timeout_seconds`
    bounds a stall of the read, not its length.
    """
    cost = cost if cost is not None else ScanCost()
    reads = read_topic_states(settings, timeout_seconds=timeout_seconds, cost=cost)
    behind = [
        read
        for read in reads.values()
        if read.records_read >= checkpoint_after_records
        or (not read.from_checkpoint and read.records_read)
    ]
    try:
        cost.checkpoints_published = publish_checkpoints(settings, (r.state for r in behind))
        if cost.coverage_snapshot_due:
            compact_coverage_log(settings)
    except (TimeoutError, KafkaException, ValueError) as error:
        # The index only saves reading: without it the next read starts further back.
        logger.warning(f"could not update the index of {settings.topic!r}: {error}")
    found: dict[str, PairIds] = {}
    for pair in pairs:
        key = message_key_for(pair).encode()
        found[pair] = _pair_ids(
            [read.state.keys[key] for read in reads.values() if key in read.state.keys]
        )
    return found


@dataclass
class PartitionRead:
    """A partition's state after a read, and how the read began."""

    state: PartitionState
    from_checkpoint: bool
    records_read: int = 0


def read_topic_states(
    settings: KafkaSettings, *, timeout_seconds: float, cost: ScanCost
) -> dict[int, PartitionRead]:
    """Every partition's state at its end: its checkpoint, then the records after it."""
    # A trade from later than this is no trade yet (the writers' clocks may differ by the margin).
    latest_ms = int(time.time() * 1000) + CLOCK_MARGIN_MS
    consumer = Consumer(settings.consumer_config())
    try:
        partitions = topic_partitions(consumer, settings.topic) or []
        index = load_index(settings, consumer, partitions, timeout_seconds=timeout_seconds)
        cost.coverage_records_fetched += index.coverage_records_fetched
        cost.coverage_snapshot_due |= index.coverage_snapshot_due
        if index.rejected.count:
            logger.warning(
                f"{index.rejected.count} checkpoint(s) of {settings.topic!r} rejected, those "
                f"partitions are read from offset 0: {index.rejected.describe()}"
            )
        reads = {
            partition: PartitionRead(index.partitions[partition], from_checkpoint=True)
            if partition in index.partitions
            else PartitionRead(PartitionState(partition), from_checkpoint=False)
            for partition in partitions
        }
        cost.partitions_from_checkpoint += len(index.partitions)
        messages = read_to_end(
            consumer,
            settings.topic,
            {partition: read.state.next_offset for partition, read in reads.items()},
            timeout_seconds=timeout_seconds,
        )
        for message in messages:
            read = reads[message.partition() or 0]
            read.records_read += 1
            _add_record(read.state, message, latest_ms)
            read.state.note_last(message)
        cost.records_read += sum(read.records_read for read in reads.values())
    finally:
        consumer.close()
    return reads


def _add_record(state: PartitionState, message: Message, latest_ms: int) -> None:
    """Fold one record into its key's state (records of keys no pair has are not indexed)."""
    raw_key = message.key() or b""
    entry = state.keys.get(raw_key)
    if entry is None:
        if not indexable_key(raw_key):
            return
        if len(state.keys) >= MAX_INDEXED_KEYS:
            state.unindexable = f"more than {MAX_INDEXED_KEYS} keys"
        entry = state.keys[raw_key] = KeyState()
    where = (message.partition() or 0, message.offset() or 0)
    message_time_ms = message.timestamp()[1]
    entry.days.add(message_time_ms, where[1])
    try:
        value = orjson.loads(message.value() or b"")
    except orjson.JSONDecodeError:
        entry.rejected.add(*where, "value is not JSON")
        return
    if not isinstance(value, dict):
        entry.rejected.add(*where, f"value is a JSON {type(value).__name__}, not an object")
        return
    trade_id, timestamp_ms = value.get("trade_id"), value.get("timestamp_ms")
    reason = implausible_reason(trade_id, timestamp_ms, latest_ms)
    if reason is not None:
        entry.rejected.add(*where, reason)
        return
    # implausible_reason checked both
    assert isinstance(trade_id, int) and isinstance(timestamp_ms, int)
    if trade_id in entry.ids:
        entry.duplicates += 1
        return
    entry.ids.add(trade_id)
    if entry.ids.range_count > MAX_ID_RANGES:
        state.unindexable = f"more than {MAX_ID_RANGES} id ranges under {raw_key[:40]!r}"
    if len(entry.top) >= TOP_IDS_CHECKED and trade_id <= entry.top[0].trade_id:
        return
    time_text = value.get("timestamp")
    record = TopRecord(
        trade_id,
        timestamp_ms,
        where[0],
        where[1],
        time_text if isinstance(time_text, str) else None,
        message_time_ms,
    )
    if len(entry.top) < TOP_IDS_CHECKED:
        heapq.heappush(entry.top, record)
    else:
        heapq.heapreplace(entry.top, record)


def _pair_ids(states: list[KeyState]) -> PairIds:
    """A pair's ids from its key's state in each partition, the top's implausible jumps dropped."""
    found = PairIds()
    top: list[TopRecord] = []
    for state in states:
        for first, last in state.ids:
            # One partition per pair (ARCHITECTURE.md): ids in two are counted as duplicates.
            found.duplicates += sum(b - a + 1 for a, b in found.ids.within(first, last))
            found.ids.add_range(first, last)
        found.duplicates += state.duplicates
        found.rejected.extend(state.rejected)
        top.extend(state.top)
    top.sort(reverse=True)
    del top[TOP_IDS_CHECKED:]
    while len(top) >= 2:
        higher, lower = top[0], top[1]
        jump = implausible_jump(
            higher.trade_id, higher.timestamp_ms, lower.trade_id, lower.timestamp_ms
        )
        if jump is None:
            break
        found.rejected.add(higher.partition, higher.offset, jump)
        found.ids.remove(higher.trade_id)
        top.pop(0)
    if top:
        highest = top[0]
        found.highest_time_us = highest.message_time_ms * 1000
        if highest.time_text is not None:
            # Unparsable: keep the message timestamp.
            with contextlib.suppress(ValueError):
                found.highest_time_us = parse_time_iso(highest.time_text)
    return found


def rejected_warnings(found: dict[str, PairIds]) -> list[str]:
    """One warning per pair whose scan skipped records that are not plausible trades."""
    return [
        f"{pair}: {entry.rejected.count} record(s) under its key in the topic are not plausible "
        f"trades and were skipped (they do not count as present): {entry.rejected.describe()}"
        for pair, entry in found.items()
        if entry.rejected.count
    ]
