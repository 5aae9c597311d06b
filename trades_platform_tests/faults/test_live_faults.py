"""The live job against the exchange misbehaving: drops, stalls, malformed frames, REST storms."""

import time
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from dagster import DagsterInstance

from trades_platform.kraken.websocket import MAX_REASON_CHARS
from trades_platform.resources import RedpandaResource
from trades_platform.simulator.faults import HOSTILE_KINDS, JUNK_ITEMS
from trades_platform.simulator.market import SimulatedMarket
from trades_platform.testing import (
    SimulatorProcess,
    grace_backlog,
    grace_seconds,
    live_run_totals,
    once_every_pair_is_written,
    read_topic,
    unique_topic,
)
from trades_platform_tests.faults.conftest import (
    LIVE_PAIRS,
    LIVE_RATE,
    assert_event_log_bounded,
    assert_exactly_once,
    live_flags,
    live_kraken,
    run_live,
    run_messages,
    run_totals,
    trades_sent,
    wall_us,
)

pytestmark = pytest.mark.faults

MARKET = SimulatedMarket(LIVE_PAIRS, LIVE_RATE)
# The socket faults are switched on once the run streams, and runs write what piled up before
# (`grace_backlog`): near midnight UTC their claims first wait a grace period (testing.live).


@dataclass(frozen=True)
class _FrameFaultRun:
    """A bounded live run against a simulator with frame faults switched on, and what it saw."""

    topic: str
    trades: int
    run_id: str
    ended_us: int
    stats: dict[str, Any]
    sent: dict[str, tuple[int, int]]
    totals: dict[str, int | float]
    # How long its claims could wait their grace periods first (0 away from midnight UTC).
    grace_seconds: float


def _run_with_frame_faults(
    broker: str,
    instance: DagsterInstance,
    label: str,
    *flags: str,
    behind_seconds: float = 3,
) -> _FrameFaultRun:
    """Run the live job for 400 trades (plus any grace backlog) with the simulator's `flags`.

    `behind_seconds`: how far behind the wall clock each pair's newest id may be at the end.
    """
    topic = unique_topic(f"faults-{label}")
    trades = grace_backlog(len(LIVE_PAIRS), LIVE_RATE) + 400
    with SimulatorProcess(*live_flags(*flags)) as sim:
        grace = grace_seconds(len(LIVE_PAIRS))
        result = run_live(
            live_kraken(sim),
            RedpandaResource(broker_address=broker, topic=topic),
            instance,
            max_trades=trades,
        )
        ended_us = wall_us(seconds_ago=behind_seconds)
        stats = sim.stats()
        sent = trades_sent(sim)
    assert result.success
    totals = run_totals(instance, result.run_id)
    return _FrameFaultRun(topic, trades, result.run_id, ended_us, stats, sent, totals, grace)


def _stall_once(sim: SimulatorProcess, **switches: object) -> None:
    """Stall the feed once, 8 s, with `switches` on: the run ends streaming, not in a stall."""
    sim.set_faults(stall_after_trades=200, stall_seconds=8, **switches)
    deadline = time.monotonic() + 30
    while sim.stats()["stalls"] < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    sim.set_faults(stall_after_trades=None)


def test_socket_drops_mid_stream(broker: str, dagster_instance: DagsterInstance) -> None:
    """Several abrupt drops (1006) in one bounded run: each reconnect resumes without a repeat."""
    topic = unique_topic("faults-drops")
    trades = grace_backlog(len(LIVE_PAIRS), LIVE_RATE) + 500
    with SimulatorProcess(*live_flags()) as sim:
        # A connection's budget includes its 2 x 50-trade snapshot: about 2 s of new trades each.
        with once_every_pair_is_written(
            broker, topic, LIVE_PAIRS, lambda: sim.set_faults(drop_after_trades=200)
        ) as dropping:
            result = run_live(
                live_kraken(sim),
                RedpandaResource(broker_address=broker, topic=topic),
                dagster_instance,
                max_trades=trades,
            )
        ended_us = wall_us(seconds_ago=3)
        stats = sim.stats()
        sent = trades_sent(sim)
    totals = run_totals(dagster_instance, result.run_id)
    assert result.success and dropping.is_set()
    assert stats["drops"] >= 3, stats
    assert totals["reconnects"] >= 3, totals
    records = read_topic(broker, topic, expected=trades)
    assert len(records) == trades
    assert_exactly_once(
        records, label="drops", market=MARKET, pairs=LIVE_PAIRS, reaches_us=ended_us, sent=sent
    )
    print(
        f"[faults] drops: simulator {stats['drops']} drops, ws trades sent {stats['trades_sent']}"
    )


