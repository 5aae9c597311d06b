"""A 30-partition backfill through the daemon keeps Kraken's REST allowance busy (issue 14).

Real processes throughout: the simulator with its per-IP limit of 1 call/s and a feed that
leaves every 5th trade out (so the live run, started by the sensor, heals gaps over REST beside
the backfill), the session's broker, and `dagster dev` (webserver and daemon) launching the
backfill the way the UI's Materialize dialog does. Measured over the whole backfill, from the
start of its first run to the end of its last: REST calls answered per second against the
allowance (every call the simulator answered in that window, asserted: backfill pages and the
live run's heals share the IP's allowance; the backfill's pages alone, reported), rate-limit
answers, and every trade of the 30 days once.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    DagsterInstance,
    EventRecordsFilter,
    RunsFilter,
)

from trades_platform.local_broker import free_port, wait_for_port
from trades_platform.processes import stop_process
from trades_platform.testing import SimulatorProcess, cli_env, count_pairs, read_topic
from trades_platform.testing.topic import unique_topic

# Alone (`make test` runs the `solo` tests after the parallel ones): what is measured is the
# product's use of the allowance beside its own live run and archive, not how much CPU three
# unrelated test workers leave it on two cores.
pytestmark = [pytest.mark.slow, pytest.mark.solo]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PAIRS = ("BTC/USD", "ETH/USD")
DAYS = [f"2024-01-{day:02d}" for day in range(1, 16)]
# 0.05 trades/s is 4,320 trades a day; pages of 480 make 10 calls a day (the last crosses
# midnight), 300 pages in all: 5 minutes at 1 call/s. The backfill's fixed costs (the first
# run's start-up, the last run's checks: about 15 s in which nothing else pages) weigh less in
# a longer backfill than here.
TRADES_PER_DAY = 4320
PAGE_SIZE = 480
ALLOWANCE = 1.0  # the simulator's per-IP limit and the client's budget, calls per second


def _graphql(port: int, query: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body: dict[str, Any] = json.loads(response.read())
    assert "errors" not in body, body
    return body["data"]


@pytest.mark.timeout(900)
def test_a_30_partition_backfill_uses_at_least_90_percent_of_the_rest_allowance(
    broker: str, tmp_path: Path
) -> None:
    topic = unique_topic("trades-throughput")
    home = tmp_path / "home"
    flags = (
        "--pairs", ",".join(PAIRS), "--trades-per-second", "0.05",
        "--start-time", "2024-01-20T12:00:00", "--rest-rate-limit", str(ALLOWANCE),
        "--omit-every-nth-id", "5",
    )  # fmt: skip
    with SimulatorProcess(*flags, log_path=tmp_path / "simulator.log") as sim:
        env = cli_env(
            sim, broker, topic, home, pairs=PAIRS,
            BACKFILL_START_DATE="2024-01-01", KRAKEN_REST_PAGE_SIZE=str(PAGE_SIZE),
            KRAKEN_REST_REQUESTS_PER_SECOND=str(ALLOWANCE), BACKFILL_PARTITIONS_PER_RUN="8",
            KRAKEN_REST_BUDGET_DIR=str(tmp_path / "budget"),
        )  # fmt: skip
        # The project's instance settings: the run queue's limits are part of what is measured.
        shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
        port = free_port()
        with open(tmp_path / "dagster-dev.log", "ab") as log:
            dev = subprocess.Popen(
                [sys.executable, "-m", "dagster", "dev", "-m", "trades_platform.definitions",
                 "-p", str(port)],
                cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            wait_for_port("127.0.0.1", port, timeout_seconds=180)
            instance = DagsterInstance.from_config(str(home))
            _wait_for_live_heals(instance, sim)
            stats_before = sim.stats()
            backfill_id = _launch_backfill(port)
            runs = _wait_for_backfill(instance, backfill_id, timeout_seconds=900)
            stats_after = sim.stats()
        finally:
            stop_process(dev, timeout_seconds=90)
        records = read_topic(broker, topic, trades_only=True)

    assert all(run.dagster_run.status.value == "SUCCESS" for run in runs), [
        (run.dagster_run.run_id, run.dagster_run.status) for run in runs
    ]
    began = min(run.start_time for run in runs if run.start_time)
    ended = max(run.end_time for run in runs if run.end_time)
    seconds = ended - began
    keys = [f"{day}|{pair}" for pair in PAIRS for day in DAYS]
    metadata = _latest_metadata(instance, keys)
    pages = sum(entry["pages_fetched"] for entry in metadata.values())
    backfill_calls = sum(entry["requests"] for entry in metadata.values())
    # Every call the simulator answered inside the window: the backfill's and the live run's
    # heals alike spend the one allowance of the IP.
    window_calls = sum(began <= at <= ended for at in stats_after["rest_request_times"])
    all_calls = stats_after["rest_requests"] - stats_before["rest_requests"]
    rate_limited = stats_after["rate_limit_errors"] - stats_before["rate_limit_errors"]
    passed_checks = _passed_checks(instance, keys)
    print(
        f"\n30 partitions in {len(runs)} runs, {seconds:.1f}s from the first run's start to the "
        f"last one's end: {window_calls} REST calls answered in that window = "
        f"{window_calls / seconds:.3f} calls/s ({window_calls / seconds / ALLOWANCE:.1%} of the "
        f"allowance of {ALLOWANCE:g}/s), of which the backfill's pages {pages} = "
        f"{pages / seconds:.3f}/s, the other backfill calls (Time, AssetPairs) "
        f"{backfill_calls - pages}, the live run's heals the rest; rate-limit answers "
        f"{rate_limited} of {all_calls} calls since the launch "
        f"({rate_limited / max(all_calls, 1):.2%}); checks passed {passed_checks} of "
        f"{2 * len(keys)}"
    )

    assert window_calls / seconds >= 0.9 * ALLOWANCE
    assert rate_limited <= 0.01 * all_calls
    assert len(metadata) == 30 and passed_checks == 60
    # Every trade of the 30 days once, read back from the topic.
    start_ms = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)
    end_ms = int(datetime(2024, 1, 16, tzinfo=UTC).timestamp() * 1000)
    days = [r for r in records if start_ms <= r.value["timestamp_ms"] < end_ms]
    counts = count_pairs(days, pairs=PAIRS)
    for pair in PAIRS:
        assert counts[pair].lost == 0 and counts[pair].duplicated == 0, (pair, counts[pair])
        assert counts[pair].distinct == 15 * TRADES_PER_DAY, (pair, counts[pair])
    # The live run's trades (healed ones included) are in the topic once too.
    assert all(count.duplicated == 0 for count in count_pairs(records).values())


def _wait_for_live_heals(instance: DagsterInstance, sim: SimulatorProcess) -> None:
    """Until the sensor's live run streams and the feed has left a trade out (a heal to do)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        live = instance.get_run_records(RunsFilter(job_name="live_trades_job"))
        if live and sim.stats()["trades_left_out_total"] > 0:
            return
        time.sleep(2)
    pytest.fail("the live run never started, or the feed never left a trade out")


