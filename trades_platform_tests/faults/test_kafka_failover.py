"""Broker failover on a real 3-node Apache Kafka cluster (replication factor 3,
`min.insync.replicas=2`): the leader of a pair's partition killed with SIGKILL during a live run
and during a backfill, then brought back; and the whole cluster stopped and started on its data.
Each scenario ends with the topic read back: every id once, none missing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from dagster import DagsterInstance

from trades_platform.kafka_cluster import KafkaCluster
from trades_platform.resources import RedpandaResource
from trades_platform.simulator.market import SimulatedMarket
from trades_platform.testing import SimulatorProcess, read_topic, unique_topic
from trades_platform.testing.live import once_every_pair_is_written
from trades_platform_tests.faults.conftest import (
    LIVE_PAIRS,
    assert_exactly_once,
    backfill_kraken,
    backfill_metadata,
    day_ids,
    live_flags,
    live_kraken,
    partition_of,
    run_backfill,
    run_live,
    run_totals,
    trades_sent,
    wall_us,
)

pytestmark = [pytest.mark.faults, pytest.mark.kafka]

# About 100 trades a second in all, over the two pairs.
FAILOVER_RATE = 50.0
# How long the killed node stays down before it is started again on its data.
DOWN_SECONDS = 15.0
# The backfill's day: a trade every 4 s per pair, 22 pages of 1000, paced to last about 11 s.
BACKFILL_RATE = 0.25
BACKFILL_KEY = "2024-02-20|BTC/USD"


@pytest.fixture
def cluster(kafka_cluster: KafkaCluster) -> Iterator[KafkaCluster]:
    """The session's Kafka cluster, every node running again after the test."""
    yield kafka_cluster
    for node in kafka_cluster.nodes:
        if not node.running:
            kafka_cluster.start_node(node.node_id)


class LeaderKill:
    """Kills the leader of a pair's partition, then starts it again after DOWN_SECONDS."""

    def __init__(self, cluster: KafkaCluster, topic: str, pair: str) -> None:
        self.cluster, self.topic, self.pair = cluster, topic, pair
        self.killed: int | None = None
        self.partition: int | None = None
        self.new_leader: int | None = None
        # Seconds from the kill: when another node was first seen leading, when the node was back.
        self.killed_at: float | None = None
        self.killed_wall = ""
        self.leader_changed_after: float | None = None
        self.back_after: float | None = None
        self.back = threading.Event()

    def __call__(self) -> None:
        self.partition = partition_of(self.cluster.bootstrap, self.topic, self.pair)
        self.killed = self.cluster.leader_of(self.topic, self.partition)
        self.cluster.kill(self.killed)
        self.killed_at = time.monotonic()
        self.killed_wall = time.strftime("%H:%M:%S", time.gmtime())
        threading.Thread(target=self._bring_back, daemon=True).start()

    def _bring_back(self) -> None:
        assert self.killed is not None and self.partition is not None
        assert self.killed_at is not None
        deadline = self.killed_at + DOWN_SECONDS
        while time.monotonic() < deadline:
            leader = self.cluster.leader_of(self.topic, self.partition)
            if leader not in (-1, self.killed):
                self.new_leader = leader
                if self.leader_changed_after is None:
                    self.leader_changed_after = time.monotonic() - self.killed_at
            time.sleep(0.2)
        self.cluster.start_node(self.killed)
        self.back_after = time.monotonic() - self.killed_at
        self.back.set()

    def survivors(self) -> str:
        """Kill the node again and wait for the others to lead: the topic is then read back from
        the surviving brokers alone (the fixture starts it again after the test)."""
        assert self.killed is not None and self.partition is not None
        self.cluster.kill(self.killed)
        deadline = time.monotonic() + 60
        while self.cluster.leader_of(self.topic, self.partition) in (-1, self.killed):
            assert time.monotonic() < deadline, "no surviving node took the partition"
            time.sleep(0.2)
        return ",".join(n.address for n in self.cluster.nodes if n.node_id != self.killed)

    def describe(self) -> str:
        """The kill's timeline, for the test's report."""
        return (
            f"node {self.killed} (leader of partition {self.partition}) killed at "
            f"{self.killed_wall} UTC, node {self.new_leader} seen leading "
            f"{self.leader_changed_after:.1f}s after the kill, "
            f"the killed node back after {self.back_after:.1f}s"
        )


