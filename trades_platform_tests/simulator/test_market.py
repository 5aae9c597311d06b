"""The simulated market: determinism, exact id/time inversion, plausible values."""

from __future__ import annotations

import random
import re
from datetime import datetime

import pytest

from trades_platform.simulator.market import EPOCH_US, SimulatedMarket, trade_time_iso
from trades_platform.simulator.pairs import CATALOGUE, resolve_pairs, synthetic_pair

PAIRS = [p.name for p in CATALOGUE]
RATES = [0.05, 1.0, 3.0, 7.3, 200.0, 2_500_000.0]
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def _us(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp()) * 1_000_000


def test_epoch_is_2020() -> None:
    assert _us("2020-01-01T00:00:00+00:00") == EPOCH_US


def test_trades_are_a_pure_function_of_config_pair_and_id() -> None:
    one = SimulatedMarket(PAIRS, 7.3)
    two = SimulatedMarket(list(reversed(PAIRS)), 7.3)
    for pair in PAIRS:
        for trade_id in (1, 2, 1000, 123_456_789):
            assert one.trade(pair, trade_id) == two.trade(pair, trade_id)
    assert one.trade("BTC/USD", 5) != one.trade("ETH/USD", 5)


def test_pairs_are_offset_by_less_than_one_interval() -> None:
    market = SimulatedMarket(PAIRS, 2.0)  # 500 ms apart
    offsets = {market.time_us(pair, 1) - EPOCH_US for pair in PAIRS}
    assert len(offsets) > 1, "pairs must not tick in lock-step"
    assert all(0 <= offset < 500_000 for offset in offsets)


@pytest.mark.parametrize("rate", RATES)
def test_times_follow_the_rate_and_never_decrease(rate: float) -> None:
    market = SimulatedMarket(["BTC/USD"], rate)
    start = market.time_us("BTC/USD", 1)
    for trade_id in (1, 2, 3, 10, 1001, 10**9 + 7):
        expected = start + (trade_id - 1) * 1_000_000 / rate
        assert abs(market.time_us("BTC/USD", trade_id) - expected) <= 1
    times = [market.time_us("BTC/USD", i) for i in range(1, 2000)]
    assert times == sorted(times)


@pytest.mark.parametrize("rate", RATES)
def test_first_id_at_or_after_is_exact_at_every_boundary(rate: float) -> None:
    market = SimulatedMarket(PAIRS, rate)
    rng = random.Random(rate)
    ids = [1, 2, 3, 4, 99, 100, 101, *(rng.randrange(1, 10**10) for _ in range(300))]
    for pair in ("BTC/USD", "DOGE/USD"):
        for trade_id in ids:
            at = market.time_us(pair, trade_id)
            for probe in (at - 1, at, at + 1):
                found = market.first_id_at_or_after(pair, probe)
                assert market.time_us(pair, found) >= probe
                assert found == 1 or market.time_us(pair, found - 1) < probe
            assert market.last_id_at_or_before(pair, at) >= trade_id
            assert market.time_us(pair, market.last_id_at_or_before(pair, at)) == at


def test_first_id_before_the_epoch_is_one() -> None:
    market = SimulatedMarket(["BTC/USD"], 5.0)
    assert market.first_id_at_or_after("BTC/USD", 0) == 1
    assert market.first_id_at_or_after("BTC/USD", EPOCH_US - 10**12) == 1
    assert market.last_id_at_or_before("BTC/USD", EPOCH_US - 1) == 0


@pytest.mark.parametrize("rate", [0.05, 1.0, 7.3])
def test_trades_between_covers_a_utc_day_exactly(rate: float) -> None:
    market = SimulatedMarket(["ETH/USD", "SOL/USD"], rate)
    day = _us("2024-03-10T00:00:00+00:00")
    next_day = day + 86_400_000_000
    for pair in ("ETH/USD", "SOL/USD"):
        first = market.first_id_at_or_after(pair, day)
        stop = market.first_id_at_or_after(pair, next_day)
        if rate > 1:  # keep the test fast: check both ends and the count on fast pairs
            head = list(market.trades_between(pair, day, day + 10_000_000))
            tail = list(market.trades_between(pair, next_day - 10_000_000, next_day))
            assert head[0].trade_id == first and tail[-1].trade_id == stop - 1
            assert all(day <= t.time_us < next_day for t in head + tail)
            assert stop - first == pytest.approx(86_400 * rate, abs=1)
            continue
        trades = list(market.trades_between(pair, day, next_day))
        assert [t.trade_id for t in trades] == list(range(first, stop))
        assert all(day <= t.time_us < next_day for t in trades)
        assert len(trades) == pytest.approx(86_400 * rate, abs=1)


