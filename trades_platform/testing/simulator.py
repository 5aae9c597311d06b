"""Runs the Kraken simulator (or the bench's replay server) as a real subprocess, as users do."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from trades_platform.processes import stop_process

# The simulator's "kraken simulator ready ..." and the replay server's "replay ready ..." line.
_READY = re.compile(r"ready (?P<ws>ws://\S+) rest (?P<rest>http://\S+)")


class ServerProcess:
    """A child process that prints `ready ws://... rest http://...` once it serves; stopped on exit.

    Its output (stdout and stderr) is kept in `output` and, with `log_path`, written to that file.
    """

    def __init__(
        self, command: Sequence[str], *, cwd: Path | None = None, log_path: Path | None = None
    ) -> None:
        self._command = list(command)
        self._cwd = cwd
        self._log_path = log_path
        self._process: subprocess.Popen[str] | None = None
        self.ws_url = ""
        self.rest_url = ""
        self.output: list[str] = []

    def start(self, timeout_seconds: float = 20.0) -> Self:
        """Start it and wait for its ready line."""
        self._process = subprocess.Popen(
            self._command,
            cwd=self._cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        ready = threading.Event()
        threading.Thread(target=self._pump, args=(ready,), daemon=True).start()
        if not ready.wait(timeout_seconds):
            self.stop()
            where = f" (log: {self._log_path})" if self._log_path else ""
            raise RuntimeError(
                f"{' '.join(self._command)} did not get ready{where}:\n" + "".join(self.output)
            )
        return self

    def _pump(self, ready: threading.Event) -> None:
        assert self._process is not None and self._process.stdout is not None
        log = open(self._log_path, "w") if self._log_path else None  # noqa: SIM115 - closed below
        try:
            for line in self._process.stdout:
                self.output.append(line)
                if log is not None:
                    log.write(line)
                    log.flush()
                match = _READY.search(line)
                if match and not ready.is_set():
                    self.ws_url, self.rest_url = match["ws"], match["rest"]
                    ready.set()
        finally:
            if log is not None:
                log.close()

    def stop(self) -> None:
        """Stop it."""
        stop_process(self._process)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class SimulatorProcess(ServerProcess):
    """`python -m trades_platform.simulator` with the given flags, for one test, run or module."""

    def __init__(self, *flags: str, log_path: Path | None = None) -> None:
        command = [sys.executable, "-m", "trades_platform.simulator", "--port", "0", *flags]
        super().__init__(command, log_path=log_path)

    def set_faults(self, **switches: Any) -> dict[str, Any]:
        """Flip fault switches at runtime through the control endpoint."""
        return self._request("/_simulator/faults", switches)

    def stats(self) -> dict[str, Any]:
        """The simulator's counters."""
        return self._request("/_simulator/stats")

    def _request(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.rest_url + path, data=data, method="POST" if data else "GET"
        )
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: dict[str, Any] = json.loads(response.read())
        return answer


def cli_env(
    simulator: SimulatorProcess,
    broker: str,
    topic: str,
    home: Path,
    *,
    pairs: Sequence[str] = ("BTC/USD", "ETH/USD"),
    **extra: str,
) -> dict[str, str]:
    """Environment of a `dagster` CLI run against the simulator, a topic and its own instance."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = dict(os.environ)
    env.update(
        KRAKEN_WS_URL=simulator.ws_url,
        KRAKEN_REST_URL=simulator.rest_url,
        KRAKEN_PAIRS=",".join(pairs),
        KAFKA_BROKER_ADDRESS=broker,
        KAFKA_TOPIC=topic,
        DAGSTER_HOME=str(home),
    )
    env.update(extra)
    return env
