"""The live writer's half of exactly-once: it owns each pair's tail of ids, in order, and heals it.

Before this runs, the live run has taken its place in line (`TailClaimHolder.acquire`), waited for
any other live writer of its pairs (`wait_for_turn`) and only then read the topic. `LiveTail`:

- claims every id after the topic's newest one (or, for a pair new to the topic or silent for
  longer than the heal horizon, every id from the first trade it receives), waits out the grace
  period and reads the topic again before writing, when a backfill could reach those ids;
- writes each pair's trades in increasing id order: a trade after a hole waits until the hole
  is healed, for at most `hold_seconds`; after that the hole no longer holds trades back and its
  trades, once healed, land late (counted as `healed_late`);
- sends holes to the `GapHealer` (REST, in a thread) and writes what it finds, with
  `source="heal"`; holes it gives up on are handed back to the backfills in the claim;
- checks, before every write, that the claim is still held (`ClaimLost` otherwise).
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from trades_platform.coverage.claims import CLAIM_GRACE_SECONDS, TailClaimHolder
from trades_platform.coverage.id_ranges import IdRanges
from trades_platform.coverage.topic_ids import PairIds, scan_topic_ids
from trades_platform.coverage.writer import DeduplicatingWriter
from trades_platform.kraken.websocket import TradeGap
from trades_platform.live.healer import GapHealer, GaveUp, Healed
from trades_platform.settings import KafkaSettings
from trades_platform.trade import CLOCK_MARGIN_MS, Trade

# Clocks differ: near midnight, act as if the day had already turned.
_CLOCK_SKEW_US = CLOCK_MARGIN_MS * 1000
_DAY_US = 86_400 * 1_000_000


def backfill_may_reach(time_us: int, now_us: int | None = None) -> bool:
    """True when a trade at `time_us` may belong to a day a backfill is allowed to write.

    Backfills write only UTC days that are over; ids from a trade of the current day onwards
    are out of their reach, so claiming them needs no grace period.
    """
    now_us = now_us if now_us is not None else int(time.time() * 1_000_000)
    current_day_start = (now_us + _CLOCK_SKEW_US) // _DAY_US * _DAY_US
    return time_us < current_day_start


@dataclass
class TailStats:
    """What the tail did, for the progress line and the observations."""

    claims: int = 0
    # Trades the stream skipped (left out by Kraken, or missed across a reconnect), per pair.
    left_out: dict[str, int] = field(default_factory=dict)
    # Missing trades written from REST, per pair; those written after later trades (late).
    healed: dict[str, int] = field(default_factory=dict)
    healed_late: int = 0
    # Missing ids whose hold expired: later trades were written before them.
    released_out_of_order: int = 0
    # Missing ids given back to the backfills, per pair.
    handed_back: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def total(counts: dict[str, int]) -> int:
        """The sum over pairs."""
        return sum(counts.values())


@dataclass
class _Waiting:
    trade: Trade
    since: float


@dataclass
class _PairTail:
    """One pair's ordering state."""

    from_id: int
    # Missing ids that later trades wait for.
    blocking: IdRanges = field(default_factory=IdRanges)
    # Missing ids that no longer hold trades back (their hold expired); still being healed.
    late: IdRanges = field(default_factory=IdRanges)
    # Trades that cannot be written yet, in id order.
    waiting: list[_Waiting] = field(default_factory=list)
    newest_written_ms: int | None = None


