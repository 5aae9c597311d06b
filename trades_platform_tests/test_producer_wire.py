"""TradeProducer writes exactly what Quix Streams' topic serialization and produce would write."""

import uuid

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from quixstreams import Application
from quixstreams.models import TopicConfig

from trades_platform.producer import TradeProducer, quix_connection
from trades_platform.settings import KafkaSettings
from trades_platform.trade import Trade

# Wire format, reads and claims must hold on the broker users run, not only on tansu.
pytestmark = pytest.mark.both_brokers


def _trades(count: int) -> list[Trade]:
    pairs = ["BTC/USD", "ETH/USD", "SOL/USD", "XRP/USD", "DOGE/USD"]
    return [
        Trade.from_parts(
            pair=pairs[index % len(pairs)],
            price=100.0 + index,
            volume=0.5,
            time_us=1704153600_000_000 + index * 1_234_567,
            trade_id=index + 1,
            side="buy" if index % 2 else "sell",
            ord_type="limit",
            source="live",
        )
        for index in range(count)
    ]


def _read_raw(broker: str, topic: str, expected: int) -> list[tuple[bytes, bytes, int, int]]:
    consumer = Consumer(
        {
            "bootstrap.servers": broker,
            "group.id": f"wire-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, partition, 0) for partition in range(3)])
    records: list[tuple[bytes, bytes, int, int]] = []
    try:
        for _ in range(600):
            if len(records) >= expected:
                break
            message = consumer.poll(0.1)
            if message is None or message.error():
                continue
            records.append(
                (message.key(), message.value(), message.timestamp()[1], message.partition())
            )
    finally:
        consumer.close()
    return records


def test_send_writes_quix_bytes_timestamps_and_partitions(broker: str) -> None:
    trades = _trades(50)
    ours = f"wire-ours-{uuid.uuid4().hex[:8]}"
    producer = TradeProducer(KafkaSettings(broker_address=broker, topic=ours))
    producer.send(trades)
    producer.flush()
    assert producer.acknowledged == len(trades)

    # The reference: Quix's own serialization and produce, to a topic of the same layout.
    settings = KafkaSettings(broker_address=broker, topic=f"wire-quix-{uuid.uuid4().hex[:8]}")
    app = Application(
        broker_address=quix_connection(settings),
        producer_extra_config=settings.producer_config(),
        auto_create_topics=True,
    )
    topic = app.topic(
        settings.topic,
        key_serializer="str",
        value_serializer="json",
        config=TopicConfig(num_partitions=3, replication_factor=1),
    )
    with app.get_producer() as quix:
        for trade in trades:
            message = topic.serialize(
                key=trade.message_key, value=trade.model_dump(), timestamp_ms=trade.timestamp_ms
            )
            quix.produce(topic.name, message.value, message.key, timestamp=message.timestamp)

    ours_records = sorted(_read_raw(broker, ours, len(trades)))
    quix_records = sorted(_read_raw(broker, settings.topic, len(trades)))
    assert len(ours_records) == len(trades)
    assert ours_records == quix_records
    by_id = {orjson.loads(value)["trade_id"]: (key, ts) for key, value, ts, _ in ours_records}
    for trade in trades:
        assert by_id[trade.trade_id] == (trade.message_key.encode(), trade.timestamp_ms)


def test_send_waits_for_room_when_librdkafka_queue_is_full(broker: str) -> None:
    settings = KafkaSettings(broker_address=broker, topic=f"wire-full-{uuid.uuid4().hex[:8]}")
    producer = TradeProducer(settings, extra_config={"queue.buffering.max.messages": 20})
    producer.send(_trades(500))
    producer.flush()
    assert (producer.sent, producer.acknowledged, producer.failed) == (500, 500, 0)