def test_values_are_plausible() -> None:
    pairs = resolve_pairs([*PAIRS, "SYM001/USD", "ABC123/USD"])
    market = SimulatedMarket([p.name for p in pairs], 10.0)
    for info in pairs:
        trades = [market.trade(info.name, i) for i in range(1, 3001)]
        for trade in trades:
            assert trade.price > 0 and trade.qty > 0
            assert round(trade.price, info.price_decimals) == trade.price
            assert round(trade.qty, 8) == trade.qty
            assert trade.side in ("buy", "sell")
            assert trade.ord_type in ("market", "limit")
        prices = [t.price for t in trades]
        assert 0.5 * info.base_price < min(prices) <= max(prices) < 2 * info.base_price
        assert {t.side for t in trades} == {"buy", "sell"}
        assert {t.ord_type for t in trades} == {"market", "limit"}


def test_trade_time_iso() -> None:
    assert trade_time_iso(1695628177708706) == "2023-09-25T07:49:37.708706Z"
    assert trade_time_iso(EPOCH_US) == "2020-01-01T00:00:00.000000Z"
    market = SimulatedMarket(["BTC/USD"], 3.0)
    assert ISO.match(trade_time_iso(market.trade("BTC/USD", 77).time_us))


def test_synthetic_pairs() -> None:
    info = synthetic_pair("SYM042/USD")
    assert (info.key, info.altname, info.wsname) == ("SYM042USD", "SYM042USD", "SYM042/USD")
    assert info == synthetic_pair("SYM042/USD")
    with pytest.raises(ValueError):
        synthetic_pair("btc/usd")
    with pytest.raises(ValueError):
        resolve_pairs(["BTC/EUR"])


# -- matches: trades_per_match consecutive ids share one timestamp -------------------------

MATCH_SIZES = [1, 2, 3, 7]


def _probe_ids(rng: random.Random) -> list[int]:
    """Ids near the start, near match edges and far out."""
    return [*range(1, 30), *(rng.randrange(1, 10**10) for _ in range(150))]


@pytest.mark.parametrize("per_match", MATCH_SIZES)
@pytest.mark.parametrize("rate", RATES)
def test_matches_share_the_time_their_first_id_had_without_matches(
    rate: float, per_match: int
) -> None:
    plain = SimulatedMarket(PAIRS, rate)
    grouped = SimulatedMarket(PAIRS, rate, trades_per_match=per_match)
    rng = random.Random(f"{rate}/{per_match}")
    for pair in ("BTC/USD", "DOGE/USD"):
        for trade_id in _probe_ids(rng):
            match_first = trade_id - (trade_id - 1) % per_match
            assert grouped.time_us(pair, trade_id) == plain.time_us(pair, match_first)
            trade = grouped.trade(pair, trade_id)
            assert trade.trade_id == trade_id and trade.time_us == plain.time_us(pair, match_first)
        times = [grouped.time_us(pair, i) for i in range(1, 20 * per_match + 1)]
        assert times == sorted(times)
        runs = [times[k : k + per_match] for k in range(0, len(times), per_match)]
        assert all(len(set(run)) == 1 for run in runs), "one timestamp per match"
        if rate <= 1_000_000 / 2:  # slower than 1 µs per trade: matches never share a time
            assert len({run[0] for run in runs}) == len(runs)


