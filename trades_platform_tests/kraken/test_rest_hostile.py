"""The REST client against a hostile Kraken: each simulator fault fails a call, boundedly.

A real simulator subprocess over real sockets: a redirect, a gzip bomb, a trickled body and
pages that never advance each fail the call (or the window) with an error that names the bound,
within seconds, and without reading more than the byte cap.
"""

import gzip
import json
import time
import tracemalloc
import urllib.request
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from trades_platform.kraken import rest
from trades_platform.kraken.rest import (
    MAX_ANSWER_BYTES,
    MAX_PAGES_WITHOUT_PROGRESS,
    KrakenRestClient,
    KrakenRestError,
    PaginationError,
    RestSettings,
)
from trades_platform.simulator.market import SimulatedMarket
from trades_platform.testing import ScriptedHttpServer, SimulatorProcess

# A regression here pages or waits for ever: fail in a minute, not at the suite's 300 s.
pytestmark = pytest.mark.timeout(60)

PAIR = "BTC/USD"
RATE = 1.0  # trades per second: 3600 an hour, so small pages are full
HOUR_US = 3_600_000_000
TIMEOUT_SECONDS = 2.0
HOSTILE_SWITCHES: dict[str, Any] = {
    "rest_redirect_to": None,
    "rest_gzip_bomb": False,
    "rest_trickle_bytes_per_second": 0,
    "rest_stuck_pages": False,
}


def _us(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorProcess]:
    """One simulator for the module, every hostile switch off between tests."""
    with SimulatorProcess("--pairs", PAIR, "--trades-per-second", str(RATE)) as sim:
        yield sim


@pytest.fixture(autouse=True)
def _switches_off(simulator: SimulatorProcess) -> Iterator[None]:
    yield
    simulator.set_faults(**HOSTILE_SWITCHES)


@pytest.fixture(scope="module")
def market() -> SimulatedMarket:
    """The simulator's market, computed here for the expected trades."""
    return SimulatedMarket([PAIR], RATE)


def _client(url: str, **overrides: Any) -> KrakenRestClient:
    # Short bounds, so that each hostile answer costs seconds: two attempts per call.
    settings: dict[str, Any] = {
        "url": url,
        "requests_per_second": 200.0,
        "timeout_seconds": TIMEOUT_SECONDS,
        "max_retries": 1,
        "backoff_initial_seconds": 0.05,
        "backoff_max_seconds": 0.2,
    }
    return KrakenRestClient(RestSettings(**(settings | overrides)))


def _counter(simulator: SimulatorProcess, name: str) -> int:
    value: int = simulator.stats()[name]
    return value


def test_a_redirect_is_refused_not_followed(simulator: SimulatorProcess) -> None:
    """A 302 fails the call at once, naming status and Location; nothing is fetched from it."""
    # A target that answers: a client following it would get a Time result instead of trades.
    target = f"{simulator.rest_url}/0/public/Time"
    requests_before = _counter(simulator, "rest_requests")
    redirects_before = _counter(simulator, "rest_redirect_answers")
    simulator.set_faults(rest_redirect_to=target)
    began = time.monotonic()
    with (
        _client(simulator.rest_url) as client,
        pytest.raises(KrakenRestError, match=rf"HTTP 302 redirect to '{target}' refused") as error,
    ):
        client.trades_since(PAIR, _us(datetime(2024, 3, 1, tzinfo=UTC)))
    assert time.monotonic() - began < 5
    assert "giving up" not in str(error.value)  # not retried: a redirect is not transient
    assert _counter(simulator, "rest_redirect_answers") - redirects_before == 1
    # AssetPairs and the one Trades call, and no request to the redirect's target.
    assert _counter(simulator, "rest_requests") - requests_before == 2


def test_the_gzip_bomb_is_a_real_one(simulator: SimulatorProcess) -> None:
    """The simulator's bomb: a small gzip body that inflates to about 50 MB of JSON."""
    simulator.set_faults(rest_gzip_bomb=True)
    url = f"{simulator.rest_url}/0/public/Trades?pair=XBTUSD&since=0"
    with urllib.request.urlopen(url, timeout=10) as answer:  # urllib does not inflate
        assert answer.headers["Content-Encoding"] == "gzip"
        compressed = answer.read()
    assert len(compressed) < 100_000
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    first = inflater.decompress(compressed, 100)
    inflated = len(first)
    data = inflater.unconsumed_tail
    while data:  # a MiB at a time: the test must not hold the 50 MB either
        inflated += len(inflater.decompress(data, 1 << 20))
        data = inflater.unconsumed_tail
    assert first.startswith(b'{"error":[],"result":{"XXBTZUSD":[')
    assert inflated > 50_000_000
    assert inflater.eof


