"""SIGKILL (no flush, no goodbye) of a live run and of a backfill run, then the next run."""

import time
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance

from trades_platform.resources import RedpandaResource
from trades_platform.simulator.market import SimulatedMarket
from trades_platform.testing import (
    SimulatorProcess,
    cli_env,
    grace_seconds,
    read_topic,
    unique_topic,
)
from trades_platform_tests.faults.conftest import (
    BACKFILL_RATE,
    LIVE_JOB_COMMAND,
    LIVE_PAIRS,
    LIVE_RATE,
    CliRun,
    assert_exactly_once,
    backfill_command,
    backfill_kraken,
    backfill_metadata,
    day_ids,
    ids_of,
    live_config,
    live_flags,
    run_backfill,
    trades_sent,
    wall_us,
)

pytestmark = pytest.mark.faults


def test_sigkill_of_a_live_run_then_the_next_run_recovers(broker: str, tmp_path: Path) -> None:
    """Kill -9 mid-stream; the next run heals the downtime from REST and repeats nothing."""
    topic = unique_topic("faults-kill-live")
    unbounded = tmp_path / "first.yaml"
    unbounded.write_text(yaml.safe_dump(live_config(max_seconds=120)))
    # The killed run's claims stay for their lease (35 s + the 20 s delivery timeout + 11 s: its
    # last trades could land until then), and the next run waits them out before it reads the
    # topic; its 20 s bound counts from when it streams.
    bounded = tmp_path / "second.yaml"
    bounded.write_text(yaml.safe_dump(live_config(max_seconds=20)))
    with SimulatorProcess(*live_flags()) as sim:
        env = cli_env(
            sim,
            broker,
            topic,
            tmp_path / "home",
            KRAKEN_REST_REQUESTS_PER_SECOND="20",
            KAFKA_DELIVERY_TIMEOUT_MS="20000",
        )
        with CliRun([*LIVE_JOB_COMMAND, "-c", str(unbounded)], env) as first:
            first.wait_for_output("trades written (", timeout_seconds=120)
            time.sleep(2)
            first.kill()
        last_progress = [line for line in first.lines if "trades written (" in line][-1]
        # Reading what the killed run left also keeps the job down for a few seconds.
        left = read_topic(broker, topic, idle_seconds=3)
        # Near midnight UTC its claims then wait their grace periods too.
        grace = grace_seconds(len(LIVE_PAIRS))
        with CliRun([*LIVE_JOB_COMMAND, "-c", str(bounded)], env) as second:
            code = second.wait(timeout_seconds=150 + grace)
            # The process outlives its run by a second or two.
            ended_us = wall_us(seconds_ago=5)
        sent = trades_sent(sim)
        assert code == 0, second.output[-4000:]
    waited = "Waiting for other live writers" in second.output
    assert waited, "the next run did not wait out the killed run's claim"
    records = read_topic(broker, topic)
    market = SimulatedMarket(LIVE_PAIRS, LIVE_RATE)
    assert_exactly_once(
        records,
        label="sigkill-live",
        market=market,
        pairs=LIVE_PAIRS,
        reaches_us=ended_us,
        sent=sent,
    )
    healed = sum(record.value["source"] == "heal" for record in records)
    assert left and len(records) > len(left)
    assert healed > 0, "the second run did not heal the time the job was down"
    print(
        f"[faults] sigkill-live: killed run's last progress: {last_progress.split(' - ')[-1][:120]}"
    )
    print(
        f"[faults] sigkill-live: {len(left)} records after the kill, {healed} healed by the "
        f"next run (which {'waited out' if waited else 'did not wait for'} the killed run's lease)"
    )


def test_sigkill_of_a_backfill_mid_day_then_the_rerun_completes_it(
    broker: str, tmp_path: Path, dagster_instance: DagsterInstance
) -> None:
    """Kill -9 after two pages; the rerun writes only the rest of the day."""
    topic = unique_topic("faults-kill-backfill")
    key = "2024-01-10|BTC/USD"
    market = SimulatedMarket(LIVE_PAIRS, BACKFILL_RATE)
    expected = day_ids(market, key)
    flags = ["--pairs", ",".join(LIVE_PAIRS), "--trades-per-second", str(BACKFILL_RATE)]
    with SimulatorProcess(*flags) as sim:
        # 2 calls/s: ten 1000-trade pages take about 5 s, time enough to kill it between pages.
        env = cli_env(sim, broker, topic, tmp_path / "home", KRAKEN_REST_REQUESTS_PER_SECOND="2")
        before = sim.stats()["rest_requests"]
        with CliRun(backfill_command(key), env) as run:
            # AssetPairs and Time, then one Trades call per page. A page is acknowledged before
            # the next is asked for, so the third Trades call means two pages are in the topic.
            deadline = time.monotonic() + 120
            while sim.stats()["rest_requests"] < before + 5:
                assert run.process.poll() is None, run.output[-4000:]
                assert time.monotonic() < deadline, run.output[-4000:]
                time.sleep(0.05)
            run.kill()
        left = read_topic(broker, topic, idle_seconds=2)
        left_ids = set(ids_of(left, "BTC/USD"))
        assert 1900 <= len(left_ids) < len(expected), len(left_ids)
        rerun = run_backfill(
            key,
            backfill_kraken(sim),
            RedpandaResource(broker_address=broker, topic=topic),
            dagster_instance,
        )
        sent = trades_sent(sim)
    metadata = backfill_metadata(rerun)
    records = read_topic(broker, topic, expected=len(expected))
    assert_exactly_once(
        records,
        label="sigkill-backfill",
        market=market,
        sources=("backfill",),
        pairs=["BTC/USD"],
        sent=sent,
    )
    assert sorted(ids_of(records, "BTC/USD")) == expected
    assert metadata["already_present"] == len(left_ids) > 0
    assert metadata["written"] == len(expected) - len(left_ids)
    # The killed run never released its window lease: the rerun waited for it to go silent.
    assert metadata["seconds_waiting_for_other_backfills"] > 0
    print(
        f"[faults] sigkill-backfill: day has {len(expected)} trades; the killed run left "
        f"{len(left)}; the rerun waited {metadata['seconds_waiting_for_other_backfills']}s for "
        f"the killed run's lease, then wrote {metadata['written']}, already_present "
        f"{metadata['already_present']}"
    )