class LiveTail:
    """Claims, ordered writing, healing and hand-backs around one DeduplicatingWriter."""

    def __init__(
        self,
        *,
        settings: KafkaSettings,
        writer: DeduplicatingWriter,
        holder: TailClaimHolder,
        healer: GapHealer,
        log: logging.Logger,
        heal_horizon_seconds: float,
        hold_seconds: float,
        write_limit: int | None = None,
        grace_seconds: float = CLAIM_GRACE_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.writer = writer
        self.holder = holder
        self.healer = healer
        self.stats = TailStats()
        self._log = log
        self._heal_horizon_us = int(heal_horizon_seconds * 1_000_000)
        self._hold_seconds = hold_seconds
        self._write_limit = write_limit
        self._grace_seconds = grace_seconds
        self._sleep = sleep
        self._claim_timeout_seconds = max(30.0, settings.delivery_timeout_ms / 1000)
        self._pairs: dict[str, _PairTail] = {}
        self._unclaimed_gaps: dict[str, list[TradeGap]] = {}

    # --- start ---------------------------------------------------------------------------

    def start(self, pairs: list[str], scanned: dict[str, PairIds]) -> dict[str, tuple[int, int]]:
        """Claim the tails that resume from the topic; return where the stream resumes each."""
        now_us = int(time.time() * 1_000_000)
        resume: dict[str, tuple[int, int]] = {}
        for pair in pairs:
            found = scanned.get(pair)
            if found is None or found.ids.highest is None or found.highest_time_us is None:
                continue
            age_us = now_us - found.highest_time_us
            if age_us > self._heal_horizon_us:
                self._log.warning(
                    f"{pair}: newest trade in the topic (id {found.ids.highest}) is "
                    f"{age_us / 3.6e9:.1f} h old, beyond the heal horizon; the gap up to the "
                    "first live trade is left to the backfill"
                )
                continue
            resume[pair] = (found.ids.highest, found.highest_time_us)
        self._claim({pair: (last_id + 1, time_us) for pair, (last_id, time_us) in resume.items()})
        return resume

    # --- the stream's side -----------------------------------------------------------------

    def note_gap(self, gap: TradeGap) -> None:
        """The stream skipped ids: hold later trades for them and have them healed."""
        self.stats.left_out[gap.pair] = self.stats.left_out.get(gap.pair, 0) + gap.missing
        state = self._pairs.get(gap.pair)
        if state is None:
            # A hole in the frame that brings the pair's first trade: the claim starts at that
            # trade, so the hole is healed once the frame is accepted (below the claim: the
            # backfill's).
            self._unclaimed_gaps.setdefault(gap.pair, []).append(gap)
            return
        state.blocking.add_range(gap.first_missing_id, gap.last_missing_id)
        self.healer.add(gap)

    def accept(self, trades: Iterable[Trade]) -> None:
        """Take a batch from the stream: write what is in order, hold what follows a hole."""
        now = time.monotonic()
        touched: set[str] = set()
        for trade in trades:
            state = self._pairs.get(trade.pair)
            if state is None:
                self._claim({trade.pair: (trade.trade_id, trade.time_us)})
                state = self._pairs[trade.pair]
            state.waiting.append(_Waiting(trade, now))
            touched.add(trade.pair)
        for pair in touched:
            self._release(pair)

    def service(self) -> None:
        """Between frames: check the claim, take in heals and give-ups, expire holds."""
        self.holder.ensure_held()
        for result in self.healer.results():
            if isinstance(result, Healed):
                self._take_healed(result)
            else:
                self._hand_back(result)
        now = time.monotonic()
        for pair, state in self._pairs.items():
            # Healed trades join the line at their id, so the longest wait is not always first.
            if state.waiting and now - min(w.since for w in state.waiting) > self._hold_seconds:
                self._stop_holding(pair, state)
            self._release(pair)

    def drain(self, timeout_seconds: float) -> None:
        """Wait (serving heals) until no hole below a written or waiting trade is open."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline and self.open_holes():
            self.service()
            self._sleep(0.05)
        if self.open_holes():
            self._log.warning(
                f"Stopping with holes not healed yet: {self.open_holes()} (ids per pair); "
                "they are left to the backfill of their day"
            )

    def open_holes(self) -> dict[str, int]:
        """Missing ids still being healed, per pair."""
        return {
            pair: len(state.blocking) + len(state.late)
            for pair, state in self._pairs.items()
            if len(state.blocking) + len(state.late)
        }

    def newest_written_ms(self) -> dict[str, int]:
        """Per pair, the time (ms) of the newest trade written: the lag is now minus this."""
        return {
            pair: state.newest_written_ms
            for pair, state in self._pairs.items()
            if state.newest_written_ms is not None
        }

    @property
    def limit_reached(self) -> bool:
        """True once the write limit (a bounded run's max_trades) is reached."""
        return self._write_limit is not None and self.writer.written >= self._write_limit

    # --- internals -------------------------------------------------------------------------

    def _claim(self, claims: dict[str, tuple[int, int]]) -> None:
        """Claim {pair: (from_id, exact time of the trade at or just before from_id, µs)}."""
        if not claims:
            return
        from_ids = {pair: from_id for pair, (from_id, _) in claims.items()}
        self.holder.claim(from_ids, timeout_seconds=self._claim_timeout_seconds)
        for pair, from_id in from_ids.items():
            state = self._pairs[pair] = _PairTail(from_id=from_id)
            self.stats.claims += 1
            # Holes the stream saw in the frame that brought the pair's first trade.
            for gap in self._unclaimed_gaps.pop(pair, []):
                if gap.first_missing_id >= from_id:
                    state.blocking.add_range(gap.first_missing_id, gap.last_missing_id)
                    self.healer.add(gap)
        overlapping = [pair for pair, (_, time_us) in claims.items() if backfill_may_reach(time_us)]
        if overlapping:
            # A backfill page that began before these claims were visible lands (or fails)
            # within the grace period; reading the topic after it makes those ids known. The
            # claim's heartbeats go on meanwhile (a thread).
            self._sleep(self._grace_seconds)
            for pair, found in scan_topic_ids(self.settings, overlapping).items():
                self.writer.replace_present(pair, found.ids)
        self._log.info(f"Claimed the tails {from_ids} (ids from which this run writes)")

    def _release(self, pair: str) -> None:
        """Write the pair's waiting trades that no open hole precedes."""
        state = self._pairs[pair]
        if not state.waiting:
            return
        lowest_hole = state.blocking.lowest
        ready = 0
        for waiting in state.waiting:
            if lowest_hole is not None and waiting.trade.trade_id > lowest_hole:
                break
            ready += 1
        if ready:
            trades = [waiting.trade for waiting in state.waiting[:ready]]
            del state.waiting[:ready]
            self._write(state, trades)

    def _take_healed(self, healed: Healed) -> None:
        state = self._pairs[healed.pair]
        now = time.monotonic()
        late: list[Trade] = []
        taken = 0
        for trade in healed.trades:
            trade_id = trade.trade_id
            if trade_id in state.blocking:
                state.blocking.remove(trade_id)
                bisect.insort(state.waiting, _Waiting(trade, now), key=_waiting_id)
                taken += 1
            elif trade_id in state.late:
                state.late.remove(trade_id)
                late.append(trade)
                taken += 1
            # Otherwise handed back meanwhile: the backfill's now.
        self.stats.healed[healed.pair] = self.stats.healed.get(healed.pair, 0) + taken
        if late:
            self.stats.healed_late += len(late)
            self._write(state, late)

    def _stop_holding(self, pair: str, state: _PairTail) -> None:
        """The oldest waiting trade waited too long: its holes stop holding trades back."""
        newest_waiting = state.waiting[-1].trade.trade_id
        expired = state.blocking.within(state.from_id, newest_waiting)
        for first, last in expired:
            state.blocking.remove_range(first, last)
            state.late.add_range(first, last)
        count = sum(last - first + 1 for first, last in expired)
        self.stats.released_out_of_order += count
        self._log.warning(
            f"{pair}: {count} missing trade(s) not healed within {self._hold_seconds:.0f}s "
            f"(ids {expired[:3]}...); later trades are written now, the missing ones when healed"
        )

    def _hand_back(self, gave_up: GaveUp) -> None:
        """Give holes the healer gave up on to the backfills; never write them from here."""
        state = self._pairs[gave_up.pair]
        handed = self.holder.hand_back(gave_up.pair, gave_up.ranges)
        given = IdRanges(handed)
        count = 0
        for first, last in gave_up.ranges:
            count += last - first + 1
        for first, last in handed:
            state.blocking.remove_range(first, last)
            state.late.remove_range(first, last)
        # Only when merging ranges (a bound on the claim's size) can waiting trades be among them.
        state.waiting = [w for w in state.waiting if w.trade.trade_id not in given]
        self.stats.handed_back[gave_up.pair] = self.stats.handed_back.get(gave_up.pair, 0) + count
        self._log.warning(
            f"{gave_up.pair}: gave up healing {count} trade(s) ({gave_up.reason}); handed back "
            f"to the backfill of their day in the live claim: ids {gave_up.ranges[:5]}"
        )

    def _write(self, state: _PairTail, trades: list[Trade]) -> None:
        """Write trades of one pair (after checking the claim), within the run's write limit."""
        if self._write_limit is not None:
            trades = trades[: max(0, self._write_limit - self.writer.written)]
        if not trades:
            return
        below = [trade for trade in trades if trade.trade_id < state.from_id]
        if below:
            # Never expected: the stream resumes after the claim. Those ids are the backfill's.
            self._log.error(f"Not writing {len(below)} trade(s) below the claim: {below[:3]}")
            trades = [trade for trade in trades if trade.trade_id >= state.from_id]
        self.holder.ensure_held()
        self.writer.write(trades)
        newest = max(trade.timestamp_ms for trade in trades)
        if state.newest_written_ms is None or newest > state.newest_written_ms:
            state.newest_written_ms = newest


def _waiting_id(waiting: _Waiting) -> int:
    return waiting.trade.trade_id