@pytest.mark.parametrize("per_match", MATCH_SIZES)
@pytest.mark.parametrize("rate", RATES)
def test_time_to_id_is_exact_at_every_boundary_with_matches(rate: float, per_match: int) -> None:
    market = SimulatedMarket(PAIRS, rate, trades_per_match=per_match)
    rng = random.Random(f"boundary {rate}/{per_match}")
    for pair in ("BTC/USD", "DOGE/USD"):
        for trade_id in _probe_ids(rng):
            at = market.time_us(pair, trade_id)
            for probe in (at - 1, at, at + 1):
                found = market.first_id_at_or_after(pair, probe)
                assert market.time_us(pair, found) >= probe
                assert found == 1 or market.time_us(pair, found - 1) < probe
                last = market.last_id_at_or_before(pair, probe)
                assert last == 0 or market.time_us(pair, last) <= probe
                assert market.time_us(pair, last + 1) > probe
            # The whole match is at or before its time, none of the next one.
            last = market.last_id_at_or_before(pair, at)
            assert last % per_match == 0 and last >= trade_id
            assert market.first_id_at_or_after(pair, at) % per_match == 1 % per_match
        # Arbitrary times, not only trade times.
        start = market.time_us(pair, 1)
        span = market.time_us(pair, 10**9) - start
        for probe in (start + rng.randrange(-(10**6), span) for _ in range(200)):
            found = market.first_id_at_or_after(pair, probe)
            assert market.time_us(pair, found) >= probe
            assert found == 1 or market.time_us(pair, found - 1) < probe
            last = market.last_id_at_or_before(pair, probe)
            assert last == 0 or market.time_us(pair, last) <= probe
            assert market.time_us(pair, last + 1) > probe


@pytest.mark.parametrize("per_match", MATCH_SIZES)
def test_matches_keep_the_average_rate(per_match: int) -> None:
    for rate in RATES:
        market = SimulatedMarket(["BTC/USD"], rate, trades_per_match=per_match)
        start = market.time_us("BTC/USD", 1)
        for matches in (1, 10, 12_345, 10**8):
            trade_id = 1 + matches * per_match
            expected = start + (trade_id - 1) * 1_000_000 / rate
            assert abs(market.time_us("BTC/USD", trade_id) - expected) <= 1


@pytest.mark.parametrize("per_match", [2, 3, 7])
@pytest.mark.parametrize("rate", [0.05, 1.0, 7.3])
def test_trades_between_covers_a_utc_day_exactly_with_matches(rate: float, per_match: int) -> None:
    market = SimulatedMarket(["ETH/USD", "SOL/USD"], rate, trades_per_match=per_match)
    day = _us("2024-03-10T00:00:00+00:00")
    next_day = day + 86_400_000_000
    for pair in ("ETH/USD", "SOL/USD"):
        first = market.first_id_at_or_after(pair, day)
        stop = market.first_id_at_or_after(pair, next_day)
        assert (first - 1) % per_match == 0 and (stop - 1) % per_match == 0, "matches start days"
        assert market.time_us(pair, first - 1) < day <= market.time_us(pair, first)
        assert market.time_us(pair, stop - 1) < next_day <= market.time_us(pair, stop)
        assert stop - first == pytest.approx(86_400 * rate, abs=per_match)
        # Keep the test fast: list an hour at each end of the day (the whole day if slow).
        hour = 3_600_000_000 if rate > 0.1 else 86_400_000_000
        head = list(market.trades_between(pair, day, day + hour))
        tail = list(market.trades_between(pair, next_day - hour, next_day))
        assert head[0].trade_id == first and tail[-1].trade_id == stop - 1
        for window in (head, tail):
            ids = [t.trade_id for t in window]
            assert ids == list(range(ids[0], ids[0] + len(ids)))
        assert all(day <= t.time_us < next_day for t in head + tail)
        # The next day starts right after: no trade twice, none lost.
        (after, *_) = market.trades_between(pair, next_day, next_day + hour)
        assert after.trade_id == stop


def test_one_trade_per_match_is_the_plain_market() -> None:
    plain = SimulatedMarket(PAIRS, 7.3)
    explicit = SimulatedMarket(PAIRS, 7.3, trades_per_match=1)
    rng = random.Random(11)
    for pair in PAIRS:
        for trade_id in _probe_ids(rng):
            assert explicit.trade(pair, trade_id) == plain.trade(pair, trade_id)
            at = plain.time_us(pair, trade_id) + rng.randrange(-(10**6), 10**6)
            assert explicit.first_id_at_or_after(pair, at) == plain.first_id_at_or_after(pair, at)


@pytest.mark.parametrize("bad", [0, -3, 1.5, "2", True, None])
def test_trades_per_match_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(ValueError, match="trades_per_match"):
        SimulatedMarket(["BTC/USD"], 5.0, trades_per_match=bad)  # type: ignore[arg-type]
