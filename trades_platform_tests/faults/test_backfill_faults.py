"""The backfill under stress: REST rate-limit storms, a partition run twice at once, and days
that the live writer has written (or is writing) part of.
"""

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance

from trades_platform.coverage.claims import CLAIM_GRACE_SECONDS
from trades_platform.resources import RedpandaResource
from trades_platform.simulator.market import SimulatedMarket
from trades_platform.testing import SimulatorProcess, TopicRecord, cli_env, read_topic, unique_topic
from trades_platform_tests.faults.conftest import (
    BACKFILL_RATE,
    LIVE_PAIRS,
    CliRun,
    assert_exactly_once,
    backfill_command,
    backfill_kraken,
    backfill_metadata,
    cli_backfill_metadata,
    day_ids,
    ids_of,
    live_cli,
    live_kraken,
    run_backfill,
    run_live,
    run_messages,
    trades_sent,
    wait_for_claim,
)

pytestmark = pytest.mark.faults

BACKFILL_MARKET = SimulatedMarket(LIVE_PAIRS, BACKFILL_RATE)

# The overlap scenarios: simulated time starts one minute into 2024-03-06, so the live run's
# 50-trade snapshot reaches back into 2024-03-05, a day that is over and that a backfill may write.
OVERLAP_START = "2024-03-06T00:01:00"
OVERLAP_KEY = "2024-03-05|BTC/USD"
# 4,320 trades a day (5 pages); the snapshot reaches 1,000 s back.
OVERLAP_RATE = 0.05
# 17,280 trades a day: 18 pages, paced to outlast the live run's claim.
SLOW_OVERLAP_RATE = 0.2
SLOW_OVERLAP_PAGES = 18


@pytest.fixture(scope="module")
def history() -> Iterator[SimulatorProcess]:
    """A simulator at the backfill tests' rate (its REST is stateless)."""
    flags = ["--pairs", ",".join(LIVE_PAIRS), "--trades-per-second", str(BACKFILL_RATE)]
    with SimulatorProcess(*flags) as sim:
        yield sim


def overlap_simulator(rate: float) -> SimulatorProcess:
    """BTC/USD only, simulated time starting one minute into 2024-03-06."""
    flags = ["--pairs", "BTC/USD", "--trades-per-second", str(rate)]
    return SimulatorProcess(*flags, "--start-time", OVERLAP_START)


def test_rate_limit_storm_during_a_backfill(
    broker: str, history: SimulatorProcess, dagster_instance: DagsterInstance
) -> None:
    """Ten rate-limit answers in a row: the partition waits them out and loses nothing."""
    topic = unique_topic("faults-backfill-storm")
    key = "2024-02-20|ETH/USD"
    served_before = history.stats()
    before = served_before["rate_limit_errors"]
    history.set_faults(rest_rate_limit_next=10)
    result = run_backfill(
        key,
        backfill_kraken(history),
        RedpandaResource(broker_address=broker, topic=topic),
        dagster_instance,
    )
    sent = trades_sent(history, served_before)
    metadata = backfill_metadata(result)
    expected = day_ids(BACKFILL_MARKET, key)
    assert history.stats()["rate_limit_errors"] - before == 10
    assert metadata["rate_limit_waits"] == 10
    assert metadata["seconds_waited"] > 0
    records = read_topic(broker, topic, expected=len(expected))
    assert_exactly_once(
        records,
        label="backfill-storm",
        market=BACKFILL_MARKET,
        sources=("backfill",),
        pairs=["ETH/USD"],
        sent=sent,
    )
    assert ids_of(records, "ETH/USD") == expected
    print(
        f"[faults] backfill-storm: {len(expected)} trades, {metadata['rate_limit_waits']} "
        f"rate-limit waits, {metadata['seconds_waited']}s waited, {metadata['seconds']}s in all"
    )


