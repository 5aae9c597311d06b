"""A page the producer gave up on may still be committed ("possibly persisted"), shown on a real
3-node Kafka cluster behind TCP proxies: the proxy in front of the partition's leader takes the
backfill's produce request off its connection and hands it to the leader 20 s later, long after
the client's 5 s page bound failed the run. A second backfill of the same partition waits in line
for the first one's lease (a CLI run with an instance of its own).

With the platform's rule (the failing run keeps its lease for POSSIBLY_PERSISTED_SECONDS before it
releases it) the late page lands before the second run scans, and the day is written once. With
that hold at 0 s (the design before it) the second run scans first and writes the page's ids
again: the duplicates this rule exists for.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from dagster import DagsterInstance

from trades_platform.backfill import asset
from trades_platform.coverage.coverage_log import POSSIBLY_PERSISTED_SECONDS
from trades_platform.resources import RedpandaResource
from trades_platform.simulator.market import SimulatedMarket
from trades_platform.testing import SimulatorProcess, cli_env, read_topic, unique_topic
from trades_platform.testing.live import once_every_pair_is_written
from trades_platform_tests.faults.conftest import (
    LIVE_PAIRS,
    CliRun,
    ProxiedCluster,
    backfill_command,
    backfill_kraken,
    cli_backfill_metadata,
    day_ids,
    partition_of,
    run_backfill,
)
from trades_platform_tests.support.tcp_proxy import ProxyStats, TcpProxy

pytestmark = [pytest.mark.faults, pytest.mark.kafka]

KEY = "2024-02-22|BTC/USD"
# 21,600 trades a day: 22 pages.
RATE = 0.25
# The held request reaches the leader this long after it was sent: past the page bound (5 s),
# within POSSIBLY_PERSISTED_SECONDS.
HOLD_SECONDS = 20.0


@pytest.mark.parametrize("rule", ["keep-the-lease", "release-at-once"])
def test_a_page_given_up_on_that_lands_later_is_not_written_twice(
    proxied_kafka: ProxiedCluster,
    dagster_instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    rule: str,
) -> None:
    if rule == "release-at-once":
        monkeypatch.setattr(asset, "POSSIBLY_PERSISTED_SECONDS", 0.0)
    proxied = proxied_kafka
    cluster = proxied.cluster
    broker = cluster.bootstrap
    topic = unique_topic("possibly-persisted")
    redpanda = RedpandaResource(broker_address=broker, topic=topic)
    expected = day_ids(SimulatedMarket(LIVE_PAIRS, RATE), KEY)
    flags = ["--pairs", ",".join(LIVE_PAIRS), "--trades-per-second", str(RATE)]
    held: list[TcpProxy] = []
    second: list[CliRun] = []

    def hold_the_next_page_then_queue_a_second_run() -> None:
        partition = partition_of(broker, topic, "BTC/USD")
        leader = proxied.proxies[cluster.leader_of(topic, partition)]
        leader.hold_next_produce(topic, HOLD_SECONDS)
        held.append(leader)
        # The second run, a CLI process with its own instance (two in-process runs must not
        # overlap), queues behind this run's lease and pages fast.
        env = cli_env(
            sim, broker, topic, tmp_path / "second", KRAKEN_REST_REQUESTS_PER_SECOND="200"
        )
        second.append(CliRun(backfill_command(KEY), env))

    with SimulatorProcess(*flags) as sim:
        # The first run pages slowly (2 calls/s, about 11 s for the day): the hold meets it.
        slow = backfill_kraken(sim, rest_requests_per_second=2.0)
        with once_every_pair_is_written(
            broker, topic, ["BTC/USD"], hold_the_next_page_then_queue_a_second_run
        ) as holding:
            first = run_backfill(KEY, slow, redpanda, dagster_instance, raise_on_error=False)
        assert holding.is_set() and held and second, "the hold was never set"
        with second[0] as other:
            assert other.wait(timeout_seconds=180) == 0, other.output[-4000:]
    leader = held[0]
    # The held page reaches the leader HOLD_SECONDS after it was taken: read the topic only after
    # that (a fast second run may be done before), or a late copy would be missed. The proxy's
    # stats outlive a test (the cluster is the session's): only a delivery after this hold counts.
    deadline = time.monotonic() + HOLD_SECONDS + 30
    while not _delivered_after_hold(leader.stats) and time.monotonic() < deadline:
        time.sleep(0.5)
    held_at, delivered_at = leader.stats.held_at, leader.stats.delivered_at
    assert held_at is not None and delivered_at is not None, "no produce request was held"
    assert delivered_at > held_at, "the held produce request was never delivered"
    assert not first.success, "the held page should have failed the first run"
    failed_step = first.failure_data_for_node("kraken_trades_history")
    assert failed_step is not None and failed_step.error is not None
    failure = failed_step.error.to_string()
    landed_match = re.search(r"(\d+) of the page's (\d+) trades were in the topic", failure)
    assert landed_match, failure[-3000:]
    records = read_topic(broker, topic, expected=len(expected), trades_only=True)
    ids = [record.value["trade_id"] for record in records if record.key == "BTC-USD"]
    duplicated = len(ids) - len(set(ids))
    metadata = cli_backfill_metadata(tmp_path / "second", KEY)
    print(
        f"[faults] possibly-persisted ({rule}): request of {leader.stats.held_bytes} bytes held "
        f"{delivered_at - held_at:.1f}s; first run: {landed_match.group(0)}; second run waited "
        f"{metadata['seconds_waiting_for_other_backfills']}s, wrote {metadata['written']}, found "
        f"{metadata['already_present']} present; {len(ids)} records, {duplicated} duplicated"
    )
    assert set(ids) == set(expected), "a trade of the day is missing"
    if rule == "keep-the-lease":
        # The page landed while the lease was kept: the first run saw it, the second did not
        # write it again.
        assert int(landed_match.group(1)) > 0
        assert duplicated == 0
    else:
        # Released at once: the second run scanned before the late page arrived.
        assert int(landed_match.group(1)) == 0
        assert duplicated > 0
    assert POSSIBLY_PERSISTED_SECONDS > HOLD_SECONDS - asset.BACKFILL_PAGE_BOUND_SECONDS


def _delivered_after_hold(stats: ProxyStats) -> bool:
    """Whether the proxy delivered the produce request it last held."""
    return (
        stats.held_at is not None
        and stats.delivered_at is not None
        and stats.delivered_at > stats.held_at
    )
