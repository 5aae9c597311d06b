"""Compaction of `trades.coverage` on real Apache Kafka (tansu never compacts).

The platform creates the coverage topic compacted, so a broker that compacts keeps only the
latest record per key: a live claim's heartbeats shrink to the newest one. The claims design
relies on two things surviving that: a claim's acquisition record (its offset is its place in
line) is never rewritten before its release, and the newest heartbeat is what readers judge
liveness by. Here the cleaner is made to run within seconds and a fresh reader must see the same
line, ids and heartbeat as before compaction.
"""

import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from trades_platform.coverage import claims as claims_module
from trades_platform.coverage.claims import (
    BEAT_KEY_PREFIX,
    ClaimBoard,
    OtherLiveWriterError,
    TailClaimHolder,
)
from trades_platform.kafka_cluster import KafkaCluster
from trades_platform.settings import KafkaSettings
from trades_platform.testing import unique_topic
from trades_platform.topic_reader import read_to_end
from trades_platform.topics import COVERAGE_TOPIC_CONFIG, coverage_topic

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

# The cleaner looks for work every 200 ms (Kafka's default: 15 s).
CLEANER_PROPERTIES = {"log.cleaner.backoff.ms": 200}
# Topic knobs on top of the platform's own, so that compaction happens within seconds: a segment
# closes every 500 ms (only closed segments are compacted) and any share of stale records is
# worth cleaning.
FAST_COMPACTION = {"segment.ms": "500", "min.cleanable.dirty.ratio": "0.01"}
COMPACTION_DEADLINE_SECONDS = 90
# Offsets the coverage topic must have used before compaction is judged.
MIN_RECORDS = 40


@pytest.fixture(scope="module")
def compacting_cluster() -> Iterator[KafkaCluster]:
    """One Kafka node whose log cleaner runs every 200 ms."""
    with KafkaCluster(nodes=1, extra_properties=CLEANER_PROPERTIES) as cluster:
        yield cluster


def _kept_below_end(settings: KafkaSettings, topic: str) -> tuple[int, int, int]:
    """The one-partition topic's end offset, how many records below it are still there, and how
    many of those are heartbeats."""
    consumer = Consumer(settings.consumer_config())
    try:
        _low, end = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        kept = beats = 0
        for message in read_to_end(consumer, topic, {0: 0}, timeout_seconds=10):
            if message.offset() < end:
                kept += 1
                beats += (message.key() or b"").decode().startswith(BEAT_KEY_PREFIX)
    finally:
        consumer.close()
    return end, kept, beats


def test_compaction_keeps_each_claims_place_in_line_and_its_newest_heartbeat(
    compacting_cluster: KafkaCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A heartbeat every 0.2 s: dozens of records under one key within seconds.
    monkeypatch.setattr(claims_module, "CLAIM_HEARTBEAT_SECONDS", 0.2)
    broker = compacting_cluster.bootstrap
    settings = KafkaSettings(broker_address=broker, topic=unique_topic("compaction"))
    coverage = coverage_topic(settings)
    admin = AdminClient({"bootstrap.servers": broker})
    config = {**COVERAGE_TOPIC_CONFIG, **FAST_COMPACTION}
    for future in admin.create_topics([NewTopic(coverage, 1, 1, config=config)]).values():
        future.result(30)

    first = TailClaimHolder(settings, ["BTC/USD"], lease_seconds=60, owner="first")
    second = TailClaimHolder(settings, ["BTC/USD"], lease_seconds=60, owner="second")
    first.acquire()
    try:
        first.claim({"BTC/USD": 100}, timeout_seconds=10)
        second.acquire()
        # Heartbeats pile up under one key per holder: at least MIN_RECORDS offsets used...
        end, kept, beats_kept = _kept_below_end(settings, coverage)
        deadline = time.monotonic() + COMPACTION_DEADLINE_SECONDS
        # ...and then the cleaner keeps at most half of them (the newest per key, and the
        # records of the segment still open).
        while end < MIN_RECORDS or kept * 2 > end:
            assert time.monotonic() < deadline, f"no compaction: {kept} of {end} records kept"
            time.sleep(1)
            end, kept, beats_kept = _kept_below_end(settings, coverage)

        # A reader that starts now sees only the compacted log, and the same line as before.
        board = ClaimBoard(settings, owner="fresh-reader")
        try:
            line = board.read()["BTC/USD"]
        finally:
            board.close()
        assert [observed.claim.owner for observed in line] == ["first", "second"]
        assert line[0].claim.from_id == 100 and line[1].claim.from_id is None
        # Its newest heartbeat survived: a beat number far past the first one.
        assert line[0].claim.beat > 3, line[0].claim
        assert first.wait_for_turn() == 0.0
        with pytest.raises(OtherLiveWriterError, match=r"BTC/USD \(live run first"):
            second.wait_for_turn()
    finally:
        second.release()
        first.release()
    print(
        f"[compaction] {end} records written to {coverage}, {kept} kept after compaction "
        f"({beats_kept} heartbeats); the line read back: first (from id 100), second"
    )
