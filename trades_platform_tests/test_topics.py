"""The topics' configuration the platform owns, on the real broker: trades kept forever, the
dead letters for a while, the coverage log compacted; a trades topic that deletes history is
refused by every writer until `python -m trades_platform.topics --apply` fixes it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from dagster import instance_for_test

from trades_platform.coverage.coverage_log import ensure_coverage_topic
from trades_platform.dead_letters import DeadLetterProducer
from trades_platform.live.job import live_trades_job
from trades_platform.producer import TradeProducer
from trades_platform.resources import KrakenResource, RedpandaResource
from trades_platform.settings import KafkaSettings
from trades_platform.testing import SimulatorProcess, unique_topic
from trades_platform.topics import (
    TopicConfigError,
    coverage_topic,
    describe_topic,
    dlq_topic,
    history_problems,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SEVEN_DAYS_MS = str(7 * 86_400_000)


def _create(broker: str, topic: str, config: dict[str, str]) -> None:
    admin = AdminClient({"bootstrap.servers": broker})
    admin.create_topics([NewTopic(topic, 3, 1, config=config)])[topic].result(timeout=30)


def _config(broker: str, topic: str) -> dict[str, str | None]:
    return describe_topic(AdminClient({"bootstrap.servers": broker}), topic)


def test_the_platform_creates_its_topics_with_the_configuration_it_owns(broker: str) -> None:
    settings = KafkaSettings(
        broker_address=broker, topic=unique_topic("owned"), dlq_retention_days=9
    )
    TradeProducer(settings).close()
    DeadLetterProducer(settings, source="test").close()
    ensure_coverage_topic(settings)
    trades = _config(broker, settings.topic)
    assert trades["retention.ms"] == "-1" and trades["retention.bytes"] == "-1", trades
    assert trades["cleanup.policy"] == "delete", trades
    assert trades["message.timestamp.type"] == "CreateTime", trades
    assert history_problems(trades) == []
    dead = _config(broker, dlq_topic(settings))
    assert dead["retention.ms"] == str(9 * 86_400_000) and dead["cleanup.policy"] == "delete"
    assert _config(broker, coverage_topic(settings))["cleanup.policy"] == "compact"


@pytest.mark.parametrize(
    "config",
    [
        {"retention.ms": SEVEN_DAYS_MS},
        {},  # nothing set on the topic: the broker's default (7 days on Kafka and Redpanda)
        {"retention.ms": "-1", "retention.bytes": "1073741824"},
        {"retention.ms": "-1", "cleanup.policy": "compact"},
    ],
    ids=["7-days", "broker-default", "size-bound", "compacted"],
)
def test_a_writer_refuses_a_topic_that_deletes_history(broker: str, config: dict[str, str]) -> None:
    topic = unique_topic("deletes")
    _create(broker, topic, config)
    with pytest.raises(TopicConfigError) as refused:
        TradeProducer(KafkaSettings(broker_address=broker, topic=topic))
    message = str(refused.value)
    assert topic in message and "python -m trades_platform.topics --apply" in message
    assert next(iter(config), "retention.ms") in message


def test_the_live_job_fails_on_a_seven_day_topic_naming_the_setting(broker: str) -> None:
    topic = unique_topic("live-deletes")
    _create(broker, topic, {"retention.ms": SEVEN_DAYS_MS})
    with SimulatorProcess("--pairs", "BTC/USD") as sim, instance_for_test() as instance:
        result = live_trades_job.execute_in_process(
            run_config={"ops": {"stream_live_trades": {"config": {"max_seconds": 30}}}},
            resources={
                "kraken": KrakenResource(
                    ws_url=sim.ws_url, rest_url=sim.rest_url, pairs=["BTC/USD"]
                ),
                "redpanda": RedpandaResource(broker_address=broker, topic=topic),
            },
            instance=instance,
            raise_on_error=False,
        )
    assert not result.success
    failure = result.failure_data_for_node("stream_live_trades")
    assert failure is not None and failure.error is not None
    error = failure.error.to_string()
    assert "TopicConfigError" in error and f"retention.ms={SEVEN_DAYS_MS}" in error, error


def test_apply_sets_the_configuration_then_writers_start(broker: str) -> None:
    topic = unique_topic("fixed")
    _create(broker, topic, {"retention.ms": SEVEN_DAYS_MS})
    env = {**os.environ, "KAFKA_BROKER_ADDRESS": broker, "KAFKA_TOPIC": topic}
    command = [sys.executable, "-m", "trades_platform.topics"]
    before = subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert before.returncode == 1 and "retention.ms=" in before.stdout, before
    fixed = subprocess.run(
        [*command, "--apply"], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert fixed.returncode == 0, fixed
    assert f"{topic}: keeps every trade" in fixed.stdout, fixed.stdout
    assert _config(broker, topic)["retention.ms"] == "-1"
    TradeProducer(KafkaSettings(broker_address=broker, topic=topic)).close()
