"""Reading a topic back to its end: what every writer and check does before trusting the topic.

The end of each partition comes from the fetch's end-of-partition event, not from ListOffsets:
tansu answers "latest" with the last batch's base offset + 1, which would cut a read short.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

_BATCH = 5000
# Records read back that could not be used are all counted; this many are kept to report.
MAX_REJECTED_SAMPLES = 10


@dataclass(frozen=True)
class RejectedRecord:
    """A record read back that could not be used, and where it is."""

    partition: int
    offset: int
    reason: str

    def describe(self) -> str:
        """`partition 0 offset 15: value is not JSON`."""
        return f"partition {self.partition} offset {self.offset}: {self.reason}"


@dataclass
class RejectedRecords:
    """Records a reader skipped: every one counted, the first few kept with where and why."""

    count: int = 0
    samples: list[RejectedRecord] = field(default_factory=list)

    def add(self, partition: int, offset: int, reason: str) -> None:
        """Count a skipped record."""
        self.count += 1
        if len(self.samples) < MAX_REJECTED_SAMPLES:
            self.samples.append(RejectedRecord(partition, offset, reason))

    def extend(self, other: RejectedRecords) -> None:
        """Count another reader's skipped records too."""
        self.count += other.count
        room = MAX_REJECTED_SAMPLES - len(self.samples)
        self.samples.extend(other.samples[: max(room, 0)])

    def describe(self) -> str:
        """The skipped records in one line, for a warning."""
        shown = "; ".join(record.describe() for record in self.samples)
        more = self.count - len(self.samples)
        return shown + (f"; and {more} more" if more > 0 else "")


def topic_partitions(consumer: Consumer, topic: str) -> list[int] | None:
    """The topic's partitions, or None when the topic does not exist (yet)."""
    metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        return None
    return sorted(metadata.partitions)


def read_to_end(
    consumer: Consumer,
    topic: str,
    start_offsets: dict[int, int],
    *,
    timeout_seconds: float,
    stop_at: dict[int, int] | None = None,
) -> Iterator[Message]:
    """Every message from the given offsets to the end of each partition, as the broker says.

    `stop_at` ends a partition's read before that offset instead. `timeout_seconds` bounds a
    stall (no message and no end of partition for that long), not the whole read: reading a
    topic from its start takes time in proportion to its size.
    """
    stop_at = stop_at or {}
    start_offsets = {
        p: offset for p, offset in start_offsets.items() if offset < stop_at.get(p, offset + 1)
    }
    if not start_offsets:
        return
    consumer.assign([TopicPartition(topic, p, offset) for p, offset in start_offsets.items()])
    yield from _read_assigned(consumer, topic, set(start_offsets), stop_at, timeout_seconds)


def _read_assigned(
    consumer: Consumer,
    topic: str,
    pending: set[int],
    stop_at: dict[int, int],
    timeout_seconds: float,
) -> Iterator[Message]:
    progressed_at = time.monotonic()
    while pending:
        if time.monotonic() - progressed_at > timeout_seconds:
            raise TimeoutError(
                f"reading {topic!r}: partitions {sorted(pending)} got no message and no end of "
                f"partition for {timeout_seconds}s"
            )
        # Short: a batch call waits its whole timeout unless _BATCH messages arrive first.
        batch = consumer.consume(_BATCH, timeout=0.05)
        if batch:
            progressed_at = time.monotonic()
        for message in batch:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(error)
                pending.discard(message.partition())
                continue
            partition, stop = message.partition(), stop_at.get(message.partition())
            if stop is not None:
                if partition not in pending or message.offset() >= stop:
                    pending.discard(partition)  # past the stop (offsets may skip, compaction)
                    continue
                if message.offset() == stop - 1:
                    pending.discard(partition)
            yield message


def read_range(
    consumer: Consumer,
    topic: str,
    partition: int,
    first: int,
    end: int,
    *,
    timeout_seconds: float,
) -> Iterator[Message]:
    """Every message of one partition with first <= offset < end (fewer if the partition ends)."""
    if first >= end:
        return
    yield from read_to_end(
        consumer,
        topic,
        {partition: first},
        timeout_seconds=timeout_seconds,
        stop_at={partition: end},
    )
