"""The trades topic's index: checkpoints that let a read of the topic start where the last ended.

A checkpoint of partition `p` says: "every record of `p` below `next_offset` was read, and this is
what the read found under each key": the ids present, the duplicates and the records that were not
plausible trades, the highest ids with their times (for the plausibility check at the top), and
which offsets hold each UTC day (by message timestamp). It is published under `index|<p>` in
`<topic>.coverage` by whoever read the partition (a writer's start, a live run every few minutes).

A reader starts from the checkpoint and reads only the records from `next_offset` on: it ends with
exactly what a read from offset 0 would have found, because the trades topic never deletes (the
writers refuse one that would) and the checkpoint only restates records below `next_offset`. So a
checkpoint is only ever a lower bound of what is in the topic, and a crash at any instant leaves
either the previous checkpoint or the new one, both true. A checkpoint is input from other
processes: one that is malformed, out of bounds, or whose last record is not the record at that
offset of the topic now (the topic was recreated) is rejected, and the partition is read from 0.
"""

from __future__ import annotations

import hashlib
import heapq
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, Message

from trades_platform.coverage.coverage_log import (
    CoverageLogReader,
    coverage_producer,
    ensure_coverage_topic,
    publish_and_wait,
)
from trades_platform.coverage.id_ranges import IdRanges
from trades_platform.coverage.log_snapshots import INDEX_KEY_PREFIX
from trades_platform.settings import KafkaSettings
from trades_platform.topic_reader import (
    MAX_REJECTED_SAMPLES,
    RejectedRecord,
    RejectedRecords,
    read_range,
)
from trades_platform.topics import coverage_topic
from trades_platform.trade import MAX_TRADE_ID

# A read publishes a partition's checkpoint when it read at least this many records past it.
CHECKPOINT_AFTER_RECORDS = 10_000
# Keys a checkpoint indexes per partition (a pair is a key); beyond, the partition is not indexed.
MAX_INDEXED_KEYS = 1_000
# Id ranges per key (a range per hole); beyond, the partition is not indexed.
MAX_ID_RANGES = 10_000
# Day spans kept per key; beyond, neighbouring spans merge (a read of a day then reads more).
MAX_DAY_SPANS = 5_000
# Offset ranges kept per day and key before the two closest merge.
MAX_RANGES_PER_DAY = 4
# A day's record this far past the day's last range starts a new range (a late heal, a backfill).
DAY_RANGE_GAP = 100_000
# The highest ids kept per key with their times (topic_ids.py judges the jumps at the top).
TOP_IDS_CHECKED = 16
_DAY_MS = 86_400_000
_KEY_PATTERN = re.compile(rb"^[A-Z0-9]{1,16}-[A-Z0-9]{1,16}$")


def indexable_key(key: bytes) -> bool:
    """True for a message key a pair can have (`BTC-USD`): what the index keeps state for."""
    return _KEY_PATTERN.fullmatch(key) is not None


@dataclass(frozen=True, order=True)
class TopRecord:
    """One of a key's highest ids in the topic, with its time and where it was read."""

    trade_id: int
    timestamp_ms: int
    partition: int
    offset: int
    # The record's own exact time (ISO text) when it has one; the message's time otherwise.
    time_text: str | None
    message_time_ms: int


class DaySpans:
    """Which offsets of a partition hold a key's records of each UTC day (by message timestamp).

    Spans are (first_day, last_day, first_offset, last_offset); reading a span's offsets reads
    every record of its days, and more: merging spans to stay bounded only makes reads longer.
    """

    def __init__(self, spans: Iterable[tuple[int, int, int, int]] = ()) -> None:
        self.spans: list[list[int]] = [list(span) for span in spans]
        self._by_day: dict[int, list[int]] = {}
        for index, (first_day, last_day, _, _) in enumerate(self.spans):
            if first_day == last_day:
                self._by_day.setdefault(first_day, []).append(index)

    def add(self, timestamp_ms: int, offset: int) -> None:
        """Note a record of the key at `offset` with that message timestamp."""
        day = timestamp_ms // _DAY_MS
        indexes = self._by_day.setdefault(day, [])
        if indexes:
            span = self.spans[indexes[-1]]
            if offset - span[3] <= DAY_RANGE_GAP:
                span[3] = max(span[3], offset)
                return
        if len(indexes) >= MAX_RANGES_PER_DAY:
            span = self.spans[indexes[-1]]
            span[3] = max(span[3], offset)
            return
        indexes.append(len(self.spans))
        self.spans.append([day, day, offset, offset])

    def offsets_for(self, start_ms: int, end_ms: int) -> list[tuple[int, int]]:
        """Offset ranges (inclusive) holding every record timestamped in [start_ms, end_ms)."""
        first_day, last_day = start_ms // _DAY_MS, (end_ms - 1) // _DAY_MS
        ranges = sorted(
            (span[2], span[3])
            for span in self.spans
            if span[0] <= last_day and first_day <= span[1]
        )
        merged: list[tuple[int, int]] = []
        for first, last in ranges:
            if merged and first <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], last))
            else:
                merged.append((first, last))
        return merged

    def bounded(self) -> list[list[int]]:
        """The spans, neighbours (by day) merged pairwise until at most MAX_DAY_SPANS remain."""
        spans = sorted(self.spans)
        while len(spans) > MAX_DAY_SPANS:
            spans = [
                [
                    min(pair[0][0], pair[-1][0]),
                    max(pair[0][1], pair[-1][1]),
                    min(pair[0][2], pair[-1][2]),
                    max(pair[0][3], pair[-1][3]),
                ]
                for pair in (spans[i : i + 2] for i in range(0, len(spans), 2))
            ]
        return spans


