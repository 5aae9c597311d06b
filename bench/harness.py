"""The benchmark's surroundings: broker, replay server, simulator, topics and worker processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

from confluent_kafka.admin import AdminClient, NewTopic

from bench.spec import RunSpec
from bench.worker import RESULT_PREFIX
from trades_platform.local_broker import LocalBroker
from trades_platform.settings import KafkaSettings
from trades_platform.testing import ServerProcess, SimulatorProcess
from trades_platform.topics import TRADES_TOPIC_CONFIG

REPO = Path(__file__).resolve().parent.parent
_PARTITIONS = 3  # KafkaSettings' default: the product's topic layout


class Harness:
    """Broker + replay server + rate-limited simulator for one benchmark."""

    def __init__(self, rest_trades: int, log_dir: Path | None = None) -> None:
        self._rest_trades = rest_trades
        self._stack = ExitStack()
        # A temporary log directory goes away after a clean run; a failed run keeps it to read.
        self._own_log_dir = log_dir is None
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="trades-bench-"))
        self.broker = ""
        self.ws_url = self.rest_url = self.paced_rest_url = ""
        self._admin: AdminClient | None = None

    def __enter__(self) -> Harness:
        try:
            broker = self._stack.enter_context(LocalBroker(log_path=self.log_dir / "broker.log"))
            self.broker = broker.address
            self._admin = AdminClient(KafkaSettings(broker_address=self.broker).client_config())
            # Dropped before the broker stops, or librdkafka logs the disconnect on the way out.
            self._stack.callback(self._drop_admin)
            replay = ServerProcess(
                [
                    sys.executable,
                    "-m",
                    "bench.replay_server",
                    "--rest-trades",
                    str(self._rest_trades),
                ],
                cwd=REPO,
                log_path=self.log_dir / "replay.log",
            ).start(timeout_seconds=60)
            self._stack.callback(replay.stop)
            self.ws_url, self.rest_url = replay.ws_url, replay.rest_url
            simulator = SimulatorProcess(
                *("--pairs", "BTC/USD", "--rest-rate-limit", "1", "--log-level", "WARNING"),
                log_path=self.log_dir / "simulator.log",
            ).start(timeout_seconds=60)
            self._stack.callback(simulator.stop)
            self.paced_rest_url = simulator.rest_url
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stack.close()
        if exc is None and self._own_log_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def _drop_admin(self) -> None:
        self._admin = None

    def spec(self, path: str, **fields: Any) -> RunSpec:
        """A spec on a fresh topic of this harness's broker."""
        topic = f"bench-{path}-{uuid.uuid4().hex[:8]}"
        return RunSpec(
            path=path,
            broker=self.broker,
            topic=topic,
            ws_url=self.ws_url,
            rest_url=fields.pop("rest_url", self.rest_url),
            **fields,
        )

    def run(self, spec: RunSpec, timeout_seconds: float = 600.0) -> dict[str, Any]:
        """Run one spec in a worker process; its result plus the process's CPU and peak RSS."""
        self._create_topic(spec.topic)
        try:
            return _run_worker(spec, self.log_dir / f"{spec.topic}.log", timeout_seconds)
        finally:
            self._delete_topic(spec.topic)

    def _create_topic(self, name: str) -> None:
        assert self._admin is not None
        # The product's own topic configuration: its producer refuses a topic that deletes history.
        futures = self._admin.create_topics(
            [NewTopic(name, _PARTITIONS, 1, config=TRADES_TOPIC_CONFIG)]
        )
        futures[name].result(timeout=30)

    def _delete_topic(self, name: str) -> None:
        # The broker keeps every record in memory: drop each run's topic once it is measured.
        assert self._admin is not None
        try:
            self._admin.delete_topics([name])[name].result(timeout=30)
        except Exception as error:  # a leftover topic only costs broker memory
            print(f"note: could not delete topic {name}: {error}", file=sys.stderr)


def _run_worker(spec: RunSpec, log_path: Path, timeout_seconds: float) -> dict[str, Any]:
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.worker", spec.to_json()],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        timer = threading.Timer(timeout_seconds, process.kill)
        timer.start()
        try:
            assert process.stdout is not None
            output = process.stdout.read()
            # wait4, not wait: the rusage of this child alone (RUSAGE_CHILDREN would mix runs).
            _pid, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        finally:
            timer.cancel()
    result_lines = [line for line in output.splitlines() if line.startswith(RESULT_PREFIX)]
    if process.returncode != 0 or not result_lines:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"{spec.path} failed (exit {process.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(result_lines[-1][len(RESULT_PREFIX) :])
    result["process_cpu_seconds"] = usage.ru_utime + usage.ru_stime
    result["process_maxrss_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
    return result
