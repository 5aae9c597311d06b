"""Starts the platform as `make run` does (`python -m trades_platform.dev`) and talks to its UI API.

The launcher runs as a real subprocess with its own broker address, topic, Dagster home and
webserver port, so a test sees exactly what a user sees at http://127.0.0.1:<port>.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from trades_platform.local_broker import free_port, wait_for_port
from trades_platform.processes import stop_process

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LOCATION = "trades_platform"
# Definitions loaded from a module form one repository under Dagster's default name.
REPOSITORY = "__repository__"
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")

T = TypeVar("T")


@dataclass
class RunningStack:
    """The launcher process and how to reach what it started."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        """The UI's address."""
        return f"http://127.0.0.1:{self.port}"

    def graphql(self, query: str) -> dict[str, Any]:
        """One query or mutation against the webserver's GraphQL API (what the UI itself calls)."""
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.loads(response.read())
        assert "errors" not in body, body
        return body["data"]

    def runs(self, job_name: str) -> list[dict[str, Any]]:
        """The job's runs, newest first, as the Runs page lists them."""
        query = (
            f'{{ runsOrError(filter: {{pipelineName: "{job_name}"}}) {{ ... on Runs '
            "{ results { runId status tags { key value } } } } }"
        )
        return self.graphql(query)["runsOrError"]["results"]

    def run_messages(self, run_id: str) -> list[str]:
        """The messages of a run's event log, oldest first (the run page's log)."""
        query = (
            f'{{ logsForRun(runId: "{run_id}", limit: 1000) {{ __typename '
            "... on EventConnection { events { ... on MessageEvent { message } } } } }"
        )
        result = self.graphql(query)["logsForRun"]
        assert result["__typename"] == "EventConnection", result
        return [event["message"] for event in result["events"] if event.get("message")]

    def schedule_status(self, name: str) -> str:
        """RUNNING or STOPPED, as the Automation page shows it."""
        query = (
            f"{{ scheduleOrError(scheduleSelector: {_selector(name, 'scheduleName')}) "
            "{ __typename ... on Schedule { scheduleState { status } } } }"
        )
        result = self.graphql(query)["scheduleOrError"]
        assert result["__typename"] == "Schedule", result
        return result["scheduleState"]["status"]

    def start_schedule(self, name: str) -> None:
        """What the schedule's toggle in the UI does."""
        mutation = (
            f"mutation {{ startSchedule(scheduleSelector: {_selector(name, 'scheduleName')}) "
            "{ __typename ... on ScheduleStateResult { scheduleState { status } } "
            "... on PythonError { message } } }"
        )
        result = self.graphql(mutation)["startSchedule"]
        assert result["__typename"] == "ScheduleStateResult", result
        assert result["scheduleState"]["status"] == "RUNNING", result

    def worker_pid(self, run_id: str) -> int | None:
        """The run worker's pid, from Dagster's own "Executing steps in process (pid: N)" event."""
        for message in self.run_messages(run_id):
            match = re.search(r"in process \(pid: (\d+)\)", message)
            if match:
                return int(match[1])
        return None

    def terminate(self, run_id: str) -> None:
        """What the run page's Terminate button does."""
        mutation = (
            f'mutation {{ terminateRun(runId: "{run_id}") '
            "{ __typename ... on PythonError { message } } }"
        )
        result = self.graphql(mutation)["terminateRun"]
        assert result["__typename"] == "TerminateRunSuccess", result

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the launcher's output, for failure messages."""
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self, timeout_seconds: float = 90) -> int:
        """SIGTERM, as Ctrl-C or a service manager would; the launcher stops what it started."""
        stop_process(self.process, timeout_seconds=timeout_seconds)
        return self.process.returncode


def _selector(name: str, field: str) -> str:
    return (
        f'{{repositoryLocationName: "{LOCATION}", repositoryName: "{REPOSITORY}", '
        f'{field}: "{name}"}}'
    )


@contextmanager
def running_stack(env: Mapping[str, str], log_path: Path) -> Iterator[RunningStack]:
    """`python -m trades_platform.dev --offline` on a free port with `env` on top of ours."""
    port = free_port()
    full_env = dict(os.environ)
    # The simulator is what the test controls; an inherited Kraken URL would bypass it.
    for name in ("KRAKEN_WS_URL", "KRAKEN_REST_URL"):
        full_env.pop(name, None)
    full_env.update(env)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "trades_platform.dev", "--offline", "--port", str(port),
             "--simulator-port", "0"],
            cwd=PROJECT_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
            # A group of its own, as a terminal gives a command: a test can press "Ctrl-C".
            start_new_session=True,
        )  # fmt: skip
    stack = RunningStack(process, port, log_path)
    try:
        try:
            wait_for_port("127.0.0.1", port, timeout_seconds=120)
        except TimeoutError:
            pytest.fail(f"the UI never answered on port {port}; launcher log:\n{stack.log_tail()}")
        yield stack
    finally:
        stack.stop()


def wait_for(what: str, check: Callable[[], T], timeout: float, stack: RunningStack) -> T:
    """Poll `check` every second until it returns something truthy; fail with the launcher log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(1)
    pytest.fail(f"timed out after {timeout}s waiting for {what}; launcher log:\n{stack.log_tail()}")
