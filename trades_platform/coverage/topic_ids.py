"""Which trade ids of which pairs are in the topic: the source of truth every writer starts from."""

from __future__ import annotations

import contextlib
import heapq
import time
from dataclasses import dataclass, field

import orjson
from confluent_kafka import Consumer, Message

from trades_platform.coverage.id_ranges import IdRanges
from trades_platform.settings import KafkaSettings
from trades_platform.topic_reader import RejectedRecords, read_to_end, topic_partitions
from trades_platform.trade import (
    CLOCK_MARGIN_MS,
    implausible_jump,
    implausible_reason,
    message_key_for,
    parse_time_iso,
)

# How many of a pair's highest ids the scan keeps with their times, to judge the jumps at the
# top: more records than this that jump past any trading pace can still be believed.
TOP_IDS_CHECKED = 16


@dataclass(frozen=True, order=True)
class _TopRecord:
    """One of a pair's highest ids in the topic, with its time and where it was read."""

    trade_id: int
    timestamp_ms: int
    partition: int
    offset: int
    # The record's own exact time (ISO text) when it has one; the message's time otherwise.
    time_text: object
    message_time_ms: int


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
    # A min-heap of the highest ids seen, for `settle_the_top`.
    _top: list[_TopRecord] = field(default_factory=list, repr=False)

    def note_top_candidate(
        self, trade_id: int, timestamp_ms: int, message: Message, time_text: object
    ) -> None:
        """Keep a newly present id with its time if it is among the highest so far."""
        if len(self._top) >= TOP_IDS_CHECKED and trade_id <= self._top[0].trade_id:
            return
        record = _TopRecord(
            trade_id,
            timestamp_ms,
            message.partition() or 0,
            message.offset() or 0,
            time_text,
            message.timestamp()[1],
        )
        if len(self._top) < TOP_IDS_CHECKED:
            heapq.heappush(self._top, record)
        else:
            heapq.heapreplace(self._top, record)

    def settle_the_top(self) -> None:
        """Drop ids that jump past the next lower one too fast; take the time of the highest."""
        top = sorted(self._top, reverse=True)
        while len(top) >= 2:
            higher, lower = top[0], top[1]
            jump = implausible_jump(
                higher.trade_id, higher.timestamp_ms, lower.trade_id, lower.timestamp_ms
            )
            if jump is None:
                break
            self.rejected.add(higher.partition, higher.offset, jump)
            self.ids.remove(higher.trade_id)
            top.pop(0)
        if not top:
            return
        highest = top[0]
        self.highest_time_us = highest.message_time_ms * 1000
        if isinstance(highest.time_text, str):
            # Unparsable: keep the message timestamp.
            with contextlib.suppress(ValueError):
                self.highest_time_us = parse_time_iso(highest.time_text)


def scan_topic_ids(
    settings: KafkaSettings, pairs: list[str], *, timeout_seconds: float = 120.0
) -> dict[str, PairIds]:
    """Read the topic from the start to the end of every partition; collect each pair's ids.

    `timeout_seconds` bounds a stall of the read, not its length (about 140k records/s here).
    """
    by_key = {message_key_for(pair).encode(): pair for pair in pairs}
    found = {pair: PairIds() for pair in pairs}
    # A trade from later than this is no trade yet (the writers' clocks may differ by the margin).
    latest_ms = int(time.time() * 1000) + CLOCK_MARGIN_MS
    consumer = Consumer(settings.consumer_config())
    try:
        partitions = topic_partitions(consumer, settings.topic) or []
        messages = read_to_end(
            consumer,
            settings.topic,
            dict.fromkeys(partitions, 0),
            timeout_seconds=timeout_seconds,
        )
        for message in messages:
            pair = by_key.get(message.key() or b"")
            if pair is None:
                continue
            entry = found[pair]
            where = (message.partition() or 0, message.offset() or 0)
            try:
                value = orjson.loads(message.value() or b"")
            except orjson.JSONDecodeError:
                entry.rejected.add(*where, "value is not JSON")
                continue
            if not isinstance(value, dict):
                entry.rejected.add(*where, f"value is a JSON {type(value).__name__}, not an object")
                continue
            trade_id, timestamp_ms = value.get("trade_id"), value.get("timestamp_ms")
            reason = implausible_reason(trade_id, timestamp_ms, latest_ms)
            if reason is not None:
                entry.rejected.add(*where, reason)
                continue
            # implausible_reason checked both
            assert isinstance(trade_id, int) and isinstance(timestamp_ms, int)
            if trade_id in entry.ids:
                entry.duplicates += 1
                continue
            entry.ids.add(trade_id)
            entry.note_top_candidate(trade_id, timestamp_ms, message, value.get("timestamp"))
    finally:
        consumer.close()
    for entry in found.values():
        entry.settle_the_top()
    return found


def rejected_warnings(found: dict[str, PairIds]) -> list[str]:
    """One warning per pair whose scan skipped records that are not plausible trades."""
    return [
        f"{pair}: {entry.rejected.count} record(s) under its key in the topic are not plausible "
        f"trades and were skipped (they do not count as present): {entry.rejected.describe()}"
        for pair, entry in found.items()
        if entry.rejected.count
    ]
