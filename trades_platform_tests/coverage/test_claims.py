"""Tail claims on the real broker: the line, liveness by watching, read-back, hand-backs.

Losing standing when the broker is out of reach: faults/test_broker_faults.py.
"""

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from trades_platform.coverage import claims as claims_module
from trades_platform.coverage.claims import (
    ClaimBoard,
    ClaimLost,
    OtherLiveWriterError,
    TailClaim,
    TailClaimHolder,
    claim_lease_seconds,
)
from trades_platform.coverage.coverage_log import HeartbeatWatch
from trades_platform.live.tail import backfill_may_reach
from trades_platform.processes import stop_process
from trades_platform.settings import KafkaSettings
from trades_platform.testing import unique_topic
from trades_platform.trade import CLOCK_MARGIN_MS

# Wire format, reads and claims must hold on the broker users run, not only on tansu.
pytestmark = pytest.mark.both_brokers

DAY_US = 86_400_000_000


def _settings(broker: str) -> KafkaSettings:
    return KafkaSettings(broker_address=broker, topic=unique_topic("claims"))


@contextmanager
def _holding(
    settings: KafkaSettings, pairs: list[str], owner: str, lease_seconds: float = 60.0
) -> Iterator[TailClaimHolder]:
    holder = TailClaimHolder(settings, pairs, lease_seconds=lease_seconds, owner=owner)
    holder.acquire()
    try:
        yield holder
    finally:
        holder.release()


@pytest.fixture
def quick_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    """Heartbeats every 0.5 s, so that watching one change takes a second, not ten."""
    monkeypatch.setattr(claims_module, "CLAIM_HEARTBEAT_SECONDS", 0.5)


@pytest.mark.slow
def test_a_claim_is_seen_by_others_with_its_ids_and_hand_backs(
    broker: str, quick_heartbeats: None
) -> None:
    settings = _settings(broker)
    board = ClaimBoard(settings, owner="backfill-run")
    try:
        assert board.read() == {}
        with _holding(settings, ["BTC/USD", "ETH/USD"], "live-run") as live:
            # Waiting for its turn: in line, but no id claimed yet.
            (waiting,) = board.read()["BTC/USD"]
            assert waiting.claim.from_id is None and waiting.claim.lets_backfill_write(10**9)
            live.claim({"BTC/USD": 100, "ETH/USD": 7}, timeout_seconds=10)
            seen = board.read()
            assert {pair: [o.claim.from_id for o in claims] for pair, claims in seen.items()} == {
                "BTC/USD": [100],
                "ETH/USD": [7],
            }
            btc = seen["BTC/USD"][0].claim
            assert btc.lets_backfill_write(99) and not btc.lets_backfill_write(100)
            live.hand_back("BTC/USD", [(120, 125), (130, 130)])
            time.sleep(1.5)
            btc = board.read()["BTC/USD"][0].claim
            assert btc.handed_back == ((120, 125), (130, 130))
            assert [i for i in range(118, 132) if btc.lets_backfill_write(i)] == [
                *range(120, 126),
                130,
            ]
            # Its heartbeat was seen to change: alive.
            assert board.read()["BTC/USD"][0].liveness == "alive"
        (released,) = board.read()["BTC/USD"]
        assert released.over and released.claim.released
    finally:
        board.close()


@pytest.mark.slow
def test_a_second_live_run_fails_while_the_first_is_alive_and_goes_once_it_released(
    broker: str, quick_heartbeats: None
) -> None:
    settings = _settings(broker)
    with _holding(settings, ["BTC/USD"], "first") as first:
        first.claim({"BTC/USD": 100}, timeout_seconds=10)
        assert first.wait_for_turn() == 0.0
        second = TailClaimHolder(settings, ["BTC/USD", "ETH/USD"], lease_seconds=60, owner="second")
        second.acquire()
        try:
            with pytest.raises(OtherLiveWriterError, match=r"BTC/USD \(live run first"):
                second.wait_for_turn()
        finally:
            second.release()
        # The line is by acquisition: a later arrival never holds the first back.
        with _holding(settings, ["BTC/USD"], "third"):
            assert first.wait_for_turn() == 0.0
    with _holding(settings, ["BTC/USD"], "fourth") as fourth:
        assert fourth.wait_for_turn() == 0.0


