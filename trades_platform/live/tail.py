"""The live writer's half of exactly-once: it owns each pair's tail of ids and heals its gaps.

At start it reads the topic; for each pair it claims every id after the highest one present (or,
for a pair new to the topic or silent for longer than the heal horizon, every id from the first
trade it receives), waits out the grace period, and reads the topic again before writing. Gaps
(reconnects, id jumps, the time the previous run was down) are fetched from REST and written
with `source="heal"` before the live trades that follow them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from trades_platform.coverage.claims import (
    CLAIM_GRACE_SECONDS,
    HEARTBEAT_SECONDS,
    LEASE_SECONDS,
    ClaimBoard,
)
from trades_platform.coverage.id_ranges import IdRanges
from trades_platform.coverage.topic_ids import PairIds, scan_topic_ids
from trades_platform.coverage.writer import DeduplicatingWriter
from trades_platform.kraken.rest import KrakenRestClient, KrakenRestError, WindowNotClosedError
from trades_platform.kraken.websocket import TradeGap
from trades_platform.producer import ProducerSettings
from trades_platform.trade import Trade


@dataclass
class TailStats:
    """What healing did, for the progress log and the observations."""

    gaps: int = 0
    healed: int = 0
    unhealed: int = 0
    claims: int = 0


# Clocks differ: near midnight, act as if the day had already turned.
_CLOCK_SKEW_US = 10 * 60 * 1_000_000
_DAY_US = 86_400 * 1_000_000


def backfill_may_reach(time_us: int, now_us: int | None = None) -> bool:
    """True when a trade at `time_us` may belong to a day a backfill is allowed to write.

    Backfills write only UTC days that are over; ids from a trade of the current day onwards
    are out of their reach, so claiming them needs no grace period.
    """
    now_us = now_us if now_us is not None else int(time.time() * 1_000_000)
    current_day_start = (now_us + _CLOCK_SKEW_US) // _DAY_US * _DAY_US
    return time_us < current_day_start


class OtherLiveWriterError(RuntimeError):
    """Another live run holds a live claim on one of this run's pairs."""