def test_a_gzip_bomb_stops_at_the_byte_cap(simulator: SimulatorProcess) -> None:
    """Reading stops past MAX_ANSWER_BYTES decoded: the error names the cap, memory stays low."""
    with _client(simulator.rest_url) as client:
        client.rest_pair(PAIR)  # AssetPairs is not a bomb; look the pair up first
        bombs_before = _counter(simulator, "rest_gzip_bomb_answers")
        simulator.set_faults(rest_gzip_bomb=True)
        began = time.monotonic()
        tracemalloc.start()
        try:
            with pytest.raises(
                KrakenRestError,
                match=rf"giving up after 2 attempts: answer larger than {MAX_ANSWER_BYTES} bytes",
            ):
                client.trades_since(PAIR, _us(datetime(2024, 3, 1, tzinfo=UTC)))
            _, peak_bytes = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert time.monotonic() - began < 10
    assert _counter(simulator, "rest_gzip_bomb_answers") - bombs_before == 2
    # The cap and one chunk, give or take; the bomb would be 50 MB.
    assert peak_bytes < 2 * MAX_ANSWER_BYTES


def test_a_trickled_answer_fails_at_the_deadline(simulator: SimulatorProcess) -> None:
    """A body sent 100 bytes a second fails each attempt after timeout_seconds, not minutes."""
    with _client(simulator.rest_url) as client:
        client.rest_pair(PAIR)
        trickled_before = _counter(simulator, "rest_trickled_answers")
        # A 1000-trade page is about 60 kB: 10 minutes at this rate, and never a read timeout.
        simulator.set_faults(rest_trickle_bytes_per_second=100)
        began = time.monotonic()
        with pytest.raises(
            KrakenRestError,
            match=r"giving up after 2 attempts: no complete answer within 2s \(timeout_seconds",
        ):
            client.trades_since(PAIR, _us(datetime(2024, 3, 1, tzinfo=UTC)))
        elapsed = time.monotonic() - began
    assert 2 * TIMEOUT_SECONDS - 0.1 < elapsed < 2 * TIMEOUT_SECONDS + 3
    assert _counter(simulator, "rest_trickled_answers") - trickled_before == 2


def test_pages_that_never_advance_fail_the_window(
    simulator: SimulatorProcess, market: SimulatedMarket
) -> None:
    """Full pages of the same rows, `last` 1 ns on each time: PaginationError after 3 of them."""
    # Just after a trade: the next trade is a second later, so a `since` moving on by a few
    # nanoseconds keeps getting the same rows.
    start = (
        market.time_us(
            PAIR, market.first_id_at_or_after(PAIR, _us(datetime(2024, 3, 2, tzinfo=UTC)))
        )
        + 1
    )
    stuck_before = _counter(simulator, "rest_stuck_page_answers")
    simulator.set_faults(rest_stuck_pages=True)
    began = time.monotonic()
    with _client(simulator.rest_url, page_size=100) as client:
        with pytest.raises(
            PaginationError,
            match=rf"{MAX_PAGES_WITHOUT_PROGRESS} full pages in a row, .* brought no trade id "
            rf"not seen before \(MAX_PAGES_WITHOUT_PROGRESS={MAX_PAGES_WITHOUT_PROGRESS}\)",
        ):
            for _ in client.window_pages(PAIR, start, start + HOUR_US):
                pass
        # One page of new trades, then the pages without progress.
        assert client.stats.pages_fetched == 1 + MAX_PAGES_WITHOUT_PROGRESS
        assert client.stats.duplicates_skipped == 100 * MAX_PAGES_WITHOUT_PROGRESS
    assert time.monotonic() - began < 5
    assert _counter(simulator, "rest_stuck_page_answers") - stuck_before == 4


