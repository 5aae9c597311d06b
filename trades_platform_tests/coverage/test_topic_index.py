"""The trades topic's index and the coverage log's snapshots, on the real broker.

A scan from a checkpoint must find exactly what a read from offset 0 finds, read only what came
after it, and fall back to offset 0 when a checkpoint cannot be trusted; a day's read-back reads
only the offsets the index names for it; a start reads a bounded part of a coverage log that
holds a day of heartbeats.
"""

from __future__ import annotations

import time

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from trades_platform.backfill.readback import read_pair_window
from trades_platform.coverage.claims import ClaimBoard, TailClaimHolder
from trades_platform.coverage.coverage_log import (
    CoverageLogReader,
    compact_coverage_log,
    coverage_producer,
    publish_and_wait,
)
from trades_platform.coverage.index_refresher import IndexRefresher
from trades_platform.coverage.log_snapshots import (
    INDEX_KEY_PREFIX,
    LOG_WINDOW_RECORDS,
    SNAPSHOT_KEY_PREFIX,
    read_log_view,
    snapshot_parts,
)
from trades_platform.coverage.topic_ids import ScanCost, scan_topic_ids
from trades_platform.producer import TradeProducer
from trades_platform.settings import KafkaSettings
from trades_platform.testing import unique_topic
from trades_platform.topics import coverage_topic
from trades_platform.trade import format_time_us

pytestmark = pytest.mark.both_brokers

DAY_MS = 86_400_000
# 2026-11-01T00:00:00Z
DAY_ONE_MS = 1_793_491_200_000


def _settings(broker: str) -> KafkaSettings:
    settings = KafkaSettings(broker_address=broker, topic=unique_topic("index"))
    TradeProducer(settings).close()  # creates the topic as the platform configures it
    return settings


def _record(pair: str, trade_id: int, time_ms: int) -> bytes:
    return orjson.dumps(
        {
            "pair": pair,
            "trade_id": trade_id,
            "timestamp_ms": time_ms,
            "timestamp": format_time_us(time_ms * 1000),
        }
    )


def _produce(
    settings: KafkaSettings, records: list[tuple[str, bytes, int]], raw: Producer | None = None
) -> None:
    """(key, value, message time ms) records, in order."""
    producer = raw or Producer({"bootstrap.servers": settings.broker_address, "linger.ms": 5})
    for key, value, time_ms in records:
        producer.produce(settings.topic, key=key.encode(), value=value, timestamp=time_ms)
    assert producer.flush(30) == 0


def _trades(pair: str, ids: range | list[int], first_ms: int) -> list[tuple[str, bytes, int]]:
    key = pair.replace("/", "-")
    return [
        (key, _record(pair, i, first_ms + n * 1000), first_ms + n * 1000) for n, i in enumerate(ids)
    ]


def test_a_scan_from_checkpoints_finds_what_a_full_read_finds_and_reads_only_the_rest(
    broker: str,
) -> None:
    settings = _settings(broker)
    pairs = ["BTC/USD", "ETH/USD", "SOL/USD"]
    start_ms = DAY_ONE_MS
    first = (
        _trades("BTC/USD", [*range(1, 1001), *range(1101, 2001)], start_ms)
        + _trades("ETH/USD", range(1, 501), start_ms)
        + _trades("ETH/USD", range(100, 110), start_ms)  # 10 duplicates
        + [("SOL-USD", b"{not json", start_ms), ("SOL-USD", b"[1]", start_ms)]
        + _trades("SOL/USD", range(1, 101), start_ms)
    )
    _produce(settings, first)

    first_cost = ScanCost()
    first_scan = scan_topic_ids(settings, pairs, cost=first_cost)
    assert first_cost.records_read == len(first)
    assert first_cost.partitions_from_checkpoint == 0
    assert first_cost.checkpoints_published >= 1

    second = (
        _trades("BTC/USD", range(2001, 2301), start_ms + 3_000_000)
        + _trades("ETH/USD", [5, 501], start_ms + 3_000_000)  # one duplicate, one new
        + [("SOL-USD", b"{not json either", start_ms)]
        # An id no pair reaches that fast above the others: not believed, not the resume point.
        + _trades("SOL/USD", [10**12], start_ms + 3_000_000)
    )
    _produce(settings, second)
    cost = ScanCost()
    found = scan_topic_ids(settings, pairs, cost=cost)

    # Only what came after the checkpoints was read.
    assert cost.records_read == len(second)
    assert cost.partitions_from_checkpoint == first_cost.checkpoints_published
    # And it is exactly what the topic holds.
    assert list(found["BTC/USD"].ids) == [(1, 1000), (1101, 2300)]
    assert list(found["ETH/USD"].ids) == [(1, 501)]
    assert found["ETH/USD"].duplicates == 11
    assert list(found["SOL/USD"].ids) == [(1, 100)]
    assert found["SOL/USD"].rejected.count == 4
    assert first_scan["SOL/USD"].rejected.count == 2
    assert found["BTC/USD"].highest_time_us == (start_ms + 3_000_000 + 299_000) * 1000
    assert found["SOL/USD"].highest_time_us == (start_ms + 99_000) * 1000


