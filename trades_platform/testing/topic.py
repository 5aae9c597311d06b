"""Reads a topic back, from the beginning, with a real Kafka client, and counts its ids per pair."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition

from trades_platform.id_counts import IdCount, count_ids
from trades_platform.settings import KafkaSettings
from trades_platform.topic_reader import topic_partitions
from trades_platform.trade import CLOCK_MARGIN_MS, implausible_reason


@dataclass(frozen=True)
class TopicRecord:
    """One message: decoded key and value plus the broker's timestamp."""

    key: str
    value: dict[str, Any]
    timestamp_ms: int
    partition: int


def unique_topic(prefix: str = "trades-test") -> str:
    """A topic name no other test uses (the broker lives for the whole session)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def read_topic(
    broker: str,
    topic: str,
    *,
    expected: int | None = None,
    idle_seconds: float = 3.0,
    max_seconds: float = 120.0,
    trades_only: bool = False,
) -> list[TopicRecord]:
    """Records from the start of the topic, read committed.

    With `trades_only`, records that are not plausible trades (not a JSON object, an id or time
    no Kraken trade has: see `trade.implausible_reason`) are left out; otherwise a value that is
    not JSON raises.

    Stops after a quiet spell of `idle_seconds`; with `expected`, one second after that many
    arrived (a duplicate would show up in that second); in any case after `max_seconds`, so a
    topic that is still being written to cannot keep it reading forever.
    """
    settings = KafkaSettings(broker_address=broker, topic=topic)
    # The platform's own reader settings; the end is told by quiet, not by end-of-partition events.
    consumer = Consumer({**settings.consumer_config(), "enable.partition.eof": False})
    # Asked through the consumer, which never creates a missing topic (an admin client's metadata
    # request may, with the broker's default configuration, which the writers then refuse).
    partitions = topic_partitions(consumer, topic)
    if partitions is None:
        consumer.close()
        return []
    consumer.assign([TopicPartition(topic, partition, 0) for partition in partitions])
    records: list[TopicRecord] = []
    started_at = last_message_at = time.monotonic()
    expected_reached_at: float | None = None
    try:
        while True:
            now = time.monotonic()
            if expected is not None and len(records) >= expected:
                expected_reached_at = expected_reached_at or now
                if now - expected_reached_at >= 1.0:
                    break
            elif now - last_message_at >= idle_seconds:
                break
            if now - started_at >= max_seconds:
                break
            message = consumer.poll(0.2)
            if message is None:
                continue
            if message.error():
                raise RuntimeError(f"consumer error: {message.error()}")
            last_message_at = time.monotonic()
            record = TopicRecord(
                key=(message.key() or b"").decode(errors="replace"),
                value=_json_or_none(message.value())
                if trades_only
                else orjson.loads(message.value()),
                timestamp_ms=message.timestamp()[1],
                partition=message.partition(),
            )
            if trades_only and not _is_plausible_trade(record.value):
                continue
            records.append(record)
    finally:
        consumer.close()
    return records


def _json_or_none(value: bytes | None) -> Any:
    try:
        return orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None


def _is_plausible_trade(value: Any) -> bool:
    if not isinstance(value, dict) or not isinstance(value.get("pair"), str):
        return False
    latest_ms = int(time.time() * 1000) + CLOCK_MARGIN_MS
    return implausible_reason(value.get("trade_id"), value.get("timestamp_ms"), latest_ms) is None


def ids_by_pair(records: list[TopicRecord]) -> dict[str, list[int]]:
    """Trade ids per pair, in topic order."""
    by_pair: dict[str, list[int]] = {}
    for record in records:
        by_pair.setdefault(record.value["pair"], []).append(record.value["trade_id"])
    return by_pair


def count_pairs(
    records: list[TopicRecord],
    *,
    pairs: Iterable[str] = (),
    last_ids: Mapping[str, int] | None = None,
) -> dict[str, IdCount]:
    """Per pair (each in the records, and `pairs`): its ids against the run they should form.

    A pair's run spans its ids, and reaches up to `last_ids[pair]` when given (the newest id the
    writer owed), so that a writer that stopped short counts as lost trades.
    """
    by_pair: dict[str, list[int]] = {pair: [] for pair in pairs}
    by_pair.update(ids_by_pair(records))
    last_ids = last_ids or {}
    return {
        pair: count_ids(ids, last_id=last_ids.get(pair)) for pair, ids in sorted(by_pair.items())
    }


def duplicated_ids(records: list[TopicRecord]) -> dict[str, list[int]]:
    """Ids that appear more than once, per pair (should always be empty)."""
    return {
        pair: list(count.repeated) for pair, count in count_pairs(records).items() if count.repeated
    }
