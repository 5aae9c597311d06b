"""Tail claims: how a live writer owns the newest ids of its pairs, and how backfills see that.

A live run takes one claim per pair in `<topic>.coverage` (see coverage_log.py for the pattern):

- the acquisition, key `live-claim|<pair>|<owner>`, published before the run reads the trades
  topic; its offset is the run's place in line among live writers of the pair;
- heartbeats, key `live-beat|<pair>|<owner>`, every CLAIM_HEARTBEAT_SECONDS from a thread,
  carrying the claim's state: `from_id` (the writer writes every id >= from_id, unset while it
  waits for its turn), `handed_back` (id ranges >= from_id it gave up healing: a backfill fills
  them) and the lease a watcher must wait before presuming the writer dead.

A backfill may write id `x` of a pair only if every claim on the pair that is not over has
`x < from_id` or `x` in its `handed_back`. A claim is over when it was released, or when its
heartbeat stood still for its lease while watched (never by comparing clocks of two hosts).

The live writer holds its claim only while it keeps its standing (acknowledged heartbeats never
more than CLAIM_STANDING_SECONDS apart) and no other writer claims its ids; it checks before
every write and fails loudly otherwise. A claim's lease covers the standing bound plus the
writer's producer delivery timeout, so every write of a writer presumed dead has landed or failed
by then.
"""

from __future__ import annotations

import bisect
import dataclasses
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException, Producer

from trades_platform.coverage.coverage_log import (
    POLL_SECONDS,
    POSSIBLY_PERSISTED_SECONDS,
    CoverageLogReader,
    Heartbeater,
    HeartbeatWatch,
    Liveness,
    coverage_producer,
    ensure_coverage_topic,
    plausible_wall_clock_ms,
    publish_and_wait,
)
from trades_platform.coverage.id_ranges import IdRanges
from trades_platform.coverage.log_snapshots import LIVE_CLAIM_KEYS
from trades_platform.coverage.window_leases import BACKFILL_PAGE_BOUND_SECONDS
from trades_platform.settings import MAX_DELIVERY_TIMEOUT_MS, KafkaSettings
from trades_platform.topic_reader import RejectedRecords
from trades_platform.topics import coverage_topic
from trades_platform.trade import MAX_TRADE_ID, PAIR_PATTERN

CLAIM_KEY_PREFIX, BEAT_KEY_PREFIX = LIVE_CLAIM_KEYS

# How often a live writer heartbeats its claims.
CLAIM_HEARTBEAT_SECONDS = 10.0
# A heartbeat the broker did not acknowledge within this bound does not count.
CLAIM_HEARTBEAT_ACK_SECONDS = 5.0
# A live writer writes only while its acknowledged heartbeats are never further apart than this:
# a broker out of reach for up to about 24 s (the bound less one interval, less a reconnect) costs
# the claim nothing, whenever in the heartbeat's cycle it leaves.
CLAIM_STANDING_SECONDS = 35.0
# After claiming, the live writer waits this long, then re-reads the topic: any backfill page that
# started before the claim was visible has landed by then, or failed and will never land.
CLAIM_GRACE_SECONDS = 2 * BACKFILL_PAGE_BOUND_SECONDS + POSSIBLY_PERSISTED_SECONDS
# Handed-back ranges a claim carries at most; past it, the oldest two are merged (see hand_back).
MAX_HANDED_BACK_RANGES = 500


def claim_lease_seconds(delivery_timeout_ms: int) -> float:
    """How long a watcher must see a live writer's heartbeat stand still to presume it over.

    The writer's last write starts at most CLAIM_STANDING_SECONDS after its last counted heartbeat
    and lands or fails within its producer's delivery timeout (a failed one may still land within
    POSSIBLY_PERSISTED_SECONDS); heartbeats are seen within the ack bound plus a poll.
    ARCHITECTURE.md has the argument.
    """
    return (
        CLAIM_STANDING_SECONDS
        + delivery_timeout_ms / 1000
        + POSSIBLY_PERSISTED_SECONDS
        + CLAIM_HEARTBEAT_ACK_SECONDS
        + POLL_SECONDS
        + CLAIM_HEARTBEAT_SECONDS / 2
    )


# The longest lease a writer of this product takes (at the longest delivery timeout the settings
# allow): a longer one read from the log is no writer's and is rejected.
MAX_CLAIM_LEASE_SECONDS = claim_lease_seconds(MAX_DELIVERY_TIMEOUT_MS)
# Owners are Dagster run ids (or uuid4 hex); anything much longer is not a writer's name.
MAX_OWNER_LENGTH = 100