def test_a_checkpoint_that_does_not_match_the_topic_is_rejected_and_the_topic_read_from_zero(
    broker: str,
) -> None:
    settings = _settings(broker)
    _produce(settings, _trades("BTC/USD", range(1, 501), DAY_ONE_MS))
    scan_topic_ids(settings, ["BTC/USD"])
    reader = CoverageLogReader(settings, (INDEX_KEY_PREFIX,))
    checkpoints = {key: value for _, key, value in reader.new_records()}
    reader.close()
    assert checkpoints, "the first scan published no checkpoint"
    key, checkpoint = next(iter(checkpoints.items()))
    # As if the topic had been recreated: the record at the checkpoint's last offset differs;
    # and it claims ids the topic does not hold.
    forged = {
        **checkpoint,
        "last_digest": "0" * 32,
        "keys": {"BTC-USD": {**checkpoint["keys"]["BTC-USD"], "ids": [[1, 900]]}},
    }
    publish_and_wait(
        coverage_producer(settings),
        coverage_topic(settings),
        [(key, forged), (f"{INDEX_KEY_PREFIX}{settings.topic_partitions + 5}", {"junk": 1})],
        timeout_seconds=10,
        what="forged checkpoints",
    )

    cost = ScanCost()
    found = scan_topic_ids(settings, ["BTC/USD"], cost=cost)

    assert list(found["BTC/USD"].ids) == [(1, 500)]
    assert cost.partitions_from_checkpoint == 0  # the only checkpoint (BTC-USD's) was forged
    assert cost.records_read == 500


def test_a_days_read_back_reads_only_the_offsets_the_index_names_for_it(broker: str) -> None:
    settings = _settings(broker)
    day_two_ms = DAY_ONE_MS + DAY_MS
    _produce(
        settings,
        _trades("BTC/USD", range(1, 1001), DAY_ONE_MS)
        + _trades("BTC/USD", range(1001, 4001), day_two_ms)
        + _trades("ETH/USD", range(1, 2001), DAY_ONE_MS),
    )
    scan_topic_ids(settings, ["BTC/USD"])
    # After the checkpoint: a late heal of day one and more of day two.
    _produce(
        settings,
        _trades("BTC/USD", [5000], DAY_ONE_MS + 500)
        + _trades("BTC/USD", range(4001, 4101), day_two_ms + 3_100_000),
    )

    day_one = read_pair_window(settings, "BTC/USD", DAY_ONE_MS, DAY_ONE_MS + DAY_MS)

    ids = sorted(orjson.loads(record.value)["trade_id"] for record in day_one.records)
    assert ids == [*range(1, 1001), 5000]
    # Day one's offsets and what came after the checkpoint; not day two's 3,000, not ETH's.
    assert day_one.scanned <= 1000 + 101 + 2000 * (settings.topic_partitions == 1)
    day_two = read_pair_window(settings, "BTC/USD", day_two_ms, day_two_ms + DAY_MS)
    assert len(day_two.records) == 3100


@pytest.mark.slow
def test_after_a_day_of_heartbeats_a_start_reads_a_bounded_part_of_the_coverage_log(
    broker: str,
) -> None:
    """24 simulated hours of a live run's heartbeats on 2 pairs (8,640 each), compacted every
    30 simulated minutes (a live run does it every 5), then a fresh reader: it fetches at most
    2 windows of the log (4,000 records) and sees the claim exactly as its last heartbeat says."""
    settings = _settings(broker)
    pairs = ["BTC/USD", "ETH/USD"]
    holder = TailClaimHolder(settings, pairs, lease_seconds=60.0, owner="day-long-run")
    holder.acquire()
    try:
        holder.claim({"BTC/USD": 1000, "ETH/USD": 2000}, timeout_seconds=30)
        holder.hand_back("ETH/USD", [(2100, 2200)])
        raw = Producer({"bootstrap.servers": settings.broker_address, "linger.ms": 5})
        beats_per_day = 24 * 3600 // 10
        for first_beat in range(1, beats_per_day + 1, 180):
            for beat in range(first_beat, min(first_beat + 180, beats_per_day + 1)):
                for key, value in holder._heartbeat_records(10_000 + beat):
                    raw.produce(
                        coverage_topic(settings), key=key.encode(), value=orjson.dumps(value)
                    )
            assert raw.flush(30) == 0
            compact_coverage_log(settings)
        consumer = Consumer(settings.consumer_config())
        _low, log_end = consumer.get_watermark_offsets(
            TopicPartition(coverage_topic(settings), 0), timeout=10
        )
        consumer.close()
        # (tansu answers the end short by up to a batch)
        assert log_end > 1.5 * beats_per_day

        board = ClaimBoard(settings, owner="a-fresh-writer")
        claims = board.read()
        fetched = board.records_fetched
        board.close()
    finally:
        holder.release()

    print(f"coverage log: {log_end} records; a fresh reader fetched {fetched}")
    assert fetched <= 2 * LOG_WINDOW_RECORDS
    btc, eth = claims["BTC/USD"][0].claim, claims["ETH/USD"][0].claim
    assert (btc.owner, btc.from_id, eth.from_id) == ("day-long-run", 1000, 2000)
    assert eth.handed_back == ((2100, 2200),)
    assert not claims["BTC/USD"][0].over


