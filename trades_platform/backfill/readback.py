"""Reads back, from the topic itself, one pair's records in one time window.

The producer sets each message's Kafka timestamp to the trade time, so a window of trade time is a
window of message timestamps. `offsets_for_times` finds where to start; because backfills append
old timestamps after newer live ones, timestamps are not monotonic in a partition, so the read
goes on to the end of each partition (the fetch's end-of-partition event, not ListOffsets: tansu
answers "latest" with the last batch's base offset + 1, which would cut the read short).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from trades_platform.producer import ProducerSettings
from trades_platform.trade import message_key_for

_BATCH = 5000


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


def consumer_config(settings: ProducerSettings) -> dict[str, Any]:
    """A throwaway, read-committed consumer on the producer's broker and credentials."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.broker_address,
        "group.id": f"trades-platform-readback-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        # The read ends at each partition's end, as the broker's fetch responses report it.
        "enable.partition.eof": True,
    }
    optional = {
        "security.protocol": settings.security_protocol,
        "sasl.mechanism": settings.sasl_mechanism,
        "sasl.username": settings.sasl_username,
        "sasl.password": settings.sasl_password,
        "ssl.ca.location": settings.ssl_ca_location,
    }
    config.update({name: value for name, value in optional.items() if value})
    return config


def read_pair_window(
    settings: ProducerSettings,
    pair: str,
    start_ms: int,
    end_ms: int,
    *,
    timeout_seconds: float = 120.0,
) -> WindowRead:
    """Every record keyed for `pair` with a message timestamp in [start_ms, end_ms)."""
    topic = settings.topic
    key = message_key_for(pair).encode()
    consumer = Consumer(consumer_config(settings))
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            return WindowRead(records=[], scanned=0, topic_exists=False)
        partitions = sorted(metadata.partitions)
        starts = consumer.offsets_for_times(
            [TopicPartition(topic, partition, start_ms) for partition in partitions], timeout=10
        )
        assignment: list[TopicPartition] = []
        for start in starts:
            if start.error is not None:
                raise KafkaException(start.error)
            # -1: no message at or after start_ms in this partition.
            if start.offset >= 0:
                assignment.append(TopicPartition(topic, start.partition, start.offset))
        records: list[WindowRecord] = []
        scanned = 0
        pending = {tp.partition for tp in assignment}
        if assignment:
            consumer.assign(assignment)
        deadline = time.monotonic() + timeout_seconds
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"reading {topic!r} back: partitions {sorted(pending)} not read to their end "
                    f"within {timeout_seconds}s"
                )
            for message in consumer.consume(_BATCH, timeout=0.5):
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(error)
                    pending.discard(message.partition())
                    continue
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
