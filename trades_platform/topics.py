"""The platform's topics and the configuration it owns for each.

- `<topic>` (the trades): kept forever. Time and size retention are off, so a backfilled day of
  2024 is never deleted by a broker default (7 days on Kafka and Redpanda, judged by the message
  timestamp, which is the trade's time); never compacted (its keys are pair names: compaction
  would keep one trade per pair); the message timestamp is the one the producer set.
- `<topic>.coverage`: the writers' claims and leases, one partition, compacted (coverage_log.py).
- `<topic>.dlq`: what could not be used, kept `KAFKA_DLQ_RETENTION_DAYS` days.

The platform creates them so; a writer refuses a trades topic that would delete history
(`TopicConfigError` says which setting and how to fix it; `python -m trades_platform.topics
--apply` sets the platform's configuration on existing topics).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from trades_platform.settings import KafkaSettings, from_environment

# The trades topic's configuration: nothing is ever deleted, timestamps are the trades' times.
TRADES_TOPIC_CONFIG: dict[str, str] = {
    "retention.ms": "-1",
    "retention.bytes": "-1",
    "cleanup.policy": "delete",
    "message.timestamp.type": "CreateTime",
}
COVERAGE_TOPIC_CONFIG: dict[str, str] = {"cleanup.policy": "compact"}
_DAY_MS = 86_400_000
# How long describing a topic's configuration may take before a writer gives up starting.
DESCRIBE_TIMEOUT_SECONDS = 30.0


class TopicConfigError(RuntimeError):
    """The trades topic is configured to delete history: the platform does not write to it."""


def coverage_topic(settings: KafkaSettings) -> str:
    """The coverage topic that goes with the trades topic."""
    return f"{settings.topic}.coverage"


def dlq_topic(settings: KafkaSettings) -> str:
    """The dead-letter topic that goes with the trades topic."""
    return f"{settings.topic}.dlq"


def dlq_topic_config(settings: KafkaSettings) -> dict[str, str]:
    """The dead-letter topic's configuration: deleted after `dlq_retention_days`."""
    return {
        "retention.ms": str(settings.dlq_retention_days * _DAY_MS),
        "cleanup.policy": "delete",
    }


def history_problems(config: Mapping[str, str | None]) -> list[str]:
    """What in a trades topic's configuration would delete trades; empty when nothing would.

    `config` is what the broker describes. A setting it does not list is the broker's default,
    which deletes after 7 days on Kafka and Redpanda: that is a problem too.
    """
    problems = []
    retention_ms = config.get("retention.ms")
    if retention_ms is None:
        problems.append("retention.ms is not set on the topic: the broker's default applies")
    elif retention_ms.strip() != "-1":
        problems.append(f"retention.ms={retention_ms} deletes trades older than that")
    retention_bytes = config.get("retention.bytes")
    if retention_bytes is not None and retention_bytes.strip() != "-1":
        problems.append(f"retention.bytes={retention_bytes} deletes the oldest trades past it")
    policy = config.get("cleanup.policy") or ""
    if "compact" in policy:
        problems.append(f"cleanup.policy={policy} keeps only the newest trade of each pair")
    return problems


def describe_topic(admin: AdminClient, topic: str) -> dict[str, str | None]:
    """A topic's configuration as the broker describes it (defaults included where it says)."""
    resource = ConfigResource(ResourceType.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result(timeout=DESCRIBE_TIMEOUT_SECONDS)
    return {name: entry.value for name, entry in entries.items()}


def check_keeps_history(settings: KafkaSettings) -> None:
    """Raise TopicConfigError when the trades topic's configuration would delete trades."""
    admin = AdminClient(settings.client_config())
    problems = history_problems(describe_topic(admin, settings.topic))
    if problems:
        raise TopicConfigError(
            f"topic {settings.topic!r} at {settings.broker_address} would delete history: "
            + "; ".join(problems)
            + ". The platform writes only to a topic that keeps every trade. Fix: "
            "`python -m trades_platform.topics --apply` (sets "
            + ", ".join(f"{name}={value}" for name, value in TRADES_TOPIC_CONFIG.items())
            + f"), or `rpk topic alter-config {settings.topic} --set retention.ms=-1 --set "
            "retention.bytes=-1` on Redpanda"
        )


def apply_configs(settings: KafkaSettings) -> dict[str, dict[str, str]]:
    """Set the platform's configuration on its existing topics; return what was set."""
    admin = AdminClient(settings.client_config())
    wanted = {
        settings.topic: TRADES_TOPIC_CONFIG,
        coverage_topic(settings): COVERAGE_TOPIC_CONFIG,
        dlq_topic(settings): dlq_topic_config(settings),
    }
    existing = admin.list_topics(timeout=DESCRIBE_TIMEOUT_SECONDS).topics
    applied = {}
    for topic, config in wanted.items():
        if topic not in existing:
            continue
        entries = [
            ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
            for name, value in config.items()
        ]
        resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=entries)
        admin.incremental_alter_configs([resource])[resource].result(
            timeout=DESCRIBE_TIMEOUT_SECONDS
        )
        applied[topic] = config
    return applied


def main() -> None:
    """`python -m trades_platform.topics`: show what would delete history; `--apply` fixes it."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "--apply", action="store_true", help="set the platform's configuration on its topics"
    )
    args = parser.parse_args()
    settings = from_environment(KafkaSettings)
    if args.apply:
        for topic, config in apply_configs(settings).items():
            print(f"{topic}: set {config}")
    admin = AdminClient(settings.client_config())
    problems = history_problems(describe_topic(admin, settings.topic))
    print(f"{settings.topic}: " + ("; ".join(problems) if problems else "keeps every trade"))
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
