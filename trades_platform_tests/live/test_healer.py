"""The gap healer against the simulator's real REST: by id, coalesced, beside the caller.

Trades sharing a timestamp with the trade before a hole (the fills of one match), trades in the
same millisecond, holes across page edges and many holes at once are all healed exactly, and a
hole REST cannot serve is given up after the bound.
"""

import logging
import time
from collections.abc import Iterator

import pytest

from trades_platform.kraken.rest import KrakenRestClient, RestSettings
from trades_platform.kraken.websocket import TradeGap
from trades_platform.live.healer import GapHealer, GaveUp, Healed, HealResult
from trades_platform.simulator.market import SimulatedMarket
from trades_platform.testing import SimulatorProcess

PAIR = "BTC/USD"
LOG = logging.getLogger("test-healer")
# History from a day in the past, so that every id asked for is long published.
START = "2024-01-01T00:00:00"


def _simulator(rate: float, per_match: int = 1) -> SimulatorProcess:
    return SimulatorProcess(
        *("--pairs", PAIR, "--trades-per-second", str(rate), "--start-time", START),
        *("--trades-per-match", str(per_match)),
    )


@pytest.fixture(scope="module")
def matches() -> Iterator[SimulatorProcess]:
    """Matches of three trades at one timestamp each, 30 trades per second."""
    with _simulator(30, per_match=3) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def busy() -> Iterator[SimulatorProcess]:
    """3000 trades per second: three trades in most milliseconds, each at its own µs."""
    with _simulator(3000) as simulator:
        yield simulator


def _healer(
    simulator: SimulatorProcess, *, page_size: int = 1000, give_up_seconds: float = 60.0
) -> GapHealer:
    settings = RestSettings(
        url=simulator.rest_url,
        requests_per_second=200.0,
        page_size=page_size,
        backoff_initial_seconds=0.05,
        backoff_max_seconds=0.1,
        max_retries=1,
    )
    return GapHealer(
        KrakenRestClient(settings, log=LOG), give_up_seconds=give_up_seconds, log=LOG
    ).start()


def _gap(market: SimulatedMarket, first: int, last: int) -> TradeGap:
    """The gap the stream reports: exact times of the trades on either side."""
    return TradeGap(
        PAIR, first, last, market.time_us(PAIR, first - 1), market.time_us(PAIR, last + 1)
    )


def _collect(healer: GapHealer, wanted: int, timeout_seconds: float = 20.0) -> list[HealResult]:
    results: list[HealResult] = []
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        results.extend(healer.results())
        healed = sum(len(r.trades) for r in results if isinstance(r, Healed))
        given_up = sum(
            last - first + 1 for r in results if isinstance(r, GaveUp) for first, last in r.ranges
        )
        if healed + given_up >= wanted and not healer.pending():
            return results
        time.sleep(0.05)
    pytest.fail(f"healer did not finish: {results}, pending {healer.pending()}")


def _healed_ids(results: list[HealResult]) -> list[int]:
    return [trade.trade_id for r in results if isinstance(r, Healed) for trade in r.trades]


def test_the_followers_of_a_match_are_healed_though_they_share_the_trade_before_s_time(
    matches: SimulatorProcess,
) -> None:
    market = SimulatedMarket([PAIR], 30, trades_per_match=3)
    # Ids 3k+1..3k+3 share one timestamp: the stream saw 3k+1 and missed its two followers.
    first = 3 * 1000 + 2
    assert market.time_us(PAIR, first - 1) == market.time_us(PAIR, first + 1)
    healer = _healer(matches)
    try:
        healer.add(_gap(market, first, first + 1))
        results = _collect(healer, 2)
    finally:
        healer.close()
    trades = [trade for r in results if isinstance(r, Healed) for trade in r.trades]
    assert [trade.trade_id for trade in trades] == [first, first + 1]
    for trade in trades:
        expected = market.trade(PAIR, trade.trade_id)
        assert (trade.time_us, trade.price, trade.volume) == (
            expected.time_us,
            expected.price,
            expected.qty,
        )
        assert trade.source == "heal" and trade.received_ms is not None


def test_trades_in_the_same_millisecond_are_healed(busy: SimulatorProcess) -> None:
    market = SimulatedMarket([PAIR], 3000)
    first = 50_000
    # The missing trade is in the same millisecond as the one before it, at a later µs.
    while market.time_us(PAIR, first) // 1000 != market.time_us(PAIR, first - 1) // 1000:
        first += 1
    assert market.time_us(PAIR, first) > market.time_us(PAIR, first - 1)
    healer = _healer(busy)
    try:
        healer.add(_gap(market, first, first))
        assert _healed_ids(_collect(healer, 1)) == [first]
    finally:
        healer.close()


def test_many_holes_across_page_edges_are_healed_with_few_calls(busy: SimulatorProcess) -> None:
    market = SimulatedMarket([PAIR], 3000)
    # Every 7th id of 700 missing (100 holes), pages of 50 trades: 14 pages cover them all.
    holes = [trade_id for trade_id in range(200_000, 200_700) if trade_id % 7 == 0]
    healer = _healer(busy, page_size=50)
    try:
        for trade_id in holes:
            healer.add(_gap(market, trade_id, trade_id))
        results = _collect(healer, len(holes))
        requests = healer.stats.requests
    finally:
        healer.close()
    assert sorted(_healed_ids(results)) == holes
    assert len(_healed_ids(results)) == len(holes)
    # One call per page the holes span (plus the margin before the first), not one per hole.
    assert requests <= 700 // 50 + 2, requests


def test_a_hole_rest_cannot_serve_is_given_up_after_the_bound(matches: SimulatorProcess) -> None:
    market = SimulatedMarket([PAIR], 30, trades_per_match=3)
    matches.set_faults(rest_unavailable=True)
    healer = _healer(matches, give_up_seconds=1.5)
    try:
        healer.add(_gap(market, 9_001, 9_004))
        started = time.monotonic()
        results = _collect(healer, 4)
        waited = time.monotonic() - started
    finally:
        healer.close()
        matches.set_faults(rest_unavailable=False)
    (gave_up,) = results
    assert isinstance(gave_up, GaveUp) and gave_up.ranges == [(9_001, 9_004)]
    assert "EService:Unavailable" in gave_up.reason
    assert 1.4 < waited < 15
    assert healer.stats.failures >= 1 and healer.stats.given_up == 4