class OtherLiveWriterError(RuntimeError):
    """Another live run holds a claim on one of this run's pairs and is alive."""


class ClaimLost(RuntimeError):
    """This live writer can no longer be sure it alone writes its pairs' tails: it stops."""


@dataclass(frozen=True)
class TailClaim:
    """A live writer's claim on a pair, as last read from the coverage log."""

    pair: str
    owner: str
    # The offset of the acquisition: the claim's place in line among live writers of the pair.
    offset: int
    acquired_ms: int
    released: bool
    lease_seconds: float
    # Unset while the writer waits for its turn: it claims no id yet.
    from_id: int | None = None
    handed_back: tuple[tuple[int, int], ...] = ()
    beat: int = 0
    heartbeat_ms: int = 0

    def lets_backfill_write(self, trade_id: int) -> bool:
        """True if this claim leaves `trade_id` to backfills."""
        if self.from_id is None or trade_id < self.from_id:
            return True
        index = bisect.bisect_right(self.handed_back, (trade_id, float("inf"))) - 1
        return index >= 0 and self.handed_back[index][0] <= trade_id <= self.handed_back[index][1]


@dataclass(frozen=True)
class ObservedClaim:
    """A claim and what this process has seen of its heartbeat."""

    claim: TailClaim
    liveness: Liveness
    silent_seconds: float

    @property
    def over(self) -> bool:
        """Released, or presumed dead."""
        return self.liveness == "ended"


@dataclass(frozen=True)
class _Beat:
    """A heartbeat record of a claim, checked."""

    owner: str
    beat: int
    heartbeat_ms: int
    lease_seconds: float
    from_id: int | None
    handed_back: tuple[tuple[int, int], ...]


class ClaimBoard:
    """Every live writer's claims, read incrementally from the coverage log and watched.

    Each record is checked as it is read: one that is malformed or implausible (a time beyond the
    clocks' margin, a lease longer than any writer takes, an id out of range) is skipped and
    reported in `rejected` with its offset. A rejected heartbeat leaves the claim as its last good
    heartbeat described it, so a forged record can neither end a claim nor keep one alive longer
    than its lease.
    """

    def __init__(self, settings: KafkaSettings, owner: str | None = None) -> None:
        self.settings = settings
        self.owner = owner or uuid.uuid4().hex
        ensure_coverage_topic(settings)
        self._log = CoverageLogReader(settings, (CLAIM_KEY_PREFIX, BEAT_KEY_PREFIX))
        self._acquisitions: dict[str, tuple[int, TailClaim]] = {}
        self._beats: dict[str, _Beat] = {}
        self._watch = HeartbeatWatch()

    @property
    def rejected(self) -> RejectedRecords:
        """Coverage records that were not valid claims or heartbeats, skipped."""
        return self._log.rejected

    @property
    def records_fetched(self) -> int:
        """Coverage records fetched from the broker so far (bounded at a start by snapshots)."""
        return self._log.fetched

    def read(self, timeout_seconds: float = 30.0) -> dict[str, list[ObservedClaim]]:
        """Per pair, the claims of every other writer, oldest first, as of the end of the log."""
        for offset, key, value in self._log.new_records(timeout_seconds):
            try:
                if key.startswith(CLAIM_KEY_PREFIX):
                    self._acquisitions[key[len(CLAIM_KEY_PREFIX) :]] = (
                        offset,
                        _claim_from_acquisition(offset, value),
                    )
                elif key.startswith(BEAT_KEY_PREFIX):
                    self._beats[key[len(BEAT_KEY_PREFIX) :]] = _beat_from_record(value)
            except (KeyError, TypeError, ValueError, OverflowError) as error:
                self._log.reject(offset, f"{key[:80]!r}: {str(error)[:200]}")
        observed: dict[str, list[ObservedClaim]] = {}
        for holder, (_offset, acquired) in sorted(
            self._acquisitions.items(), key=lambda item: item[1][0]
        ):
            claim = _with_beat(acquired, self._beats.get(holder))
            if claim.owner == self.owner:
                continue
            if claim.released:
                observed.setdefault(claim.pair, []).append(ObservedClaim(claim, "ended", 0.0))
                continue
            watched = self._watch.observe(
                holder, (claim.beat, claim.heartbeat_ms), claim.lease_seconds
            )
            observed.setdefault(claim.pair, []).append(
                ObservedClaim(claim, watched.liveness, watched.silent_seconds)
            )
        # Drop what can no longer matter, so the dictionaries stay bounded by the live writers.
        self._acquisitions = {
            holder: entry for holder, entry in self._acquisitions.items() if not entry[1].released
        }
        self._beats = {
            holder: beat for holder, beat in self._beats.items() if holder in self._acquisitions
        }
        return observed

    def own_claims(self) -> dict[str, tuple[int, bool]]:
        """This writer's acquisitions as read so far: pair -> (offset, released)."""
        return {
            claim.pair: (offset, claim.released)
            for offset, claim in self._acquisitions.values()
            if claim.owner == self.owner
        }

    def close(self) -> None:
        """Close the reader."""
        self._log.close()


