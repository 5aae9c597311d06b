"""The REST client against the simulator (and, for answers it cannot give, a scripted server)."""

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from trades_platform.kraken.protocol import RestTradeRow
from trades_platform.kraken.rest import (
    KrakenRestClient,
    KrakenRestError,
    Pacer,
    PaginationError,
    RestSettings,
    UnknownPairError,
    WindowNotClosedError,
)
from trades_platform.local_broker import free_port
from trades_platform.simulator.market import SimulatedMarket
from trades_platform.testing import ScriptedHttpServer, SimulatorProcess

PAIRS = ("BTC/USD", "ETH/USD")
# At this rate trade 14741879 of BTC/USD is at exactly 2024-01-23T00:00:00.000000Z.
RATE = 0.115053
MIDNIGHT_DAY = datetime(2024, 1, 23, tzinfo=UTC)
MIDNIGHT_ID = 14741879
HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US


def _us(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorProcess]:
    with SimulatorProcess("--pairs", ",".join(PAIRS), "--trades-per-second", str(RATE)) as sim:
        yield sim


@pytest.fixture(scope="module")
def market() -> SimulatedMarket:
    return SimulatedMarket(PAIRS, RATE)


def _client(url: str, **overrides: Any) -> KrakenRestClient:
    settings: dict[str, Any] = {
        "url": url,
        "requests_per_second": 200.0,
        "backoff_initial_seconds": 0.05,
        "backoff_max_seconds": 0.2,
        "timeout_seconds": 5.0,
    }
    return KrakenRestClient(RestSettings(**(settings | overrides)))


def _rows(client: KrakenRestClient, pair: str, start_us: int, end_us: int) -> list[RestTradeRow]:
    return [row for page in client.window_pages(pair, start_us, end_us) for row in page.rows]


def _expected(market: SimulatedMarket, pair: str, start_us: int, end_us: int) -> list[tuple]:
    return [
        (t.trade_id, t.time_us, t.price, t.qty, t.side, t.ord_type)
        for t in market.trades_between(pair, start_us, end_us)
    ]


def _as_tuples(rows: list[RestTradeRow]) -> list[tuple]:
    return [(r.trade_id, r.time_us, r.price, r.volume, r.side, r.ord_type) for r in rows]


def test_window_across_many_pages_is_exactly_the_markets_trades(
    simulator: SimulatorProcess, market: SimulatedMarket
) -> None:
    start = _us(datetime(2024, 3, 1, 5, tzinfo=UTC))
    end = start + 6 * HOUR_US
    with _client(simulator.rest_url, page_size=200) as client:
        rows = _rows(client, "ETH/USD", start, end)
        stats = client.stats

    expected = _expected(market, "ETH/USD", start, end)
    assert len(expected) > 2400
    assert _as_tuples(rows) == expected
    assert stats.pages_fetched == len(expected) // 200 + 1
    # Each page starts at the previous page's last trade: the overlap is dropped, not written.
    assert stats.duplicates_skipped == stats.pages_fetched - 1
    assert stats.rows_rejected == 0 and stats.rate_limit_waits == 0 and stats.retries == 0


def test_trade_exactly_at_midnight_belongs_to_the_new_day_only(
    simulator: SimulatorProcess, market: SimulatedMarket
) -> None:
    midnight = _us(MIDNIGHT_DAY)
    assert market.time_us("BTC/USD", MIDNIGHT_ID) == midnight  # the rate was chosen for this

    with _client(simulator.rest_url) as client:
        day_before = _rows(client, "BTC/USD", midnight - DAY_US, midnight)
        day = _rows(client, "BTC/USD", midnight, midnight + DAY_US)

    assert day[0].trade_id == MIDNIGHT_ID and day[0].time_us == midnight
    assert day_before[-1].trade_id == MIDNIGHT_ID - 1 and day_before[-1].time_us < midnight
    assert day[-1].trade_id == market.first_id_at_or_after("BTC/USD", midnight + DAY_US) - 1
    assert _as_tuples(day) == _expected(market, "BTC/USD", midnight, midnight + DAY_US)
    assert [r.trade_id for r in day_before + day] == list(
        range(day_before[0].trade_id, day[-1].trade_id + 1)
    )


