"""The broker out of reach: a TCP proxy between every client and a dedicated broker is cut.

Within `delivery_timeout_ms` the producer keeps retrying and the run carries on; past it the run
fails loudly (DeliveryError) and the next run, as the sensor would launch it, resumes from the
topic: nothing acknowledged is lost and nothing is written twice.
"""

import time
from functools import partial

import pytest
from dagster import DagsterInstance

from trades_platform.coverage import window_leases
from trades_platform.coverage.window_leases import LeaseLost, WindowLeaseHolder
from trades_platform.resources import RedpandaResource
from trades_platform.settings import KafkaSettings
from trades_platform.simulator.market import SimulatedMarket
from trades_platform.testing import (
    SimulatorProcess,
    grace_seconds,
    once_every_pair_is_written,
    read_topic,
    unique_topic,
)
from trades_platform_tests.faults.conftest import (
    LIVE_PAIRS,
    LIVE_RATE,
    ProxiedBroker,
    assert_exactly_once,
    live_flags,
    live_kraken,
    run_live,
    run_totals,
    trades_sent,
    wall_us,
)

pytestmark = pytest.mark.faults

MARKET = SimulatedMarket(LIVE_PAIRS, LIVE_RATE)
CUT_SECONDS = 20.0


def test_a_20s_broker_cut_within_the_delivery_timeout_keeps_the_run_alive(
    proxied_broker: ProxiedBroker, dagster_instance: DagsterInstance
) -> None:
    """Cut 20 s, delivery timeout 60 s: the run rides it out and every trade lands once."""
    topic = unique_topic("faults-cut")
    redpanda = RedpandaResource(
        broker_address=proxied_broker.address, topic=topic, delivery_timeout_ms=60_000
    )
    proxy = proxied_broker.proxy
    # Long enough after the restore (and librdkafka's reconnect back-off) to show resuming, also
    # when the claims first wait their grace period (near midnight UTC; testing.live).
    seconds = 48 + grace_seconds(len(LIVE_PAIRS))
    cut_at: list[float] = []

    def cut() -> None:
        cut_at.append(time.monotonic())
        proxy.cut(CUT_SECONDS)

    with SimulatorProcess(*live_flags()) as sim:
        # The cut comes once the run streams: both pairs have trades in the topic.
        with once_every_pair_is_written(proxy.address, topic, LIVE_PAIRS, cut) as cutting:
            result = run_live(live_kraken(sim), redpanda, dagster_instance, max_seconds=seconds)
        ended = time.monotonic()
        ended_us = wall_us(seconds_ago=3)
        sent = trades_sent(sim)
    totals = run_totals(dagster_instance, result.run_id)
    assert result.success and cutting.is_set()
    assert proxy.stats.cuts == 1 and proxy.stats.connections_cut >= 1, proxy.stats
    assert proxy.stats.refused >= 1, "no client tried the broker during the cut"
    assert ended - cut_at[0] > CUT_SECONDS, "the run ended before the broker came back"
    written = totals["written"]
    assert (totals["acknowledged"], totals["failed"]) == (written, 0), totals
    records = read_topic(proxied_broker.address, topic, expected=written)
    assert len(records) == written
    assert_exactly_once(
        records, label="cut-20s", market=MARKET, pairs=LIVE_PAIRS, reaches_us=ended_us, sent=sent
    )
    # It went on streaming after the broker came back: trades from after the restore landed.
    assert proxy.stats.restored_at is not None
    newest_ms = max(record.timestamp_ms for record in records)
    assert newest_ms > proxy.stats.restored_at * 1000, "nothing streamed after the restore"
    print(f"[faults] cut-20s: {written} written and acknowledged; proxy {proxy.stats}")


def test_a_cut_past_the_delivery_timeout_fails_the_run_and_the_relaunch_recovers(
    proxied_broker: ProxiedBroker, dagster_instance: DagsterInstance
) -> None:
    """Cut 20 s, delivery timeout 8 s: DeliveryError fails the run; the next run fills the gap."""
    topic = unique_topic("faults-cut-fail")
    redpanda = RedpandaResource(
        broker_address=proxied_broker.address, topic=topic, delivery_timeout_ms=8_000
    )
    proxy = proxied_broker.proxy
    with SimulatorProcess(*live_flags()) as sim:
        kraken = live_kraken(sim)
        # Once both pairs have trades acknowledged (the run claims, waits for its turn, reads the
        # topic, and near midnight UTC waits the claims' grace period first).
        cut = partial(proxy.cut, CUT_SECONDS)
        with once_every_pair_is_written(proxy.address, topic, LIVE_PAIRS, cut) as cutting:
            failed = run_live(
                kraken,
                redpanda,
                dagster_instance,
                raise_on_error=False,
                max_seconds=60 + grace_seconds(len(LIVE_PAIRS)),
            )
        assert cutting.is_set() and not failed.success
        failure = failed.failure_data_for_node("stream_live_trades")
        assert failure is not None and failure.error is not None
        error = failure.error.to_string()
        assert "DeliveryError" in error, error
        assert proxy.wait_restored(CUT_SECONDS + 5)
        # What the sensor does next: launch the job again.
        relaunched = run_live(kraken, redpanda, dagster_instance, max_seconds=8)
        ended_us = wall_us(seconds_ago=3)
        sent = trades_sent(sim)
    assert relaunched.success
    first = run_totals(dagster_instance, failed.run_id)
    second = run_totals(dagster_instance, relaunched.run_id)
    records = read_topic(proxied_broker.address, topic)
    counts = assert_exactly_once(
        records,
        label="cut-past-timeout",
        market=MARKET,
        pairs=LIVE_PAIRS,
        reaches_us=ended_us,
        sent=sent,
    )
    healed = sum(record.value["source"] == "heal" for record in records)
    assert healed > 0, "the relaunch did not heal the time the broker was away"
    # The relaunch wrote on from where the failed run's acknowledged trades end: the cut's
    # trades are there, healed.
    assert all(count.in_topic > LIVE_RATE * CUT_SECONDS for count in counts.values())
    print(f"[faults] cut-past-timeout: failed run: {first}")
    print(f"[faults] cut-past-timeout: relaunch: {second}; {healed} healed")
    print(f"[faults] cut-past-timeout: error {error.splitlines()[0][:200]}")