class LiveTail:
    """Claims, heartbeats, the grace re-scan, and healing, around one DeduplicatingWriter."""

    def __init__(
        self,
        *,
        settings: ProducerSettings,
        writer: DeduplicatingWriter,
        board: ClaimBoard,
        rest: KrakenRestClient | None,
        log: logging.Logger,
        heal_horizon_seconds: float,
        grace_seconds: float = CLAIM_GRACE_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.writer = writer
        self.board = board
        self.rest = rest
        self.stats = TailStats()
        self._log = log
        self._heal_horizon_us = int(heal_horizon_seconds * 1_000_000)
        self._grace_seconds = grace_seconds
        self._sleep = sleep
        self._claimed: dict[str, int] = {}
        self._heartbeat_at = 0.0
        # A claim waits for an unreachable broker as long as a trade does (the configured
        # delivery timeout): a shorter bound would fail the run before that bound is reached.
        self._claim_timeout_seconds = max(30.0, settings.delivery_timeout_ms / 1000)

    def start(self, pairs: list[str], scanned: dict[str, PairIds]) -> dict[str, tuple[int, int]]:
        """Claim the tails that resume from the topic; return where the stream resumes each."""
        self._wait_for_other_live_writers(pairs)
        now_us = int(time.time() * 1_000_000)
        resume: dict[str, tuple[int, int]] = {}
        for pair in pairs:
            found = scanned.get(pair)
            highest = found.ids.highest if found else None
            if highest is None or found is None or found.highest_time_ms is None:
                continue
            age_us = now_us - found.highest_time_ms * 1000
            if age_us > self._heal_horizon_us:
                self._log.warning(
                    f"{pair}: newest trade in the topic (id {highest}) is {age_us / 3.6e9:.1f} h "
                    "old, beyond the heal horizon; the gap up to the first live trade is left "
                    "to the backfill"
                )
                continue
            resume[pair] = (highest, found.highest_time_ms * 1000)
        self._claim({pair: (last_id + 1, time_us) for pair, (last_id, time_us) in resume.items()})
        return resume

    def before_write(self, trades: Iterable[Trade]) -> None:
        """Claim pairs seen for the first time and keep every claim's heartbeat fresh."""
        new_pairs: dict[str, tuple[int, int]] = {}
        for trade in trades:
            if trade.pair not in self._claimed and trade.pair not in new_pairs:
                new_pairs[trade.pair] = (trade.trade_id, trade.timestamp_ms * 1000)
        if new_pairs:
            self._claim(new_pairs)
        self.keep_claims_fresh()

    def keep_claims_fresh(self) -> None:
        """Re-publish the claims when a heartbeat is due (they die after the lease)."""
        if self._claimed and time.monotonic() - self._heartbeat_at >= HEARTBEAT_SECONDS:
            for pair, from_id in self._claimed.items():
                self.board.publish(pair, from_id, timeout_seconds=self._claim_timeout_seconds)
            self._heartbeat_at = time.monotonic()

    def heal(self, gap: TradeGap) -> None:
        """Fetch the missing ids from REST and write them before the trades that follow."""
        self.stats.gaps += 1
        wanted = range(gap.first_missing_id, gap.last_missing_id + 1)
        if self.rest is not None:
            self._fetch_and_write(gap, wanted)
        present = self.writer.present.get(gap.pair, IdRanges())
        missing = present.missing(wanted.start, wanted.stop - 1)
        unhealed = sum(last - first + 1 for first, last in missing)
        self.stats.unhealed += unhealed
        if unhealed:
            self._log.warning(
                f"{gap.pair}: {unhealed} trade(s) could not be healed from REST {missing[:5]}; "
                "the backfill of that day fills them"
            )
        else:
            self._log.info(
                f"{gap.pair}: healed ids {gap.first_missing_id}..{gap.last_missing_id} from REST"
            )

    def release(self) -> None:
        """Give the tails back (clean stop): backfills may then fill any id again."""
        for pair, from_id in self._claimed.items():
            self.board.publish(pair, from_id, released=True)

    def _wait_for_other_live_writers(self, pairs: list[str]) -> None:
        """Two live writers of one pair would both write its tail: wait out the other's lease."""
        deadline = time.monotonic() + LEASE_SECONDS + HEARTBEAT_SECONDS
        while True:
            claims = self.board.claims()
            busy = {
                pair: claims[pair].owner
                for pair in pairs
                if pair in claims
                and claims[pair].owner != self.board.owner
                and claims[pair].alive()
            }
            if not busy:
                return
            if time.monotonic() > deadline:
                raise OtherLiveWriterError(
                    f"pairs {busy} are being written by other live runs (owner ids shown); "
                    "stop them or give this run other pairs"
                )
            self._log.warning(f"Waiting for other live writers of {busy} to stop or expire")
            self._sleep(HEARTBEAT_SECONDS / 2)

    def _claim(self, claims: dict[str, tuple[int, int]]) -> None:
        """Publish claims {pair: (from_id, time of from_id or just before it, µs)}."""
        if not claims:
            return
        for pair, (from_id, _time_us) in claims.items():
            self.board.publish(pair, from_id, timeout_seconds=self._claim_timeout_seconds)
            self._claimed[pair] = from_id
            self.stats.claims += 1
        self._heartbeat_at = time.monotonic()
        from_ids = {pair: from_id for pair, (from_id, _) in claims.items()}
        overlapping = [pair for pair, (_, time_us) in claims.items() if backfill_may_reach(time_us)]
        if overlapping:
            # A backfill page that began before these claims were visible lands (or fails)
            # within the grace period; reading the topic after it makes those ids known.
            self._sleep(self._grace_seconds)
            for pair, found in scan_topic_ids(self.settings, overlapping).items():
                self.writer.replace_present(pair, found.ids)
        self._log.info(f"Claimed the tails {from_ids} (ids from which this run writes)")

    def _fetch_and_write(self, gap: TradeGap, wanted: range) -> None:
        assert self.rest is not None
        # Kraken's clock (seconds) can lag the trade that revealed the gap: retry briefly.
        for attempt in range(3):
            try:
                for rows in self.rest.trade_rows(
                    gap.pair, gap.after_time_us, gap.before_time_us + 1
                ):
                    self.keep_claims_fresh()
                    trades = [
                        row.to_trade(gap.pair, source="heal")
                        for row in rows
                        if row.trade_id in wanted
                    ]
                    self.stats.healed += len(self.writer.write(trades))
                return
            except WindowNotClosedError:
                self._sleep(1.0 + attempt)
            except KrakenRestError as error:
                self._log.warning(f"{gap.pair}: healing from REST failed: {error}")
                return
