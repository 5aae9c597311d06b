"""Window leases on the real broker: the line, release, a killed holder, stale leases.

Losing standing when the broker is out of reach: faults/test_broker_faults.py.
"""

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from confluent_kafka import Producer

from trades_platform.coverage import window_leases
from trades_platform.coverage.claims import ClaimBoard, TailClaimHolder
from trades_platform.coverage.coverage_log import (
    publish_and_wait,
)
from trades_platform.coverage.window_leases import WindowLease, WindowLeaseHolder
from trades_platform.processes import stop_process
from trades_platform.settings import KafkaSettings
from trades_platform.testing import unique_topic
from trades_platform.topics import coverage_topic
from trades_platform.trade import CLOCK_MARGIN_MS

# Wire format, reads and claims must hold on the broker users run, not only on tansu.
pytestmark = pytest.mark.both_brokers

DAY_US = 86_400_000_000
DAY_2 = (19_800 * DAY_US, 19_801 * DAY_US)
DAY_3 = (19_801 * DAY_US, 19_802 * DAY_US)


def _settings(broker: str) -> KafkaSettings:
    return KafkaSettings(broker_address=broker, topic=unique_topic("leases"))


@contextmanager
def _holding(
    settings: KafkaSettings, pair: str, window: tuple[int, int], owner: str
) -> Iterator[WindowLeaseHolder]:
    holder = WindowLeaseHolder(settings, pair, *window, owner=owner)
    holder.acquire()
    try:
        yield holder
    finally:
        holder.release()


def test_the_first_lease_goes_at_once_and_the_second_waits_for_its_release(broker: str) -> None:
    settings = _settings(broker)
    with _holding(settings, "BTC/USD", DAY_2, "first") as first:
        told_to_wait: list[object] = []
        first.wait_for_turn(told_to_wait.append)
        assert told_to_wait == []
        second = WindowLeaseHolder(settings, "BTC/USD", *DAY_2, owner="second")
        second.acquire()
        try:
            ahead = second.leases_ahead()
            assert [other.lease.owner for other in ahead] == ["first"]
            # The first holder finishes two seconds from now.
            threading.Timer(2.0, first.release).start()
            seen: list[list[str]] = []
            waited = second.wait_for_turn(lambda now: seen.append([o.lease.owner for o in now]))
            assert waited > 1.5
            assert seen and seen[0] == ["first"]
            # The line is by acquisition: the second never waits for a later arrival.
            with _holding(settings, "BTC/USD", DAY_2, "third") as third:
                assert second.leases_ahead() == []
                assert [other.lease.owner for other in third.leases_ahead()] == ["second"]
        finally:
            second.release()


def test_other_days_and_other_pairs_do_not_wait(broker: str) -> None:
    settings = _settings(broker)
    with (
        _holding(settings, "BTC/USD", DAY_2, "btc-day-2"),
        _holding(settings, "BTC/USD", DAY_3, "btc-day-3") as next_day,
        _holding(settings, "ETH/USD", DAY_2, "eth-day-2") as other_pair,
    ):
        assert next_day.leases_ahead() == []
        assert other_pair.leases_ahead() == []
        # A wider window overlapping both days waits for both.
        with _holding(settings, "BTC/USD", (DAY_2[0], DAY_3[1]), "two-days") as wide:
            assert {o.lease.owner for o in wide.leases_ahead()} == {"btc-day-2", "btc-day-3"}


@pytest.mark.slow
def test_a_killed_holder_is_presumed_dead_once_its_heartbeat_stands_still(
    broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(broker)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from trades_platform.coverage import window_leases\n"
            "from trades_platform.coverage.window_leases import WindowLeaseHolder\n"
            "window_leases.WINDOW_HEARTBEAT_SECONDS = 0.5\n"
            "from trades_platform.settings import KafkaSettings\n"
            "settings = KafkaSettings(broker_address=sys.argv[1], topic=sys.argv[2])\n"
            f"WindowLeaseHolder(settings, 'BTC/USD', {DAY_2[0]}, {DAY_2[1]}, owner='killed')"
            ".acquire()\n"
            "print('acquired', flush=True)\n"
            "time.sleep(600)\n",
            broker,
            settings.topic,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "acquired"
        monkeypatch.setattr(window_leases, "WINDOW_LEASE_SECONDS", 3.0)
        with _holding(settings, "BTC/USD", DAY_2, "next") as waiter:
            # Alive: it beats every 0.5 s, so the waiter keeps waiting past the 3 s lease.
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                assert [o.lease.owner for o in waiter.leases_ahead()] == ["killed"]
                time.sleep(0.5)
            holder.kill()
            holder.wait()
            waited = waiter.wait_for_turn()
            # The 3 s of silence it now takes, not the 30 s default (nor forever).
            assert 2.5 < waited < 20.0
    finally:
        stop_process(holder)


def test_a_lease_whose_heartbeat_is_long_past_is_not_waited_for(broker: str) -> None:
    settings = _settings(broker)
    ClaimBoard(settings).close()  # creates the coverage topic
    stale_ms = int(time.time() * 1000) - int(window_leases.WINDOW_LEASE_SECONDS * 1000)
    stale_ms -= CLOCK_MARGIN_MS + 1000
    stale = WindowLease("BTC/USD", *DAY_2, owner="crashed-last-week", acquired_ms=stale_ms)
    producer = Producer(settings.client_config())
    publish_and_wait(
        producer,
        coverage_topic(settings),
        [("window|BTC/USD|crashed-last-week", stale.__dict__)],
        timeout_seconds=10,
        what="stale lease",
    )
    with _holding(settings, "BTC/USD", DAY_2, "now") as holder:
        assert holder.leases_ahead() == []


@pytest.mark.slow
def test_leases_and_tail_claims_share_the_topic_without_mixing(broker: str) -> None:
    settings = _settings(broker)
    live = TailClaimHolder(settings, ["BTC/USD"], lease_seconds=60, owner="live")
    live.acquire()
    board = ClaimBoard(settings, owner="observer")
    try:
        live.claim({"BTC/USD": 42}, timeout_seconds=10)
        with _holding(settings, "BTC/USD", DAY_2, "backfill") as holder:
            time.sleep(window_leases.WINDOW_HEARTBEAT_SECONDS + 0.5)
            claims = board.read()
            assert {pair: [o.claim.from_id for o in seen] for pair, seen in claims.items()} == {
                "BTC/USD": [42]
            }
            assert holder.leases_ahead() == []
    finally:
        board.close()
        live.release()
