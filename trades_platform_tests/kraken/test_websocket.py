"""The WebSocket stream against the simulator over real sockets: order, reconnects, watchdog."""

from collections.abc import Iterator

import pytest

from trades_platform.kraken.websocket import (
    KrakenTradeStream,
    RejectedFrame,
    StreamSettings,
    UnsupportedPairError,
)
from trades_platform.simulator.market import SimulatedMarket
from trades_platform.testing import SimulatorProcess
from trades_platform.trade import Trade

PAIRS = ["BTC/USD", "ETH/USD"]
RATE = 40.0


@pytest.fixture
def simulator() -> Iterator[SimulatorProcess]:
    with SimulatorProcess("--pairs", ",".join(PAIRS), "--trades-per-second", str(RATE)) as running:
        yield running


def _collect(stream: KrakenTradeStream, count: int, max_polls: int = 400) -> list[Trade]:
    trades: list[Trade] = []
    for polls, batch in enumerate(stream.batches()):
        trades.extend(batch)
        if len(trades) >= count or polls > max_polls:
            break
    stream.close()
    return trades


def _assert_contiguous_and_true_to_the_market(trades: list[Trade], rate: float = RATE) -> None:
    market = SimulatedMarket(PAIRS, rate)
    for pair in PAIRS:
        ids = [trade.trade_id for trade in trades if trade.pair == pair]
        assert ids, f"no trades for {pair}"
        assert ids == list(range(ids[0], ids[0] + len(ids))), f"{pair} ids not contiguous"
    for trade in trades:
        expected = market.trade(trade.pair, trade.trade_id)
        assert (trade.price, trade.volume, trade.side, trade.ord_type) == (
            expected.price,
            expected.qty,
            expected.side,
            expected.ord_type,
        )
        assert trade.timestamp_ms == expected.time_us // 1000


def test_streams_contiguous_trades_for_every_pair(simulator: SimulatorProcess) -> None:
    stream = KrakenTradeStream(StreamSettings(url=simulator.ws_url, pairs=PAIRS))
    trades = _collect(stream, 200)
    assert len(trades) >= 200
    _assert_contiguous_and_true_to_the_market(trades)
    assert stream.stats.reconnects == 0
    assert stream.stats.connections == 1


def test_reconnects_after_a_dropped_socket_without_losing_or_repeating(
    simulator: SimulatorProcess,
) -> None:
    simulator.set_faults(drop_after_trades=120)
    settings = StreamSettings(url=simulator.ws_url, pairs=PAIRS, backoff_initial_seconds=0.1)
    stream = KrakenTradeStream(settings)
    trades = _collect(stream, 400)
    assert stream.stats.reconnects >= 2
    # The snapshot after each reconnect repeats trades already seen; none is yielded twice.
    assert stream.stats.repeated_skipped > 0
    assert stream.stats.gaps == 0
    _assert_contiguous_and_true_to_the_market(trades)


def test_watchdog_reconnects_when_the_link_goes_silent() -> None:
    # Slow enough that the snapshot after the reconnect covers the trades of the silent spell.
    rate = 8.0
    flags = ("--pairs", ",".join(PAIRS), "--trades-per-second", str(rate))
    # Each connection stalls once, after its two snapshots and some updates.
    with SimulatorProcess(*flags, "--stall-after-trades", "130", "--stall-seconds", "6") as sim:
        settings = StreamSettings(
            url=sim.ws_url, pairs=PAIRS, watchdog_seconds=1.5, backoff_initial_seconds=0.1
        )
        stream = KrakenTradeStream(settings)
        trades = _collect(stream, 200)
        assert stream.stats.reconnects >= 1
        assert sim.stats()["stalls"] >= 1
    assert stream.stats.gaps == 0
    _assert_contiguous_and_true_to_the_market(trades, rate)


def test_a_gap_longer_than_the_snapshot_is_reported(simulator: SimulatorProcess) -> None:
    simulator.set_faults(stall_after_trades=160, stall_seconds=4)
    gaps = []
    settings = StreamSettings(
        url=simulator.ws_url, pairs=PAIRS, watchdog_seconds=2.5, backoff_initial_seconds=0.1
    )
    stream = KrakenTradeStream(settings, on_gap=gaps.append)
    trades = _collect(stream, 400)
    assert gaps, "40 trades/s for 2.5 s per pair is more than the 50-trade snapshot covers"
    for gap in gaps:
        seen = {trade.trade_id for trade in trades if trade.pair == gap.pair}
        missing = range(gap.first_missing_id, gap.last_missing_id + 1)
        assert not seen.intersection(missing)
        assert gap.first_missing_id - 1 in seen and gap.last_missing_id + 1 in seen
    assert stream.stats.missing_trades == sum(
        gap.last_missing_id - gap.first_missing_id + 1 for gap in gaps
    )


def test_malformed_frames_are_counted_and_good_trades_kept(simulator: SimulatorProcess) -> None:
    simulator.set_faults(malformed_every_frames=2)
    rejected: list[RejectedFrame] = []
    stream = KrakenTradeStream(
        StreamSettings(url=simulator.ws_url, pairs=PAIRS), on_rejected=rejected.append
    )
    trades = _collect(stream, 200)
    assert len(trades) >= 200
    assert stream.stats.rejected == len(rejected) > 0
    reasons = " | ".join(item.reason for item in rejected)
    assert "invalid JSON" in reasons or "invalid trade" in reasons
    _assert_contiguous_and_true_to_the_market(trades)


def test_an_unsupported_pair_is_a_clear_error(simulator: SimulatorProcess) -> None:
    stream = KrakenTradeStream(StreamSettings(url=simulator.ws_url, pairs=["BTC/USD", "NOPE/USD"]))
    with pytest.raises(UnsupportedPairError, match="NOPE/USD"):
        _collect(stream, 100_000, max_polls=50)


def test_unreachable_kraken_keeps_retrying_with_back_off() -> None:
    slept: list[float] = []
    settings = StreamSettings(
        url="ws://127.0.0.1:9/v2", pairs=PAIRS, backoff_initial_seconds=0.5, backoff_max_seconds=4
    )
    stream = KrakenTradeStream(settings, sleep=slept.append)
    for polls, _batch in enumerate(stream.batches()):
        if stream.stats.reconnects >= 6 or polls > 200:
            break
    stream.close()
    assert stream.stats.reconnects >= 6
    assert stream.stats.connections == 0
    # Each wait is between the initial back-off and the cap, slept in steps of at most 1 s.
    waits = stream.stats.reconnects
    assert 0.5 * (waits - 1) <= sum(slept) <= 4 * waits
    assert max(slept) <= 1.0