def test_stall_past_the_watchdog_is_healed_from_rest(
    broker: str, dagster_instance: DagsterInstance
) -> None:
    """Silence past the watchdog: reconnect; the gap exceeds the snapshot, so REST heals it."""
    topic = unique_topic("faults-stall")
    trades = grace_backlog(len(LIVE_PAIRS), LIVE_RATE) + 700
    with SimulatorProcess(*live_flags()) as sim:
        # The watchdog fires after 3 s: about 80 trades per pair, more than the 50-trade snapshot.
        with once_every_pair_is_written(
            broker, topic, LIVE_PAIRS, lambda: _stall_once(sim)
        ) as stalling:
            result = run_live(
                live_kraken(sim, watchdog_seconds=3.0),
                RedpandaResource(broker_address=broker, topic=topic),
                dagster_instance,
                max_trades=trades,
            )
        ended_us = wall_us(seconds_ago=3)
        stats = sim.stats()
        sent = trades_sent(sim)
    messages = run_messages(dagster_instance, result.run_id)
    totals = live_run_totals(messages)
    assert result.success and stalling.is_set()
    assert stats["stalls"] >= 1, stats
    assert any("(watchdog)" in message for message in messages)
    assert totals["healed"] > 0, totals
    records = read_topic(broker, topic, expected=trades)
    assert len(records) >= trades
    assert_exactly_once(
        records, label="stall", market=MARKET, pairs=LIVE_PAIRS, reaches_us=ended_us, sent=sent
    )
    healed = [record for record in records if record.value["source"] == "heal"]
    assert healed, "the stall left no gap beyond the snapshot"
    print(f"[faults] stall: {stats['stalls']} stalls, {len(healed)} trades healed from REST")


