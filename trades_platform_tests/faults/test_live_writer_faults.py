"""The live writer in the real world: a feed that silently leaves trades out, heals that fail or
crawl, a second live run, a reader whose clock runs ahead. Each scenario ends with the topic read
back: per pair, every id once, none missing.
"""

import itertools
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest
from dagster import DagsterInstance

from trades_platform.coverage.claims import CLAIM_GRACE_SECONDS, ClaimBoard, TailClaim
from trades_platform.coverage.coverage_log import CoverageLogReader
from trades_platform.coverage.window_leases import LEASE_KEY_PREFIX
from trades_platform.resources import RedpandaResource
from trades_platform.simulator.market import SimulatedMarket
from trades_platform.testing import (
    SimulatorProcess,
    TopicRecord,
    cli_env,
    grace_backlog,
    grace_seconds,
    live_run_totals,
    read_topic,
    unique_topic,
)
from trades_platform.trade import parse_time_iso
from trades_platform_tests.faults.conftest import (
    LIVE_PAIRS,
    LIVE_RATE,
    CliRun,
    assert_event_log_bounded,
    assert_exactly_once,
    backfill_command,
    backfill_kraken,
    backfill_metadata,
    cli_backfill_metadata,
    day_ids,
    ids_of,
    live_cli,
    live_flags,
    live_kraken,
    run_backfill,
    run_live,
    run_messages,
    run_totals,
    trades_sent,
    wait_for_claim,
    wall_us,
)
from trades_platform_tests.support import skewed_clock

pytestmark = pytest.mark.faults

# The closed-day scenarios start simulated time in the last minutes of 2024-03-05, so the live
# run's claim reaches into a day that is over and that a backfill may write.
DAY_KEY = "2024-03-05|BTC/USD"
# Simulated time runs 10 times real time there. A claim on trades of a closed day first waits
# its grace period (real seconds), so each scenario starts that much simulated time earlier than
# the moment its live run should start streaming.
SIMULATED_SPEED = 10
_GRACE_SIMULATED = timedelta(seconds=SIMULATED_SPEED * CLAIM_GRACE_SECONDS)


def simulated_start(streams_at: str) -> str:
    """The simulator's start time for a live run that should stream from `streams_at`."""
    return (datetime.fromisoformat(streams_at) - _GRACE_SIMULATED).isoformat()


# The hand-back scenario: 4,320 trades a day (5 pages).
HAND_BACK_RATE = 0.05
# The slow-heal scenarios: 17,280 trades a day (18 pages), 2 a real second at speed 10; the
# live run's first heal page is held this long, past its claim's 86 s lease.
SLOW_HEAL_RATE = 0.2
SLOW_PAGE_SECONDS = 100
# How far ahead the skewed readers' wall clocks run (their monotonic clocks are left alone).
CLOCK_AHEAD_SECONDS = 300
# The left-out scenarios' runs: about 20 s of trades, not 20 s (near midnight UTC their claims
# first wait a grace period, and they write what piled up meanwhile: testing.live).
LEFT_OUT_TRADES = int(20 * LIVE_RATE * len(LIVE_PAIRS))


def _assert_in_order(records: list[TopicRecord], pairs: Sequence[str]) -> None:
    """Each pair's ids reach the topic strictly increasing (the live writer's order promise)."""
    for pair in pairs:
        ids = ids_of(records, pair)
        backwards = [(a, b) for a, b in itertools.pairwise(ids) if b <= a]
        assert not backwards, f"{pair}: ids out of order in the topic: {backwards[:5]}"


def _claims_made_ms(instance: DagsterInstance, run_id: str) -> float:
    """When the run had made its claims (its last "Claimed the tails" line), by its clock, ms."""
    return 1000 * max(
        entry.timestamp
        for entry in instance.all_logs(run_id)
        if entry.user_message.startswith("Claimed the tails")
    )