def test_pagination_stops_at_the_first_page_past_the_window(simulator: SimulatorProcess) -> None:
    start = _us(datetime(2024, 3, 2, tzinfo=UTC))
    with _client(simulator.rest_url, page_size=100) as client:
        rows = _rows(client, "BTC/USD", start, start + HOUR_US)  # about 414 trades
        assert client.stats.pages_fetched == 5  # 4 inside the hour, 1 that crosses its end
    assert len(rows) == 414


def test_rate_limit_answers_slow_the_client_down_but_lose_nothing(
    simulator: SimulatorProcess, market: SimulatedMarket
) -> None:
    start = _us(datetime(2024, 3, 3, tzinfo=UTC))
    end = start + 3 * HOUR_US
    errors_before = simulator.stats()["rate_limit_errors"]
    with _client(simulator.rest_url, page_size=250) as client:
        client.rest_pair("BTC/USD")
        # The simulator cycles HTTP 200 EAPI:Rate limit exceeded, 200 EGeneral:Too many
        # requests and HTTP 429: each must be recognised as a rate limit.
        simulator.set_faults(rest_rate_limit_next=6)
        rows = _rows(client, "BTC/USD", start, end)
        stats = client.stats

    assert _as_tuples(rows) == _expected(market, "BTC/USD", start, end)
    assert stats.rate_limit_waits == 6
    assert stats.retries == 0
    assert stats.seconds_waited >= 6 * 0.025  # at least half of each back-off
    assert simulator.stats()["rate_limit_errors"] - errors_before == 6


def test_rate_limit_retries_are_bounded(simulator: SimulatorProcess) -> None:
    with _client(simulator.rest_url, max_rate_limit_retries=2) as client:
        simulator.set_faults(rest_rate_limit_next=5)
        try:
            with pytest.raises(KrakenRestError, match="giving up after 3 attempts: rate limited"):
                client.rest_pair("BTC/USD")
        finally:
            simulator.set_faults(rest_rate_limit_next=0)
        assert client.stats.rate_limit_waits == 3


def test_unknown_pair_fails_before_any_trade_is_fetched(simulator: SimulatorProcess) -> None:
    start = _us(datetime(2024, 3, 4, tzinfo=UTC))
    with _client(simulator.rest_url) as client:
        with pytest.raises(UnknownPairError, match=r"'SOL/USD'.*BTC/USD, ETH/USD"):
            _rows(client, "SOL/USD", start, start + HOUR_US)
        assert client.stats.pages_fetched == 0


def test_a_window_that_is_not_over_yet_is_refused(simulator: SimulatorProcess) -> None:
    now_us = time.time_ns() // 1000
    with _client(simulator.rest_url) as client:
        with pytest.raises(WindowNotClosedError, match="not complete yet"):
            _rows(client, "BTC/USD", now_us - HOUR_US, now_us + HOUR_US)
        assert client.stats.pages_fetched == 0


def test_since_must_be_an_integer(simulator: SimulatorProcess) -> None:
    with _client(simulator.rest_url) as client:
        pair = client.rest_pair("BTC/USD")
        with pytest.raises(TypeError, match="since_ns"):
            client.trades_page(pair, 1.7e18)  # type: ignore[arg-type]


def test_network_errors_are_retried_then_reported() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with _client(url, max_retries=2) as client:
        with pytest.raises(KrakenRestError, match="giving up after 3 attempts: ConnectionError"):
            client.pair_directory()
        assert client.stats.retries == 3
        assert client.stats.requests == 3


class TestPacer:
    """The pacer on a fake clock: spacing, not the server, decides the request rate."""

    def test_spaces_each_call_an_interval_after_the_previous_one_ended(self) -> None:
        now = [100.0]

        def sleep(seconds: float) -> None:
            now[0] += seconds

        pacer = Pacer(2.0, clock=lambda: now[0], sleep=sleep)
        starts = []
        for _ in range(4):
            pacer.wait()
            starts.append(now[0])
            now[0] += 0.1  # the call takes 100 ms
            pacer.done()
        assert starts == pytest.approx([100.0, 100.6, 101.2, 101.8])
        now[0] += 3.0  # idle time is not saved up into a burst
        pacer.wait()
        pacer.done()
        assert pacer.wait() == pytest.approx(0.5)

    def test_a_call_in_flight_holds_the_next_one_back(self) -> None:
        now = [0.0]
        pacer = Pacer(1.0, clock=lambda: now[0], sleep=lambda s: None)
        pacer.wait()
        assert pacer.wait() == pytest.approx(1.0)  # no done() yet: a full interval

    def test_push_back_delays_the_next_call(self) -> None:
        now = [0.0]

        def sleep(seconds: float) -> None:
            now[0] += seconds

        pacer = Pacer(10.0, clock=lambda: now[0], sleep=sleep)
        pacer.wait()
        pacer.done()
        pacer.push_back(2.0)
        assert pacer.wait() == pytest.approx(2.0)


