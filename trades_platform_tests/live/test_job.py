"""The live job end to end: simulator -> Dagster run -> real broker -> a consumer reads it back."""

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus, instance_for_test

from trades_platform.live.job import live_trades_job
from trades_platform.resources import KrakenResource, RedpandaResource
from trades_platform.simulator.market import SimulatedMarket
from trades_platform.testing import (
    SimulatorProcess,
    TopicRecord,
    cli_env,
    duplicated_ids,
    grace_backlog,
    grace_seconds,
    ids_by_pair,
    live_run_totals,
    once_every_pair_is_written,
    read_topic,
    unique_topic,
)

PAIRS = ["BTC/USD", "ETH/USD"]
RATE = 25.0
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorProcess]:
    with SimulatorProcess("--pairs", ",".join(PAIRS), "--trades-per-second", str(RATE)) as running:
        yield running


def _run_config(**config: object) -> dict[str, object]:
    return {"ops": {"stream_live_trades": {"config": {"progress_interval_seconds": 1, **config}}}}


def assert_every_trade_once_and_true_to_kraken(
    records: list[TopicRecord], sources: tuple[str, ...] = ("live",)
) -> None:
    """Each pair's ids form one unbroken run with no repeats; each record matches the market."""
    assert not duplicated_ids(records)
    market = SimulatedMarket(PAIRS, RATE)
    for pair, ids in ids_by_pair(records).items():
        assert sorted(ids) == list(range(min(ids), max(ids) + 1)), f"{pair} lost trades"
        # One key per pair keeps a pair's trades in one partition, in order.
        assert ids == sorted(ids), f"{pair} out of order"
    for record in records:
        value = record.value
        expected = market.trade(value["pair"], value["trade_id"])
        assert record.key == value["pair"].replace("/", "-")
        assert record.timestamp_ms == value["timestamp_ms"] == expected.time_us // 1000
        assert value["timestamp"].endswith("Z")
        assert (value["price"], value["volume"], value["side"], value["ord_type"]) == (
            expected.price,
            expected.qty,
            expected.side,
            expected.ord_type,
        )
        assert value["exchange"] == "kraken" and value["source"] in sources


@pytest.mark.both_brokers
def test_every_streamed_trade_lands_once(simulator: SimulatorProcess, broker: str) -> None:
    topic = unique_topic()
    with instance_for_test() as instance:
        result = live_trades_job.execute_in_process(
            run_config=_run_config(max_trades=300),
            resources={
                "kraken": KrakenResource(ws_url=simulator.ws_url, pairs=PAIRS),
                "redpanda": RedpandaResource(broker_address=broker, topic=topic),
            },
            instance=instance,
        )
        logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert result.success
    records = read_topic(broker, topic, expected=300)
    assert len(records) == 300
    assert set(ids_by_pair(records)) == set(PAIRS)
    assert_every_trade_once_and_true_to_kraken(records)
    # Progress lines in the run log: rate, per-pair totals, the lag (age of the newest trade).
    progress = [line for line in logs if "trades/s" in line and "lag now" in line]
    assert progress and all("BTC/USD=" in line for line in progress[1:])
    # The last line for people, then the same counters for tools.
    assert any("Stopped: 300 trades written, 300 acknowledged" in line for line in logs)
    totals = live_run_totals(logs)
    assert (totals["written"], totals["acknowledged"], totals["failed"]) == (300, 300, 0), totals


@pytest.mark.slow
@pytest.mark.both_brokers
def test_reconnects_mid_run_and_still_writes_each_trade_once(broker: str) -> None:
    topic = unique_topic()
    flags = ("--pairs", ",".join(PAIRS), "--trades-per-second", str(RATE))
    with SimulatorProcess(*flags) as dropping:
        kraken = KrakenResource(ws_url=dropping.ws_url, pairs=PAIRS, backoff_initial_seconds=0.1)
        # Every connection drops after 150 trades, from when the run streams (after any grace
        # period its claims wait near midnight, whose backlog it writes first).
        trades = grace_backlog(len(PAIRS), RATE) + 500
        with once_every_pair_is_written(
            broker, topic, PAIRS, lambda: dropping.set_faults(drop_after_trades=150)
        ) as dropping_on:
            result = live_trades_job.execute_in_process(
                run_config=_run_config(max_trades=trades),
                resources={
                    "kraken": kraken,
                    "redpanda": RedpandaResource(broker_address=broker, topic=topic),
                },
            )
        assert dropping_on.is_set() and dropping.stats()["drops"] >= 2
    assert result.success
    records = read_topic(broker, topic, expected=trades)
    assert len(records) == trades
    assert_every_trade_once_and_true_to_kraken(records)


def test_an_unsupported_pair_fails_the_run_with_its_name(
    simulator: SimulatorProcess, broker: str
) -> None:
    # Near midnight UTC the BTC/USD claim waits its grace period before the run reads on to
    # the refusal of FAKE/USD: a 30 s bound alone ended the run first.
    result = live_trades_job.execute_in_process(
        run_config=_run_config(max_seconds=30 + grace_seconds(2)),
        resources={
            "kraken": KrakenResource(ws_url=simulator.ws_url, pairs=["BTC/USD", "FAKE/USD"]),
            "redpanda": RedpandaResource(broker_address=broker, topic=unique_topic()),
        },
        raise_on_error=False,
    )
    assert not result.success
    failure = result.failure_data_for_node("stream_live_trades")
    assert failure is not None
    assert failure.error is not None
    assert "does not support pair 'FAKE/USD'" in failure.error.to_string()


