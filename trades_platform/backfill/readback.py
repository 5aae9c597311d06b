"""Reads back, from the topic itself, one pair's records in one time window.

The producer sets each message's Kafka timestamp to the trade time, so a window of trade time is a
window of message timestamps. `offsets_for_times` finds where to start; because backfills append
old timestamps after newer live ones, timestamps are not monotonic in a partition, so the read
goes on to the end of each partition (the fetch's end-of-partition event, not ListOffsets: tansu
answers "latest" with the last batch's base offset + 1, which would cut the read short).
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition

from trades_platform.settings import KafkaSettings
from trades_platform.topic_reader import read_to_end, topic_partitions
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
        starts = consumer.offsets_for_times(
            [TopicPartition(topic, partition, start_ms) for partition in partitions], timeout=10
        )
        start_offsets: dict[int, int] = {}
        for start in starts:
            if start.error is not None:
                raise KafkaException(start.error)
            # -1: no message at or after start_ms in this partition.
            if start.offset >= 0:
                start_offsets[start.partition] = start.offset
        records: list[WindowRecord] = []
        scanned = 0
        for message in read_to_end(consumer, topic, start_offsets, timeout_seconds=timeout_seconds):
            scanned += 1
            timestamp_ms = message.timestamp()[1]
            if message.key() == key and start_ms <= timestamp_ms < end_ms:
                records.append(
                    WindowRecord(
                        message.value() or b"", timestamp_ms, message.partition(), message.offset()
                    )
                )
        return WindowRead(records=records, scanned=scanned, topic_exists=True)
    finally:
        consumer.close()
