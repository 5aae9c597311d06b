"""History kept on the broker users run: Apache Kafka deletes old segments on its own schedule
(tansu never deletes anything, so only a real broker can show this). With the retention check
every second, a backfilled day from 2024 stays in the trades topic as the platform creates it,
while the same records in a topic with the broker's default retention (7 days, judged by the
records' own times, which are the trades' times) are gone at the next check.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from dagster import instance_for_test, materialize

from trades_platform.backfill.asset import kraken_trades_history
from trades_platform.kafka_cluster import KafkaCluster
from trades_platform.settings import KafkaSettings
from trades_platform.simulator.market import SimulatedMarket
from trades_platform.testing import SimulatorProcess, read_topic, unique_topic
from trades_platform_tests.backfill.conftest import (
    MIDNIGHT_KEY,
    backfill_resources,
    expected_ids,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

# A production broker checks every 5 minutes; this one every second.
RETENTION_CHECK_MS = 1000


@pytest.fixture(scope="module")
def eager_cluster() -> Iterator[KafkaCluster]:
    """One Kafka node that applies retention every second."""
    properties = {"log.retention.check.interval.ms": RETENTION_CHECK_MS}
    with KafkaCluster(nodes=1, extra_properties=properties) as cluster:
        yield cluster


def _copy_with_times(broker: str, source: str, target: str) -> int:
    """Copy every record of `source` to `target` with its key and its own timestamp."""
    consumer = Consumer(KafkaSettings(broker_address=broker).consumer_config())
    producer = Producer({"bootstrap.servers": broker})
    copied = 0
    try:
        partitions = consumer.list_topics(source, timeout=10).topics[source].partitions
        consumer.assign([TopicPartition(source, p, 0) for p in partitions])
        ends = {p: consumer.get_watermark_offsets(TopicPartition(source, p))[1] for p in partitions}
        done = {p for p, end in ends.items() if end == 0}
        while len(done) < len(ends):
            message = consumer.poll(5)
            if message is None or message.error():
                continue
            producer.produce(
                target, message.value(), message.key(), timestamp=message.timestamp()[1]
            )
            copied += 1
            if message.offset() + 1 >= ends[message.partition()]:
                done.add(message.partition())
        assert producer.flush(30) == 0
    finally:
        consumer.close()
    return copied


def _records_with_key(broker: str, topic: str, key: str) -> int:
    return sum(record.key == key for record in read_topic(broker, topic, idle_seconds=2))


def test_the_platform_topic_keeps_a_day_from_2024_that_default_retention_deletes(
    eager_cluster: KafkaCluster, simulator: SimulatorProcess, market: SimulatedMarket
) -> None:
    broker = eager_cluster.bootstrap
    kept = unique_topic("retention-platform")
    with instance_for_test() as instance:
        result = materialize(
            [kraken_trades_history],
            partition_key=MIDNIGHT_KEY,
            resources=backfill_resources(broker, simulator, kept),
            instance=instance,
        )
    assert result.success
    day = expected_ids(market, MIDNIGHT_KEY)

    # The same records in a topic created with the broker's defaults (no retention of its own).
    defaulted = unique_topic("retention-default")
    admin = AdminClient({"bootstrap.servers": broker})
    admin.create_topics([NewTopic(defaulted, 3)])[defaulted].result(30)
    assert _copy_with_times(broker, kept, defaulted) >= len(day)

    # A record of today in every partition of both: Kafka rolls a segment whose first record is
    # older than `log.roll.hours` (7 days) when a new one comes, and only rolled segments are
    # deleted.
    producer = Producer({"bootstrap.servers": broker})
    for topic in (kept, defaulted):
        for partition in range(3):
            producer.produce(topic, b"{}", b"retention-marker", partition=partition)
    assert producer.flush(30) == 0

    key = "BTC-USD"
    deadline = time.monotonic() + 60
    while _records_with_key(broker, defaulted, key) and time.monotonic() < deadline:
        time.sleep(2)
    left_in_default = _records_with_key(broker, defaulted, key)
    assert left_in_default == 0, f"the broker's default retention kept {left_in_default} records"

    records = read_topic(broker, kept, expected=len(day), trades_only=True)
    assert sorted(record.value["trade_id"] for record in records) == day
    print(
        f"[retention] {len(day)} trades of {MIDNIGHT_KEY}: all kept in the platform's topic, "
        f"0 left in the broker-default topic after its retention check"
    )
