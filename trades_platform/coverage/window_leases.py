"""Window leases: one backfill at a time writes a pair's time window, across Dagster instances.

Two backfills of one partition (a second Dagster instance, a manual `dagster job execute`, a pool
limit raised above 1) would each scan the topic once and both write every id they did not see.
So a backfill takes a lease on its (pair, window) in `<topic>.coverage` before it reads anything:

1. It publishes an acquisition record under a key of its own, `window|<pair>|<owner>`. Nothing
   rewrites that key until the release, so the record's offset in the one-partition log is the
   lease's place in line, the same for every reader.
2. It heartbeats under a second key, `window-beat|<pair>|<owner>`, every WINDOW_HEARTBEAT_SECONDS.
3. It reads the log. Every unreleased lease on an overlapping window of the pair with a lower
   offset is ahead of it; it waits until each one is over: released, or its heartbeat did not
   change for WINDOW_LEASE_SECONDS while this writer watched (or is older than the lease plus the
   clock margin by the wall clock, for leases left by runs killed long ago).
4. Then it scans the trades topic and writes, checking its standing before every page.

A holder whose acknowledged heartbeats were ever more than WINDOW_STANDING_SECONDS apart, or whose
last one is older than that, has lost its standing for good: a waiter may have presumed it dead. It
writes no further page (`LeaseLost`) and its run fails; re-running the partition is safe. Since
WINDOW_STANDING_SECONDS + the page bound + POSSIBLY_PERSISTED_SECONDS +
WINDOW_HEARTBEAT_ACK_SECONDS + POLL_SECONDS < WINDOW_LEASE_SECONDS, a holder presumed dead has
stopped writing, and a page it gave up on has landed or never will, before the waiter starts
(ARCHITECTURE.md has the argument). A holder whose page was not acknowledged keeps the lease for
POSSIBLY_PERSISTED_SECONDS before it releases it, for the same reason.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException, Producer

from trades_platform.coverage.coverage_log import (
    POLL_SECONDS,
    POSSIBLY_PERSISTED_SECONDS,
    CoverageLogReader,
    Heartbeater,
    HeartbeatWatch,
    coverage_producer,
    ensure_coverage_topic,
    plausible_wall_clock_ms,
    publish_and_wait,
)
from trades_platform.coverage.log_snapshots import WINDOW_LEASE_KEYS
from trades_platform.settings import KafkaSettings
from trades_platform.topic_reader import RejectedRecords
from trades_platform.topics import coverage_topic
from trades_platform.trade import PAIR_PATTERN, format_time_us

# A backfill's page is acknowledged or failed within this bound (its producer's delivery timeout).
BACKFILL_PAGE_BOUND_SECONDS = 5.0
# How often a lease holder heartbeats.
WINDOW_HEARTBEAT_SECONDS = 5.0
# A heartbeat the broker did not acknowledge within this bound does not count.
WINDOW_HEARTBEAT_ACK_SECONDS = 5.0
# A waiter presumes a holder dead after watching its heartbeat stand still this long.
WINDOW_LEASE_SECONDS = 60.0
# A holder writes only while its acknowledged heartbeats are never further apart than this.
WINDOW_STANDING_SECONDS = 15.0

LEASE_KEY_PREFIX, HEARTBEAT_KEY_PREFIX = WINDOW_LEASE_KEYS

if (
    WINDOW_STANDING_SECONDS
    + BACKFILL_PAGE_BOUND_SECONDS
    + POSSIBLY_PERSISTED_SECONDS
    + WINDOW_HEARTBEAT_ACK_SECONDS
    + POLL_SECONDS
    >= WINDOW_LEASE_SECONDS
):
    raise RuntimeError("window lease timings break the exclusion argument in ARCHITECTURE.md")


class LeaseLost(RuntimeError):
    """This writer cannot be sure that no other writer presumes its lease over."""


@dataclass(frozen=True)
class WindowLease:
    """A writer's lease on the trades of `pair` with start_us <= time < end_us."""

    pair: str
    start_us: int
    end_us: int
    owner: str
    acquired_ms: int
    released: bool = False

    def overlaps(self, other: WindowLease) -> bool:
        """True if both leases cover some instant of the same pair."""
        return (
            self.pair == other.pair
            and self.start_us < other.end_us
            and other.start_us < self.end_us
        )


