"""`make run`'s launcher end to end: daemon + sensor start the live run, the UI's GraphQL API sees
it Running, trades land in the topic; a killed worker is replaced; a terminated run stays stopped.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from trades_platform.local_broker import free_port, wait_for_port
from trades_platform_tests.support.topic import duplicated_ids, read_topic, unique_topic

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RunningStack:
    """The launcher process and how to reach what it started."""

    process: subprocess.Popen[bytes]
    graphql_url: str
    topic: str
    log_path: Path

    def runs(self) -> list[dict[str, Any]]:
        """live_trades_job runs, newest first, as the UI lists them."""
        query = '{ runsOrError(filter: {pipelineName: "live_trades_job"}) { ... on Runs { results { runId status tags { key value } } } } }'  # noqa: E501
        return self._graphql(query)["runsOrError"]["results"]

    def worker_pid(self, run_id: str) -> int | None:
        """The run worker's pid, from Dagster's own "Executing steps in process (pid: N)" event."""
        query = (
            f'{{ logsForRun(runId: "{run_id}") {{ ... on EventConnection '
            "{ events { ... on MessageEvent { message } } } } }"
        )
        for event in self._graphql(query)["logsForRun"]["events"]:
            match = re.search(r"in process \(pid: (\d+)\)", event.get("message") or "")
            if match:
                return int(match[1])
        return None

    def terminate(self, run_id: str) -> None:
        """What the UI's Terminate button does."""
        mutation = (
            f'mutation {{ terminateRun(runId: "{run_id}") '
            "{ __typename ... on PythonError { message } } }"
        )
        result = self._graphql(mutation)["terminateRun"]
        assert result["__typename"] == "TerminateRunSuccess", result

    def _graphql(self, query: str) -> dict[str, Any]:
        request = urllib.request.Request(
            self.graphql_url,
            data=json.dumps({"query": query}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.loads(response.read())
        assert "errors" not in body, body
        return body["data"]


def _wait_for(what: str, check: Callable[[], Any], timeout: float, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}; launcher log tail:\n{log.read_text()[-4000:]}")


@pytest.fixture
def stack(broker: str, tmp_path: Path) -> Iterator[RunningStack]:
    port = free_port()
    topic = unique_topic()
    env = dict(os.environ)
    env.update(
        DAGSTER_HOME=str(tmp_path / "dagster_home"),
        KAFKA_BROKER_ADDRESS=broker,
        KAFKA_TOPIC=topic,
        KRAKEN_PAIRS="BTC/USD,ETH/USD",
        # A killed worker cannot report its death; the sensor presumes it dead after this.
        LIVE_RUN_STALE_SECONDS="20",
    )
    env.pop("KRAKEN_WS_URL", None)
    log_path = tmp_path / "launcher.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "trades_platform.dev", "--offline", "--port", str(port),
             "--simulator-port", "0"],
            cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_port("127.0.0.1", port, timeout_seconds=120)
        yield RunningStack(process, f"http://127.0.0.1:{port}/graphql", topic, log_path)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()


def test_run_command_keeps_one_live_run_alive(stack: RunningStack, broker: str) -> None:
    started_at = time.monotonic()
    first = _wait_for(
        "the sensor's first live run to be STARTED",
        lambda: [run for run in stack.runs() if run["status"] == "STARTED"],
        120,
        stack.log_path,
    )[0]
    tags = {tag["key"]: tag["value"] for tag in first["tags"]}
    assert tags["dagster/sensor_name"] == "live_trades_sensor"
    assert tags["trades_platform/live-shard"] == "0"
    _wait_for(
        "trades in the topic",
        lambda: read_topic(broker, stack.topic, expected=1, idle_seconds=1),
        60,
        stack.log_path,
    )
    print(f"first trade in the topic {time.monotonic() - started_at:.1f}s after the UI answered")

    # A crash without a goodbye (SIGKILL): the sensor presumes the silent run dead, replaces it.
    pid = _wait_for(
        "the run worker's pid", lambda: stack.worker_pid(first["runId"]), 30, stack.log_path
    )
    os.kill(pid, signal.SIGKILL)
    replacement = _wait_for(
        "a replacement live run",
        lambda: [
            r for r in stack.runs() if r["status"] == "STARTED" and r["runId"] != first["runId"]
        ],
        150,
        stack.log_path,
    )[0]
    statuses = {run["runId"]: run["status"] for run in stack.runs()}
    assert statuses[first["runId"]] == "FAILURE"
    assert sum(status == "STARTED" for status in statuses.values()) == 1

    # Terminate from the UI: the run ends CANCELED and the sensor leaves ingestion stopped.
    stack.terminate(replacement["runId"])
    _wait_for(
        "the terminated run to be CANCELED",
        lambda: {r["runId"]: r["status"] for r in stack.runs()}[replacement["runId"]] == "CANCELED",
        90,
        stack.log_path,
    )
    time.sleep(25)  # more than two sensor ticks
    assert not [run for run in stack.runs() if run["status"] in ("QUEUED", "STARTING", "STARTED")]
    log_text = stack.log_path.read_text()
    assert "terminated on purpose" in log_text

    records = read_topic(broker, stack.topic)
    assert records and not duplicated_ids(records)
