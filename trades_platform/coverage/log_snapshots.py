"""Snapshots of `<topic>.coverage`: compaction done by the writers, so a start reads a bounded log.

Every heartbeat of every claim and lease stays in the coverage log on a broker that does not
compact (tansu, the local default), and a writer used to read the log from its first record. So
writers compact it themselves: a *snapshot* is a few records under `snapshot|<part>` that carry,
as of an offset `as_of`, what a reader of every record up to `as_of` would still use:

- the latest record of each key of a claim, a lease, or the trades topic's index (what Kafka's
  compaction keeps), each with its original offset (a claim's or lease's place in line);
- minus the holders that are over for every reader: released (acquisition and heartbeat), or
  silent for STALE_HOLDER_SECONDS by the wall clock (far beyond any lease plus the clock margin).

A fresh reader reads the log backwards from its end, LOG_WINDOW_RECORDS at a time, until it
holds a complete snapshot, then applies the snapshot's records and every record after `as_of`, in
order. Replaying a snapshot gives a reader the same claims, leases, places in line and index as
reading every record: the records it drops are superseded under their key, or belong to holders
that no reader waits for. ARCHITECTURE.md has the argument.

Snapshots are written by every writer's start (`scan_topic_ids`) and every few minutes by a live
run, whenever SNAPSHOT_AFTER_RECORDS or more records followed the latest one: so a start reads
about that many records plus a window, whatever the age of the log. Snapshots are input from other
processes: a part that is malformed is skipped and counted, and a reader without a complete
snapshot reads the whole log, as before.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition

from trades_platform.topic_reader import RejectedRecords, read_range, read_to_end

SNAPSHOT_KEY_PREFIX = "snapshot|"
# (acquisition, heartbeat) key prefixes of every kind of holder the log carries.
LIVE_CLAIM_KEYS = ("live-claim|", "live-beat|")
WINDOW_LEASE_KEYS = ("window|", "window-beat|")
HOLDER_KEYS = (LIVE_CLAIM_KEYS, WINDOW_LEASE_KEYS)
# Keys of the trades topic's index (topic_index.py): kept by snapshots like the holders' records.
INDEX_KEY_PREFIX = "index|"
KEPT_KEY_PREFIXES = (*(prefix for keys in HOLDER_KEYS for prefix in keys), INDEX_KEY_PREFIX)
# The same prefixes as the bytes of message keys, encoded once (they are matched per record).
_RAW_SNAPSHOT_PREFIX = SNAPSHOT_KEY_PREFIX.encode()
_RAW_KEPT_PREFIXES = tuple(prefix.encode() for prefix in KEPT_KEY_PREFIXES)
_RAW_HOLDER_KEYS = tuple((acquisition.encode(), beat.encode()) for acquisition, beat in HOLDER_KEYS)

# A fresh reader reads this many records back from the end at a time, looking for a snapshot.
LOG_WINDOW_RECORDS = 2_000
# A writer publishes a snapshot when at least this many records followed the latest one.
SNAPSHOT_AFTER_RECORDS = 500
# A holder silent this long by the wall clock is over for every reader (leases last minutes,
# clocks agree within 10 minutes): a snapshot drops it.
STALE_HOLDER_SECONDS = 24 * 3600.0
# A snapshot part stays well below the brokers' default largest message (1 MiB).
MAX_SNAPSHOT_PART_BYTES = 400_000
# More parts than this is no snapshot of ours (a part per 400 kB: 40 MB of live state).
MAX_SNAPSHOT_PARTS = 100

LogRecord = tuple[int, bytes, bytes]  # (offset, key, value) as read from the log


@dataclass
class LogView:
    """What a fresh reader applies, in order, and what it cost to find it."""

    records: list[LogRecord]
    # Where an incremental reader goes on from.
    next_offset: int
    # `as_of` of the snapshot the view starts from; None when the log was read from its start.
    snapshot_as_of: int | None
    # Records fetched from the broker to build the view (the cost the snapshots bound).
    fetched: int
    # Records of the log after the snapshot (what the next snapshot would fold in).
    after_snapshot: int
    rejected: RejectedRecords = field(default_factory=RejectedRecords)


@dataclass
class _Part:
    snapshot: str
    as_of: int
    part: int
    parts: int
    records: list[LogRecord]


def read_log_view(consumer: Consumer, topic: str, *, timeout_seconds: float) -> LogView:
    """What a fresh reader of the one-partition log `topic` applies, from its latest snapshot."""
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    except KafkaException:
        # A log created a moment ago may not be in this client's metadata yet: read it all.
        low = high = 0
    rejected = RejectedRecords()
    # tansu answers `high` short of the end by up to a batch: the read goes on to the end anyway.
    start = max(low, high - LOG_WINDOW_RECORDS)
    read: list[LogRecord] = list(
        _raw(read_to_end(consumer, topic, {0: start}, timeout_seconds=timeout_seconds))
    )
    fetched = len(read)
    snapshot = _latest_complete_snapshot(read, rejected)
    while snapshot is None and start > low:
        earlier = max(low, start - LOG_WINDOW_RECORDS)
        window = list(
            _raw(read_range(consumer, topic, 0, earlier, start, timeout_seconds=timeout_seconds))
        )
        fetched += len(window)
        read = window + read
        start = earlier
        rejected = RejectedRecords()
        snapshot = _latest_complete_snapshot(read, rejected)
    if snapshot is not None and snapshot.as_of + 1 < start:
        # Records between what the snapshot folded in and its own parts (other writers'),
        # which the window may have begun after.
        window = list(
            _raw(
                read_range(
                    consumer, topic, 0, snapshot.as_of + 1, start, timeout_seconds=timeout_seconds
                )
            )
        )
        fetched += len(window)
        read = window + read
    next_offset = read[-1][0] + 1 if read else start
    log = [record for record in read if not record[1].startswith(_RAW_SNAPSHOT_PREFIX)]
    if snapshot is None:
        return LogView(log, next_offset, None, fetched, len(log), rejected)
    after = [record for record in log if record[0] > snapshot.as_of]
    return LogView(
        snapshot.records + after, next_offset, snapshot.as_of, fetched, len(after), rejected
    )


def snapshot_due(view: LogView, min_new_records: int = SNAPSHOT_AFTER_RECORDS) -> bool:
    """True when `min_new_records` or more followed the view's snapshot (or it has none)."""
    if not view.records:
        return False
    return view.snapshot_as_of is None or view.after_snapshot >= min_new_records