@dataclass
class KeyState:
    """What a read of one partition found under one key."""

    ids: IdRanges = field(default_factory=IdRanges)
    duplicates: int = 0
    rejected: RejectedRecords = field(default_factory=RejectedRecords)
    top: list[TopRecord] = field(default_factory=list)  # a min-heap (topic_ids.py)
    days: DaySpans = field(default_factory=DaySpans)


@dataclass
class PartitionState:
    """A partition read up to `next_offset`: each key's state, and the last record read."""

    partition: int
    next_offset: int = 0
    keys: dict[bytes, KeyState] = field(default_factory=dict)
    # A digest of the last record read (at next_offset - 1): it must still be there to trust this.
    last_digest: str | None = None
    # Set when the partition holds more than the index keeps: the state is not published.
    unindexable: str | None = None

    def note_last(self, message: Message) -> None:
        """Remember the last record read, to recognise the topic later."""
        self.next_offset = (message.offset() or 0) + 1
        self.last_digest = record_digest(message.key(), message.value())


def record_digest(key: bytes | None, value: bytes | None) -> str:
    """A short digest of a record: what a checkpoint's last record must match."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(key or b"")
    digest.update(b"\0")
    digest.update(value or b"")
    return digest.hexdigest()


@dataclass
class LoadedIndex:
    """The checkpoints read back: the valid ones per partition, and why others were rejected."""

    partitions: dict[int, PartitionState]
    rejected: RejectedRecords
    coverage_records_fetched: int
    coverage_snapshot_due: bool


def load_index(
    settings: KafkaSettings, consumer: Consumer, partitions: list[int], *, timeout_seconds: float
) -> LoadedIndex:
    """The latest valid checkpoint of each of the trades topic's `partitions`."""
    ensure_coverage_topic(settings)
    reader = CoverageLogReader(settings, (INDEX_KEY_PREFIX,))
    try:
        latest: dict[int, tuple[int, dict[str, Any]]] = {}
        for offset, key, value in reader.new_records(timeout_seconds):
            try:
                partition = int(key[len(INDEX_KEY_PREFIX) :])
            except ValueError:
                reader.reject(offset, f"{key[:60]!r} is not an index key")
                continue
            latest[partition] = (offset, value)
        fetched, snapshot_due = reader.fetched, reader.snapshot_due
    finally:
        reader.close()
    rejected = reader.rejected
    loaded: dict[int, PartitionState] = {}
    for partition in partitions:
        if partition not in latest:
            continue
        offset, value = latest[partition]
        try:
            state = _state_from_checkpoint(partition, value)
            _check_still_there(consumer, settings.topic, state, timeout_seconds)
        except (KeyError, TypeError, ValueError) as error:
            rejected.add(0, offset, f"checkpoint of partition {partition}: {str(error)[:200]}")
            continue
        loaded[partition] = state
    return LoadedIndex(loaded, rejected, fetched, snapshot_due)


def publish_checkpoints(settings: KafkaSettings, states: Iterable[PartitionState]) -> int:
    """Publish the checkpoints of partitions read (not the unindexable ones); return how many."""
    records = [
        (f"{INDEX_KEY_PREFIX}{state.partition}", _checkpoint_from_state(state))
        for state in states
        if state.unindexable is None and state.next_offset > 0
    ]
    if records:
        publish_and_wait(
            coverage_producer(settings),
            coverage_topic(settings),
            records,
            timeout_seconds=30.0,
            what=f"checkpoints of {settings.topic!r} partitions {[key for key, _ in records]}",
        )
    return len(records)


def _checkpoint_from_state(state: PartitionState) -> dict[str, Any]:
    return {
        "partition": state.partition,
        "next_offset": state.next_offset,
        "last_digest": state.last_digest,
        "written_ms": int(time.time() * 1000),
        "keys": {
            key.decode(): {
                "ids": [list(r) for r in entry.ids],
                "duplicates": entry.duplicates,
                "rejected": {
                    "count": entry.rejected.count,
                    "samples": [[s.partition, s.offset, s.reason] for s in entry.rejected.samples],
                },
                "top": [
                    [
                        r.trade_id,
                        r.timestamp_ms,
                        r.partition,
                        r.offset,
                        r.time_text,
                        r.message_time_ms,
                    ]
                    for r in entry.top
                ],
                "days": entry.days.bounded(),
            }
            for key, entry in state.keys.items()
        },
    }