@dataclass(frozen=True)
class LeaseAhead:
    """Another writer's lease ahead of ours in line, as last read."""

    lease: WindowLease
    offset: int
    # The latest heartbeat (number, wall-clock ms), or the acquisition before the first one.
    heartbeat: tuple[int, int]
    # Seconds this writer has watched that heartbeat stand still.
    silent_seconds: float


class WindowLeaseHolder:
    """Takes, heartbeats, waits its turn for, checks and releases one window lease."""

    def __init__(
        self,
        settings: KafkaSettings,
        pair: str,
        start_us: int,
        end_us: int,
        *,
        owner: str | None = None,
        on_heartbeat_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.topic = coverage_topic(settings)
        self.lease = WindowLease(pair, start_us, end_us, owner or uuid.uuid4().hex, 0)
        self._on_heartbeat_failure = on_heartbeat_failure
        self._producer: Producer | None = None
        self._log: CoverageLogReader | None = None
        self._heartbeater: Heartbeater | None = None
        # The log as read so far: the latest lease and heartbeat per holder.
        self._leases: dict[str, tuple[int, WindowLease]] = {}
        self._heartbeats: dict[str, tuple[int, int]] = {}
        self._watch = HeartbeatWatch()

    def __enter__(self) -> WindowLeaseHolder:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()

    @property
    def owner(self) -> str:
        """Who holds the lease: the Dagster run id for a backfill."""
        return self.lease.owner

    def acquire(self) -> None:
        """Publish the acquisition record and start heartbeating."""
        ensure_coverage_topic(self.settings)
        self._producer = coverage_producer(self.settings)
        self._log = CoverageLogReader(self.settings, (LEASE_KEY_PREFIX, HEARTBEAT_KEY_PREFIX))
        sent_at = time.monotonic()
        self.lease = WindowLease(
            self.lease.pair,
            self.lease.start_us,
            self.lease.end_us,
            self.lease.owner,
            int(time.time() * 1000),
        )
        self._publish(self._lease_key(self.lease), self.lease.__dict__, timeout_seconds=30.0)
        self._heartbeater = Heartbeater(
            self._producer,
            self.topic,
            self._heartbeat_records,
            interval_seconds=WINDOW_HEARTBEAT_SECONDS,
            ack_seconds=WINDOW_HEARTBEAT_ACK_SECONDS,
            standing_seconds=WINDOW_STANDING_SECONDS,
            what=f"window lease {self._describe()}",
            on_failure=self._on_heartbeat_failure,
        )
        self._heartbeater.start(sent_at)

    def leases_ahead(self) -> list[LeaseAhead]:
        """Unreleased leases on an overlapping window, earlier in line, not presumed dead."""
        self._read_log()
        own = self._leases.get(self._lease_key(self.lease))
        if own is None:
            raise LeaseLost(f"the acquisition of {self._describe()} is not in {self.topic!r}")
        own_offset = own[0]
        ahead = []
        for key, (offset, lease) in sorted(self._leases.items(), key=lambda item: item[1][0]):
            if offset >= own_offset or lease.released or not lease.overlaps(self.lease):
                continue
            heartbeat = self._heartbeats.get(_holder(key), (0, lease.acquired_ms))
            watched = self._watch.observe(key, heartbeat, WINDOW_LEASE_SECONDS)
            if watched.liveness == "ended":
                continue  # presumed dead
            ahead.append(LeaseAhead(lease, offset, heartbeat, watched.silent_seconds))
        return ahead

    def wait_for_turn(
        self,
        on_wait: Callable[[list[LeaseAhead]], None] | None = None,
        *,
        report_every_seconds: float = 15.0,
    ) -> float:
        """Block until no lease is ahead of ours; return the seconds waited."""
        started = time.monotonic()
        reported_at = float("-inf")
        while ahead := self.leases_ahead():
            self.ensure_held()
            if on_wait is not None and time.monotonic() - reported_at >= report_every_seconds:
                on_wait(ahead)
                reported_at = time.monotonic()
            time.sleep(POLL_SECONDS)
        self.ensure_held()
        return time.monotonic() - started

    def ensure_held(self) -> None:
        """Raise LeaseLost unless this writer has kept its standing (see the module docstring)."""
        assert self._heartbeater is not None, "acquire() first"
        reason = self._heartbeater.lost_reason()
        if reason is not None:
            raise LeaseLost(
                f"lease on {self._describe()} lost ({reason}): another backfill may "
                "write this window now, so this run stops; re-running it is safe"
            )

    def release(self) -> None:
        """Stop heartbeating and publish the release; call after the last page is acknowledged."""
        if self._heartbeater is not None:
            self._heartbeater.stop()
        if self._producer is not None:
            released = {**self.lease.__dict__, "released": True}
            try:
                self._publish(self._lease_key(self.lease), released, timeout_seconds=10.0)
            except (TimeoutError, KafkaException) as error:
                # Not fatal: waiters presume the lease over once its heartbeat stops.
                if self._on_heartbeat_failure is not None:
                    self._on_heartbeat_failure(
                        f"{self._describe()}: release not acknowledged ({error})"
                    )
        if self._log is not None:
            self._log.close()
        # Dropping every reference lets the producer go: it would otherwise keep reconnecting.
        self._producer = self._log = self._heartbeater = None

    def _heartbeat_records(self, beat: int) -> list[tuple[str, dict[str, Any]]]:
        value = {"owner": self.owner, "beat": beat, "heartbeat_ms": int(time.time() * 1000)}
        return [(f"{HEARTBEAT_KEY_PREFIX}{_holder(self._lease_key(self.lease))}", value)]

    def _read_log(self) -> None:
        assert self._log is not None, "acquire() first"
        for offset, key, value in self._log.new_records():
            try:
                if key.startswith(LEASE_KEY_PREFIX):
                    self._leases[key] = (offset, _lease_from_record(value))
                elif key.startswith(HEARTBEAT_KEY_PREFIX):
                    beat = value["beat"]
                    if type(beat) is not int:
                        raise ValueError(f"beat {str(beat)[:40]!r} is not a whole number")
                    self._heartbeats[_holder(key)] = (
                        beat,
                        plausible_wall_clock_ms(value["heartbeat_ms"], "heartbeat_ms"),
                    )
            except (TypeError, KeyError, ValueError) as error:
                self._log.reject(offset, f"{key[:80]!r}: {str(error)[:200]}")

    @property
    def rejected(self) -> RejectedRecords:
        """Lease and heartbeat records of the coverage log that were malformed, skipped."""
        assert self._log is not None, "acquire() first"
        return self._log.rejected

    def _publish(self, key: str, value: dict[str, object], *, timeout_seconds: float) -> None:
        assert self._producer is not None, "acquire() first"
        publish_and_wait(
            self._producer,
            self.topic,
            [(key, value)],
            timeout_seconds=timeout_seconds,
            what=f"lease record {key!r} at {self.settings.broker_address}",
        )

    def _describe(self) -> str:
        return describe_lease(self.lease)

    @staticmethod
    def _lease_key(lease: WindowLease) -> str:
        return f"{LEASE_KEY_PREFIX}{lease.pair}|{lease.owner}"


def describe_lease(lease: WindowLease) -> str:
    """`BTC/USD 2024-01-02T00:00:00.000000Z..2024-01-03T00:00:00.000000Z (owner <id>)`."""
    window = f"{format_time_us(lease.start_us)}..{format_time_us(lease.end_us)}"
    return f"{lease.pair} {window} (owner {lease.owner})"


def _holder(key: str) -> str:
    """`<pair>|<owner>` from a lease or heartbeat key: what joins a heartbeat to its lease."""
    return key.split("|", 1)[1]


def _lease_from_record(value: dict[str, Any]) -> WindowLease:
    """A lease record, checked (keys of later versions are ignored); ValueError if malformed."""
    pair, start_us, end_us, owner = (
        value["pair"],
        value["start_us"],
        value["end_us"],
        value["owner"],
    )
    if not (isinstance(pair, str) and re.fullmatch(PAIR_PATTERN, pair)):
        raise ValueError(f"pair {str(pair)[:40]!r} is not a pair name")
    if not (type(start_us) is int and type(end_us) is int and start_us < end_us):
        raise ValueError(f"window {str(start_us)[:30]}..{str(end_us)[:30]} is not a time window")
    if not isinstance(owner, str):
        raise ValueError("owner is not a string")
    return WindowLease(
        pair=pair,
        start_us=start_us,
        end_us=end_us,
        owner=owner,
        acquired_ms=plausible_wall_clock_ms(value["acquired_ms"], "acquired_ms"),
        released=value.get("released") is True,
    )