def test_a_snapshot_part_that_is_not_one_is_skipped_and_the_log_read_from_its_start(
    broker: str,
) -> None:
    settings = _settings(broker)
    holder = TailClaimHolder(settings, ["BTC/USD"], lease_seconds=60.0, owner="holder")
    holder.acquire()
    try:
        publish_and_wait(
            coverage_producer(settings),
            coverage_topic(settings),
            [
                # "As of" an offset after its own: no snapshot of ours.
                (
                    f"{SNAPSHOT_KEY_PREFIX}0",
                    {"snapshot": "x", "as_of": 10**9, "part": 0, "parts": 1, "records": []},
                ),
                (f"{SNAPSHOT_KEY_PREFIX}0", {"snapshot": "y"}),
                (f"{SNAPSHOT_KEY_PREFIX}0", [1, 2]),
            ],
            timeout_seconds=10,
            what="forged snapshots",
        )
        board = ClaimBoard(settings, owner="reader")
        claims = board.read()
        rejected = board.rejected.count
        board.close()
    finally:
        holder.release()
    assert [observed.claim.owner for observed in claims["BTC/USD"]] == ["holder"]
    assert rejected == 3


def test_a_live_runs_refresher_keeps_checkpoints_at_the_end_of_the_topic(broker: str) -> None:
    settings = _settings(broker)
    failures: list[str] = []
    refresher = IndexRefresher(settings, interval_seconds=0.2, on_failure=failures.append)
    refresher.start()
    try:
        for batch in range(3):
            _produce(
                settings, _trades("BTC/USD", range(batch * 100 + 1, batch * 100 + 101), DAY_ONE_MS)
            )
            passes = refresher.passes
            deadline = time.monotonic() + 30
            while refresher.passes < passes + 2 and time.monotonic() < deadline:
                time.sleep(0.1)
    finally:
        refresher.close()
    assert not failures
    cost = ScanCost()
    found = scan_topic_ids(settings, ["BTC/USD"], cost=cost)
    assert list(found["BTC/USD"].ids) == [(1, 300)]
    assert cost.records_read == 0 and cost.partitions_from_checkpoint == 1


def test_records_between_a_snapshots_fold_and_its_parts_are_read_too(broker: str) -> None:
    """A snapshot as of offset S is published after other writers appended more than a window:
    the reader still applies every record after S, not only the window before the parts."""
    settings = _settings(broker)
    topic = coverage_topic(settings)
    holder = TailClaimHolder(settings, ["BTC/USD"], lease_seconds=60.0, owner="early")
    holder.acquire()
    try:
        consumer = Consumer(settings.consumer_config())
        view = read_log_view(consumer, topic, timeout_seconds=10)
        consumer.close()
        parts = snapshot_parts(view)  # as of now: the early holder's acquisition and beats
        late = TailClaimHolder(settings, ["ETH/USD"], lease_seconds=60.0, owner="late")
        late.acquire()  # after the snapshot's `as_of`, before its parts
        raw = Producer({"bootstrap.servers": settings.broker_address, "linger.ms": 5})
        for beat in range(LOG_WINDOW_RECORDS + 500):
            for key, value in holder._heartbeat_records(1_000 + beat):
                raw.produce(topic, key=key.encode(), value=orjson.dumps(value))
        assert raw.flush(30) == 0
        publish_and_wait(
            coverage_producer(settings), topic, parts, timeout_seconds=10, what="parts"
        )
        board = ClaimBoard(settings, owner="reader")
        claims = board.read()
        board.close()
        late.release()
    finally:
        holder.release()
    assert [observed.claim.owner for observed in claims["BTC/USD"]] == ["early"]
    assert [observed.claim.owner for observed in claims["ETH/USD"]] == ["late"]