def _read_dead_letters(broker: str, topic: str) -> list[dict[str, object]]:
    """Every record of `<topic>.dlq`, read to the end of each partition."""
    consumer = Consumer(
        {
            "bootstrap.servers": broker,
            "group.id": f"dlq-reader-{topic}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in metadata.partitions])
        pending = set(metadata.partitions)
        values: list[dict[str, object]] = []
        while pending:
            for message in consumer.consume(1000, timeout=1.0):
                error = message.error()
                if error is not None:
                    assert error.code() == KafkaError._PARTITION_EOF, error
                    pending.discard(message.partition())
                    continue
                values.append(orjson.loads(message.value()))
        return values
    finally:
        consumer.close()


def test_malformed_frames_go_to_the_dead_letter_topic(
    broker: str, dagster_instance: DagsterInstance
) -> None:
    """A bad frame after every third: counted, dead-lettered with a reason; no good trade lost."""
    run = _run_with_frame_faults(
        broker, dagster_instance, "malformed", "--malformed-every-frames", "3"
    )
    topic, trades, stats, totals = run.topic, run.trades, run.stats, run.totals
    rejected = totals["dead_lettered"]
    assert rejected > 0, totals
    records = read_topic(broker, topic, expected=trades)
    assert len(records) == trades
    assert_exactly_once(
        records,
        label="malformed",
        market=MARKET,
        pairs=LIVE_PAIRS,
        reaches_us=run.ended_us,
        sent=run.sent,
    )
    dead = _read_dead_letters(broker, f"{topic}.dlq")
    reasons = sorted({str(value["reason"]).split(":")[0] for value in dead})
    print(
        f"[faults] malformed: simulator sent {stats['malformed_frames_sent']} malformed frames, "
        f"the run rejected {rejected}, the DLQ holds {len(dead)}; reasons {reasons}"
    )
    assert len(dead) == rejected
    assert all(value["reason"] and value["source"] == "live" for value in dead)
    assert all(isinstance(value["raw"], str) and value["raw"] for value in dead)
    # Every malformed kind is there, the unknown channel included (the last frame sent may
    # arrive after the run stopped reading).
    assert rejected >= stats["malformed_frames_sent"] - 1
    assert "unsubscribed channel 'simulator_bogus'" in {str(value["reason"]) for value in dead}


def test_rate_limit_storm_during_a_heal(broker: str, dagster_instance: DagsterInstance) -> None:
    """The heal's REST calls meet ten rate-limit answers in a row: slower, nothing lost."""
    topic = unique_topic("faults-heal-storm")
    trades = grace_backlog(len(LIVE_PAIRS), LIVE_RATE) + 700
    with SimulatorProcess(*live_flags()) as sim:
        with once_every_pair_is_written(
            broker, topic, LIVE_PAIRS, lambda: _stall_once(sim, rest_rate_limit_next=10)
        ) as storming:
            result = run_live(
                live_kraken(
                    sim,
                    watchdog_seconds=3.0,
                    rest_backoff_initial_seconds=0.05,
                    rest_backoff_max_seconds=0.3,
                ),
                RedpandaResource(broker_address=broker, topic=topic),
                dagster_instance,
                max_trades=trades,
            )
        ended_us = wall_us(seconds_ago=3)
        stats = sim.stats()
        sent = trades_sent(sim)
    messages = run_messages(dagster_instance, result.run_id)
    assert result.success and storming.is_set()
    assert stats["rate_limit_errors"] == 10, stats
    assert sum("rate limited" in message for message in messages) == 10
    records = read_topic(broker, topic, expected=trades)
    assert_exactly_once(
        records, label="heal-storm", market=MARKET, pairs=LIVE_PAIRS, reaches_us=ended_us, sent=sent
    )
    healed = [record for record in records if record.value["source"] == "heal"]
    assert healed, "no heal happened, so the storm hit nothing"
    print(
        f"[faults] heal-storm: {stats['rate_limit_errors']} rate-limit answers, "
        f"{len(healed)} healed"
    )


def test_hostile_frames_are_dead_lettered_and_the_event_log_stays_bounded(
    broker: str, dagster_instance: DagsterInstance
) -> None:
    """Invalid UTF-8 in a text frame, an item nested 1000 deep, a 1 MiB frame of 349,500 junk
    items: the run survives, loses no good trade, and logs a bounded number of warnings."""
    # Parsing a junk frame takes the client about 5 s (349,500 items checked and rejected), so
    # the feed is behind by up to that (plus a margin for a busy machine) when the run ends.
    # One hostile frame in 25 and the kinds in turn: the first junk frame is the 75th frame, early
    # in the run. While the client parses a junk frame the feed falls behind and then sends its
    # backlog in a few large frames, so a run bounded by trades sees few frames after it (with
    # one in 50, a busy machine saw only 5 hostile frames, the second junk frame never sent).
    run = _run_with_frame_faults(
        broker, dagster_instance, "hostile", "--hostile-every-frames", "25", behind_seconds=15
    )
    topic, trades, stats, totals = run.topic, run.trades, run.stats, run.totals
    # Every kind was sent at least once, the junk frame too.
    assert stats["hostile_frames_sent"] >= len(HOSTILE_KINDS), stats
    assert totals["dead_lettered"] >= JUNK_ITEMS, totals
    records = read_topic(broker, topic, expected=trades)
    assert len(records) == trades
    assert_exactly_once(
        records,
        label="hostile",
        market=MARKET,
        pairs=LIVE_PAIRS,
        reaches_us=run.ended_us,
        sent=run.sent,
    )
    messages = run_messages(dagster_instance, run.run_id)
    # Hundreds of thousands of rejections, a few dozen lines.
    census = assert_event_log_bounded(messages, totals)
    one_by_one, summaries = census.rejections_one_by_one, census.rejection_summaries
    assert summaries, "no rejection went uncounted in a summary line"
    reasons = " ".join(one_by_one)
    assert "not valid UTF-8" in reasons and "[[[...]]]" in reasons, reasons[:2000]
    dead = _read_dead_letters(broker, f"{topic}.dlq")
    # A junk frame costs the dead-letter topic its first items and one summary, not 349,500.
    assert len(dead) < 200 * stats["hostile_frames_sent"], len(dead)
    assert any("more bad items in one frame" in str(value["reason"]) for value in dead)
    assert all(len(str(value["reason"])) <= MAX_REASON_CHARS for value in dead)
    print(
        f"[faults] hostile: {stats['hostile_frames_sent']} hostile frames, "
        f"{totals['dead_lettered']} rejections, {len(dead)} dead letters, "
        f"{len(one_by_one)} + {len(summaries)} warning lines, {len(messages)} log entries"
    )


@pytest.mark.parametrize(
    ("flag", "sent_counter", "reason"),
    [
        ("--slow-message-every-frames", "slow_messages_sent", "still incomplete after"),
        ("--giant-message-every-frames", "giant_messages_sent", "not read further"),
    ],
    ids=["slow", "giant"],
)
def test_a_message_too_slow_or_too_big_costs_a_reconnect_not_the_run(
    broker: str, dagster_instance: DagsterInstance, flag: str, sent_counter: str, reason: str
) -> None:
    """A message sent a character every 0.5 s (30 s in all), or one of 17 MiB: the client stops
    reading it at the watchdog or at 16 MiB, reconnects, and loses no trade."""
    # A stalled connection is behind by up to the watchdog plus a heal when the run ends.
    run = _run_with_frame_faults(
        broker, dagster_instance, sent_counter, flag, "30", behind_seconds=15
    )
    stats, totals = run.stats, run.totals
    assert stats[sent_counter] >= 1, stats
    assert totals["reconnects"] >= 1, totals
    lost = [m for m in run_messages(dagster_instance, run.run_id) if "connection lost" in m]
    assert any(reason in message for message in lost), lost
    # No reconnect waited for the whole slow message: each came within the watchdog's reach.
    # (Near midnight UTC the trades that piled up while the claims waited their grace periods
    # are behind by that wait; the reason above still shows the cut at the watchdog.)
    assert totals["lag_p99_seconds"] < 15 + run.grace_seconds, totals
    assert_event_log_bounded(run_messages(dagster_instance, run.run_id), totals)
    records = read_topic(broker, run.topic, expected=run.trades)
    assert_exactly_once(
        records,
        label=sent_counter,
        market=MARKET,
        pairs=LIVE_PAIRS,
        reaches_us=run.ended_us,
        sent=run.sent,
    )
    print(f"[faults] {sent_counter}: {stats[sent_counter]} sent; {totals}")
