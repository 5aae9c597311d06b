"""Healing by id, beside the stream: a thread fetches from REST the trade ids the socket missed.

The WebSocket loop never waits for REST. It hands each gap (a range of ids, with the exact time
of the trade before it) to `GapHealer.add` and collects what the thread found with `results()`.

The thread works pair by pair, oldest hole first, one REST page per call at the client's pace
(`KRAKEN_REST_REQUESTS_PER_SECOND`): a page starts just before the trade that precedes the
lowest hole and carries up to 1000 trades, so every hole it spans is healed by the one call,
however many there are. Rows are picked by id, never by time: trades that share a timestamp
(the fills of one match), or a millisecond, with the trades around a hole are found all the
same. Holes that REST does not have yet are asked again a moment later; holes still open after
`give_up_seconds` are given up (`GaveUp`), and the caller hands them to the backfill.
"""

from __future__ import annotations

import bisect
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from trades_platform.coverage.id_ranges import IdRanges
from trades_platform.kraken.protocol import RestTradeRow
from trades_platform.kraken.rest import KrakenRestClient, KrakenRestError, TradesPage
from trades_platform.kraken.websocket import TradeGap
from trades_platform.trade import Trade

# A page starts this long before the trade that precedes a hole: REST's times may be rounded
# differently from the WebSocket's (100 ns vs 1 µs), and extra rows are dropped by id anyway.
SINCE_MARGIN_US = 1_000
# REST may not have published the newest trades yet: ask again after this long.
NOT_YET_RETRY_SECONDS = 1.0
# After a failed call (the client already retried it), leave the pair alone this long.
FAILURE_RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class Healed:
    """Trades a REST page had for a pair's holes, in id order."""

    pair: str
    trades: list[Trade]


@dataclass(frozen=True)
class GaveUp:
    """Holes the healer stopped trying to fill, and why."""

    pair: str
    ranges: list[tuple[int, int]]
    reason: str


HealResult = Healed | GaveUp


@dataclass
class HealerStats:
    """What the healer did, for the progress line and the observations."""

    requests: int = 0
    failures: int = 0
    healed: int = 0
    given_up: int = 0


@dataclass
class _Hole:
    """Missing ids first..last of a pair, and the exact time of a trade at or below first - 1."""

    first: int
    last: int
    anchor_time_us: int
    opened_at: float


@dataclass
class _PairWork:
    holes: list[_Hole] = field(default_factory=list)
    not_before: float = 0.0