@pytest.fixture(scope="module")
def limited_simulator() -> Iterator[SimulatorProcess]:
    flags = ("--pairs", "BTC/USD", "--trades-per-second", "0.05")
    with SimulatorProcess(*flags, "--rest-rate-limit", "5", "--rest-rate-burst", "1") as sim:
        yield sim


def test_paced_client_stays_under_the_servers_rate_limit(
    limited_simulator: SimulatorProcess,
) -> None:
    start = _us(datetime(2024, 3, 5, tzinfo=UTC))
    errors_before = limited_simulator.stats()["rate_limit_errors"]
    began = time.monotonic()
    # Paced at exactly the server's strict limit (burst 1): not one call may arrive early.
    with _client(limited_simulator.rest_url, requests_per_second=5, page_size=30) as client:
        rows = _rows(client, "BTC/USD", start, start + 2 * HOUR_US)  # 360 trades, 13 pages
        stats = client.stats
    elapsed = time.monotonic() - began

    assert len(rows) == 360
    assert stats.rate_limit_waits == 0
    assert limited_simulator.stats()["rate_limit_errors"] == errors_before
    assert elapsed >= (stats.requests - 1) / 5


def test_unpaced_client_is_held_back_by_rate_limits_and_loses_nothing(
    limited_simulator: SimulatorProcess,
) -> None:
    start = _us(datetime(2024, 3, 6, tzinfo=UTC))
    with _client(limited_simulator.rest_url, page_size=30) as client:
        rows = _rows(client, "BTC/USD", start, start + 2 * HOUR_US)
        stats = client.stats

    assert len(rows) == 360
    assert [r.trade_id for r in rows] == list(range(rows[0].trade_id, rows[0].trade_id + 360))
    assert stats.rate_limit_waits > 0


# --- answers the simulator cannot give: a scripted Kraken on a real HTTP port ----------------


