"""Kraken's public REST API: paced, retrying, paginated trade history for one pair and window.

`KrakenRestClient.window_pages(pair, start_us, end_us)` yields, page by page, exactly the trades of
`pair` whose time is in [start_us, end_us), in trade-id order, each once (the backfill);
`trades_since(pair, since_time_us)` one page from a time on (the live run's heals by id). Rows are
parsed by `kraken.protocol.parse_rest_row`, the one REST row parser.

What the network sends is bounded (a hostile or broken server, or a proxy, must not hang or
exhaust a run): redirects are refused, not followed; an answer's body is read up to
`MAX_ANSWER_BYTES` decoded bytes and cut off `timeout_seconds` after the attempt began; a
`Retry-After` is honoured up to `backoff_max_seconds`; one call, its retries and waits
included, fails once it has taken `MAX_CALL_SECONDS`; and a window fails after
`MAX_PAGES_WITHOUT_PROGRESS` full pages in a row with no new trade id, or after
`MAX_PAGES_PER_WINDOW` pages.
"""

from __future__ import annotations

import logging
import math
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, get_args

import orjson
import requests

from trades_platform.kraken.budget import BudgetScope, Purpose, SharedPacer, budget_file
from trades_platform.kraken.pairs import PairDirectory, RestPair, UnknownPairError
from trades_platform.kraken.protocol import RestTradeRow, parse_rest_row
from trades_platform.settings import KRAKEN_MAX_PAGE_SIZE, KrakenSettings, default_of
from trades_platform.trade import format_time_us

logger = logging.getLogger(__name__)

MAX_PAGE_SIZE = KRAKEN_MAX_PAGE_SIZE
_RATE_LIMIT_ERRORS = ("EAPI:Rate limit exceeded", "EGeneral:Too many requests")
_UNAVAILABLE_ERRORS = ("EService:Unavailable", "EService:Busy")
_UNKNOWN_PAIR_ERROR = "EQuery:Unknown asset pair"
# Kraken's fullest answer, a 1000-trade Trades page, is about 100 kB: 8 MiB is 80 times that, and
# stops a gzip bomb (a small compressed body that inflates to gigabytes) after 8 MiB of memory.
MAX_ANSWER_BYTES = 8 * 1024 * 1024
_READ_CHUNK_BYTES = 64 * 1024  # decoded bytes per read: the cap is overshot by at most this
# requests refuses a timeout of 0: an attempt with no time left still gets this much per read.
_MIN_SOCKET_TIMEOUT_SECONDS = 0.01
# 20,000 pages of 1000 (the default page size) are 20 million trades in one window, a day: 230
# trades a second all day long, far beyond any Kraken pair. A run still paging then is fed by a
# server that never ends the window, and fails instead of paging for ever.
MAX_PAGES_PER_WINDOW = 20_000
# Full pages in a row that bring no trade id not seen before: a server that moves `last` on by a
# nanosecond while repeating its rows would otherwise keep a window paging for ever.
MAX_PAGES_WITHOUT_PROGRESS = 3
# The longest one call may take, its attempts, retries and their waits included: 10 minutes.
# Retries alone allow far more (30 rate-limit answers with back-offs of up to 60 s are up to
# 25 minutes), and the backfill checks its runtime bound only between pages, so a call must end
# by itself. No retry starts whose wait would pass it, and the last attempt gets only what is
# left of it; then the call fails with KrakenRestError naming this bound.
MAX_CALL_SECONDS = 600.0

__all__ = [
    "MAX_ANSWER_BYTES",
    "MAX_CALL_SECONDS",
    "MAX_PAGES_PER_WINDOW",
    "MAX_PAGES_WITHOUT_PROGRESS",
    "MAX_PAGE_SIZE",
    "KrakenRestClient",
    "KrakenRestError",
    "PaginationError",
    "RestSettings",
    "RestStats",
    "TradesPage",
    "UnknownPairError",
    "WindowNotClosedError",
]


class KrakenRestError(RuntimeError):
    """Kraken answered with an error that retrying did not (or cannot) fix."""


class PaginationError(KrakenRestError):
    """Pagination cannot advance without skipping trades."""


class WindowNotClosedError(KrakenRestError):
    """The requested window ends after Kraken's current time: its history is not complete yet."""