def test_the_same_partition_twice_at_once_writes_the_day_once(
    broker: str, history: SimulatorProcess, dagster_instance: DagsterInstance, tmp_path: Path
) -> None:
    """Two runs of one partition on two instances, the second started while the first pages."""
    topic = unique_topic("faults-backfill-twice")
    key = "2024-02-21|BTC/USD"
    redpanda = RedpandaResource(broker_address=broker, topic=topic)
    # Paced to 5 calls/s: each run pages for about 2 s, so the two overlap.
    env = cli_env(history, broker, topic, tmp_path / "home", KRAKEN_REST_REQUESTS_PER_SECOND="5")
    served_before = history.stats()
    before = served_before["rest_requests"]
    with CliRun(backfill_command(key), env) as other:
        # AssetPairs, Time, then its first page: the other run is paging; start this one.
        deadline = time.monotonic() + 120
        while history.stats()["rest_requests"] < before + 3:
            assert other.process.poll() is None, other.output[-4000:]
            assert time.monotonic() < deadline, other.output[-4000:]
            time.sleep(0.05)
        ours = run_backfill(
            key, backfill_kraken(history, rest_requests_per_second=5.0), redpanda, dagster_instance
        )
        assert other.wait(timeout_seconds=120) == 0, other.output[-4000:]
    sent = trades_sent(history, served_before)
    first, second = cli_backfill_metadata(tmp_path / "home", key), backfill_metadata(ours)
    expected = day_ids(BACKFILL_MARKET, key)
    records = read_topic(broker, topic, expected=len(expected))
    print(
        f"[faults] backfill-twice: {len(expected)} trades in the day; first wrote "
        f"{first['written']}, second waited {second['seconds_waiting_for_other_backfills']}s "
        f"for its lease, then wrote {second['written']} (already present "
        f"{second['already_present']}); {len(records)} records in the topic"
    )
    # The second run waited for the first one's lease, then found the whole day present.
    messages = "\n".join(run_messages(dagster_instance, ours.run_id))
    assert "Waiting for the backfill BTC/USD" in messages
    assert second["seconds_waiting_for_other_backfills"] > 0
    assert (first["written"], second["written"]) == (len(expected), 0)
    assert second["already_present"] == len(expected)
    assert_exactly_once(
        records,
        label="backfill-twice",
        market=BACKFILL_MARKET,
        sources=("backfill",),
        pairs=["BTC/USD"],
        sent=sent,
    )
    assert sorted(ids_of(records, "BTC/USD")) == expected
    assert first["written"] + second["written"] == len(expected)


def _day_ids_in(records: list[TopicRecord], partition_ids: list[int]) -> set[int]:
    wanted = set(partition_ids)
    return {trade_id for trade_id in ids_of(records, "BTC/USD") if trade_id in wanted}


def test_a_backfill_of_a_day_the_live_run_wrote_the_end_of(
    broker: str, dagster_instance: DagsterInstance
) -> None:
    """Live first (its snapshot reaches into the closed day), then the backfill of that day."""
    topic = unique_topic("faults-overlap")
    redpanda = RedpandaResource(broker_address=broker, topic=topic)
    market = SimulatedMarket(["BTC/USD"], OVERLAP_RATE)
    with overlap_simulator(OVERLAP_RATE) as sim:
        live = run_live(
            live_kraken(sim, pairs=["BTC/USD"]), redpanda, dagster_instance, max_seconds=14
        )
        assert live.success
        expected = day_ids(market, OVERLAP_KEY)
        after_live = read_topic(broker, topic)
        live_in_day = _day_ids_in(after_live, expected)
        assert live_in_day, "the live run wrote nothing of the closed day"
        backfill = run_backfill(OVERLAP_KEY, backfill_kraken(sim), redpanda, dagster_instance)
        sent = trades_sent(sim)
    metadata = backfill_metadata(backfill)
    records = read_topic(broker, topic, expected=len(after_live) + metadata["written"])
    assert_exactly_once(
        records,
        label="overlap-after-live",
        market=market,
        sources=("live", "heal", "backfill"),
        pairs=["BTC/USD"],
        sent=sent,
    )
    assert _day_ids_in(records, expected) == set(expected)
    assert metadata["already_present"] == len(live_in_day)
    assert metadata["written"] == len(expected) - len(live_in_day)
    assert metadata["left_to_live_writer"] == 0
    print(
        f"[faults] overlap-after-live: day has {len(expected)} trades; live wrote "
        f"{len(live_in_day)} of them; backfill wrote {metadata['written']}, already_present "
        f"{metadata['already_present']}"
    )


def _split_by_claim(records: list[TopicRecord], from_id: int) -> Counter[tuple[str, bool]]:
    """(writer, id >= from_id) -> records: who wrote on which side of the claim."""
    return Counter(
        ("backfill" if r.value["source"] == "backfill" else "live", r.value["trade_id"] >= from_id)
        for r in records
    )


