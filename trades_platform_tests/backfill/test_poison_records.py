"""Records in the trades topic that are not trades (poison) never stop a writer and never move
its resume point: they are skipped, counted and reported with their offsets, and every good
trade still lands once."""

import time

import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from dagster import DagsterInstance, ExecuteInProcessResult, instance_for_test, materialize

from trades_platform.backfill.asset import kraken_trades_history
from trades_platform.coverage.topic_ids import scan_topic_ids
from trades_platform.live.job import live_trades_job
from trades_platform.resources import KrakenResource, RedpandaResource
from trades_platform.settings import KafkaSettings
from trades_platform.simulator.market import SimulatedMarket
from trades_platform.testing import (
    SimulatorProcess,
    count_pairs,
    grace_backlog,
    live_run_totals,
    read_topic,
    unique_topic,
)
from trades_platform.topics import TRADES_TOPIC_CONFIG
from trades_platform_tests.backfill.conftest import (
    MIDNIGHT_KEY,
    backfill_resources,
    expected_ids,
)

KEY = b"BTC-USD"


def _poison(now_ms: int) -> list[tuple[bytes, str]]:
    """Poison values under BTC/USD's key, each with the reason the scan should give."""
    day_ms = 86_400_000
    return [
        (b"[]", "not an object"),
        (b"this is not json", "not JSON"),
        # Past int64: as a resume point it would make every later trade look like a repeat.
        (
            b'{"pair": "BTC/USD", "trade_id": 9223372036854775808, "timestamp_ms": %d}' % now_ms,
            "out of range",
        ),
        (
            orjson.dumps({"pair": "BTC/USD", "trade_id": 12, "timestamp_ms": now_ms + day_ms}),
            "in the future",
        ),
        (
            orjson.dumps({"pair": "BTC/USD", "trade_id": "12", "timestamp_ms": now_ms}),
            "not a whole number",
        ),
    ]


def _topic_with_poison(broker: str) -> tuple[str, list[str]]:
    """A new trades topic (the platform's configuration) holding only poison records."""
    topic = unique_topic("poison")
    admin = AdminClient({"bootstrap.servers": broker})
    admin.create_topics([NewTopic(topic, 3, 1, config=TRADES_TOPIC_CONFIG)])[topic].result(30)
    poison = _poison(int(time.time() * 1000))
    producer = Producer({"bootstrap.servers": broker})
    for value, _ in poison:
        producer.produce(topic, value, KEY)
    assert producer.flush(30) == 0
    return topic, [reason for _, reason in poison]


def test_the_scan_skips_and_reports_each_poison_record(broker: str) -> None:
    topic, reasons = _topic_with_poison(broker)
    found = scan_topic_ids(KafkaSettings(broker_address=broker, topic=topic), ["BTC/USD"])
    btc = found["BTC/USD"]
    assert len(btc.ids) == 0 and btc.highest_time_us is None
    assert btc.rejected == len(reasons)
    described = btc.describe_rejected()
    for reason in reasons:
        assert reason in described, described
    assert all("offset" in sample.describe() for sample in btc.rejected_samples)


def test_a_live_run_on_a_poisoned_topic_writes_every_trade(broker: str) -> None:
    topic, reasons = _topic_with_poison(broker)
    pairs = ["BTC/USD", "ETH/USD"]
    trades = grace_backlog(len(pairs), 20) + 300
    with (
        SimulatorProcess("--pairs", ",".join(pairs), "--trades-per-second", "20") as sim,
        instance_for_test() as instance,
    ):
        result = live_trades_job.execute_in_process(
            run_config={
                "ops": {
                    "stream_live_trades": {"config": {"max_trades": trades, "max_seconds": 120}}
                }
            },
            resources={
                "kraken": KrakenResource(ws_url=sim.ws_url, rest_url=sim.rest_url, pairs=pairs),
                "redpanda": RedpandaResource(broker_address=broker, topic=topic),
            },
            instance=instance,
        )
        messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert result.success
    # Not stopped by the 2**63 id: the run wrote up to its bound, not nothing.
    assert live_run_totals(messages)["written"] == trades
    warnings = [message for message in messages if "not plausible trades" in message]
    assert len(warnings) == 1 and f"{len(reasons)} record(s)" in warnings[0], warnings
    records = read_topic(broker, topic, expected=trades, trades_only=True)
    counts = count_pairs(records)
    assert set(counts) == set(pairs)
    assert all(count.lost == 0 and count.duplicated == 0 for count in counts.values()), counts
    assert sum(count.in_topic for count in counts.values()) == trades


def test_a_backfill_on_a_poisoned_topic_writes_its_day(
    broker: str, simulator: SimulatorProcess, market: SimulatedMarket
) -> None:
    topic, reasons = _topic_with_poison(broker)
    with instance_for_test() as instance:
        result = _materialize(broker, simulator, topic, instance)
    assert result.success
    (materialization,) = result.asset_materializations_for_node("kraken_trades_history")
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    assert metadata["records_in_topic_rejected"] == len(reasons)
    expected = expected_ids(market, MIDNIGHT_KEY)
    assert metadata["written"] == len(expected)
    records = read_topic(broker, topic, expected=len(expected), trades_only=True)
    assert sorted(record.value["trade_id"] for record in records) == expected


def _materialize(
    broker: str, simulator: SimulatorProcess, topic: str, instance: DagsterInstance
) -> ExecuteInProcessResult:
    return materialize(
        [kraken_trades_history],
        partition_key=MIDNIGHT_KEY,
        resources=backfill_resources(broker, simulator, topic),
        instance=instance,
    )