class GapHealer:
    """Fetches missing ids from REST in a thread; `add` gaps, collect `results()`."""

    def __init__(
        self,
        client: KrakenRestClient,
        *,
        give_up_seconds: float,
        log: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.stats = HealerStats()
        self._give_up_seconds = give_up_seconds
        self._log = log
        self._clock = clock
        self._work: dict[str, _PairWork] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._results: queue.SimpleQueue[HealResult] = queue.SimpleQueue()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._last_error: dict[str, str] = {}

    def start(self) -> GapHealer:
        """Start the thread."""
        self._thread = threading.Thread(target=self._loop, name="gap-healer", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread (a REST call in flight finishes first) and close the client."""
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=self.client.settings.timeout_seconds + 5)
        self.client.close()

    def add(self, gap: TradeGap) -> None:
        """Ask for the ids of `gap`; never blocks on REST."""
        # The earlier of the two sides: a gap whose time runs backwards is still asked from
        # before both of its trades.
        anchor_us = min(gap.after_time_us, gap.before_time_us)
        hole = _Hole(gap.first_missing_id, gap.last_missing_id, anchor_us, self._clock())
        with self._wake:
            holes = self._work.setdefault(gap.pair, _PairWork()).holes
            index = bisect.bisect_left([h.first for h in holes], hole.first)
            holes.insert(index, hole)
            self._wake.notify_all()

    def results(self) -> list[HealResult]:
        """What the thread found or gave up since the last call, in the order it happened."""
        found: list[HealResult] = []
        while True:
            try:
                found.append(self._results.get_nowait())
            except queue.Empty:
                return found

    def pending(self) -> dict[str, int]:
        """Ids still wanted, per pair."""
        with self._lock:
            return {
                pair: sum(h.last - h.first + 1 for h in work.holes)
                for pair, work in self._work.items()
                if work.holes
            }

    # --- the thread ------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                if self._stop:
                    return
                self._give_up_old_holes()
                job = self._next_job()
                if isinstance(job, float):
                    self._wake.wait(timeout=job)
                    continue
            self._fetch(*job)

    def _next_job(self) -> tuple[str, int] | float:
        """(pair, page start in µs) for the pair whose lowest hole is oldest and may be asked now;
        with no pair ready, the seconds until one may be (lock held)."""
        now = self._clock()
        best: tuple[int, str] | None = None
        wait_seconds = 1.0
        for pair, work in self._work.items():
            if not work.holes:
                continue
            if work.not_before > now:
                wait_seconds = min(wait_seconds, work.not_before - now)
                continue
            candidate = (work.holes[0].anchor_time_us, pair)
            best = candidate if best is None or candidate < best else best
        if best is None:
            return wait_seconds
        anchor_time_us, pair = best
        return pair, max(0, anchor_time_us - SINCE_MARGIN_US)

    def _fetch(self, pair: str, since_us: int) -> None:
        self.stats.requests += 1
        try:
            page = self.client.trades_since(pair, since_us)
        except Exception as error:
            # Any failure, an unforeseen one too, is retried: the thread must not die and leave
            # the holes pending for good (they are handed back after the give-up bound).
            self.stats.failures += 1
            message = str(error) if isinstance(error, KrakenRestError) else repr(error)[:300]
            if self._last_error.get(pair) != message:
                self._log.warning(f"{pair}: healing from REST failed ({message}); retrying")
                self._last_error[pair] = message
            with self._lock:
                self._work[pair].not_before = self._clock() + FAILURE_RETRY_SECONDS
            return
        self._last_error.pop(pair, None)
        rows = page.rows
        with self._lock:
            work = self._work[pair]
            wanted = IdRanges((hole.first, hole.last) for hole in work.holes)
            picked = [row for row in rows if row.trade_id in wanted]
            lowest_first = work.holes[0].first if work.holes else 0
            if rows:
                work.holes = _remaining_holes(
                    work.holes, picked, rows[-1].trade_id, rows[-1].time_us
                )
            page_size = self.client.settings.page_size
            if work.holes and _ask_later(
                page, page_size, picked, lowest_first, work.holes[-1].last
            ):
                work.not_before = self._clock() + NOT_YET_RETRY_SECONDS
        if picked:
            trades = [row.to_trade(pair, "heal", page.received_ms) for row in picked]
            self.stats.healed += len(trades)
            self._results.put(Healed(pair, trades))

    def _give_up_old_holes(self) -> None:
        """Hand over holes open longer than the give-up bound (lock held)."""
        deadline = self._clock() - self._give_up_seconds
        for pair, work in self._work.items():
            old = [hole for hole in work.holes if hole.opened_at < deadline]
            if not old:
                continue
            work.holes = [hole for hole in work.holes if hole.opened_at >= deadline]
            ranges = [(hole.first, hole.last) for hole in old]
            self.stats.given_up += sum(last - first + 1 for first, last in ranges)
            reason = self._last_error.get(pair) or "REST did not return these ids"
            self._results.put(
                GaveUp(pair, ranges, f"open for {self._give_up_seconds:.0f}s: {reason}")
            )


def _ask_later(
    page: TradesPage,
    page_size: int,
    picked: list[RestTradeRow],
    lowest_first: int,
    highest_last: int,
) -> bool:
    """True when asking again at once would bring nothing new.

    REST has nothing after the page start yet; or the page passed the lowest hole without any
    of its ids (REST skips them; the give-up bound ends that); or a short page stopped below
    the highest hole (REST has not published the newest ids yet).
    """
    if not page.rows:
        return True
    newest_id = page.rows[-1].trade_id
    if not picked and newest_id >= lowest_first:
        return True
    return page.raw_count < page_size and newest_id < highest_last


def _remaining_holes(
    holes: list[_Hole], picked: list[RestTradeRow], newest_id: int, newest_time_us: int
) -> list[_Hole]:
    """The holes minus the picked ids; parts above the page's newest row start from its time."""
    found = IdRanges()
    for row in picked:
        found.add(row.trade_id)
    remaining: list[_Hole] = []
    for hole in holes:
        for first, last in found.missing(hole.first, hole.last):
            # Ids the page passed without carrying them stay anchored where they were; ids past
            # the page are asked from its newest trade on (the next page).
            anchor = hole.anchor_time_us
            if first > newest_id:
                anchor = max(anchor, newest_time_us)
            remaining.append(_Hole(first, last, anchor, hole.opened_at))
    return remaining