def _state_from_checkpoint(partition: int, value: dict[str, Any]) -> PartitionState:
    """A checkpoint read back, checked; ValueError (or KeyError, TypeError) if it is not one."""
    next_offset, digest, keys = value["next_offset"], value["last_digest"], value["keys"]
    if value["partition"] != partition:
        raise ValueError(f"it names partition {str(value['partition'])[:20]}")
    if not (type(next_offset) is int and next_offset > 0):
        raise ValueError(f"next_offset {str(next_offset)[:30]} is not an offset")
    if not (isinstance(digest, str) and len(digest) == 32):
        raise ValueError("last_digest is not a record digest")
    if not (isinstance(keys, dict) and len(keys) <= MAX_INDEXED_KEYS):
        raise ValueError(f"keys is not a map of at most {MAX_INDEXED_KEYS} keys")
    state = PartitionState(partition, next_offset, last_digest=digest)
    for key, entry in keys.items():
        if not indexable_key(key.encode()):
            raise ValueError(f"key {key[:40]!r} is not a pair's key")
        state.keys[key.encode()] = _key_state(entry, partition, next_offset)
    return state


def _key_state(entry: dict[str, Any], partition: int, next_offset: int) -> KeyState:
    ids, duplicates, rejected = entry["ids"], entry["duplicates"], entry["rejected"]
    if not (isinstance(ids, list) and len(ids) <= MAX_ID_RANGES):
        raise ValueError(f"ids is not a list of at most {MAX_ID_RANGES} ranges")
    state = KeyState()
    for first, last in ids:
        if not (type(first) is int and type(last) is int and 0 < first <= last <= MAX_TRADE_ID):
            raise ValueError(f"id range {str([first, last])[:60]} is not an id range")
        state.ids.add_range(first, last)
    state.duplicates = _count(duplicates, "duplicates")
    state.rejected.count = _count(rejected["count"], "rejected count")
    for sample_partition, offset, reason in rejected["samples"][:MAX_REJECTED_SAMPLES]:
        if not (_offset_below(offset, next_offset) and isinstance(reason, str)):
            raise ValueError("a rejected sample is not (partition, offset, reason)")
        if type(sample_partition) is not int:
            raise ValueError("a rejected sample's partition is not a number")
        state.rejected.samples.append(RejectedRecord(sample_partition, offset, reason[:300]))
    top = entry["top"]
    if not (isinstance(top, list) and len(top) <= TOP_IDS_CHECKED):
        raise ValueError(f"top is not a list of at most {TOP_IDS_CHECKED} records")
    for trade_id, timestamp_ms, top_partition, offset, time_text, message_ms in top:
        if not (
            type(trade_id) is int
            and trade_id in state.ids
            and type(timestamp_ms) is int
            and top_partition == partition
            and _offset_below(offset, next_offset)
            and (time_text is None or isinstance(time_text, str))
            and type(message_ms) is int
        ):
            raise ValueError(f"top record of id {str(trade_id)[:30]} is not a record read")
        state.top.append(
            TopRecord(trade_id, timestamp_ms, partition, offset, time_text, message_ms)
        )
    days = entry["days"]
    if not (isinstance(days, list) and len(days) <= MAX_DAY_SPANS):
        raise ValueError(f"days is not a list of at most {MAX_DAY_SPANS} spans")
    for span in days:
        first_day, last_day, first, last = span
        if not (
            type(first_day) is int
            and type(last_day) is int
            and 0 <= first_day <= last_day
            and _offset_below(first, next_offset)
            and _offset_below(last, next_offset)
            and first <= last
        ):
            raise ValueError(f"day span {str(span)[:80]} is not days and offsets read")
    state.days = DaySpans((span[0], span[1], span[2], span[3]) for span in days)
    heapq.heapify(state.top)
    return state


def _check_still_there(
    consumer: Consumer, topic: str, state: PartitionState, timeout_seconds: float
) -> None:
    """ValueError unless the record at next_offset - 1 is the one the checkpoint read last."""
    last = state.next_offset - 1
    found = list(
        read_range(
            consumer, topic, state.partition, last, last + 1, timeout_seconds=timeout_seconds
        )
    )
    if not found or found[0].offset() != last:
        raise ValueError(f"the topic has no record at offset {last} (recreated or truncated)")
    if record_digest(found[0].key(), found[0].value()) != state.last_digest:
        raise ValueError(f"the record at offset {last} is not the one read (topic recreated)")


def _count(value: object, what: str) -> int:
    if not (type(value) is int and value >= 0):
        raise ValueError(f"{what} {str(value)[:30]} is not a count")
    return value


def _offset_below(value: object, next_offset: int) -> bool:
    return type(value) is int and 0 <= value < next_offset