def test_the_leader_killed_during_a_live_run_loses_nothing(
    cluster: KafkaCluster, dagster_instance: DagsterInstance
) -> None:
    """SIGKILL of the BTC/USD partition's leader at ~100 trades/s, back 15 s later."""
    broker = cluster.bootstrap
    topic = unique_topic("failover-live")
    redpanda = RedpandaResource(broker_address=broker, topic=topic)
    kill = LeaderKill(cluster, topic, "BTC/USD")
    with SimulatorProcess(*live_flags(rate=FAILOVER_RATE)) as sim:
        kraken = live_kraken(sim)
        with once_every_pair_is_written(broker, topic, LIVE_PAIRS, kill) as killing:
            result = run_live(
                kraken, redpanda, dagster_instance, raise_on_error=False, max_seconds=45
            )
        assert killing.is_set()
        assert kill.back.wait(60), "the killed node did not come back"
        runs = [result]
        if not result.success:
            # It failed loudly: the relaunch picks up from the topic.
            runs.append(run_live(kraken, redpanda, dagster_instance, max_seconds=20))
        ended_us = wall_us(seconds_ago=5)
        sent = trades_sent(sim)
    assert runs[-1].success
    assert kill.new_leader not in (None, kill.killed), "no other node took the partition over"
    assert kill.partition is not None and kill.killed is not None
    assert kill.killed in cluster.in_sync_replicas(topic, kill.partition), "it did not rejoin"
    records = read_topic(kill.survivors(), topic)
    market = SimulatedMarket(LIVE_PAIRS, FAILOVER_RATE)
    counts = assert_exactly_once(
        records,
        label="failover-live",
        market=market,
        pairs=LIVE_PAIRS,
        reaches_us=ended_us,
        sent=sent,
    )
    totals = [run_totals(dagster_instance, run.run_id) for run in runs if run.success]
    print(
        f"[faults] failover-live: {kill.describe()}; runs {[run.success for run in runs]}; "
        f"{sum(c.in_topic for c in counts.values())} in the topic; totals {totals}"
    )


def test_the_leader_killed_during_a_backfill_loses_nothing(
    cluster: KafkaCluster, dagster_instance: DagsterInstance
) -> None:
    """SIGKILL of the partition's leader mid-day, back 15 s later: the day is written once."""
    broker = cluster.bootstrap
    topic = unique_topic("failover-backfill")
    redpanda = RedpandaResource(broker_address=broker, topic=topic)
    flags = ["--pairs", ",".join(LIVE_PAIRS), "--trades-per-second", str(BACKFILL_RATE)]
    kill = LeaderKill(cluster, topic, "BTC/USD")
    with SimulatorProcess(*flags) as sim:
        # Paced so that the day takes about 11 s: the kill meets it mid-way.
        kraken = backfill_kraken(sim, rest_requests_per_second=2.0)
        with once_every_pair_is_written(broker, topic, ["BTC/USD"], kill) as killing:
            result = run_backfill(
                BACKFILL_KEY, kraken, redpanda, dagster_instance, raise_on_error=False
            )
        assert killing.is_set()
        assert kill.back.wait(60), "the killed node did not come back"
        runs = [result]
        if not result.success:
            runs.append(run_backfill(BACKFILL_KEY, kraken, redpanda, dagster_instance))
    assert runs[-1].success
    assert kill.new_leader not in (None, kill.killed), "no other node took the partition over"
    expected = day_ids(SimulatedMarket(LIVE_PAIRS, BACKFILL_RATE), BACKFILL_KEY)
    records = read_topic(kill.survivors(), topic, expected=len(expected), trades_only=True)
    assert sorted(record.value["trade_id"] for record in records) == expected
    metadata = backfill_metadata(runs[-1])
    if not result.success:
        # It failed loudly: a page the broker did not acknowledge in time, or the read of the
        # live claims before a page, whose partition lost its leader too (5 s bound).
        failure = result.failure_data_for_node("kraken_trades_history")
        assert failure is not None and failure.error is not None
        error = failure.error.to_string()
        loud = ("not acknowledged", "got no message and no end of partition")
        assert any(reason in error for reason in loud), error[-2000:]
    print(
        f"[faults] failover-backfill: {kill.describe()}; runs "
        f"{[run.success for run in runs]}; {len(expected)} trades of the day once; last run wrote "
        f"{metadata['written']}, found {metadata['already_present']} present"
    )


def test_a_whole_cluster_stop_and_start_keeps_every_trade(
    cluster: KafkaCluster, dagster_instance: DagsterInstance
) -> None:
    """Backfill a day, stop all three nodes, start them on their data: the day reads back whole,
    and a re-run of the partition finds every trade present."""
    broker = cluster.bootstrap
    topic = unique_topic("failover-restart")
    redpanda = RedpandaResource(broker_address=broker, topic=topic)
    flags = ["--pairs", ",".join(LIVE_PAIRS), "--trades-per-second", "0.1"]
    key = "2024-02-21|ETH/USD"
    with SimulatorProcess(*flags) as sim:
        kraken = backfill_kraken(sim)
        assert run_backfill(key, kraken, redpanda, dagster_instance).success
        cluster.stop()
        cluster.start()
        rerun = run_backfill(key, kraken, redpanda, dagster_instance)
    expected = day_ids(SimulatedMarket(LIVE_PAIRS, 0.1), key)
    records = read_topic(broker, topic, expected=len(expected), trades_only=True)
    assert sorted(record.value["trade_id"] for record in records) == expected
    metadata = backfill_metadata(rerun)
    assert (metadata["written"], metadata["already_present"]) == (0, len(expected)), metadata
    print(f"[faults] cluster-restart: {len(expected)} trades kept across a stop and start")
