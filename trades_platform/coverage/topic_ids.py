"""Which trade ids of which pairs are in the topic: the source of truth every writer starts from."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import orjson
from confluent_kafka import Consumer

from trades_platform.coverage.id_ranges import IdRanges
from trades_platform.settings import KafkaSettings
from trades_platform.topic_reader import RejectedRecords, read_to_end, topic_partitions
from trades_platform.trade import (
    CLOCK_MARGIN_MS,
    implausible_reason,
    message_key_for,
    parse_time_iso,
)


@dataclass
class PairIds:
    """The ids of one pair present in the topic, and the exact time of the highest one.

    Records under the pair's key that are not plausible trades (not JSON, not an object, an id
    or a time no Kraken trade has) are skipped: they never stop a writer and never become its
    resume point. `rejected` counts them and keeps the first few with their offsets.
    """

    ids: IdRanges = field(default_factory=IdRanges)
    highest_time_us: int | None = None
    duplicates: int = 0
    rejected: RejectedRecords = field(default_factory=RejectedRecords)


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
        highest_time_text: dict[str, object] = {}
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
            trade_id = value.get("trade_id")
            reason = implausible_reason(trade_id, value.get("timestamp_ms"), latest_ms)
            if reason is not None:
                entry.rejected.add(*where, reason)
                continue
            assert isinstance(trade_id, int)  # implausible_reason checked it
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


def rejected_warnings(found: dict[str, PairIds]) -> list[str]:
    """One warning per pair whose scan skipped records that are not plausible trades."""
    return [
        f"{pair}: {entry.rejected.count} record(s) under its key in the topic are not plausible "
        f"trades and were skipped (they do not count as present): {entry.rejected.describe()}"
        for pair, entry in found.items()
        if entry.rejected.count
    ]