def _launch_backfill(port: int) -> str:
    """What the Materialize dialog's Launch backfill does, for 15 days x 2 pairs."""
    names = ", ".join(f'"{day}|{pair}"' for pair in PAIRS for day in DAYS)
    result = _graphql(
        port,
        "mutation { launchPartitionBackfill(backfillParams: {"
        f'partitionNames: [{names}], assetSelection: [{{path: ["kraken_trades_history"]}}]'
        "}) { __typename ... on LaunchBackfillSuccess { backfillId } "
        "... on PythonError { message } ... on InvalidSubsetError { message } } }",
    )["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result
    backfill_id: str = result["backfillId"]
    return backfill_id


def _wait_for_backfill(
    instance: DagsterInstance, backfill_id: str, timeout_seconds: float
) -> list[Any]:
    """The backfill's runs, once it is over."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        backfill = instance.get_backfill(backfill_id)
        if backfill is not None and backfill.status.value not in ("REQUESTED", "CANCELING"):
            return list(
                instance.get_run_records(RunsFilter(tags={"dagster/backfill": backfill_id}))
            )
        time.sleep(3)
    pytest.fail(f"backfill {backfill_id} not over after {timeout_seconds}s")


def _latest_metadata(instance: DagsterInstance, keys: list[str]) -> dict[str, dict[str, Any]]:
    """Each partition's latest materialization metadata, as plain values."""
    found: dict[str, dict[str, Any]] = {}
    for key in keys:
        result = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("kraken_trades_history"), asset_partitions=[key]),
            limit=1,
        )
        for record in result.records:
            materialization = record.asset_materialization
            if materialization is not None:
                found[key] = {name: value.value for name, value in materialization.metadata.items()}
    return found


def _passed_checks(instance: DagsterInstance, keys: list[str]) -> int:
    """Passed check evaluations of these partitions of the backfill asset (not the archive's)."""
    records = instance.get_event_records(
        EventRecordsFilter(event_type=DagsterEventType.ASSET_CHECK_EVALUATION), limit=1000
    )
    wanted = set(keys)
    passed = 0
    for record in records:
        event = record.event_log_entry.dagster_event
        evaluation = event.event_specific_data if event else None
        if (
            getattr(evaluation, "asset_key", None) == AssetKey("kraken_trades_history")
            and getattr(evaluation, "partition", None) in wanted
            and getattr(evaluation, "passed", False)
        ):
            passed += 1
    return passed