def test_a_window_fails_past_the_page_bound(
    simulator: SimulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window still paging after MAX_PAGES_PER_WINDOW pages fails, naming the bound."""
    # 20,000 pages take too long for a test: the same bound, lowered to 5.
    monkeypatch.setattr(rest, "MAX_PAGES_PER_WINDOW", 5)
    start = _us(datetime(2024, 3, 3, tzinfo=UTC))
    with _client(simulator.rest_url, page_size=100) as client:
        with pytest.raises(
            PaginationError, match=r"still not complete after 5 pages \(MAX_PAGES_PER_WINDOW\)"
        ):
            for _ in client.window_pages(PAIR, start, start + HOUR_US):  # 37 pages
                pass
        assert client.stats.pages_fetched == 5


def test_a_normal_window_still_pages_completely(
    simulator: SimulatorProcess, market: SimulatedMarket
) -> None:
    """With the bounds in place, an ordinary window is exactly the market's trades."""
    start = _us(datetime(2024, 3, 4, tzinfo=UTC))
    end = start + 2 * HOUR_US
    with _client(simulator.rest_url, page_size=250) as client:
        rows = [row for page in client.window_pages(PAIR, start, end) for row in page.rows]
        stats = client.stats
    expected = [t.trade_id for t in market.trades_between(PAIR, start, end)]
    assert len(expected) > 7000
    assert [row.trade_id for row in rows] == expected
    assert stats.pages_fetched == len(expected) // 250 + 1
    assert stats.retries == 0 and stats.rate_limit_waits == 0


# --- Retry-After, which the simulator does not send: a scripted server on a real port -------


def test_retry_after_is_honoured_only_up_to_the_longest_backoff() -> None:
    """A 429 asking for an hour waits backoff_max_seconds; the gzip answer after it is read."""
    asset_pairs = {"error": [], "result": {"XXBTZUSD": {"altname": "XBTUSD", "wsname": "XBT/USD"}}}
    server = ScriptedHttpServer(
        [
            (429, b'{"error":["EAPI:Rate limit exceeded"]}', {"Retry-After": "3600"}),
            # Kraken compresses its answers: a gzip body within the cap is read as before.
            (200, gzip.compress(json.dumps(asset_pairs).encode()), {"Content-Encoding": "gzip"}),
        ]
    )
    try:
        began = time.monotonic()
        with _client(server.url, backoff_max_seconds=0.3) as client:
            assert client.rest_pair(PAIR).altname == "XBTUSD"
            stats = client.stats
        elapsed = time.monotonic() - began
    finally:
        server.close()
    assert stats.rate_limit_waits == 1
    assert 0.25 < stats.seconds_waited < 1.0
    assert elapsed < 3


def test_endless_rate_limit_answers_end_at_the_calls_time_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every answer a 429: the call fails once its retries and waits reach MAX_CALL_SECONDS,
    long before its rate-limit retries run out, with an error naming the budget."""
    # 10 minutes take too long for a test: the same bound, lowered to 1.5 s.
    monkeypatch.setattr(rest, "MAX_CALL_SECONDS", 1.5)
    rate_limited = (429, b'{"error":["EAPI:Rate limit exceeded"]}', {"Retry-After": "3600"})
    server = ScriptedHttpServer([rate_limited] * 1000)
    try:
        began = time.monotonic()
        with (
            _client(server.url, backoff_max_seconds=0.2, max_rate_limit_retries=100) as client,
            pytest.raises(
                KrakenRestError,
                match=r"AssetPairs \{\}: giving up after \d+ attempts in 1\.\ds: a retry in "
                r"0\.\d+s would pass the call's time budget of 1\.5s \(MAX_CALL_SECONDS, retries "
                r"and waits included\); last: rate limited \(HTTP 429",
            ),
        ):
            client.rest_pair(PAIR)
        elapsed = time.monotonic() - began
        stats = client.stats
    finally:
        server.close()
    # Each wait is the longest back-off (Retry-After capped at 0.2 s): about 7 of them, not 100.
    assert 1.5 - 0.25 < elapsed < 1.5 + 1
    assert 5 <= stats.rate_limit_waits == len(server.queries) <= 10
    assert stats.requests == len(server.queries)


def test_the_last_attempt_gets_only_what_is_left_of_the_calls_time_budget(
    monkeypatch: pytest.MonkeyPatch, simulator: SimulatorProcess
) -> None:
    """A body trickled past the budget is cut at the budget, not after timeout_seconds more."""
    monkeypatch.setattr(rest, "MAX_CALL_SECONDS", 1.0)
    with _client(simulator.rest_url) as client:
        client.rest_pair(PAIR)
        simulator.set_faults(rest_trickle_bytes_per_second=100)
        began = time.monotonic()
        with pytest.raises(
            KrakenRestError,
            match=r"time budget of 1s .*; last: no complete answer within 0\.9\d*s \(what was "
            r"left of MAX_CALL_SECONDS\); cut off",
        ):
            client.trades_since(PAIR, _us(datetime(2024, 3, 1, tzinfo=UTC)))
        elapsed = time.monotonic() - began
    # timeout_seconds is 2 s: the budget ended the attempt first, and no retry followed it.
    assert 0.9 < elapsed < TIMEOUT_SECONDS
