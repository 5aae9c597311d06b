"""Records in the trades topic that are not trades (poison) never stop a writer and never move
its resume point, and records in the coverage topic that are no writer's claim, lease or
heartbeat hold nothing back: they are skipped, counted and reported with their offsets, and
every good trade still lands once."""

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
from trades_platform.topics import COVERAGE_TOPIC_CONFIG, TRADES_TOPIC_CONFIG
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
        # Below 2**53, but more ids than 10,000 trades a second since 2013 could have made.
        (
            orjson.dumps({"pair": "BTC/USD", "trade_id": 2**53 - 1, "timestamp_ms": now_ms}),
            "more ids than any pair traded since 2013",
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


def _coverage_poison(now_ms: int) -> tuple[list[tuple[str, bytes]], list[str], list[str]]:
    """Poison records for the coverage topic; the reasons claim readers and lease readers give.

    Each would have held a writer back (for the lease, for ever, or by raising) if believed.
    """
    day_ms = 86_400_000
    claim = {"pair": "BTC/USD", "owner": "ghost", "acquired_ms": now_ms, "lease_seconds": 60}
    beat = {"owner": "ghost", "beat": 1, "heartbeat_ms": now_ms, "lease_seconds": 60}
    lease = {"pair": "BTC/USD", "start_us": 0, "end_us": 2**62, "owner": "ghost"}
    records = [
        # A claim from a day ahead: by the wall clock it would never be old enough to be over.
        ("live-claim|BTC/USD|future", {**claim, "owner": "future", "acquired_ms": now_ms + day_ms}),
        # A lease of a day: every live run of ETH/USD would wait it out.
        ("live-claim|ETH/USD|long", {**claim, "pair": "ETH/USD", "lease_seconds": 86_400}),
        ("live-beat|BTC/USD|ghost", {**beat, "beat": "one"}),
        ("live-beat|BTC/USD|ghost", {**beat, "from_id": 2**63}),
        ("live-claim|BTC/USD|junk", b"not json"),
        # Keys of a later version are ignored, not fatal; a claim from long ago is over.
        (
            "live-claim|BTC/USD|later",
            {**claim, "owner": "later", "acquired_ms": now_ms - day_ms, "region": "eu"},
        ),
        ("window|BTC/USD|ghost", {**lease, "start_us": "midnight", "acquired_ms": now_ms}),
        ("window|BTC/USD|ahead", {**lease, "owner": "ahead", "acquired_ms": now_ms + day_ms}),
        ("window-beat|BTC/USD|ghost", {"owner": "ghost", "beat": 1, "heartbeat_ms": "now"}),
    ]
    encoded = [
        (key, value if isinstance(value, bytes) else orjson.dumps(value)) for key, value in records
    ]
    claim_reasons = ["acquired_ms", "lease_seconds", "beat 'one'", "from_id", "not a JSON object"]
    lease_reasons = ["not a time window", "acquired_ms", "heartbeat_ms"]
    return encoded, claim_reasons, lease_reasons


def _topic_with_poison(broker: str) -> tuple[str, list[str]]:
    """A new trades topic (the platform's configuration) holding only poison records.

    Its coverage topic holds the poison records of `_coverage_poison`.
    """
    topic = unique_topic("poison")
    admin = AdminClient({"bootstrap.servers": broker})
    coverage = f"{topic}.coverage"
    created = admin.create_topics(
        [
            NewTopic(topic, 3, 1, config=TRADES_TOPIC_CONFIG),
            NewTopic(coverage, 1, 1, config=COVERAGE_TOPIC_CONFIG),
        ]
    )
    for future in created.values():
        future.result(30)
    now_ms = int(time.time() * 1000)
    poison = _poison(now_ms)
    producer = Producer({"bootstrap.servers": broker})
    for value, _ in poison:
        producer.produce(topic, value, KEY)
    for key, value in _coverage_poison(now_ms)[0]:
        producer.produce(coverage, value, key.encode())
    assert producer.flush(30) == 0
    return topic, [reason for _, reason in poison]


def test_the_scan_skips_and_reports_each_poison_record(broker: str) -> None:
    topic, reasons = _topic_with_poison(broker)
    found = scan_topic_ids(KafkaSettings(broker_address=broker, topic=topic), ["BTC/USD"])
    btc = found["BTC/USD"]
    assert len(btc.ids) == 0 and btc.highest_time_us is None
    assert btc.rejected.count == len(reasons)
    described = btc.rejected.describe()
    for reason in reasons:
        assert reason in described, described
    assert all("offset" in sample.describe() for sample in btc.rejected.samples)


def test_an_id_that_jumps_past_any_trading_pace_is_not_the_resume_point(broker: str) -> None:
    """A plausible id on its own, but millions past the trade before it within a minute."""
    topic = unique_topic("poison-jump")
    admin = AdminClient({"bootstrap.servers": broker})
    admin.create_topics([NewTopic(topic, 3, 1, config=TRADES_TOPIC_CONFIG)])[topic].result(30)
    now_ms = int(time.time() * 1000)

    def trade(trade_id: int, timestamp_ms: int) -> bytes:
        return orjson.dumps({"pair": "BTC/USD", "trade_id": trade_id, "timestamp_ms": timestamp_ms})

    producer = Producer({"bootstrap.servers": broker})
    # Three real trades 30 s and 25 s apart, and among them (by time) one 2,000,000 ids past
    # them: the next lower id, 5,000,200, is 5 s later, so it may be 1,000,000 ids past it.
    for value in (
        trade(5_000_000, now_ms - 60_000),
        trade(5_000_100, now_ms - 30_000),
        trade(7_000_100, now_ms - 10_000),
        trade(5_000_200, now_ms - 5_000),
    ):
        producer.produce(topic, value, KEY)
    assert producer.flush(30) == 0
    btc = scan_topic_ids(KafkaSettings(broker_address=broker, topic=topic), ["BTC/USD"])["BTC/USD"]
    assert list(btc.ids) == [(5_000_000, 5_000_000), (5_000_100, 5_000_100), (5_000_200, 5_000_200)]
    assert btc.ids.highest == 5_000_200
    assert btc.rejected.count == 1
    assert "trade_id 7000100 is 1999900 ids past 5000200" in btc.rejected.describe()


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
    _, claim_reasons, _ = _coverage_poison(0)
    (coverage_warning,) = [message for message in messages if "not valid claims" in message]
    assert f"{len(claim_reasons)} record(s)" in coverage_warning, coverage_warning
    assert all(reason in coverage_warning for reason in claim_reasons), coverage_warning
    assert not [message for message in messages if "Waiting for other live writers" in message]
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
    _, claim_reasons, lease_reasons = _coverage_poison(0)
    assert metadata["records_in_coverage_rejected"] == len(claim_reasons) + len(lease_reasons)
    # The lease from a day ahead would otherwise be waited for until its heartbeat is watched.
    assert metadata["seconds_waiting_for_other_backfills"] < 5
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
