"""Which trade ids of which pairs are in the topic: the source of truth every writer starts from."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import orjson
from confluent_kafka import Consumer

from trades_platform.coverage.id_ranges import IdRanges
from trades_platform.settings import KafkaSettings
from trades_platform.topic_reader import read_to_end, topic_partitions
from trades_platform.trade import message_key_for, parse_time_iso


@dataclass
class PairIds:
    """The ids of one pair present in the topic, and the exact time of the highest one."""

    ids: IdRanges = field(default_factory=IdRanges)
    highest_time_us: int | None = None
    duplicates: int = 0


def scan_topic_ids(
    settings: KafkaSettings, pairs: list[str], *, timeout_seconds: float = 120.0
) -> dict[str, PairIds]:
    """Read the topic from the start to the end of every partition; collect each pair's ids.

    `timeout_seconds` bounds a stall of the read, not its length (about 140k records/s here).
    """
    by_key = {message_key_for(pair).encode(): pair for pair in pairs}
    found = {pair: PairIds() for pair in pairs}
    consumer = Consumer(settings.consumer_config())
    try:
        partitions = topic_partitions(consumer, settings.topic) or []
        messages = read_to_end(
            consumer,
            settings.topic,
            dict.fromkeys(partitions, 0),
            timeout_seconds=timeout_seconds,
        )
        highest_time_text: dict[str, object] = {}
        for message in messages:
            pair = by_key.get(message.key() or b"")
            if pair is None:
                continue
            value = orjson.loads(message.value() or b"{}")
            trade_id = value.get("trade_id")
            if not isinstance(trade_id, int):
                continue
            entry = found[pair]
            if trade_id in entry.ids:
                entry.duplicates += 1
                continue
            entry.ids.add(trade_id)
            if entry.ids.highest == trade_id:
                highest_time_text[pair] = value.get("timestamp")
                # The record's exact time, parsed once at the end; the message's as a fallback.
                entry.highest_time_us = message.timestamp()[1] * 1000
    finally:
        consumer.close()
    for pair, text in highest_time_text.items():
        if isinstance(text, str):
            # Unparsable: keep the message timestamp.
            with contextlib.suppress(ValueError):
                found[pair].highest_time_us = parse_time_iso(text)
    return found