def snapshot_records(view: LogView, now_ms: int | None = None) -> list[LogRecord]:
    """What a snapshot of `view` keeps: the latest record per kept key, minus holders over."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    latest: dict[bytes, LogRecord] = {}
    values: dict[bytes, dict[str, Any]] = {}
    for offset, key, value in view.records:
        if not key.startswith(_RAW_KEPT_PREFIXES):
            continue
        decoded = _json_object(value)
        if decoded is None or not _holder_record_shape(key, decoded):
            continue  # junk under a kept key: the previous good record stands, as readers judge it
        latest[key] = (offset, key, value)
        values[key] = decoded
    over: set[bytes] = set()
    for acquisition_prefix, beat_prefix in _RAW_HOLDER_KEYS:
        for key, acquisition in values.items():
            if not key.startswith(acquisition_prefix):
                continue
            holder = key[len(acquisition_prefix) :]
            beat_key = beat_prefix + holder
            last_seen_ms = max(
                _int_or_zero(acquisition.get("acquired_ms")),
                _int_or_zero(values.get(beat_key, {}).get("heartbeat_ms")),
            )
            silent_ms = now_ms - last_seen_ms
            if acquisition.get("released") is True or silent_ms > STALE_HOLDER_SECONDS * 1000:
                over |= {key, beat_key}
        # A heartbeat whose acquisition is gone (released and dropped before) joins nothing.
        for key in values:
            if key.startswith(beat_prefix):
                holder = key[len(beat_prefix) :]
                if acquisition_prefix + holder not in values:
                    over.add(key)
    return sorted(record for key, record in latest.items() if key not in over)


def snapshot_parts(view: LogView) -> list[tuple[str, dict[str, Any]]]:
    """The (key, value) records of a snapshot of `view`, as of its last record."""
    as_of = view.next_offset - 1
    snapshot = uuid.uuid4().hex
    parts: list[list[list[Any]]] = [[]]
    size = 0
    for offset, key, value in snapshot_records(view):
        entry_size = len(key) + len(value) + 32
        if parts[-1] and size + entry_size > MAX_SNAPSHOT_PART_BYTES:
            parts.append([])
            size = 0
        parts[-1].append([offset, key.decode(), orjson.loads(value)])
        size += entry_size
    if len(parts) > MAX_SNAPSHOT_PARTS:
        raise ValueError(f"a snapshot of {len(parts)} parts is more than readers accept")
    return [
        (
            f"{SNAPSHOT_KEY_PREFIX}{index}",
            {
                "snapshot": snapshot,
                "as_of": as_of,
                "part": index,
                "parts": len(parts),
                "records": records,
            },
        )
        for index, records in enumerate(parts)
    ]


def _latest_complete_snapshot(read: list[LogRecord], rejected: RejectedRecords) -> _Part | None:
    """The snapshot with the highest `as_of` whose every part is in `read`, merged into one."""
    by_snapshot: dict[str, dict[int, _Part]] = {}
    for offset, key, value in read:
        if not key.startswith(_RAW_SNAPSHOT_PREFIX):
            continue
        try:
            part = _part_from_record(offset, value)
        except (KeyError, TypeError, ValueError) as error:
            rejected.add(0, offset, f"snapshot part: {str(error)[:200]}")
            continue
        by_snapshot.setdefault(part.snapshot, {})[part.part] = part
    complete = [
        parts
        for parts in by_snapshot.values()
        if len(parts) == next(iter(parts.values())).parts
        and len({part.as_of for part in parts.values()}) == 1
    ]
    if not complete:
        return None
    newest = max(complete, key=lambda parts: next(iter(parts.values())).as_of)
    first = newest[0]
    records = sorted(record for index in sorted(newest) for record in newest[index].records)
    return _Part(first.snapshot, first.as_of, 0, first.parts, records)


def _part_from_record(offset: int, raw: bytes) -> _Part:
    """One snapshot part, checked; ValueError (or KeyError, TypeError) if malformed."""
    value = _json_object(raw)
    if value is None:
        raise ValueError("value is not a JSON object")
    snapshot, as_of, part, parts, records = (
        value["snapshot"],
        value["as_of"],
        value["part"],
        value["parts"],
        value["records"],
    )
    if not (isinstance(snapshot, str) and 0 < len(snapshot) <= 64):
        raise ValueError("snapshot is not a snapshot id")
    if not (type(as_of) is int and 0 <= as_of < offset):
        raise ValueError(f"as_of {str(as_of)[:30]} is not an offset before the part's own")
    if not (type(parts) is int and 0 < parts <= MAX_SNAPSHOT_PARTS):
        raise ValueError(f"parts {str(parts)[:30]} is not a part count")
    if not (type(part) is int and 0 <= part < parts):
        raise ValueError(f"part {str(part)[:30]} is not one of {parts} parts")
    if not isinstance(records, list):
        raise ValueError("records is not a list")
    checked: list[LogRecord] = []
    for entry in records:
        record_offset, key, record_value = entry
        if not (type(record_offset) is int and 0 <= record_offset <= as_of):
            raise ValueError(f"record offset {str(record_offset)[:30]} is not at or before as_of")
        if not (isinstance(key, str) and key.startswith(KEPT_KEY_PREFIXES)):
            raise ValueError(f"record key {str(key)[:60]!r} is not one a snapshot keeps")
        if not isinstance(record_value, dict):
            raise ValueError("record value is not a JSON object")
        checked.append((record_offset, key.encode(), orjson.dumps(record_value)))
    return _Part(snapshot, as_of, part, parts, checked)


def _raw(messages: Iterator[Any]) -> Iterator[LogRecord]:
    for message in messages:
        yield message.offset(), message.key() or b"", message.value() or b""


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw or b"null")
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _holder_record_shape(key: bytes, value: dict[str, Any]) -> bool:
    """False for a holder's record without the numbers every reader needs from it.

    Readers skip such a record and keep the holder as its previous one described it; a snapshot
    that kept only the latest record of the key must do the same, so it drops the record here.
    The full checks stay with the readers (claims.py, window_leases.py).
    """
    for acquisition_prefix, beat_prefix in _RAW_HOLDER_KEYS:
        if key.startswith(acquisition_prefix):
            return type(value.get("acquired_ms")) is int and isinstance(value.get("owner"), str)
        if key.startswith(beat_prefix):
            return (
                type(value.get("beat")) is int
                and type(value.get("heartbeat_ms")) is int
                and isinstance(value.get("owner"), str)
            )
    return True


def _int_or_zero(value: object) -> int:
    return value if type(value) is int else 0
