"""Tail claims: how the live writer tells backfills which ids of a pair are its to write.

The claims live in a compacted topic `<topic>.coverage` with one partition, so every writer
sees them in one total order. A claim `(pair, from_id, owner, heartbeat)` says: the owner writes
every id >= from_id of that pair. A backfill writes only ids below the `from_id` of a claim that
is alive (heartbeat younger than the lease, not released). The same topic carries the
backfills' window leases (window_leases.py), under keys of their own.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from trades_platform.producer import ProducerSettings
from trades_platform.topic_reader import consumer_config, read_to_end

# A live writer refreshes its claims this often; a claim older than the lease is dead.
HEARTBEAT_SECONDS = 10.0
LEASE_SECONDS = 60.0
# A backfill's page is acknowledged or failed within this bound (its producer's delivery timeout).
BACKFILL_PAGE_BOUND_SECONDS = 5.0
# After claiming, the live writer waits this long, then re-reads the topic: any backfill page that
# started before the claim was visible has landed or failed by then.
CLAIM_GRACE_SECONDS = 2 * BACKFILL_PAGE_BOUND_SECONDS
# Keys of the tail claims in the coverage topic: `tail|<pair>`.
TAIL_KEY_PREFIX = "tail|"


@dataclass(frozen=True)
class TailClaim:
    """The live writer's claim on every id >= from_id of a pair."""

    pair: str
    from_id: int
    owner: str
    heartbeat_ms: int
    released: bool = False

    def alive(self, now_ms: int | None = None, lease_seconds: float = LEASE_SECONDS) -> bool:
        """True while the owner heartbeats and has not released the claim."""
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        return not self.released and now_ms - self.heartbeat_ms < lease_seconds * 1000


def coverage_topic(settings: ProducerSettings) -> str:
    """The claims topic that goes with the trades topic."""
    return f"{settings.topic}.coverage"


def ensure_coverage_topic(settings: ProducerSettings) -> None:
    """Create the compacted, single-partition claims topic if it does not exist."""
    admin = AdminClient(client_config(settings))
    name = coverage_topic(settings)
    if name in admin.list_topics(timeout=10).topics:
        return
    futures = admin.create_topics(
        [
            NewTopic(
                name,
                num_partitions=1,
                replication_factor=settings.replication_factor,
                config={"cleanup.policy": "compact"},
            )
        ]
    )
    for future in futures.values():
        try:
            future.result(timeout=30)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


class ClaimBoard:
    """Publishes this writer's claims and reads everyone's, incrementally."""

    def __init__(self, settings: ProducerSettings, owner: str | None = None) -> None:
        self.settings = settings
        self.owner = owner or uuid.uuid4().hex
        self.topic = coverage_topic(settings)
        ensure_coverage_topic(settings)
        self._producer = Producer({**client_config(settings), "enable.idempotence": True})
        self._log = CoverageLogReader(settings)
        self._latest: dict[str, TailClaim] = {}

    def publish(
        self, pair: str, from_id: int, *, released: bool = False, timeout_seconds: float = 30.0
    ) -> TailClaim:
        """Write a claim (or its release); wait up to `timeout_seconds` for the broker's ack."""
        claim = TailClaim(pair, from_id, self.owner, int(time.time() * 1000), released)
        publish_and_wait(
            self._producer,
            self.topic,
            f"{TAIL_KEY_PREFIX}{pair}",
            claim.__dict__,
            timeout_seconds=timeout_seconds,
            what=f"claim for {pair} at {self.settings.broker_address}",
        )
        return claim

    def claims(self, timeout_seconds: float = 30.0) -> dict[str, TailClaim]:
        """The latest claim per pair, as of the end of the claims topic."""
        for _offset, key, value in self._log.new_records(timeout_seconds):
            # The topic also holds the backfills' window leases (coverage/window_leases.py).
            if key.startswith(TAIL_KEY_PREFIX):
                claim = TailClaim(**value)
                self._latest[claim.pair] = claim
        return dict(self._latest)

    def alive_claim(self, pair: str) -> TailClaim | None:
        """The live claim on `pair` by another writer, if one is alive."""
        claim = self.claims().get(pair)
        if claim is None or claim.owner == self.owner or not claim.alive():
            return None
        return claim

    def close(self) -> None:
        """Flush and close both clients."""
        self._producer.flush(10)
        self._log.close()


class CoverageLogReader:
    """Reads `<topic>.coverage` incrementally: each call returns what was added since the last."""

    def __init__(self, settings: ProducerSettings) -> None:
        self.topic = coverage_topic(settings)
        self._consumer = Consumer(consumer_config(settings))
        self._next_offset = 0

    def new_records(self, timeout_seconds: float = 30.0) -> list[tuple[int, str, dict[str, Any]]]:
        """(offset, key, JSON value) of every record from where the last call stopped to the end."""
        records = []
        for message in read_to_end(
            self._consumer, self.topic, {0: self._next_offset}, timeout_seconds=timeout_seconds
        ):
            self._next_offset = message.offset() + 1
            key = (message.key() or b"").decode()
            records.append((message.offset(), key, orjson.loads(message.value() or b"{}")))
        return records

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()


def publish_and_wait(
    producer: Producer,
    topic: str,
    key: str,
    value: dict[str, object],
    *,
    timeout_seconds: float,
    what: str,
) -> None:
    """Produce one JSON record and wait for the broker's ack; TimeoutError naming `what` if none."""
    failures: list[KafkaError] = []

    def on_delivery(error: KafkaError | None, _message: object) -> None:
        if error is not None:
            failures.append(error)

    producer.produce(topic, key=key.encode(), value=orjson.dumps(value), on_delivery=on_delivery)
    remaining = producer.flush(timeout_seconds)
    if remaining or failures:
        raise TimeoutError(
            f"{what} not acknowledged by the broker: {failures[0] if failures else 'still queued'}"
        )


def client_config(settings: ProducerSettings) -> dict[str, object]:
    """The broker address and credentials of `settings`, for producers and admin clients."""
    config = consumer_config(settings)
    return {
        name: value
        for name, value in config.items()
        if name in ("bootstrap.servers", "security.protocol", "sasl.mechanism")
        or name.startswith(("sasl.", "ssl."))
    }