def test_a_backfill_of_a_closed_day_while_the_live_run_writes_its_end(
    broker: str, dagster_instance: DagsterInstance, tmp_path: Path
) -> None:
    """The live run claims the day's last ids; the backfill, meanwhile, leaves them to it."""
    topic = unique_topic("faults-overlap-running")
    redpanda = RedpandaResource(broker_address=broker, topic=topic)
    market = SimulatedMarket(["BTC/USD"], OVERLAP_RATE)
    with (
        overlap_simulator(OVERLAP_RATE) as sim,
        live_cli(sim, broker, topic, tmp_path / "home", max_seconds=18) as live,
    ):
        claim = wait_for_claim(redpanda, "BTC/USD", timeout_seconds=90)
        # The live writer now waits out its grace period; the backfill starts inside it and
        # ends (5 pages) long before the live run does.
        backfill = run_backfill(OVERLAP_KEY, backfill_kraken(sim), redpanda, dagster_instance)
        assert live.process.poll() is None, "the live run ended before the backfill"
        assert live.wait(timeout_seconds=90) == 0, live.output[-4000:]
        sent = trades_sent(sim)
    metadata = backfill_metadata(backfill)
    expected = day_ids(market, OVERLAP_KEY)
    claimed = [trade_id for trade_id in expected if trade_id >= claim.from_id]
    assert claimed, "the claim does not reach into the closed day"
    records = read_topic(broker, topic)
    assert_exactly_once(
        records,
        label="overlap-while-live",
        market=market,
        sources=("live", "heal", "backfill"),
        pairs=["BTC/USD"],
        sent=sent,
    )
    assert _day_ids_in(records, expected) == set(expected)
    writers = _split_by_claim(records, claim.from_id)
    # The backfill wrote only below the claim; the live writer everything from it on.
    assert writers[("backfill", True)] == 0 and writers[("live", False)] == 0, writers
    assert metadata["left_to_live_writer"] == len(claimed)
    assert metadata["written"] + metadata["already_present"] == len(expected) - len(claimed)
    print(
        f"[faults] overlap-while-live: day has {len(expected)} trades; live claim from id "
        f"{claim.from_id} ({len(claimed)} of the day's ids); backfill wrote "
        f"{metadata['written']}, already_present {metadata['already_present']}, "
        f"left_to_live_writer {metadata['left_to_live_writer']}"
    )


def test_a_live_run_that_ends_while_the_backfill_of_its_day_runs(
    broker: str, dagster_instance: DagsterInstance, tmp_path: Path
) -> None:
    """The claim is released mid-backfill: the ids the live run wrote are not written again."""
    topic = unique_topic("faults-overlap-released")
    redpanda = RedpandaResource(broker_address=broker, topic=topic)
    market = SimulatedMarket(["BTC/USD"], SLOW_OVERLAP_RATE)
    with (
        overlap_simulator(SLOW_OVERLAP_RATE) as sim,
        live_cli(sim, broker, topic, tmp_path / "home", max_seconds=13) as live,
    ):
        claim = wait_for_claim(redpanda, "BTC/USD", timeout_seconds=90)
        # The grace period, a little streaming, then a clean stop that releases the claim, while
        # the backfill, paced so that its 18 pages outlast that by some 15 s, is still short of
        # the day's last ids.
        pace = SLOW_OVERLAP_PAGES / (CLAIM_GRACE_SECONDS + 15)
        backfill = run_backfill(
            OVERLAP_KEY,
            backfill_kraken(sim, rest_requests_per_second=pace),
            redpanda,
            dagster_instance,
        )
        assert live.wait(timeout_seconds=120) == 0, live.output[-4000:]
        sent = trades_sent(sim)
    metadata = backfill_metadata(backfill)
    expected = day_ids(market, OVERLAP_KEY)
    claimed = [trade_id for trade_id in expected if trade_id >= claim.from_id]
    # The claimed ids come on the last page: nothing left to the live writer means its claim had
    # ended by then, which is the case this test is about.
    assert metadata["left_to_live_writer"] == 0, "the claim was still alive at the last page"
    records = read_topic(broker, topic)
    print(
        f"[faults] overlap-released: day has {len(expected)} trades; live claim from id "
        f"{claim.from_id} ({len(claimed)} of the day's ids); backfill wrote "
        f"{metadata['written']}, already_present {metadata['already_present']}, "
        f"left_to_live_writer {metadata['left_to_live_writer']}"
    )
    assert_exactly_once(
        records,
        label="overlap-released",
        market=market,
        sources=("live", "heal", "backfill"),
        pairs=["BTC/USD"],
        sent=sent,
    )
    assert _day_ids_in(records, expected) == set(expected)
    assert metadata["already_present"] == len(claimed)
    assert metadata["written"] == len(expected) - len(claimed)
