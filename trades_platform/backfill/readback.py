"""Reads back, from the topic itself, one pair's records in one time window.

The producer sets each message's Kafka timestamp to the trade time, so a window of trade time is a
window of message timestamps. Below a partition's checkpoint (coverage/topic_index.py), the index
says which offsets hold each day of the pair: only those are read. After it, and in partitions
without one, the read goes on to the end of the partition, because backfills append old
timestamps after newer live ones (where there is no checkpoint, `offsets_for_times` finds where
to start: exact on Kafka, 0 on tansu). The end is the fetch's end-of-partition event, not
ListOffsets: tansu answers "latest" with the last batch's base offset + 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition

from trades_platform.coverage.topic_index import load_index
from trades_platform.settings import KafkaSettings
from trades_platform.topic_reader import read_range, read_to_end, topic_partitions
from trades_platform.trade import message_key_for


@dataclass(frozen=True, slots=True)
class WindowRecord:
    """One message of the pair inside the window, undecoded."""

    value: bytes
    timestamp_ms: int
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class WindowRead:
    """What a read found: the pair's records in the window, and what it had to scan for them."""

    records: list[WindowRecord]
    scanned: int
    topic_exists: bool


def read_pair_window(
    settings: KafkaSettings,
    pair: str,
    start_ms: int,
    end_ms: int,
    *,
    timeout_seconds: float = 120.0,
) -> WindowRead:
    """Every record keyed for `pair` with a message timestamp in [start_ms, end_ms)."""
    topic = settings.topic
    key = message_key_for(pair).encode()
    consumer = Consumer(settings.consumer_config())
    try:
        partitions = topic_partitions(consumer, topic)
        if partitions is None:
            return WindowRead(records=[], scanned=0, topic_exists=False)
        index = load_index(settings, consumer, partitions, timeout_seconds=timeout_seconds)
        ranges: list[tuple[int, int, int]] = []  # (partition, first, end) read below checkpoints
        tails: dict[int, int] = {}
        for partition, state in index.partitions.items():
            entry = state.keys.get(key)
            if entry is not None:
                ranges.extend(
                    (partition, first, last + 1)
                    for first, last in entry.days.offsets_for(start_ms, end_ms)
                )
            tails[partition] = state.next_offset
        unindexed = [partition for partition in partitions if partition not in index.partitions]
        tails.update(_first_offsets_at(consumer, topic, unindexed, start_ms))
        records: list[WindowRecord] = []
        scanned = 0
        reads = [
            read_range(consumer, topic, partition, first, end, timeout_seconds=timeout_seconds)
            for partition, first, end in ranges
        ]
        reads.append(read_to_end(consumer, topic, tails, timeout_seconds=timeout_seconds))
        for messages in reads:
            for message in messages:
                scanned += 1
                timestamp_ms = message.timestamp()[1]
                if message.key() == key and start_ms <= timestamp_ms < end_ms:
                    records.append(
                        WindowRecord(
                            message.value() or b"",
                            timestamp_ms,
                            message.partition(),
                            message.offset(),
                        )
                    )
        return WindowRead(records=records, scanned=scanned, topic_exists=True)
    finally:
        consumer.close()


def _first_offsets_at(
    consumer: Consumer, topic: str, partitions: list[int], start_ms: int
) -> dict[int, int]:
    """Where each partition's first message at or after `start_ms` is (Kafka; tansu answers 0)."""
    if not partitions:
        return {}
    starts = consumer.offsets_for_times(
        [TopicPartition(topic, partition, start_ms) for partition in partitions], timeout=10
    )
    offsets: dict[int, int] = {}
    for start in starts:
        if start.error is not None:
            raise KafkaException(start.error)
        # -1: no message at or after start_ms in this partition.
        if start.offset >= 0:
            offsets[start.partition] = start.offset
    return offsets