def _sources(records: list[TopicRecord]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        counts[record.value["source"]] = counts.get(record.value["source"], 0) + 1
    return counts


def test_every_seventh_id_left_out_is_healed_in_order(
    broker: str, dagster_instance: DagsterInstance
) -> None:
    """Kraken's feed drops every 7th trade silently: each is healed by id, in order, at 1 call/s."""
    topic = unique_topic("faults-left-out")
    trades = grace_backlog(len(LIVE_PAIRS), LIVE_RATE) + LEFT_OUT_TRADES
    with SimulatorProcess(*live_flags("--omit-every-nth-id", "7")) as sim:
        started = time.monotonic()
        result = run_live(
            # Kraken's pace: one REST call a second for both pairs' heals.
            live_kraken(sim, rest_requests_per_second=1.0),
            RedpandaResource(broker_address=broker, topic=topic),
            dagster_instance,
            max_trades=trades,
        )
        seconds = time.monotonic() - started
        ended_us = wall_us(seconds_ago=5)
        stats = sim.stats()
        sent = trades_sent(sim)
    totals = run_totals(dagster_instance, result.run_id)
    assert result.success
    assert stats["trades_left_out_total"] > 50, stats
    # The run counted what the simulator left out of the frames it read; the simulator went on
    # leaving trades out of frames sent after the run stopped reading, so it counts more.
    assert 50 < totals["left_out"] <= stats["trades_left_out_total"], (totals, stats)
    assert totals["healed"] > 50, totals
    assert totals["out_of_order"] == 0, totals
    assert totals["rest_calls"] <= seconds + 1, totals
    records = read_topic(broker, topic)
    market = SimulatedMarket(LIVE_PAIRS, 25.0)
    assert_exactly_once(
        records, label="left-out-7", market=market, pairs=LIVE_PAIRS, reaches_us=ended_us, sent=sent
    )
    _assert_in_order(records, LIVE_PAIRS)
    # Every record says when it was received: live ones when their frame arrived (within a tick
    # of the trade's time, or, for the first snapshot's 50 trades, 2 s of trades later and the
    # time to claim), healed ones when their REST page did. Frames wait unread while the claims
    # wait their grace period (near midnight UTC): the bounds count from the claims made.
    claimed_ms = _claims_made_ms(dagster_instance, result.run_id)
    for record in records:
        value = record.value
        assert value["received_ms"] >= value["timestamp_ms"], value
        latency_ms = value["received_ms"] - max(value["timestamp_ms"], claimed_ms)
        limit_ms = 6_000 if value["source"] == "live" else 15_000
        assert latency_ms < limit_ms, value
    print(f"[faults] left-out-7: {_sources(records)}; {totals}")


def test_only_the_first_trade_of_each_match_arrives(
    broker: str, dagster_instance: DagsterInstance
) -> None:
    """Matches of three fills at one timestamp, only the first sent: followers healed by id."""
    topic = unique_topic("faults-followers")
    flags = live_flags("--trades-per-match", "3", "--omit-same-timestamp-followers")
    trades = grace_backlog(len(LIVE_PAIRS), LIVE_RATE) + LEFT_OUT_TRADES
    with SimulatorProcess(*flags) as sim:
        result = run_live(
            live_kraken(sim, rest_requests_per_second=1.0),
            RedpandaResource(broker_address=broker, topic=topic),
            dagster_instance,
            max_trades=trades,
        )
        ended_us = wall_us(seconds_ago=5)
        stats = sim.stats()
        sent = trades_sent(sim)
    totals = run_totals(dagster_instance, result.run_id)
    assert result.success
    # Two of every three trades never came over the socket.
    assert stats["trades_left_out_total"] > stats["trades_sent_total"] // 2, stats
    records = read_topic(broker, topic)
    market = SimulatedMarket(LIVE_PAIRS, 25.0, trades_per_match=3)
    counts = assert_exactly_once(
        records, label="followers", market=market, pairs=LIVE_PAIRS, reaches_us=ended_us, sent=sent
    )
    _assert_in_order(records, LIVE_PAIRS)
    assert _sources(records)["heal"] > sum(count.in_topic for count in counts.values()) // 2
    assert totals["out_of_order"] == 0, totals
    print(f"[faults] followers: {_sources(records)}; {totals}")


def test_a_gap_whose_time_runs_backwards_is_healed(
    broker: str, dagster_instance: DagsterInstance
) -> None:
    """The trade after each left-out one arrives 5 s early: the run lives, each gap is healed."""
    topic = unique_topic("faults-backwards")
    flags = live_flags("--omit-every-nth-id", "7", "--backdate-after-gap-seconds", "5")
    trades = grace_backlog(len(LIVE_PAIRS), LIVE_RATE) + LEFT_OUT_TRADES
    with SimulatorProcess(*flags) as sim:
        result = run_live(
            live_kraken(sim, rest_requests_per_second=1.0),
            RedpandaResource(broker_address=broker, topic=topic),
            dagster_instance,
            max_trades=trades,
        )
        ended_us = wall_us(seconds_ago=5)
        stats = sim.stats()
        sent = trades_sent(sim)
    messages = run_messages(dagster_instance, result.run_id)
    totals = live_run_totals(messages)
    assert result.success
    assert stats["trades_backdated"] > 50, stats
    assert totals["healed"] > 50 and totals["handed_back"] == 0, totals
    assert_event_log_bounded(messages, totals)
    records = read_topic(broker, topic)
    market = SimulatedMarket(LIVE_PAIRS, 25.0)
    assert_exactly_once(
        records,
        label="backwards",
        market=market,
        pairs=LIVE_PAIRS,
        reaches_us=ended_us,
        sent=sent,
        # Live records of the trade after a left-out one carry the time the socket sent.
        time_shifts_us=lambda trade_id: (0, 5_000_000) if trade_id % 7 == 1 else (0,),
    )
    _assert_in_order(records, LIVE_PAIRS)
    # The fault reached the topic: time runs backwards from a healed trade to the next one.
    backwards = 0
    for pair in LIVE_PAIRS:
        by_id = sorted(
            (r.value["trade_id"], r.value["timestamp_ms"])
            for r in records
            if r.value["pair"] == pair
        )
        backwards += sum(1 for (_, a), (_, b) in itertools.pairwise(by_id) if b < a)
    assert backwards > 50, backwards
    print(f"[faults] backwards: {backwards} steps back in time; {totals}")


def _kraken_time_us(sim: SimulatorProcess) -> int:
    with urllib.request.urlopen(f"{sim.rest_url}/0/public/Time", timeout=10) as response:
        return int(orjson.loads(response.read())["result"]["unixtime"]) * 1_000_000


def _live_claim(redpanda: RedpandaResource, pair: str) -> TailClaim | None:
    board = ClaimBoard(redpanda.kafka_settings(), owner="faults-test-observer")
    try:
        claims = [o.claim for o in board.read().get(pair, []) if not o.over]
        return claims[0] if claims else None
    finally:
        board.close()


def test_an_unhealable_gap_is_handed_back_and_filled_by_the_days_backfill_while_live_lives(
    broker: str, dagster_instance: DagsterInstance, tmp_path: Path
) -> None:
    """REST fails for the left-out ids: the live run hands them back, the backfill fills them."""
    topic = unique_topic("faults-hand-back")
    redpanda = RedpandaResource(broker_address=broker, topic=topic)
    market = SimulatedMarket(["BTC/USD"], HAND_BACK_RATE)
    expected = day_ids(market, DAY_KEY)
    # Simulated time starts in the closed day's last minutes (the live run's snapshot reaches
    # into it), REST fails from the start, and the feed leaves every 7th trade out.
    with (
        SimulatorProcess(
            *("--pairs", "BTC/USD", "--trades-per-second", str(HAND_BACK_RATE)),
            *("--speed", str(SIMULATED_SPEED)),
            *("--start-time", simulated_start("2024-03-05T23:55:40")),
            *("--omit-every-nth-id", "7", "--rest-unavailable"),
        ) as sim,
        live_cli(
            sim,
            broker,
            topic,
            tmp_path / "home",
            env={"KRAKEN_REST_MAX_RETRIES": "1", "KRAKEN_REST_BACKOFF_MAX_SECONDS": "0.2"},
            max_seconds=100 + CLAIM_GRACE_SECONDS,
            heal_hold_seconds=2,
            heal_give_up_seconds=3,
        ) as live,
    ):
        # The live run gives its holes back in its claim...
        deadline = time.monotonic() + 120 + CLAIM_GRACE_SECONDS
        while (claim := _live_claim(redpanda, "BTC/USD")) is None or not claim.handed_back:
            assert time.monotonic() < deadline and live.process.poll() is None, live.output[-4000:]
            time.sleep(0.5)
        # ... REST comes back (later holes heal), the day ends by Kraken's clock ...
        sim.set_faults(rest_unavailable=False)
        day_end_us = parse_time_iso("2024-03-06T00:00:05Z")
        while _kraken_time_us(sim) < day_end_us:
            assert time.monotonic() < deadline, "the simulated day did not end"
            time.sleep(0.5)
        claim = _live_claim(redpanda, "BTC/USD")
        assert claim is not None and claim.from_id is not None
        handed_back = [i for first, last in claim.handed_back for i in range(first, last + 1)]
        assert handed_back and all(trade_id in expected for trade_id in handed_back)
        # ... and the day's backfill runs while the live run still lives.
        backfill = run_backfill(DAY_KEY, backfill_kraken(sim), redpanda, dagster_instance)
        assert live.process.poll() is None, "the live run ended before the backfill"
        assert live.wait(timeout_seconds=150) == 0, live.output[-4000:]
        sent = trades_sent(sim)
    metadata = backfill_metadata(backfill)
    records = read_topic(broker, topic)
    assert_exactly_once(
        records,
        label="hand-back",
        market=market,
        sources=("live", "heal", "backfill"),
        pairs=["BTC/USD"],
        sent=sent,
    )
    assert set(expected) <= set(ids_of(records, "BTC/USD"))
    by_id = {record.value["trade_id"]: record.value["source"] for record in records}
    assert {by_id[trade_id] for trade_id in handed_back} == {"backfill"}
    # The live run still writes the end of the day it claimed: a trade held behind a hole that
    # is healing when the backfill pages is left to it (counted here), and it is in the topic
    # once (above), written by the live run.
    left = metadata["left_to_live_writer"]
    print(
        f"[faults] hand-back: claim from id {claim.from_id}; {len(handed_back)} ids handed back "
        f"{claim.handed_back[:3]}...; backfill wrote {metadata['written']} (already present "
        f"{metadata['already_present']}, left to the live writer {left}); sources "
        f"{_sources(records)}"
    )


@dataclass
class _SlowHeal:
    """A live run whose first heal page REST holds back, with holes in a closed day pending."""

    sim: SimulatorProcess
    live: CliRun
    claim: TailClaim
    # When REST received the held-back page (monotonic).
    held_at: float


@contextmanager
def _live_run_with_a_slow_heal(
    broker: str, topic: str, home: Path, delay_seconds: float
) -> Iterator[_SlowHeal]:
    """A live run of BTC/USD whose feed leaves every 7th trade out, across the end of a day.

    Simulated time runs at 10 simulated seconds per real one, 0.2 trades a second (2 a real
    second), and starts so that the live run streams from 80 s before midnight, after its claim's
    grace period: its snapshot and first updates are in the day before, which closes about 8 s
    after it streams. Its first heal page is held by REST for
    `delay_seconds`, longer than the claim's lease (86 s with a 10 s delivery timeout); later
    calls are answered at once again, so the backfill can run meanwhile. Yields once the day is
    closed by Kraken's clock and the page is being held.
    """
    with (
        SimulatorProcess(
            *("--pairs", "BTC/USD", "--trades-per-second", str(SLOW_HEAL_RATE)),
            *("--speed", str(SIMULATED_SPEED)),
            *("--start-time", simulated_start("2024-03-05T23:58:40")),
            *("--omit-every-nth-id", "7", "--rest-delay-seconds", str(delay_seconds)),
        ) as sim,
        live_cli(
            sim,
            broker,
            topic,
            home,
            env={
                "KAFKA_DELIVERY_TIMEOUT_MS": "10000",
                "KRAKEN_REST_TIMEOUT_SECONDS": str(delay_seconds + 60),
            },
            max_seconds=delay_seconds + 30 + CLAIM_GRACE_SECONDS,
        ) as live,
    ):
        redpanda = RedpandaResource(broker_address=broker, topic=topic)
        claim = wait_for_claim(redpanda, "BTC/USD", timeout_seconds=90)
        assert claim.lease_seconds < delay_seconds - 10
        # The healer's first calls (after the grace period): AssetPairs (not delayed), then the
        # held Trades page.
        deadline = time.monotonic() + 60 + CLAIM_GRACE_SECONDS
        while sim.stats()["rest_requests"] < 2:
            assert time.monotonic() < deadline, live.output[-4000:]
            time.sleep(0.1)
        held_at = time.monotonic()
        sim.set_faults(rest_delay_seconds=0)
        while _kraken_time_us(sim) < parse_time_iso("2024-03-06T00:00:05Z"):
            assert time.monotonic() < deadline, "the simulated day did not end"
            time.sleep(0.5)
        yield _SlowHeal(sim, live, claim, held_at)


def _assert_backfill_left_the_pending_holes(
    records: list[TopicRecord], claim: TailClaim, left_to_live_writer: int
) -> None:
    """The backfill wrote nothing the claim kept; the holes it left were healed by the live run."""
    expected = day_ids(SimulatedMarket(["BTC/USD"], SLOW_HEAL_RATE), DAY_KEY)
    assert set(expected) <= set(ids_of(records, "BTC/USD"))
    by_id = {record.value["trade_id"]: record.value["source"] for record in records}
    backfilled = [trade_id for trade_id, source in by_id.items() if source == "backfill"]
    from_id = claim.from_id
    assert from_id is not None
    assert backfilled and all(trade_id < from_id for trade_id in backfilled)
    healed_in_day = [i for i in expected if i >= from_id and by_id[i] == "heal"]
    # The day's holes were still pending when the backfill ran: it left them (and the trades
    # held behind them) to the live writer, whose heal came later.
    assert left_to_live_writer >= len(healed_in_day) >= 1


def test_a_heal_page_slower_than_the_lease_keeps_the_claim_held(
    broker: str, dagster_instance: DagsterInstance, tmp_path: Path
) -> None:
    """One REST page takes 100 s, longer than the claim's lease (86 s): heartbeats go on beside
    it, so a second live run refuses to start, and the backfill of the closed day leaves its
    pending holes to the live writer, which heals them once the page arrives."""
    topic = unique_topic("faults-slow-heal")
    redpanda = RedpandaResource(broker_address=broker, topic=topic)
    with _live_run_with_a_slow_heal(broker, topic, tmp_path / "first", SLOW_PAGE_SECONDS) as slow:
        env = {"KAFKA_DELIVERY_TIMEOUT_MS": "10000"}
        with live_cli(
            slow.sim, broker, topic, tmp_path / "second", env=env, max_seconds=30
        ) as second:
            backfill = run_backfill(DAY_KEY, backfill_kraken(slow.sim), redpanda, dagster_instance)
            assert second.wait(timeout_seconds=120) != 0
        assert time.monotonic() - slow.held_at < SLOW_PAGE_SECONDS, "the slow page ended too soon"
        assert slow.live.wait(timeout_seconds=300) == 0, slow.live.output[-4000:]
        sent = trades_sent(slow.sim)
    assert "are being written by other live runs" in second.output, second.output[-4000:]
    metadata = backfill_metadata(backfill)
    records = read_topic(broker, topic)
    assert_exactly_once(
        records,
        label="slow-heal",
        market=SimulatedMarket(["BTC/USD"], SLOW_HEAL_RATE),
        sources=("live", "heal", "backfill"),
        pairs=["BTC/USD"],
        sent=sent,
    )
    _assert_backfill_left_the_pending_holes(records, slow.claim, metadata["left_to_live_writer"])
    print(
        f"[faults] slow-heal: lease {slow.claim.lease_seconds:.0f}s, one page held "
        f"{SLOW_PAGE_SECONDS}s; second "
        f"live run refused; backfill wrote {metadata['written']}, left "
        f"{metadata['left_to_live_writer']} to the live writer; sources {_sources(records)}"
    )


def test_a_second_live_run_started_while_the_first_writes_never_writes(
    broker: str, dagster_instance: DagsterInstance, tmp_path: Path
) -> None:
    """A second `dagster job execute` of the same pairs: it fails loudly, the first goes on."""
    topic = unique_topic("faults-second-live")
    redpanda = RedpandaResource(broker_address=broker, topic=topic)
    # Near midnight UTC the first run's claims wait their grace periods, one pair after the other.
    grace = grace_seconds(len(LIVE_PAIRS))
    with (
        SimulatorProcess(*live_flags()) as sim,
        live_cli(
            sim, broker, topic, tmp_path / "first", pairs=LIVE_PAIRS, max_seconds=40 + grace
        ) as first,
    ):
        wait_for_claim(redpanda, "ETH/USD", timeout_seconds=90 + grace)
        second = run_live(
            live_kraken(sim), redpanda, dagster_instance, raise_on_error=False, max_seconds=30
        )
        assert first.process.poll() is None, "the first run ended before the second one's check"
        assert first.wait(timeout_seconds=120 + grace) == 0, first.output[-4000:]
        ended_us = wall_us(seconds_ago=5)
        sent = trades_sent(sim)
    assert not second.success
    failure = second.failure_data_for_node("stream_live_trades")
    assert failure is not None and failure.error is not None
    assert "being written by other live runs" in failure.error.to_string()
    assert "trades written" not in "\n".join(run_messages(dagster_instance, second.run_id))
    records = read_topic(broker, topic)
    assert_exactly_once(
        records,
        label="second-live-run",
        market=SimulatedMarket(LIVE_PAIRS, 25.0),
        pairs=LIVE_PAIRS,
        reaches_us=ended_us - 10_000_000,
        sent=sent,
    )
    _assert_in_order(records, LIVE_PAIRS)


def _window_lease_times_ms(redpanda: RedpandaResource) -> set[int]:
    """When each backfill's window lease was taken, by its own wall clock."""
    reader = CoverageLogReader(redpanda.kafka_settings(), (LEASE_KEY_PREFIX,))
    try:
        records = reader.new_records()
    finally:
        reader.close()
    # The acquisition and its release carry the same time.
    return {value["acquired_ms"] for _, _, value in records}


def test_readers_with_a_clock_five_minutes_ahead_leave_a_healthy_claim_alone(
    broker: str, tmp_path: Path
) -> None:
    """A backfill and a second live run whose wall clocks run 5 minutes ahead: the live claim's
    heartbeats look 5 minutes old to them, yet they see them change, so they respect it (the
    backfill leaves the claimed holes, pending behind a slow heal, to the live writer)."""
    topic = unique_topic("faults-clock-ahead")
    with _live_run_with_a_slow_heal(broker, topic, tmp_path / "live", SLOW_PAGE_SECONDS) as slow:
        env = cli_env(slow.sim, broker, topic, tmp_path / "ahead", pairs=["BTC/USD"])
        env = skewed_clock.env(env, CLOCK_AHEAD_SECONDS)
        with CliRun(backfill_command(DAY_KEY), env) as backfill:
            assert backfill.wait(timeout_seconds=120) == 0, backfill.output[-4000:]
        # Its window lease carries its wall clock: 5 minutes ahead of this process's.
        (lease_ms,) = _window_lease_times_ms(RedpandaResource(broker_address=broker, topic=topic))
        assert lease_ms - time.time() * 1000 > CLOCK_AHEAD_SECONDS * 1000 - 120_000
        with live_cli(
            slow.sim,
            broker,
            topic,
            tmp_path / "second",
            env=skewed_clock.env({}, CLOCK_AHEAD_SECONDS),
            max_seconds=30,
        ) as second:
            assert second.wait(timeout_seconds=120) != 0
        assert time.monotonic() - slow.held_at < SLOW_PAGE_SECONDS, "the slow page ended too soon"
        assert slow.live.wait(timeout_seconds=300) == 0, slow.live.output[-4000:]
        sent = trades_sent(slow.sim)
    assert "are being written by other live runs" in second.output, second.output[-4000:]
    summary = cli_backfill_metadata(tmp_path / "ahead", DAY_KEY)
    records = read_topic(broker, topic)
    assert_exactly_once(
        records,
        label="clock-ahead",
        market=SimulatedMarket(["BTC/USD"], SLOW_HEAL_RATE),
        sources=("live", "heal", "backfill"),
        pairs=["BTC/USD"],
        sent=sent,
    )
    _assert_backfill_left_the_pending_holes(records, slow.claim, summary["left_to_live_writer"])
    print(
        f"[faults] clock-ahead: claim from id {slow.claim.from_id}; backfill (+5 min) wrote "
        f"{summary['written']}, left {summary['left_to_live_writer']}; second live run "
        "(+5 min) refused"
    )
