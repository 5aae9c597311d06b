"""`make run`'s launcher end to end: daemon + sensor start the live run, the UI's GraphQL API sees
it Running, trades land in the topic; a killed worker is replaced; a terminated run stays stopped;
Ctrl-C pressed twice still stops everything it started, the broker last.
"""

import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from trades_platform.testing import duplicated_ids, read_topic, unique_topic
from trades_platform_tests.support.stack import running_stack, wait_for

pytestmark = pytest.mark.stack

LIVE_JOB = "live_trades_job"


def test_run_command_keeps_one_live_run_alive(broker: str, tmp_path: Path) -> None:
    topic = unique_topic()
    env = {
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "KAFKA_BROKER_ADDRESS": broker,
        "KAFKA_TOPIC": topic,
        "KRAKEN_PAIRS": "BTC/USD,ETH/USD",
        # A killed worker cannot report its death; the sensor presumes it dead after this.
        "LIVE_RUN_STALE_SECONDS": "20",
    }
    with running_stack(env, tmp_path / "launcher.log") as stack:
        answered_at = time.monotonic()
        first = wait_for(
            "the sensor's first live run to be STARTED",
            lambda: [run for run in stack.runs(LIVE_JOB) if run["status"] == "STARTED"],
            120,
            stack,
        )[0]
        tags = {tag["key"]: tag["value"] for tag in first["tags"]}
        assert tags["dagster/sensor_name"] == "live_trades_sensor"
        assert tags["trades_platform/live-shard"] == "0"
        wait_for(
            "trades in the topic",
            lambda: read_topic(broker, topic, expected=1, idle_seconds=1),
            60,
            stack,
        )
        print(f"first trade in the topic {time.monotonic() - answered_at:.1f}s after the UI")

        # A crash without a goodbye (SIGKILL): the sensor presumes the silent run dead and
        # replaces it.
        pid = wait_for("the worker's pid", lambda: stack.worker_pid(first["runId"]), 30, stack)
        os.kill(pid, signal.SIGKILL)
        replacement = wait_for(
            "a replacement live run",
            lambda: [
                run
                for run in stack.runs(LIVE_JOB)
                if run["status"] == "STARTED" and run["runId"] != first["runId"]
            ],
            150,
            stack,
        )[0]
        statuses = {run["runId"]: run["status"] for run in stack.runs(LIVE_JOB)}
        assert statuses[first["runId"]] == "FAILURE"
        assert sum(status == "STARTED" for status in statuses.values()) == 1

        # Terminate from the UI: the run ends CANCELED and the sensor leaves ingestion stopped.
        stack.terminate(replacement["runId"])
        wait_for(
            "the terminated run to be CANCELED",
            lambda: (
                {r["runId"]: r["status"] for r in stack.runs(LIVE_JOB)}[replacement["runId"]]
                == "CANCELED"
            ),
            90,
            stack,
        )
        time.sleep(25)  # more than two sensor ticks
        active = ("QUEUED", "STARTING", "STARTED")
        assert not [run for run in stack.runs(LIVE_JOB) if run["status"] in active]
        assert "terminated on purpose" in stack.log_tail(200_000)

    records = read_topic(broker, topic)
    assert records and not duplicated_ids(records)


@pytest.mark.kafka
def test_run_command_can_start_apache_kafka_instead(tmp_path: Path) -> None:
    """`LOCAL_BROKER=kafka make run`: a 3-node Kafka cluster is started, the live run writes to it,
    and the launcher stops the cluster when it stops."""
    env = {
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "KAFKA_BROKER_ADDRESS": "",
        "LOCAL_BROKER": "kafka",
        "KRAKEN_PAIRS": "BTC/USD",
    }
    with running_stack(env, tmp_path / "launcher.log") as stack:
        started = re.search(r"Started Apache Kafka on (\S+)", stack.log_tail(200_000))
        assert started, stack.log_tail(20_000)
        bootstrap = started.group(1)
        assert len(bootstrap.split(",")) == 3
        records = wait_for(
            "trades in the Kafka cluster's topic",
            lambda: read_topic(bootstrap, "trades", expected=5, idle_seconds=1),
            150,
            stack,
        )
        assert not duplicated_ids(records)
        launcher = stack.process.pid
        started = _descendants(launcher)
        # Ctrl-C in the launcher's terminal reaches the launcher alone: every piece it started
        # (the Kafka nodes too) leads a process group of its own and is stopped in order.
        children = {pid: pgid for pid, (parent, pgid) in started.items() if parent == launcher}
        assert len(children) >= 5, started  # 3 Kafka nodes, the simulator, dagster dev
        assert all(pgid != launcher for pgid in children.values()), children
        # Ctrl-C pressed twice: SIGINT to the launcher's process group, then again while it stops.
        os.killpg(launcher, signal.SIGINT)
        time.sleep(2)
        os.killpg(launcher, signal.SIGINT)
        assert stack.process.wait(timeout=180) == 0, stack.log_tail()
        assert "Still stopping" in stack.log_tail(200_000)
        assert "Traceback" not in stack.log_tail(200_000), stack.log_tail()
    # Nothing it started outlived it: the cluster's JVMs, the simulator, Dagster and its runs.
    deadline = time.monotonic() + 10
    while [pid for pid in started if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [pid for pid in started if _alive(pid)], started
    host, port = bootstrap.split(",")[0].split(":")
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2).close()


def _descendants(root: int) -> dict[int, tuple[int, int]]:
    """Every process below `root`: pid -> (parent pid, process group), from /proc."""
    table: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # exited meanwhile
            table[int(entry.name)] = (int(fields[1]), int(fields[2]))
    found: dict[int, tuple[int, int]] = {}
    frontier = [root]
    while frontier:
        below = frontier.pop()
        for pid, (parent, pgid) in table.items():
            if parent == below and pid not in found:
                found[pid] = (parent, pgid)
                frontier.append(pid)
    return found


def _alive(pid: int) -> bool:
    """Still running; a zombie (exited, not yet reaped) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