def _claim_from_acquisition(offset: int, acquisition: dict[str, Any]) -> TailClaim:
    """The claim an acquisition record states; ValueError (or KeyError, TypeError) if malformed."""
    pair, owner = acquisition["pair"], acquisition["owner"]
    if not (isinstance(pair, str) and re.fullmatch(PAIR_PATTERN, pair)):
        raise ValueError(f"pair {str(pair)[:40]!r} is not a pair name")
    if not (isinstance(owner, str) and 0 < len(owner) <= MAX_OWNER_LENGTH):
        raise ValueError(f"owner {str(owner)[:40]!r} is not a writer's name")
    acquired_ms = plausible_wall_clock_ms(acquisition["acquired_ms"], "acquired_ms")
    return TailClaim(
        pair=pair,
        owner=owner,
        offset=offset,
        acquired_ms=acquired_ms,
        released=acquisition.get("released") is True,
        lease_seconds=_plausible_lease(acquisition["lease_seconds"]),
        heartbeat_ms=acquired_ms,
    )


def _beat_from_record(beat: dict[str, Any]) -> _Beat:
    """A heartbeat record, checked; ValueError (or KeyError, TypeError) if malformed."""
    owner, number, from_id = beat["owner"], beat["beat"], beat.get("from_id")
    if not isinstance(owner, str):
        raise ValueError("owner is not a string")
    if type(number) is not int or number < 0:
        raise ValueError(f"beat {str(number)[:40]!r} is not a count")
    if from_id is not None and (type(from_id) is not int or not 0 < from_id <= MAX_TRADE_ID):
        raise ValueError(f"from_id {str(from_id)[:40]} is not a trade id")
    handed_back = beat.get("handed_back") or []
    if not isinstance(handed_back, list) or len(handed_back) > MAX_HANDED_BACK_RANGES:
        raise ValueError(f"handed_back is not a list of at most {MAX_HANDED_BACK_RANGES} ranges")
    ranges = []
    for first, last in handed_back:
        if not (type(first) is int and type(last) is int and 0 < first <= last <= MAX_TRADE_ID):
            raise ValueError(f"handed_back range {str([first, last])[:60]} is not an id range")
        ranges.append((first, last))
    return _Beat(
        owner=owner,
        beat=number,
        heartbeat_ms=plausible_wall_clock_ms(beat["heartbeat_ms"], "heartbeat_ms"),
        lease_seconds=_plausible_lease(beat["lease_seconds"]),
        from_id=from_id,
        handed_back=tuple(sorted(ranges)),
    )


def _plausible_lease(value: object) -> float:
    """A lease read from the log: positive and no longer than any writer of this product takes."""
    if type(value) not in (int, float):
        raise ValueError(f"lease_seconds {str(value)[:40]!r} is not a number")
    assert isinstance(value, int | float)
    if not 0 < value <= MAX_CLAIM_LEASE_SECONDS:
        raise ValueError(
            f"lease_seconds {value} is beyond the longest lease a writer takes "
            f"({MAX_CLAIM_LEASE_SECONDS:.0f}s)"
        )
    return float(value)


def _with_beat(claim: TailClaim, beat: _Beat | None) -> TailClaim:
    """The claim as its latest heartbeat (of the same owner) describes it."""
    if beat is None or beat.owner != claim.owner:
        return claim
    return dataclasses.replace(
        claim,
        from_id=beat.from_id,
        handed_back=beat.handed_back,
        beat=beat.beat,
        heartbeat_ms=beat.heartbeat_ms,
        lease_seconds=beat.lease_seconds,
    )


@dataclass
class _PairClaim:
    from_id: int | None = None
    handed_back: IdRanges | None = None


