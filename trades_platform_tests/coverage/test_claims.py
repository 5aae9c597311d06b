"""Tail claims on the real broker: publish, read back in order, liveness, release."""

import time

from trades_platform.coverage.claims import ClaimBoard, TailClaim, coverage_topic
from trades_platform.live.tail import backfill_may_reach
from trades_platform.producer import ProducerSettings
from trades_platform_tests.support.topic import unique_topic

DAY_US = 86_400_000_000


def test_the_latest_claim_per_pair_wins_and_others_see_it(broker: str) -> None:
    settings = ProducerSettings(broker_address=broker, topic=unique_topic())
    live = ClaimBoard(settings, owner="live-run")
    backfill = ClaimBoard(settings, owner="backfill-run")
    try:
        assert backfill.claims() == {}
        live.publish("BTC/USD", 100)
        live.publish("BTC/USD", 100)
        live.publish("ETH/USD", 7)
        claims = backfill.claims()
        assert {pair: claim.from_id for pair, claim in claims.items()} == {
            "BTC/USD": 100,
            "ETH/USD": 7,
        }
        assert backfill.alive_claim("BTC/USD") is not None
        # A writer never defers to its own claim.
        assert live.alive_claim("BTC/USD") is None
        live.publish("BTC/USD", 100, released=True)
        assert backfill.alive_claim("BTC/USD") is None
        assert backfill.alive_claim("ETH/USD") is not None
    finally:
        live.close()
        backfill.close()
    assert coverage_topic(settings) == f"{settings.topic}.coverage"


def test_a_claim_without_heartbeat_dies_after_the_lease() -> None:
    now_ms = int(time.time() * 1000)
    claim = TailClaim("BTC/USD", 5, "run", heartbeat_ms=now_ms - 61_000)
    assert not claim.alive(now_ms)
    assert TailClaim("BTC/USD", 5, "run", heartbeat_ms=now_ms - 5_000).alive(now_ms)


def test_backfills_only_reach_days_that_are_over() -> None:
    noon = 20_000 * DAY_US + DAY_US // 2
    assert not backfill_may_reach(noon - 3_600_000_000, now_us=noon)
    assert backfill_may_reach(20_000 * DAY_US - 1, now_us=noon)
    # Ten minutes before midnight, today is treated as over already (clock skew margin).
    late = 20_001 * DAY_US - 5 * 60_000_000
    assert backfill_may_reach(late - 60_000_000, now_us=late)