@dataclass(frozen=True)
class RestSettings:
    """Where Kraken's REST API is and how politely to use it (defaults: `KrakenSettings`)."""

    url: str = default_of(KrakenSettings, "rest_url")
    # Kraken's public limit is about one call per second per IP (and, for Trades, per pair).
    requests_per_second: float = default_of(KrakenSettings, "rest_requests_per_second")
    # Bounds connecting and each socket read; and the whole attempt: a body still arriving this
    # long after the request went out is cut off (see _Deadline).
    timeout_seconds: float = default_of(KrakenSettings, "rest_timeout_seconds")
    # Network errors, HTTP 5xx and EService errors, per request.
    max_retries: int = default_of(KrakenSettings, "rest_max_retries")
    # Rate-limit answers, per request: they only slow a run down, so allow many more (within
    # MAX_CALL_SECONDS).
    max_rate_limit_retries: int = default_of(KrakenSettings, "rest_max_rate_limit_retries")
    backoff_initial_seconds: float = default_of(KrakenSettings, "rest_backoff_initial_seconds")
    # Also the longest `Retry-After` honoured.
    backoff_max_seconds: float = default_of(KrakenSettings, "rest_backoff_max_seconds")
    page_size: int = default_of(KrakenSettings, "rest_page_size")
    # Where the host's shared pacing schedule lives (`kraken.budget`); None: this client paces
    # only itself (tools and unit tests; the platform's resources pass KRAKEN_REST_BUDGET_DIR).
    budget_dir: str | None = None
    budget_scope: str = default_of(KrakenSettings, "rest_budget_scope")  # `ip` or `pair`

    def __post_init__(self) -> None:
        if not self.requests_per_second > 0:
            raise ValueError(f"requests_per_second must be > 0, got {self.requests_per_second}")
        if self.budget_scope not in get_args(BudgetScope):
            raise ValueError(f"budget_scope must be 'ip' or 'pair', got {self.budget_scope!r}")
        if not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}, got {self.page_size}")


@dataclass
class RestStats:
    """Counters since the client was created."""

    requests: int = 0
    pages_fetched: int = 0
    rate_limit_waits: int = 0
    retries: int = 0
    seconds_waited: float = 0.0  # pacer sleeps plus back-off sleeps
    rows_rejected: int = 0
    rejected_reasons: Counter[str] = field(default_factory=Counter)
    duplicates_skipped: int = 0  # rows repeated where consecutive pages overlap
    invalid_last: int = 0  # pages whose `last` was missing, malformed or not advancing


@dataclass(frozen=True, slots=True)
class TradesPage:
    """One `/0/public/Trades` answer: its valid rows, in Kraken's order, and its `last`."""

    rows: list[RestTradeRow]
    last_ns: int | None  # None when missing or not a non-negative integer
    raw_count: int  # rows in the answer, valid or not
    received_ms: int  # when the answer arrived (wall clock): the records' `received_ms`


class _PacerLike(Protocol):
    def wait(self) -> float: ...
    def done(self, answered_at: float | None = None) -> None: ...
    def push_back(self, seconds: float) -> None: ...
    def pending(self) -> float: ...


class Pacer:
    """At most `rate` calls per second: each call starts 1/rate after the previous one was answered.

    Spacing from the previous call's answer (its headers arriving, or its end when it failed
    without one), not from its start, keeps the calls 1/rate apart as the server sees them too:
    the server counted the previous call before it answered, and the next one reaches it after it
    is sent. Spaced starts arrive unevenly (connection set-up, scheduling), and a call landing a
    millisecond early is exactly what a server's strict limiter rejects. The body's transfer and
    parsing need no spacing: the server counted the call already.
    """

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._next_at: float | None = None

    def wait(self) -> float:
        """Sleep until the next call may start; return the seconds slept."""
        now = self._clock()
        delay = 0.0 if self._next_at is None else max(0.0, self._next_at - now)
        if delay:
            self._sleep(delay)
        # Until `done` is called, a call in flight holds the next one back a full interval.
        self._next_at = now + delay + self.interval
        return delay

    def done(self, answered_at: float | None = None) -> None:
        """The call that `wait` let through has ended; it was answered at `answered_at` (clock)."""
        at = self._clock() if answered_at is None else min(answered_at, self._clock())
        self._next_at = max(self._next_at or 0.0, at + self.interval)

    def push_back(self, seconds: float) -> None:
        """Hold the next call back at least `seconds` from now (after a rate-limit answer)."""
        self._next_at = max(self._next_at or 0.0, self._clock() + seconds)

    def pending(self) -> float:
        """The seconds `wait` would sleep now."""
        return 0.0 if self._next_at is None else max(0.0, self._next_at - self._clock())


