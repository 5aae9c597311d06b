"""Which trade ids of which pairs are in the topic: the source of truth every writer starts from."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from trades_platform.backfill.readback import consumer_config
from trades_platform.coverage.id_ranges import IdRanges
from trades_platform.producer import ProducerSettings
from trades_platform.trade import message_key_for

_BATCH = 10_000


@dataclass
class PairIds:
    """The ids of one pair present in the topic, and the time of the highest one."""

    ids: IdRanges = field(default_factory=IdRanges)
    highest_time_ms: int | None = None
    duplicates: int = 0


def scan_topic_ids(
    settings: ProducerSettings, pairs: list[str], *, timeout_seconds: float = 600.0
) -> dict[str, PairIds]:
    """Read the topic from the start to the end of every partition; collect each pair's ids."""
    by_key = {message_key_for(pair).encode(): pair for pair in pairs}
    found = {pair: PairIds() for pair in pairs}
    consumer = Consumer(consumer_config(settings))
    try:
        metadata = consumer.list_topics(settings.topic, timeout=10).topics.get(settings.topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            return found
        # The end of each partition comes from the fetch's end-of-partition event, not from
        # ListOffsets (tansu answers "latest" short of the real end).
        consumer.assign([TopicPartition(settings.topic, p, 0) for p in metadata.partitions])
        pending = set(metadata.partitions)
        deadline = time.monotonic() + timeout_seconds
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"scanning {settings.topic!r} took over {timeout_seconds}s")
            for message in consumer.consume(_BATCH, timeout=0.5):
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(error)
                    pending.discard(message.partition())
                    continue
                pair = by_key.get(message.key() or b"")
                if pair is None:
                    continue
                trade_id = orjson.loads(message.value() or b"{}").get("trade_id")
                if not isinstance(trade_id, int):
                    continue
                entry = found[pair]
                if trade_id in entry.ids:
                    entry.duplicates += 1
                    continue
                entry.ids.add(trade_id)
                if entry.ids.highest == trade_id:
                    entry.highest_time_ms = message.timestamp()[1]
    finally:
        consumer.close()
    return found