@pytest.mark.slow
def test_a_killed_live_run_is_waited_out_for_its_lease_then_presumed_over(broker: str) -> None:
    settings = _settings(broker)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from trades_platform.coverage import claims\n"
            "claims.CLAIM_HEARTBEAT_SECONDS = 0.5\n"
            "from trades_platform.settings import KafkaSettings\n"
            "settings = KafkaSettings(broker_address=sys.argv[1], topic=sys.argv[2])\n"
            "holder = claims.TailClaimHolder(settings, ['BTC/USD'], lease_seconds=4.0, "
            "owner='killed')\n"
            "holder.acquire()\n"
            "holder.claim({'BTC/USD': 500}, timeout_seconds=10)\n"
            "print('claimed', flush=True)\n"
            "time.sleep(600)\n",
            broker,
            settings.topic,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "claimed"
        # Alive: it beats every 0.5 s, so the next run may not go.
        with (
            _holding(settings, ["BTC/USD"], "next") as waiter,
            pytest.raises(OtherLiveWriterError, match="killed"),
        ):
            waiter.wait_for_turn()
        holder.kill()
        holder.wait()
        # The relaunch: it cannot tell a dead holder from a slow one until the lease has passed.
        with _holding(settings, ["BTC/USD"], "relaunched") as relaunched:
            waited = relaunched.wait_for_turn()
            # The 4 s lease the claim advertised, watched on this process's clock.
            assert 3.5 < waited < 20.0
    finally:
        stop_process(holder)


def test_a_writer_whose_ids_are_claimed_by_another_stops(
    broker: str, quick_heartbeats: None
) -> None:
    settings = _settings(broker)
    with _holding(settings, ["BTC/USD"], "first") as first:
        first.claim({"BTC/USD": 100}, timeout_seconds=10)
        first.ensure_held()
        # A writer that (wrongly) went ahead: e.g. one paused past the lease and resumed.
        with _holding(settings, ["BTC/USD"], "intruder") as intruder:
            # Its claim is published, then read back next to the first one's: it never writes.
            with pytest.raises(ClaimLost, match="first also claims BTC/USD"):
                intruder.claim({"BTC/USD": 150}, timeout_seconds=10)
            # And the first, reading the intruder's claim back, stops too.
            deadline = time.monotonic() + 10
            with pytest.raises(ClaimLost, match="intruder also claims BTC/USD"):
                while time.monotonic() < deadline:
                    first.ensure_held()
                    time.sleep(0.2)


def test_liveness_is_judged_by_watching_not_by_comparing_clocks() -> None:
    now = [1000.0]
    watch = HeartbeatWatch(clock=lambda: now[0])
    wall_ms = int(time.time() * 1000)
    # A holder whose clock is 5 minutes behind ours: its heartbeats look 5 minutes old.
    behind = wall_ms - 5 * 60_000
    assert watch.observe("slow-clock", (1, behind), 30).liveness == "unknown"
    now[0] += 10
    assert watch.observe("slow-clock", (2, behind + 10_000), 30).liveness == "alive"
    # And 5 minutes ahead.
    assert watch.observe("fast-clock", (1, wall_ms + 5 * 60_000), 30).liveness == "unknown"
    # A heartbeat that stands still for the lease while watched: over.
    now[0] += 29
    assert watch.observe("slow-clock", (2, behind + 10_000), 30).liveness == "alive"
    now[0] += 2
    assert watch.observe("slow-clock", (2, behind + 10_000), 30).liveness == "ended"
    # Older than the lease plus the clock margin by the wall clock: over at first sight.
    ancient = wall_ms - 30_000 - CLOCK_MARGIN_MS - 1000
    assert watch.observe("long-dead", (7, ancient), 30).liveness == "ended"


def test_the_lease_covers_the_standing_and_the_delivery_timeout() -> None:
    for delivery_ms in (5_000, 120_000):
        lease = claim_lease_seconds(delivery_ms)
        assert lease > claims_module.CLAIM_STANDING_SECONDS + delivery_ms / 1000
    claim = TailClaim("BTC/USD", "run", 0, 0, False, 60.0, from_id=10, handed_back=((15, 20),))
    assert [i for i in range(8, 23) if claim.lets_backfill_write(i)] == [8, 9, *range(15, 21)]


def test_backfills_only_reach_days_that_are_over() -> None:
    noon = 20_000 * DAY_US + DAY_US // 2
    assert not backfill_may_reach(noon - 3_600_000_000, now_us=noon)
    assert backfill_may_reach(20_000 * DAY_US - 1, now_us=noon)
    # Ten minutes before midnight, today is treated as over already (clock skew margin).
    late = 20_001 * DAY_US - 5 * 60_000_000
    assert backfill_may_reach(late - 60_000_000, now_us=late)
