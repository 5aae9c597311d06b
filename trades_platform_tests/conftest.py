"""Shared fixtures: real Kafka-protocol brokers for the whole session, simulators on demand.

`broker` is the address of the light `tansu` broker, unless a test (or its module) is marked
`both_brokers`: then it runs twice, on tansu and on a 3-node Apache Kafka cluster (replication
factor 3, `min.insync.replicas=2`), started once for the session on first use.

`make test` runs the suite in parallel (pytest-xdist, `--dist loadgroup`): most tests wait on
sockets, leases and simulated markets, not on the CPU. Every test that needs Apache Kafka runs in
one worker (`xdist_group("kafka")`), so the session starts each Kafka cluster once, not once per
worker, and the failover and cut scenarios never share the cluster with another test's kill.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from trades_platform.kafka_cluster import KafkaCluster
from trades_platform.local_broker import LocalBroker

BROKER_KINDS = ("tansu", "kafka")
# The xdist group of every test that runs on Apache Kafka (see the module's docstring).
KAFKA_GROUP = "kafka"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run `both_brokers` tests once per broker kind."""
    if "broker" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_brokers"):
        metafunc.parametrize("broker", BROKER_KINDS, indirect=True, scope="session")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put every test that needs Apache Kafka in one xdist group (before xdist reads the groups)."""
    for item in items:
        params = getattr(item, "callspec", None)
        on_kafka = params is not None and "kafka" in (
            params.params.get("broker"),
            params.params.get("proxied_broker"),
        )
        if on_kafka or item.get_closest_marker("kafka"):
            item.add_marker(pytest.mark.xdist_group(KAFKA_GROUP))


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