def _shrunk_lease_holder(
    monkeypatch: pytest.MonkeyPatch,
    proxied_broker: ProxiedBroker,
    owner: str,
    failures: list[str],
    *,
    beat: float,
    ack: float,
    standing: float,
) -> WindowLeaseHolder:
    """A lease on one day of BTC/USD in a fresh topic, with the heartbeat's bounds shrunk."""
    monkeypatch.setattr(window_leases, "WINDOW_HEARTBEAT_SECONDS", beat)
    monkeypatch.setattr(window_leases, "WINDOW_HEARTBEAT_ACK_SECONDS", ack)
    monkeypatch.setattr(window_leases, "WINDOW_STANDING_SECONDS", standing)
    settings = KafkaSettings(broker_address=proxied_broker.address, topic=unique_topic())
    day = (19_800 * 86_400_000_000, 19_801 * 86_400_000_000)
    return WindowLeaseHolder(
        settings, "BTC/USD", *day, owner=owner, on_heartbeat_failure=failures.append
    )


def test_a_lease_holder_keeps_its_standing_through_a_cut_shorter_than_the_bound(
    proxied_broker: ProxiedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cut from just before a heartbeat until 3.2 s before the standing runs out costs nothing.

    The holder keeps a heartbeat in flight while the broker is away, so the first one the broker
    answers after it is back counts. Waiting a whole interval after each unacknowledged heartbeat
    (as the holder once did) lost the standing here: it sent its next one only after the bound.
    """
    failures: list[str] = []
    # The live claim's ratios (10 s heartbeat, 5 s ack, 35 s standing), scaled down.
    holder = _shrunk_lease_holder(
        monkeypatch, proxied_broker, "rides-it-out", failures, beat=4.0, ack=2.0, standing=15.5
    )
    holder.acquire()
    started = time.monotonic()
    try:
        # The first heartbeat is due 4 s after the acquisition; the broker leaves just before.
        time.sleep(3.9)
        proxied_broker.proxy.cut(8.4)
        assert proxied_broker.proxy.wait_restored(timeout_seconds=30)
        # Past the standing bound as counted from the acquisition: only a heartbeat acknowledged
        # after the broker came back keeps the lease now.
        time.sleep(max(0.0, started + 15.8 - time.monotonic()))
        holder.ensure_held()
    finally:
        holder.release()
    assert failures and "not acknowledged" in failures[0], failures
    assert proxied_broker.proxy.stats.refused >= 1, "no heartbeat tried the broker during the cut"
    print(f"[faults] lease-short-cut: {len(failures)} heartbeats unacknowledged, standing kept")


def test_a_backfill_lease_holder_cut_off_from_the_broker_stops_for_good(
    proxied_broker: ProxiedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Heartbeats unacknowledged past the standing bound: no further page, even once back."""
    failures: list[str] = []
    # Shrunk bounds, with room for a loaded 3-node Kafka: at 2 s of standing, a heartbeat
    # producer still waiting for its producer id ("Coordinator load in progress") lost the lease
    # before the cut, in a CI run.
    holder = _shrunk_lease_holder(
        monkeypatch, proxied_broker, "cut-off", failures, beat=1.0, ack=1.0, standing=6.0
    )
    holder.acquire()
    try:
        time.sleep(3.0)
        holder.ensure_held()
        proxied_broker.proxy.cut(10.0, mode="blackhole")
        time.sleep(8.0)
        with pytest.raises(LeaseLost, match="re-running it is safe"):
            holder.ensure_held()
        assert failures and "not acknowledged" in failures[0], failures
        # Heartbeats acknowledged again do not restore it: a waiter may have gone ahead.
        assert proxied_broker.proxy.wait_restored(timeout_seconds=10)
        time.sleep(4.0)
        with pytest.raises(LeaseLost, match="lost"):
            holder.ensure_held()
    finally:
        holder.release()
    print(f"[faults] lease-cut: {len(failures)} heartbeats unacknowledged, standing lost")
