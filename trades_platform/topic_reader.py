"""Reading a topic back to its end: what every writer and check does before trusting the topic.

The end of each partition comes from the fetch's end-of-partition event, not from ListOffsets:
tansu answers "latest" with the last batch's base offset + 1, which would cut a read short.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

_BATCH = 5000


def topic_partitions(consumer: Consumer, topic: str) -> list[int] | None:
    """The topic's partitions, or None when the topic does not exist (yet)."""
    metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        return None
    return sorted(metadata.partitions)


def read_to_end(
    consumer: Consumer, topic: str, start_offsets: dict[int, int], *, timeout_seconds: float
) -> Iterator[Message]:
    """Every message from the given offsets to the end of each partition, as the broker says.

    `timeout_seconds` bounds a stall (no message and no end of partition for that long), not the
    whole read: reading a topic from its start takes time in proportion to its size.
    """
    if not start_offsets:
        return
    consumer.assign([TopicPartition(topic, p, offset) for p, offset in start_offsets.items()])
    pending = set(start_offsets)
    progressed_at = time.monotonic()
    while pending:
        if time.monotonic() - progressed_at > timeout_seconds:
            raise TimeoutError(
                f"reading {topic!r}: partitions {sorted(pending)} got no message and no end of "
                f"partition for {timeout_seconds}s"
            )
        batch = consumer.consume(_BATCH, timeout=0.5)
        if batch:
            progressed_at = time.monotonic()
        for message in batch:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(error)
                pending.discard(message.partition())
                continue
            yield message