class TailClaimHolder:
    """A live run's claims on its pairs: acquire, wait for its turn, claim, heartbeat, release."""

    def __init__(
        self,
        settings: KafkaSettings,
        pairs: Iterable[str],
        *,
        lease_seconds: float,
        owner: str | None = None,
        on_heartbeat_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.owner = owner or uuid.uuid4().hex
        self.lease_seconds = lease_seconds
        self.topic = coverage_topic(settings)
        self._pairs = {pair: _PairClaim() for pair in pairs}
        self._on_heartbeat_failure = on_heartbeat_failure
        self._lock = threading.Lock()
        self._producer: Producer | None = None
        self._board: ClaimBoard | None = None
        self._board_lock = threading.Lock()
        self._heartbeater: Heartbeater | None = None
        self._acquired_ms = 0
        # Claim records of other writers that were malformed or implausible, skipped.
        self.rejected = RejectedRecords()

    # --- the claim's life ------------------------------------------------------------------

    def acquire(self, timeout_seconds: float = 30.0) -> None:
        """Publish this run's place in line on each pair and start heartbeating."""
        ensure_coverage_topic(self.settings)
        self._producer = coverage_producer(self.settings)
        self._board = ClaimBoard(self.settings, owner=self.owner)
        self.rejected = self._board.rejected
        self._acquired_ms = int(time.time() * 1000)
        sent_at = time.monotonic()
        publish_and_wait(
            self._producer,
            self.topic,
            [(self._claim_key(pair), self._acquisition(pair)) for pair in self._pairs],
            timeout_seconds=timeout_seconds,
            what=f"live claims on {sorted(self._pairs)} at {self.settings.broker_address}",
        )
        self._heartbeater = Heartbeater(
            self._producer,
            self.topic,
            self._heartbeat_records,
            interval_seconds=CLAIM_HEARTBEAT_SECONDS,
            ack_seconds=CLAIM_HEARTBEAT_ACK_SECONDS,
            standing_seconds=CLAIM_STANDING_SECONDS,
            what=f"live claims of {self.owner}",
            on_failure=self._on_heartbeat_failure,
            check_after_beat=self._read_back,
        )
        self._heartbeater.start(sent_at)

    def wait_for_turn(
        self,
        on_wait: Callable[[list[ObservedClaim]], None] | None = None,
        *,
        report_every_seconds: float = 15.0,
    ) -> float:
        """Wait until no other live writer's claim ahead of this run's is over; seconds waited.

        A claim ahead that is seen heartbeating means two live runs of one pair:
        `OtherLiveWriterError` (the other keeps its pairs). One whose heartbeat stands still is
        waited out for its lease (a run that crashed or was killed).
        """
        started: float | None = None
        reported_at = float("-inf")
        while True:
            ahead = self._claims_ahead()
            self.ensure_held()
            if not ahead:
                return 0.0 if started is None else time.monotonic() - started
            started = started if started is not None else time.monotonic()
            alive = [observed for observed in ahead if observed.liveness == "alive"]
            if alive:
                raise OtherLiveWriterError(
                    "pairs "
                    + ", ".join(
                        f"{observed.claim.pair} (live run {observed.claim.owner}, heartbeat "
                        f"{observed.silent_seconds:.0f}s ago)"
                        for observed in alive
                    )
                    + " are being written by other live runs: stop them or give this run "
                    "other pairs (LIVE_SHARDS, the op's `pairs`)"
                )
            if on_wait is not None and time.monotonic() - reported_at >= report_every_seconds:
                on_wait(ahead)
                reported_at = time.monotonic()
            time.sleep(POLL_SECONDS)

    def claim(self, from_ids: dict[str, int], *, timeout_seconds: float) -> None:
        """Claim every id >= from_id of each pair; return once a heartbeat carrying it counted."""
        with self._lock:
            for pair, from_id in from_ids.items():
                self._pairs[pair].from_id = from_id
        assert self._heartbeater is not None, "acquire() first"
        if not self._heartbeater.beat_now(wait_seconds=timeout_seconds):
            self.ensure_held()
            raise ClaimLost(
                f"the claims {from_ids} (pair: from id) were not acknowledged by "
                f"{self.settings.broker_address} within {timeout_seconds:.0f}s"
            )

    def hand_back(self, pair: str, ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """Give id ranges back to the backfills; return every range now handed back for `pair`.

        The caller must never write these ids again. Past MAX_HANDED_BACK_RANGES the two oldest
        ranges merge, so ids between them are handed back too: the caller must drop those as
        well (they are in the returned ranges).
        """
        with self._lock:
            state = self._pairs[pair]
            handed = state.handed_back = state.handed_back or IdRanges()
            for first, last in ranges:
                handed.add_range(first, last)
            merged = list(handed)
            while len(merged) > MAX_HANDED_BACK_RANGES:
                (first, _), (_, last) = merged[0], merged[1]
                merged[:2] = [(first, last)]
            state.handed_back = IdRanges(merged)
        if self._heartbeater is not None:
            self._heartbeater.beat_now()
        return merged

    def ensure_held(self) -> None:
        """Raise ClaimLost unless this writer still holds its claims (standing, read-back)."""
        assert self._heartbeater is not None, "acquire() first"
        reason = self._heartbeater.lost_reason()
        if reason is not None:
            raise ClaimLost(
                f"live claims of run {self.owner} on {sorted(self._pairs)} lost ({reason}): "
                "another writer may write these ids now, so this run stops writing and fails; "
                "the next run resumes from the topic"
            )

    def release(self) -> None:
        """Stop heartbeating and release the claims; only once every write is acknowledged."""
        if self._heartbeater is not None:
            self._heartbeater.stop()
        if self._producer is not None:
            released = [
                (self._claim_key(pair), {**self._acquisition(pair), "released": True})
                for pair in self._pairs
            ]
            try:
                publish_and_wait(
                    self._producer,
                    self.topic,
                    released,
                    timeout_seconds=10.0,
                    what=f"release of the live claims of {self.owner}",
                )
            except (TimeoutError, KafkaException) as error:
                self._report(f"release not acknowledged ({error}); the claims expire by lease")
        self.close()

    def close(self) -> None:
        """Stop heartbeating (if still running) and close the clients, without releasing."""
        if self._heartbeater is not None:
            self._heartbeater.stop()
        if self._board is not None:
            with self._board_lock:
                self._board.close()
        # Dropping every reference lets the producer go: it would otherwise keep reconnecting.
        self._producer = self._board = self._heartbeater = None

    # --- internals -------------------------------------------------------------------------

    def _claims_ahead(self) -> list[ObservedClaim]:
        """Other writers' claims on this run's pairs, earlier in line, not over."""
        assert self._board is not None, "acquire() first"
        with self._board_lock:
            claims = self._board.read()
            own = self._board.own_claims()
        ahead: list[ObservedClaim] = []
        for pair in self._pairs:
            mine = own.get(pair)
            if mine is None:
                raise ClaimLost(f"this run's claim on {pair} is not in {self.topic!r}")
            ahead.extend(
                observed
                for observed in claims.get(pair, [])
                if observed.claim.offset < mine[0] and not observed.over
            )
        return ahead

    def _read_back(self) -> str | None:
        """After a counted heartbeat: the claims are still this run's and nobody else's."""
        board = self._board
        if board is None:
            return None
        with self._board_lock:
            claims = board.read(timeout_seconds=CLAIM_HEARTBEAT_ACK_SECONDS)
            own = board.own_claims()
        for pair, state in self._pairs.items():
            mine = own.get(pair)
            if mine is None or mine[1]:
                return f"the claim on {pair} is missing or released in {self.topic!r}"
            if state.from_id is None:
                continue
            for observed in claims.get(pair, []):
                if observed.claim.from_id is not None and not observed.over:
                    return (
                        f"live run {observed.claim.owner} also claims {pair} from id "
                        f"{observed.claim.from_id}"
                    )
        return None

    def _acquisition(self, pair: str) -> dict[str, Any]:
        return {
            "pair": pair,
            "owner": self.owner,
            "acquired_ms": self._acquired_ms,
            "lease_seconds": self.lease_seconds,
            "released": False,
        }

    def _heartbeat_records(self, beat: int) -> list[tuple[str, dict[str, Any]]]:
        now_ms = int(time.time() * 1000)
        with self._lock:
            return [
                (
                    f"{BEAT_KEY_PREFIX}{pair}|{self.owner}",
                    {
                        "pair": pair,
                        "owner": self.owner,
                        "beat": beat,
                        "heartbeat_ms": now_ms,
                        "lease_seconds": self.lease_seconds,
                        "from_id": state.from_id,
                        "handed_back": [list(r) for r in state.handed_back or ()],
                    },
                )
                for pair, state in self._pairs.items()
            ]

    def _claim_key(self, pair: str) -> str:
        return f"{CLAIM_KEY_PREFIX}{pair}|{self.owner}"

    def _report(self, reason: str) -> None:
        if self._on_heartbeat_failure is not None:
            self._on_heartbeat_failure(f"live claims of {self.owner}: {reason}")