@pytest.mark.slow
def test_cli_job_execute_with_a_bounded_config(
    simulator: SimulatorProcess, broker: str, tmp_path: Path
) -> None:
    topic = unique_topic()
    config = tmp_path / "live.yaml"
    config.write_text(yaml.safe_dump(_run_config(max_trades=120)))
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    command = [
        sys.executable, "-m", "dagster", "job", "execute",
        "-m", "trades_platform.definitions", "-j", "live_trades_job", "-c", str(config),
    ]  # fmt: skip
    completed = subprocess.run(
        command,
        env=cli_env(simulator, broker, topic, tmp_path, pairs=PAIRS),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    records = read_topic(broker, topic, expected=120)
    assert len(records) == 120
    assert_every_trade_once_and_true_to_kraken(records)
    # The run is recorded in the instance at DAGSTER_HOME, where the UI would show it.
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        (record,) = instance.get_run_records()
        assert record.dagster_run.job_name == "live_trades_job"
        assert record.dagster_run.status == DagsterRunStatus.SUCCESS


@pytest.mark.slow
def test_sigterm_flushes_every_trade_and_closes(
    simulator: SimulatorProcess, broker: str, tmp_path: Path
) -> None:
    topic = unique_topic()
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    command = [
        sys.executable, "-m", "dagster", "job", "execute",
        "-m", "trades_platform.definitions", "-j", "live_trades_job",
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        env=cli_env(simulator, broker, topic, tmp_path, pairs=PAIRS),
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    assert process.stdout is not None
    deadline = time.monotonic() + 120
    for line in process.stdout:
        output.append(line)
        if "trades written" in line or time.monotonic() > deadline:
            break
    time.sleep(2)
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=60)
    output.append(rest)
    text = "".join(output)
    assert "Run totals: " in text, text[-4000:]
    totals = live_run_totals(text.splitlines())
    written = totals["written"]
    assert totals["acknowledged"] == written, totals
    records = read_topic(broker, topic, expected=written)
    assert written > 0
    assert len(records) == written
    assert_every_trade_once_and_true_to_kraken(records)


@pytest.mark.slow
def test_a_gap_longer_than_the_snapshot_is_healed_from_rest(broker: str) -> None:
    topic = unique_topic()
    flags = ("--pairs", ",".join(PAIRS), "--trades-per-second", str(RATE))
    with SimulatorProcess(*flags) as sim:
        kraken = KrakenResource(
            ws_url=sim.ws_url,
            rest_url=sim.rest_url,
            pairs=PAIRS,
            watchdog_seconds=2.0,
            backoff_initial_seconds=0.1,
            rest_requests_per_second=20.0,
        )
        # Once per connection, after 200 trades, 6 s of silence, from when the run streams (as
        # above): at 25 trades/s per pair that is 150 trades, three times the 50-trade snapshot.
        trades = grace_backlog(len(PAIRS), RATE) + 700
        with once_every_pair_is_written(
            broker, topic, PAIRS, lambda: sim.set_faults(stall_after_trades=200, stall_seconds=6)
        ) as stalling_on:
            result = live_trades_job.execute_in_process(
                run_config=_run_config(max_trades=trades),
                resources={
                    "kraken": kraken,
                    "redpanda": RedpandaResource(broker_address=broker, topic=topic),
                },
            )
    assert stalling_on.is_set() and result.success
    records = read_topic(broker, topic, expected=trades)
    assert len(records) >= trades
    assert_every_trade_once_and_true_to_kraken(records, sources=("live", "heal"))
    healed = [record for record in records if record.value["source"] == "heal"]
    assert healed, "the stall left a gap the snapshot could not cover"


@pytest.mark.slow
@pytest.mark.both_brokers
def test_a_restarted_run_resumes_after_the_topic_without_repeats_or_holes(broker: str) -> None:
    topic = unique_topic()
    flags = ("--pairs", ",".join(PAIRS), "--trades-per-second", str(RATE))
    with SimulatorProcess(*flags) as sim:
        kraken = KrakenResource(
            ws_url=sim.ws_url, rest_url=sim.rest_url, pairs=PAIRS, rest_requests_per_second=20.0
        )
        resources = {
            "kraken": kraken,
            "redpanda": RedpandaResource(broker_address=broker, topic=topic),
        }
        first = live_trades_job.execute_in_process(
            run_config=_run_config(max_trades=200), resources=resources
        )
        # Down for 5 s (125 trades per pair): the next run heals them before going live.
        time.sleep(5)
        second = live_trades_job.execute_in_process(
            run_config=_run_config(max_trades=400), resources=resources
        )
    assert first.success and second.success
    records = read_topic(broker, topic)
    assert len(records) >= 600
    assert_every_trade_once_and_true_to_kraken(records, sources=("live", "heal"))
    assert any(record.value["source"] == "heal" for record in records)
