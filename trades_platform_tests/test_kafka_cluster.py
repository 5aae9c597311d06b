"""The Kafka test cluster's launcher (`trades_platform/kafka_cluster.py`) on cases a random
start rarely meets."""

import pytest
from confluent_kafka.admin import AdminClient

from trades_platform import kafka_cluster
from trades_platform.kafka_cluster import KafkaCluster

pytestmark = pytest.mark.kafka


def test_a_cluster_id_that_starts_with_a_dash_still_formats(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One random id in 64 starts with "-" (base64url): Kafka's storage tool must not take it for
    an option (it did: `LOCAL_BROKER=kafka make run` once failed to start in a test run)."""
    monkeypatch.setattr(kafka_cluster, "random_cluster_id", lambda: "-dashFirstClusterId0001")
    with KafkaCluster(nodes=1) as cluster:
        metadata = AdminClient({"bootstrap.servers": cluster.bootstrap}).list_topics(timeout=30)
        assert metadata.cluster_id == "-dashFirstClusterId0001"
