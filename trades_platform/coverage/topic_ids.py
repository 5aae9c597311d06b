"""Which trade ids of which pairs are in the topic: the source of truth every writer starts from."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
from confluent_kafka import Consumer

from trades_platform.coverage.id_ranges import IdRanges
from trades_platform.producer import ProducerSettings
from trades_platform.topic_reader import consumer_config, read_to_end, topic_partitions
from trades_platform.trade import message_key_for


@dataclass
class PairIds:
    """The ids of one pair present in the topic, and the time of the highest one."""

    ids: IdRanges = field(default_factory=IdRanges)
    highest_time_ms: int | None = None
    duplicates: int = 0


def scan_topic_ids(
    settings: ProducerSettings, pairs: list[str], *, timeout_seconds: float = 120.0
) -> dict[str, PairIds]:
    """Read the topic from the start to the end of every partition; collect each pair's ids.

    `timeout_seconds` bounds a stall of the read, not its length (about 140k records/s here).
    """
    by_key = {message_key_for(pair).encode(): pair for pair in pairs}
    found = {pair: PairIds() for pair in pairs}
    consumer = Consumer(consumer_config(settings))
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