class _Retry(Exception):
    """Internal: this attempt failed in a way worth retrying."""

    def __init__(self, reason: str, *, rate_limited: bool, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.rate_limited = rate_limited
        self.retry_after = retry_after


class KrakenRestClient:
    """A `requests` session to Kraken's public REST API with a pacer, retries and pagination."""

    def __init__(
        self,
        settings: RestSettings,
        *,
        log: logging.Logger | None = None,
        session: requests.Session | None = None,
        purpose: Purpose = "other",
    ) -> None:
        self.settings = settings
        self.stats = RestStats()
        self._log = log or logger
        self._session = session or requests.Session()
        self._session.headers.setdefault("User-Agent", "trades-platform-backfill")
        self._purpose: Purpose = purpose
        self._created = time.monotonic()
        # One pacer per budget: the whole IP, or (scope `pair`) each pair's Trades calls.
        self._pacers: dict[str | None, _PacerLike] = {}
        self._pairs: PairDirectory | None = None
        # Kraken's clock as last read: a window that ended before it has ended for good.
        self._server_time_us = 0

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()

    def __enter__(self) -> KrakenRestClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- names -----------------------------------------------------------------------------

    def pair_directory(self) -> PairDirectory:
        """Kraken's pairs from `/0/public/AssetPairs`, fetched once per client."""
        if self._pairs is None:
            result = self._get("AssetPairs", {})
            if not isinstance(result, dict):
                raise KrakenRestError("AssetPairs: `result` is not an object")
            self._pairs = PairDirectory.from_asset_pairs(result)
        return self._pairs

    def rest_pair(self, pair: str) -> RestPair:
        """REST names of a WebSocket v2 pair; `UnknownPairError` if Kraken does not list it."""
        return self.pair_directory().get(pair)

    def server_time_us(self) -> int:
        """Kraken's clock (`/0/public/Time`), in microseconds; whole seconds are all it gives."""
        result = self._get("Time", {})
        unixtime = result.get("unixtime") if isinstance(result, dict) else None
        if type(unixtime) is not int or unixtime <= 0:
            raise KrakenRestError(f"Time: unexpected result {result!r}")
        return unixtime * 1_000_000

    # --- trades ----------------------------------------------------------------------------

    def trades_page(self, pair: RestPair, since_ns: int, count: int | None = None) -> TradesPage:
        """One `/0/public/Trades` call: trades at or after `since_ns` (nanoseconds, an int)."""
        if type(since_ns) is not int or since_ns < 0:
            raise TypeError(f"since_ns must be a non-negative int, got {since_ns!r}")
        params = {
            "pair": pair.altname,
            # A decimal string of an int: floats cannot hold nanoseconds since 1970.
            "since": str(since_ns),
            "count": str(count or self.settings.page_size),
        }
        result = self._get("Trades", params)
        received_ms = time.time_ns() // 1_000_000
        if not isinstance(result, dict):
            raise KrakenRestError(f"Trades {pair.name}: `result` is not an object")
        # Kraken keys the rows by its canonical name, which may differ from the name asked.
        keys = [key for key in result if key != "last"]
        if len(keys) != 1 or not isinstance(result[keys[0]], list):
            raise KrakenRestError(
                f"Trades {pair.name}: expected one list of rows besides `last`, got keys {keys}"
            )
        raw_rows: list[Any] = result[keys[0]]
        rows: list[RestTradeRow] = []
        rejected: Counter[str] = Counter()
        example: Any = None
        for raw in raw_rows:
            row = parse_rest_row(raw)
            if isinstance(row, RestTradeRow):
                rows.append(row)
            else:
                rejected[row] += 1
                example = raw if example is None else example
        if rejected:
            self.stats.rows_rejected += rejected.total()
            self.stats.rejected_reasons.update(rejected)
            self._log.warning(
                f"Trades {pair.name} since={since_ns}: rejected {rejected.total()} of "
                f"{len(raw_rows)} rows: {dict(rejected)}; first: {example!r}"
            )
        self.stats.pages_fetched += 1
        return TradesPage(
            rows=rows,
            last_ns=_parse_last(result.get("last")),
            raw_count=len(raw_rows),
            received_ms=received_ms,
        )

    def trades_since(self, pair: str, since_time_us: int) -> TradesPage:
        """One page of `pair`'s trades at or after `since_time_us`, however recent; rows by id.

        For healing by id: the caller picks the ids it misses. Unlike `window_pages`, nothing
        checks that the history is complete: a page may end before trades Kraken has not
        published over REST yet.
        """
        if type(since_time_us) is not int or since_time_us < 0:
            raise ValueError(f"bad since_time_us {since_time_us!r}")
        page = self.trades_page(self.rest_pair(pair), since_time_us * 1000)
        return replace(page, rows=sorted(page.rows, key=lambda row: row.trade_id))

    def window_pages(self, pair: str, start_us: int, end_us: int) -> Iterator[TradesPage]:
        """Every row of `pair` with time in [start_us, end_us), page by page (exact times).

        Each page holds only the window's rows not on an earlier page, sorted by id.
        `PaginationError` if paging cannot advance without skipping trades, makes no progress
        for `MAX_PAGES_WITHOUT_PROGRESS` full pages in a row, or needs more than
        `MAX_PAGES_PER_WINDOW` pages.
        """
        if type(start_us) is not int or type(end_us) is not int or end_us <= start_us:
            raise ValueError(f"bad window [{start_us!r}, {end_us!r})")
        rest_pair = self.rest_pair(pair)
        # One Time call per client, not per window: a window ending before Kraken's clock read
        # earlier is closed now too (a run of many closed days asks once).
        now_us = self._server_time_us
        if end_us > now_us:
            now_us = self._server_time_us = self.server_time_us()
        if end_us > now_us:
            # Writing part of a day would leave it to be written again (twice) once it is over.
            raise WindowNotClosedError(
                f"{pair}: window ends {format_time_us(end_us)}, after Kraken's current time "
                f"{format_time_us(now_us)}; its history is not complete yet"
            )
        # 1 ns early, so that a trade at exactly start_us comes even if `since` is exclusive.
        since_ns = max(0, start_us * 1000 - 1)
        seen: set[int] = set()
        pages = pages_without_progress = 0
        while True:
            if pages >= MAX_PAGES_PER_WINDOW:
                raise PaginationError(
                    f"Trades {pair}: window [{format_time_us(start_us)}, {format_time_us(end_us)})"
                    f" still not complete after {pages} pages (MAX_PAGES_PER_WINDOW), at "
                    f"since={since_ns}; no Kraken pair has that many trades in a window"
                )
            page = self.trades_page(rest_pair, since_ns)
            pages += 1
            fresh = [row for row in page.rows if row.trade_id not in seen]
            self.stats.duplicates_skipped += len(page.rows) - len(fresh)
            seen.update(row.trade_id for row in fresh)
            if fresh or page.raw_count < self.settings.page_size:
                pages_without_progress = 0
            else:
                pages_without_progress += 1
                if pages_without_progress >= MAX_PAGES_WITHOUT_PROGRESS:
                    raise PaginationError(
                        f"Trades {pair}: {pages_without_progress} full pages in a row, up to "
                        f"since={since_ns}, brought no trade id not seen before "
                        f"(MAX_PAGES_WITHOUT_PROGRESS={MAX_PAGES_WITHOUT_PROGRESS}): the server "
                        "moves `last` on without new trades"
                    )
            in_window = sorted(
                (row for row in fresh if start_us <= row.time_us < end_us),
                key=lambda row: row.trade_id,
            )
            yield replace(page, rows=in_window)
            # Stop at the first page that crosses the window's end: never fetch far past it.
            if any(row.time_us >= end_us for row in fresh):
                return
            next_since = self._next_since(page, since_ns)
            if next_since is None:
                if page.raw_count >= self.settings.page_size:
                    raise PaginationError(
                        f"Trades {pair}: a full page at since={since_ns} gives no later `last` "
                        f"({page.last_ns}) and no later trade; paging on would skip trades"
                    )
                # A short page that moves nothing forward: history ends here, and the window
                # closed before it (checked above), so the window is complete.
                return
            since_ns = next_since

    def _next_since(self, page: TradesPage, since_ns: int) -> int | None:
        """The next page's `since`, or None when nothing moves past `since_ns`.

        One nanosecond before the newest trade seen: whether Kraken reads `since` as inclusive
        or not, a later trade sharing that time is asked for again (the repeats are dropped).
        A `last` beyond the newest row is not trusted further than that row.
        """
        newest_row_ns = page.rows and max(row.time_us for row in page.rows) * 1000
        last_ns = page.last_ns
        if last_ns is not None and last_ns - 1 <= since_ns:
            last_ns = None
        if last_ns is None and newest_row_ns and newest_row_ns - 1 > since_ns:
            self.stats.invalid_last += 1
            self._log.warning(
                f"Trades since={since_ns}: `last` is {page.last_ns!r}, not past `since`; "
                f"continuing from the newest row ({newest_row_ns})"
            )
        candidates = [v - 1 for v in (last_ns, newest_row_ns) if v and v - 1 > since_ns]
        return min(candidates) if candidates else None

    # --- HTTP ------------------------------------------------------------------------------

    def _pacer_for(self, pair: str | None) -> _PacerLike:
        """The pacer of the budget a call to `pair` (None: not a pair's call) draws on."""
        key = pair if self.settings.budget_scope == "pair" else None
        pacer = self._pacers.get(key)
        if pacer is None:
            if self.settings.budget_dir is None:
                pacer = Pacer(self.settings.requests_per_second)
            else:
                pacer = SharedPacer(
                    budget_file(self.settings.budget_dir, self.settings.url, key),
                    self.settings.requests_per_second,
                    purpose=self._purpose,
                    # A call in flight holds the budget at most this long (then others go on).
                    hold_seconds=self.settings.timeout_seconds,
                    created=self._created,
                )
            self._pacers[key] = pacer
        return pacer

    def _get(self, endpoint: str, params: dict[str, str]) -> Any:
        """GET /0/public/<endpoint>: paced, retried, within MAX_CALL_SECONDS; `result` or raises."""
        url = f"{self.settings.url.rstrip('/')}/0/public/{endpoint}"
        pacer = self._pacer_for(params.get("pair"))
        began = time.monotonic()
        failures = rate_limited = 0
        while True:
            self.stats.seconds_waited += pacer.wait()
            self.stats.requests += 1
            left = MAX_CALL_SECONDS - (time.monotonic() - began)
            try:
                return self._paced_attempt(pacer, url, endpoint, params, left)
            except _Retry as retry:
                if retry.rate_limited:
                    rate_limited += 1
                    attempt, limit = rate_limited, self.settings.max_rate_limit_retries
                    self.stats.rate_limit_waits += 1
                else:
                    failures += 1
                    attempt, limit = failures, self.settings.max_retries
                    self.stats.retries += 1
                if attempt > limit:
                    raise KrakenRestError(
                        f"{endpoint} {params}: giving up after {attempt} attempts: {retry.reason}"
                    ) from None
                delay = max(self._backoff(attempt), retry.retry_after or 0.0)
                # Through the pacer, so the wait also holds back whatever call comes next.
                pacer.push_back(delay)
                spent = time.monotonic() - began
                wait = pacer.pending()
                if spent + wait >= MAX_CALL_SECONDS:
                    raise KrakenRestError(
                        f"{endpoint} {params}: giving up after {failures + rate_limited} "
                        f"attempts in {spent:.1f}s: a retry in {wait:.2f}s would pass the "
                        f"call's time budget of {MAX_CALL_SECONDS:g}s (MAX_CALL_SECONDS, retries "
                        f"and waits included); last: {retry.reason}"
                    ) from None
                self._log.warning(
                    f"{endpoint} {params}: {retry.reason}; retry {attempt}/{limit} in {wait:.2f}s"
                )

    def _paced_attempt(
        self,
        pacer: _PacerLike,
        url: str,
        endpoint: str,
        params: dict[str, str],
        left_seconds: float,
    ) -> Any:
        answered: list[float] = []
        try:
            return self._attempt(url, endpoint, params, left_seconds, answered)
        finally:
            pacer.done(answered[0] if answered else None)

    def _attempt(
        self,
        url: str,
        endpoint: str,
        params: dict[str, str],
        left_seconds: float,
        answered: list[float],
    ) -> Any:
        """One GET; `answered` gets the (monotonic) time the answer's headers arrived."""
        # The attempt's deadline; shorter when it is all that is left of the call's time budget.
        if left_seconds < self.settings.timeout_seconds:
            deadline = _Deadline(max(left_seconds, 0.0), "what was left of MAX_CALL_SECONDS")
        else:
            deadline = _Deadline(self.settings.timeout_seconds)
        try:
            try:
                response = self._session.get(
                    url,
                    params=params,
                    timeout=max(deadline.seconds, _MIN_SOCKET_TIMEOUT_SECONDS),
                    # A redirect could lead anywhere, https to plain http included: refuse it.
                    allow_redirects=False,
                    # Read the body here, bounded in size and time, not all at once in `get`.
                    stream=True,
                )
            except (requests.ConnectionError, requests.Timeout) as error:
                raise _Retry(f"{type(error).__name__}: {error}", rate_limited=False) from None
            answered.append(time.monotonic())
            with response:
                try:
                    deadline.watch(response)
                    status = response.status_code
                    if 300 <= status < 400:
                        location = response.headers.get("Location")
                        raise KrakenRestError(
                            f"{endpoint} {params}: HTTP {status} redirect to "
                            f"{_shortened(location)} refused; redirects are never followed "
                            "(check the REST URL)"
                        )
                    content = _read_bounded(response, deadline)
                finally:
                    # Before the response closes: its socket must not be cut once released.
                    deadline.cancel()
        finally:
            deadline.cancel()  # when `get` failed
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError:
            body = None
        errors = body.get("error") if isinstance(body, dict) else None
        messages = [str(message) for message in errors] if isinstance(errors, list) else []
        if status == 429 or any(m.startswith(_RATE_LIMIT_ERRORS) for m in messages):
            raise _Retry(
                f"rate limited (HTTP {status}, {messages})",
                rate_limited=True,
                retry_after=_retry_after(response, self.settings.backoff_max_seconds),
            )
        if status >= 500 or any(m.startswith(_UNAVAILABLE_ERRORS) for m in messages):
            raise _Retry(f"unavailable (HTTP {status}, {messages})", rate_limited=False)
        if not isinstance(body, dict):
            # Proxies and Cloudflare answer with HTML; a 200 with no JSON is as transient.
            raise _Retry(f"HTTP {status} with a body that is not a JSON object", rate_limited=False)
        if messages:
            if any(m.startswith(_UNKNOWN_PAIR_ERROR) for m in messages) and "pair" in params:
                raise KrakenRestError(f"{endpoint}: Kraken does not know pair {params['pair']!r}")
            raise KrakenRestError(f"{endpoint} {params}: Kraken error {messages}")
        if status != 200:
            raise KrakenRestError(f"{endpoint} {params}: HTTP {status}")
        if errors is None or "result" not in body:
            raise KrakenRestError(f"{endpoint} {params}: answer without `error` and `result`")
        return body["result"]

    def _backoff(self, attempt: int) -> float:
        """Exponential, capped, with jitter so that parallel runs do not retry in step."""
        ceiling = min(
            self.settings.backoff_max_seconds,
            self.settings.backoff_initial_seconds * float(1 << (attempt - 1)),
        )
        return ceiling / 2 + random.uniform(0, ceiling / 2)


def _parse_last(value: Any) -> int | None:
    """`last` as an int of nanoseconds; anything else (a float included) is not trusted."""
    if type(value) is int:
        return value if value >= 0 else None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _retry_after(response: requests.Response, limit_seconds: float) -> float | None:
    """The `Retry-After` seconds, at most `limit_seconds`; None if absent or not a number.

    Capped at the longest back-off: with many rate-limit retries allowed, a server asking for
    hours each time would otherwise hold a run for days.
    """
    value = response.headers.get("Retry-After")
    try:
        seconds = float(value) if value is not None else math.nan
    except ValueError:
        return None
    # NaN, negative and the HTTP-date form are not waits to honour.
    return min(seconds, limit_seconds) if seconds >= 0 else None


def _shortened(text: str | None, limit: int = 200) -> str:
    """`text` quoted for an error message, cut to `limit` characters (it came off the network)."""
    return repr(text) if text is None or len(text) <= limit else repr(text[:limit]) + "..."


class _Deadline:
    """The end of one call's time: once it passes, the answer still arriving is cut off.

    `timeout_seconds` in `requests` bounds each socket read, so a body trickled a byte at a
    time would never time out. A timer shuts the answer's socket down at the deadline: a read
    blocked on it returns at once, and the attempt fails. Until the head has arrived there is
    no answer to cut (`requests` does not expose the socket): the head is bounded by the
    per-read timeout only, and a deadline passed meanwhile fails the attempt once it arrives.
    """

    def __init__(
        self, seconds: float, bound: str = "timeout_seconds, the deadline of the whole attempt"
    ) -> None:
        self.seconds = seconds
        self._bound = bound
        self._lock = threading.Lock()
        self._response: requests.Response | None = None
        self._passed = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True  # never keeps the interpreter alive
        self._timer.start()

    @property
    def passed(self) -> bool:
        """Whether the deadline passed before `cancel`."""
        with self._lock:
            return self._passed

    def retry(self) -> _Retry:
        """The failure of an attempt whose deadline passed."""
        return _Retry(
            f"no complete answer within {self.seconds:g}s ({self._bound}); cut off",
            rate_limited=False,
        )

    def watch(self, response: requests.Response) -> None:
        """Cut `response` off at the deadline (at once if it has passed)."""
        with self._lock:
            self._response = response
            if self._passed:
                _cut(response)

    def cancel(self) -> None:
        """The call is over: stop the timer, and never touch its connection again (idempotent)."""
        self._timer.cancel()
        with self._lock:
            # Under the lock: once this returns, the timer thread cannot reach a connection
            # that may be back in the pool serving the next call.
            self._response = None

    def _expire(self) -> None:
        with self._lock:
            self._passed = True
            if self._response is not None:
                _cut(self._response)


def _cut(response: requests.Response) -> None:
    """Shut the socket of an answer being read down, from another thread.

    A shutdown, not a close: it wakes a read blocked on the socket (which then fails) and is
    safe while that read runs, whereas closing the response under it is not. The socket is
    found by its file descriptor: after `Connection: close` only the body's file still holds it.
    An answer read in full has no file any more: nothing to cut.
    """
    try:
        fd = response.raw.fileno()
    except (OSError, AttributeError, ValueError):  # no file, or a closed one
        return
    try:
        # A second socket object on the same descriptor, at the TCP level also for TLS; detached
        # afterwards, so that it never closes the descriptor itself.
        sock = socket.socket(fileno=fd)
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already shut down or reset: the read fails anyway
    finally:
        sock.detach()


def _read_bounded(response: requests.Response, deadline: _Deadline) -> bytes:
    """The decoded body of `response`: at most MAX_ANSWER_BYTES, before `deadline`; or _Retry."""
    if deadline.passed:
        raise deadline.retry()
    body = bytearray()
    try:
        # iter_content decodes gzip and deflate; urllib3 (>= 2.6) inflates at most a chunk's
        # worth at a time, so counting decoded chunks bounds memory too.
        for chunk in response.iter_content(_READ_CHUNK_BYTES):
            body += chunk
            if len(body) > MAX_ANSWER_BYTES:
                raise _Retry(
                    f"answer larger than {MAX_ANSWER_BYTES} bytes (MAX_ANSWER_BYTES) once "
                    "decoded; not read further",
                    rate_limited=False,
                )
    except (requests.RequestException, OSError) as error:
        if deadline.passed:
            raise deadline.retry() from None
        raise _Retry(
            f"reading the answer: {type(error).__name__}: {error}", rate_limited=False
        ) from None
    # A cut socket may also read as a short body: whatever arrived, it came too late.
    if deadline.passed:
        raise deadline.retry()
    return bytes(body)
