"""The coverage topic `<topic>.coverage` and the lease machinery its records share.

Writers coordinate through this one-partition topic: the live writer's tail claims (claims.py)
and the backfills' window leases (window_leases.py). Both follow one pattern:

- an acquisition record under a key of its own, whose offset is the holder's place in line;
- heartbeats from a thread (`Heartbeater`), each counted only when the broker acknowledged it
  within a bound; a holder whose acknowledged heartbeats were ever further apart than its
  *standing* bound, or whose last one is older than that, has lost its standing for good and
  writes nothing more;
- other writers judge a holder by watching its heartbeat change on their own monotonic clock
  (`HeartbeatWatch`), never by comparing wall clocks of different hosts, except for records
  older than the lease plus the clock margin (holders that died long ago).

ARCHITECTURE.md has the argument that makes this an exclusion.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from trades_platform.coverage.log_snapshots import (
    SNAPSHOT_AFTER_RECORDS,
    read_log_view,
    snapshot_due,
    snapshot_parts,
)
from trades_platform.settings import KafkaSettings
from trades_platform.topic_reader import RejectedRecords, read_to_end
from trades_platform.topics import COVERAGE_TOPIC_CONFIG, coverage_topic
from trades_platform.trade import CLOCK_MARGIN_MS, EARLIEST_TRADE_MS

logger = logging.getLogger(__name__)

# How often a waiter reads the coverage log again.
POLL_SECONDS = 1.0
# A write the producer gave up on (delivery timeout) is "possibly persisted": the request may
# still sit in the network, a proxy or the leader's queue, and an appended record is committed
# once the followers have it or have been dropped from the ISR (Kafka's replica.lag.time.max.ms,
# 30 s by default). Writers assume such a write lands within this bound or never; leases and
# claims last long enough for it (ARCHITECTURE.md, assumption 5). Reproduced on Kafka in
# trades_platform_tests/faults/test_possibly_persisted.py.
POSSIBLY_PERSISTED_SECONDS = 30.0
# A holder's standing is a clock: once the broker is back, its producer redials within a second
# (librdkafka's default back-off grows to 10 s while the broker refuses, which can eat the rest of
# the standing bound).
HOLDER_RECONNECT_BACKOFF_MAX_MS = 1000


def coverage_producer(settings: KafkaSettings) -> Producer:
    """An idempotent producer for coverage records (its retries never write a record twice)."""
    return Producer(
        {
            **settings.client_config(),
            "enable.idempotence": True,
            "reconnect.backoff.max.ms": HOLDER_RECONNECT_BACKOFF_MAX_MS,
        }
    )


def ensure_coverage_topic(settings: KafkaSettings) -> None:
    """Create the compacted, single-partition coverage topic if it does not exist."""
    admin = AdminClient(settings.client_config())
    name = coverage_topic(settings)
    if name in admin.list_topics(timeout=10).topics:
        return
    futures = admin.create_topics(
        [
            NewTopic(
                name,
                num_partitions=1,
                replication_factor=settings.replication_factor,
                config=COVERAGE_TOPIC_CONFIG,
            )
        ]
    )
    for future in futures.values():
        try:
            future.result(timeout=30)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def publish_and_wait(
    producer: Producer,
    topic: str,
    records: list[tuple[str, dict[str, Any]]],
    *,
    timeout_seconds: float,
    what: str,
) -> None:
    """Produce JSON records (key, value); TimeoutError naming `what` unless all are acknowledged."""
    failures: list[KafkaError] = []

    def on_delivery(error: KafkaError | None, _message: object) -> None:
        if error is not None:
            failures.append(error)

    for key, value in records:
        producer.produce(
            topic, key=key.encode(), value=orjson.dumps(value), on_delivery=on_delivery
        )
    remaining = producer.flush(timeout_seconds)
    if remaining or failures:
        raise TimeoutError(
            f"{what} not acknowledged by the broker: {failures[0] if failures else 'still queued'}"
        )


class CoverageLogReader:
    """Reads `<topic>.coverage` incrementally: each call returns what was added since the last.

    The first call starts from the log's latest snapshot (log_snapshots.py), so its cost does not
    grow with the log's age. Only records whose key starts with one of `key_prefixes` are read
    (claims, leases and the index share the log; each reader judges its own). The log is input
    from other processes (and other versions): such a record whose value is not a JSON object is
    skipped and counted in `rejected`, never raised; the claims and leases on top reject their
    own malformed or implausible records there too (`reject`).
    """

    def __init__(self, settings: KafkaSettings, key_prefixes: tuple[str, ...]) -> None:
        self.topic = coverage_topic(settings)
        self.rejected = RejectedRecords()
        self._raw_prefixes = tuple(prefix.encode() for prefix in key_prefixes)
        self._consumer = Consumer(settings.consumer_config())
        self._next_offset: int | None = None
        # Records fetched from the broker so far (what the snapshots keep bounded at a start).
        self.fetched = 0
        # Whether the log is due a snapshot, as of the first read (`compact_coverage_log`).
        self.snapshot_due = False

    def new_records(self, timeout_seconds: float = 30.0) -> list[tuple[int, str, dict[str, Any]]]:
        """(offset, key, JSON object) of each record from where the last call stopped to the end."""
        if self._next_offset is None:
            view = read_log_view(self._consumer, self.topic, timeout_seconds=timeout_seconds)
            self.rejected.extend(view.rejected)
            self.fetched += view.fetched
            self.snapshot_due = snapshot_due(view)
            self._next_offset = view.next_offset
            raw = view.records
        else:
            raw = [
                (message.offset(), message.key() or b"", message.value() or b"")
                for message in read_to_end(
                    self._consumer,
                    self.topic,
                    {0: self._next_offset},
                    timeout_seconds=timeout_seconds,
                )
            ]
            self.fetched += len(raw)
            if raw:
                self._next_offset = raw[-1][0] + 1
        records = []
        for offset, raw_key, raw_value in raw:
            if not raw_key.startswith(self._raw_prefixes):
                continue
            key = raw_key.decode(errors="replace")
            try:
                value = orjson.loads(raw_value or b"null")
            except orjson.JSONDecodeError:
                value = None
            if not isinstance(value, dict):
                # A tombstone (null) or junk: nothing a holder could have meant.
                self.reject(offset, "value is not a JSON object")
                continue
            records.append((offset, key, value))
        return records

    def reject(self, offset: int, reason: str) -> None:
        """Count a record of the log that is not a valid claim, lease or heartbeat."""
        self.rejected.add(0, offset, reason)

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()


def rejected_warning(rejected: RejectedRecords, topic: str) -> str | None:
    """A warning naming the coverage records a reader skipped, or None if there were none."""
    if not rejected.count:
        return None
    return (
        f"{rejected.count} record(s) in {topic!r} are not valid claims, leases or heartbeats and "
        f"were skipped (they hold nothing back): {rejected.describe()}"
    )


def compact_coverage_log(
    settings: KafkaSettings, *, min_new_records: int = SNAPSHOT_AFTER_RECORDS
) -> int:
    """Publish a snapshot of the coverage log if `min_new_records` followed the latest one.

    Returns the number of parts published (0: not needed yet). Any writer may call it at any
    time: a snapshot only restates what the log already says (log_snapshots.py).
    """
    ensure_coverage_topic(settings)
    topic = coverage_topic(settings)
    consumer = Consumer(settings.consumer_config())
    try:
        view = read_log_view(consumer, topic, timeout_seconds=30.0)
    finally:
        consumer.close()
    if not snapshot_due(view, min_new_records):
        return 0
    parts = snapshot_parts(view)
    producer = coverage_producer(settings)
    publish_and_wait(
        producer,
        topic,
        parts,
        timeout_seconds=30.0,
        what=f"snapshot of {topic!r} as of offset {view.next_offset - 1}",
    )
    return len(parts)


def plausible_wall_clock_ms(value: object, what: str) -> int:
    """A wall-clock time in ms read from the log; ValueError unless it is from 2013 to the margin.

    A time further ahead than the clocks' margin is written by no healthy holder; believing it
    would keep a dead holder alive by the wall clock.
    """
    if type(value) is not int:
        raise ValueError(f"{what} is not a whole number: {str(value)[:40]!r}")
    latest_ms = int(time.time() * 1000) + CLOCK_MARGIN_MS
    if not EARLIEST_TRADE_MS <= value <= latest_ms:
        raise ValueError(
            f"{what} {value} is not between 2013 and now plus the clock margin "
            f"({CLOCK_MARGIN_MS // 60_000} min)"
        )
    return value


class Heartbeater:
    """Publishes a holder's heartbeat records from a thread and keeps track of its standing.

    A heartbeat counts only when the broker acknowledged all its records within `ack_seconds`.
    The standing is lost for good when two counted heartbeats were sent more than
    `standing_seconds` apart, when the last one is older than that, or when `check_after_beat`
    (run after each counted heartbeat, e.g. to read the holder's records back) names a reason.
    """

    def __init__(
        self,
        producer: Producer,
        topic: str,
        records: Callable[[int], list[tuple[str, dict[str, Any]]]],
        *,
        interval_seconds: float,
        ack_seconds: float,
        standing_seconds: float,
        what: str,
        on_failure: Callable[[str], None] | None = None,
        check_after_beat: Callable[[], str | None] | None = None,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._records = records
        self._interval = interval_seconds
        self._ack_seconds = ack_seconds
        self.standing_seconds = standing_seconds
        self._what = what
        self._on_failure = on_failure
        self._check_after_beat = check_after_beat
        self._lock = threading.Lock()
        self._last_acked_sent_at = 0.0
        self._lost: str | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._acked_beats = 0
        self._acked = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self.beats = 0

    def start(self, acquired_sent_at: float) -> None:
        """Start beating; the acquisition, sent at `acquired_sent_at` (monotonic), was acked."""
        self._last_acked_sent_at = acquired_sent_at
        self._thread = threading.Thread(target=self._loop, name=self._what, daemon=True)
        self._thread.start()

    def beat_now(self, wait_seconds: float | None = None) -> bool:
        """Send a heartbeat now; with `wait_seconds`, wait for it: True once one was counted."""
        with self._lock:
            target = self._acked_beats + 1
        self._wake.set()
        if wait_seconds is None:
            return False
        with self._acked:
            return self._acked.wait_for(
                lambda: self._acked_beats >= target or self._lost is not None, wait_seconds
            ) and (self._lost is None)

    def lost_reason(self) -> str | None:
        """Why the standing is lost, or None while it is held."""
        with self._lock:
            if self._lost is None:
                silent = time.monotonic() - self._last_acked_sent_at
                if silent > self.standing_seconds:
                    self._lost = f"no heartbeat acknowledged for {silent:.1f}s"
            return self._lost

    def mark_lost(self, reason: str) -> None:
        """Give up the standing for good (the first reason is kept)."""
        with self._acked:
            if self._lost is None:
                self._lost = reason
            self._acked.notify_all()

    def stop(self) -> None:
        """Stop beating and wait for the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        next_beat_at = time.monotonic() + self._interval
        while True:
            self._wake.wait(max(0.0, next_beat_at - time.monotonic()))
            self._wake.clear()
            # A holder that lost its standing stays silent: a watcher then sees it over.
            if self._stop.is_set() or self.lost_reason() is not None:
                return
            self.beats += 1
            sent_at = time.monotonic()
            # Due one interval after this send, however long its acknowledgement and read-back
            # take; while the broker is away, as soon as this one's wait is over. A heartbeat
            # stays in flight then, so the first the broker answers after its return counts (an
            # interval's wait after each failure once cost a holder its standing when the outage
            # ended within the bound).
            next_beat_at = sent_at + self._interval
            try:
                publish_and_wait(
                    self._producer,
                    self._topic,
                    self._records(self.beats),
                    timeout_seconds=self._ack_seconds,
                    what=f"{self._what} heartbeat {self.beats}",
                )
            except (TimeoutError, KafkaException, BufferError) as error:
                self._report(f"heartbeat {self.beats} not acknowledged ({error})")
                next_beat_at = sent_at + min(self._interval, self._ack_seconds)
                continue
            with self._acked:
                gap = sent_at - self._last_acked_sent_at
                if gap > self.standing_seconds and self._lost is None:
                    self._lost = f"{gap:.1f}s between acknowledged heartbeats"
                self._last_acked_sent_at = sent_at
            reason = self._safe_check()
            if reason is not None:
                self.mark_lost(reason)
            with self._acked:
                self._acked_beats += 1
                self._acked.notify_all()

    def _safe_check(self) -> str | None:
        if self._check_after_beat is None:
            return None
        try:
            return self._check_after_beat()
        except (TimeoutError, KafkaException) as error:
            # Not a loss by itself: the standing bound covers a broker that stays away.
            self._report(f"could not read the heartbeat back ({error})")
            return None

    def _report(self, reason: str) -> None:
        if self._on_failure is not None:
            self._on_failure(f"{self._what}: {reason}")
        else:
            logger.warning(f"{self._what}: {reason}")


Liveness = Literal["alive", "unknown", "ended"]


@dataclass(frozen=True)
class Watched:
    """What this process has seen of another holder's heartbeat."""

    liveness: Liveness
    # Seconds this process has watched the current heartbeat stand still.
    silent_seconds: float


@dataclass
class _WatchEntry:
    heartbeat: tuple[int, int]
    since: float
    changed_seen: bool


class HeartbeatWatch:
    """Judges other holders by watching their heartbeats change on the local monotonic clock.

    - `ended`: the heartbeat stood still for the holder's lease while watched, or it is older
      than the lease plus the clock margin by the wall clock (a holder that died long ago);
    - `alive`: the heartbeat was seen to change, and not longer ago than the lease;
    - `unknown`: not watched long enough to tell: treat as alive.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[str, _WatchEntry] = {}

    def observe(self, holder: str, heartbeat: tuple[int, int], lease_seconds: float) -> Watched:
        """Record the holder's latest heartbeat (number, wall-clock ms) and judge it."""
        now = self._clock()
        entry = self._entries.get(holder)
        if entry is None:
            entry = self._entries[holder] = _WatchEntry(heartbeat, now, changed_seen=False)
        elif entry.heartbeat != heartbeat:
            entry.heartbeat, entry.since, entry.changed_seen = heartbeat, now, True
        silent = now - entry.since
        age_ms = time.time() * 1000 - heartbeat[1]
        if silent >= lease_seconds or age_ms > lease_seconds * 1000 + CLOCK_MARGIN_MS:
            return Watched("ended", silent)
        return Watched("alive" if entry.changed_seen else "unknown", silent)