ASSET_PAIRS = (
    200,
    {"error": [], "result": {"XXBTZUSD": {"altname": "XBTUSD", "wsname": "XBT/USD"}}},
)
START_US = _us(datetime(2024, 1, 2, tzinfo=UTC))
TIME = (200, {"error": [], "result": {"unixtime": START_US // 1_000_000 + 10 * 86400}})


def _row(trade_id: int, offset_us: int) -> list[Any]:
    return ["42000.1", "0.5", (START_US + offset_us) / 1e6, "b", "l", "", trade_id]


def _trades(rows: list[Any], last: Any) -> tuple[int, Any]:
    result: dict[str, Any] = {"XXBTZUSD": rows}
    if last is not ...:
        result["last"] = last
    return 200, {"error": [], "result": result}


@pytest.fixture
def scripted() -> Iterator[list[ScriptedHttpServer]]:
    servers: list[ScriptedHttpServer] = []
    yield servers
    for server in servers:
        server.close()


def test_transient_errors_are_retried_and_since_is_an_integer_string(
    scripted: list[ScriptedHttpServer],
) -> None:
    kraken = ScriptedHttpServer(
        [
            (200, {"error": ["EService:Unavailable"]}),
            ASSET_PAIRS,
            (502, b"<html>Bad gateway</html>"),
            TIME,
            (200, {"error": ["EService:Busy"]}),
            _trades([_row(10, 0), _row(11, 5_000_000)], f"{(START_US + 5_000_000) * 1000}"),
            _trades([_row(11, 5_000_000)], f"{(START_US + 5_000_000) * 1000}"),
        ]
    )
    scripted.append(kraken)
    with _client(kraken.url) as client:
        rows = _rows(client, "BTC/USD", START_US, START_US + DAY_US)
        assert client.stats.retries == 3

    assert [row.trade_id for row in rows] == [10, 11]
    trade_queries = [query for path, query in kraken.queries if path.endswith("/Trades")]
    assert trade_queries[0]["pair"] == ["XBTUSD"]
    # Integers as decimal strings, each 1 ns before the trade time it must include.
    assert trade_queries[0]["since"] == [str(START_US * 1000 - 1)]
    assert trade_queries[-1]["since"] == [str((START_US + 5_000_000) * 1000 - 1)]


def test_bad_rows_are_counted_with_their_reason_and_good_ones_kept(
    scripted: list[ScriptedHttpServer],
) -> None:
    bad_id = ["42000.1", "0.5", (START_US + 1) / 1e6, "b", "l", "", 0]
    bad_price = ["-1", "0.5", (START_US + 2) / 1e6, "b", "l", "", 12]
    kraken = ScriptedHttpServer(
        [
            ASSET_PAIRS,
            TIME,
            _trades([_row(10, 0), bad_id, bad_price, _row(11, 3)], str((START_US + 3) * 1000)),
            _trades([_row(11, 3)], str((START_US + 3) * 1000)),
        ]
    )
    scripted.append(kraken)
    with _client(kraken.url) as client:
        rows = _rows(client, "BTC/USD", START_US, START_US + DAY_US)
        stats = client.stats

    assert [row.trade_id for row in rows] == [10, 11]
    assert stats.rows_rejected == 2
    assert set(stats.rejected_reasons) == {
        "trade id 0 is not a positive integer",
        "price '-1' and volume '0.5' must be finite and positive",
    }


def test_missing_last_falls_back_to_the_newest_row(scripted: list[ScriptedHttpServer]) -> None:
    kraken = ScriptedHttpServer(
        [
            ASSET_PAIRS,
            TIME,
            _trades([_row(10, 0), _row(11, 7)], ...),
            _trades([_row(11, 7), _row(12, 9)], "garbage"),
            _trades([_row(12, 9), _row(13, DAY_US)], str((START_US + DAY_US) * 1000)),
        ]
    )
    scripted.append(kraken)
    with _client(kraken.url) as client:
        rows = _rows(client, "BTC/USD", START_US, START_US + DAY_US)
        assert client.stats.invalid_last == 2

    assert [row.trade_id for row in rows] == [10, 11, 12]  # 13 is the next day's
    sinces = [query["since"][0] for path, query in kraken.queries if path.endswith("/Trades")]
    assert sinces == [str((START_US + us) * 1000 - 1) for us in (0, 7, 9)]


def test_a_full_page_that_cannot_advance_fails_instead_of_looping(
    scripted: list[ScriptedHttpServer],
) -> None:
    same_time = [_row(trade_id, 0) for trade_id in range(10, 13)]
    kraken = ScriptedHttpServer([ASSET_PAIRS, TIME, _trades(same_time, str(START_US * 1000))])
    scripted.append(kraken)
    with (
        _client(kraken.url, page_size=3) as client,
        pytest.raises(PaginationError, match="paging on would skip trades"),
    ):
        _rows(client, "BTC/USD", START_US, START_US + DAY_US)


def test_a_result_keyed_by_another_name_is_read(scripted: list[ScriptedHttpServer]) -> None:
    # Asked as XBTUSD, answered under XXBTZUSD: the single key besides `last` is the rows.
    kraken = ScriptedHttpServer([ASSET_PAIRS, TIME, _trades([_row(10, 0)], str(START_US * 1000))])
    scripted.append(kraken)
    with _client(kraken.url) as client:
        rows = _rows(client, "BTC/USD", START_US, START_US + DAY_US)
    assert [row.trade_id for row in rows] == [10]


def test_trades_sharing_the_last_time_of_a_page_are_not_skipped(
    scripted: list[ScriptedHttpServer],
) -> None:
    at_5s = 5_000_000
    kraken = ScriptedHttpServer(
        [
            ASSET_PAIRS,
            TIME,
            _trades([_row(10, 0), _row(11, at_5s)], str((START_US + at_5s) * 1000)),
            # Asked 1 ns before 5 s: trade 12 shares trade 11's time and still comes.
            _trades([_row(11, at_5s), _row(12, at_5s), _row(13, DAY_US)], "0"),
        ]
    )
    scripted.append(kraken)
    with _client(kraken.url) as client:
        rows = _rows(client, "BTC/USD", START_US, START_US + DAY_US)
    assert [row.trade_id for row in rows] == [10, 11, 12]
