"""Reading a topic to its end on the real broker: every record once, and a stall is an error."""

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from trades_platform.settings import KafkaSettings
from trades_platform.testing import unique_topic
from trades_platform.topic_reader import read_to_end, topic_partitions

# Wire format, reads and claims must hold on the broker users run, not only on tansu.
pytestmark = pytest.mark.both_brokers


def _topic_with(broker: str, records: int) -> str:
    topic = unique_topic("reader")
    admin = AdminClient({"bootstrap.servers": broker})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result()
    producer = Producer({"bootstrap.servers": broker})
    for number in range(records):
        producer.produce(topic, key=str(number % 7).encode(), value=str(number).encode())
    assert producer.flush(30) == 0
    return topic


def test_reads_every_partition_to_its_end(broker: str) -> None:
    topic = _topic_with(broker, 1000)
    consumer = Consumer(KafkaSettings(broker_address=broker, topic=topic).consumer_config())
    try:
        partitions = topic_partitions(consumer, topic)
        assert partitions == [0, 1, 2]
        values = [
            int(message.value())
            for message in read_to_end(
                consumer, topic, dict.fromkeys(partitions, 0), timeout_seconds=30
            )
        ]
    finally:
        consumer.close()
    assert sorted(values) == list(range(1000))


def test_a_partition_that_never_reaches_its_end_is_a_timeout_naming_it(broker: str) -> None:
    topic = _topic_with(broker, 10)
    consumer = Consumer(KafkaSettings(broker_address=broker, topic=topic).consumer_config())
    try:
        assert topic_partitions(consumer, unique_topic("absent")) is None
        # Partition 7 does not exist: no record and no end of partition ever comes from it.
        with pytest.raises(TimeoutError, match=r"partitions \[7\] got no message"):
            list(read_to_end(consumer, topic, {0: 0, 7: 0}, timeout_seconds=2))
    finally:
        consumer.close()
