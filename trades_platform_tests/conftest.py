"""Shared fixtures: real Kafka-protocol brokers for the whole session, simulators on demand.

`broker` is the address of the light `tansu` broker, unless a test (or its module) is marked
`both_brokers`: then it runs twice, on tansu and on a 3-node Apache Kafka cluster (replication
factor 3, `min.insync.replicas=2`), started once for the session on first use.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from trades_platform.kafka_cluster import KafkaCluster
from trades_platform.local_broker import LocalBroker

BROKER_KINDS = ("tansu", "kafka")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run `both_brokers` tests once per broker kind."""
    if "broker" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_brokers"):
        metafunc.parametrize("broker", BROKER_KINDS, indirect=True, scope="session")


@pytest.fixture(scope="session")
def tansu_broker() -> Iterator[str]:
    """Address of a tansu broker started for this test session."""
    with LocalBroker() as running:
        yield running.address


@pytest.fixture(scope="session")
def kafka_cluster() -> Iterator[KafkaCluster]:
    """A 3-node Apache Kafka cluster on loopback, started for this test session."""
    with KafkaCluster(nodes=3) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> str:
    """Bootstrap address of the broker under test: tansu, or Kafka for `both_brokers` tests."""
    kind = getattr(request, "param", "tansu")
    if kind == "kafka":
        cluster: KafkaCluster = request.getfixturevalue("kafka_cluster")
        return cluster.bootstrap
    address: str = request.getfixturevalue("tansu_broker")
    return address
