"""The local platform in one command (`make run`): broker, Kraken or its simulator, Dagster.

- Kafka: `KAFKA_BROKER_ADDRESS` when set (Redpanda from docker-compose/, a cluster...), else a
  local tansu broker on 127.0.0.1:19092, or with `LOCAL_BROKER=kafka` a 3-node Apache Kafka
  cluster on loopback (kafka_cluster.py; its data is gone when this command stops).
- Kraken: `KRAKEN_WS_URL` / `KRAKEN_REST_URL` when set; else Kraken itself when it is reachable;
  else (offline, or `TRADES_PLATFORM_OFFLINE=1`) the bundled simulator on 127.0.0.1:8765.
- Dagster: `dagster dev` (webserver on http://127.0.0.1:3000 and the daemon) with a project-local
  `DAGSTER_HOME` (.dagster_home/), where the live sensor starts the live ingestion run.

Ctrl-C stops everything this command started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from trades_platform.kafka_cluster import KafkaCluster
from trades_platform.local_broker import DEFAULT_PORT as BROKER_PORT
from trades_platform.local_broker import LocalBroker, free_port, wait_for_port
from trades_platform.processes import signal_group, stop_process

PROJECT_ROOT = Path(__file__).resolve().parent.parent
KRAKEN_HOST = "ws.kraken.com"
SIMULATOR_PORT = 8765
# How long each started piece gets to exit on SIGTERM (Dagster flushes the live run) before SIGKILL.
STOP_TIMEOUT_SECONDS = 30


def kraken_reachable(timeout_seconds: float = 3.0) -> bool:
    """True when Kraken's WebSocket host answers on 443 (DNS and TCP), i.e. we are online."""
    try:
        with socket.create_connection((KRAKEN_HOST, 443), timeout=timeout_seconds):
            return True
    except OSError:
        return False


def port_in_use(port: int) -> bool:
    """True when something already accepts connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def prepare_dagster_home(project_root: Path = PROJECT_ROOT) -> Path:
    """`DAGSTER_HOME` (an existing absolute path) holding dagster.yaml or dagster.postgres.yaml."""
    home = Path(os.environ.get("DAGSTER_HOME") or project_root / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    # The project's file is the one to edit: the copy is refreshed on every start, so a changed
    # limit or a switch between SQLite and Postgres always takes effect.
    source = "dagster.postgres.yaml" if os.environ.get("DAGSTER_PG_HOST") else "dagster.yaml"
    shutil.copyfile(project_root / source, home / "dagster.yaml")
    return home


class DevStack:
    """Starts the pieces in order and stops them in reverse."""

    def __init__(
        self, webserver_port: int, offline: bool, simulator_port: int, local_broker: str = "tansu"
    ) -> None:
        self.webserver_port = webserver_port
        self.local_broker = local_broker
        self.simulator_port = simulator_port or free_port()
        self.offline = offline
        self.env = dict(os.environ)
        self._broker: LocalBroker | None = None
        self._kafka: KafkaCluster | None = None
        self._processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.log_dir = PROJECT_ROOT / ".local" / "logs"

    def start(self) -> None:
        """Broker, Kraken source, then Dagster."""
        if port_in_use(self.webserver_port):
            raise SystemExit(
                f"Port {self.webserver_port} is already in use (another `make run`?). Stop it, or "
                f"start on another port: python -m trades_platform.dev --port 3001"
            )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._start_broker()
        self._choose_kraken()
        home = prepare_dagster_home()
        self.env["DAGSTER_HOME"] = str(home)
        self._spawn(
            "dagster",
            [
                sys.executable,
                "-m",
                "dagster",
                "dev",
                "-w",
                str(PROJECT_ROOT / "workspace.yaml"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.webserver_port),
            ],
            log_to_terminal=True,
        )
        wait_for_port("127.0.0.1", self.webserver_port, timeout_seconds=120)
        topic = self.env.get("KAFKA_TOPIC", "trades")
        kraken = self.env.get("KRAKEN_WS_URL", "wss://ws.kraken.com/v2")
        print(
            f"\nDagster UI: http://127.0.0.1:{self.webserver_port}  (DAGSTER_HOME={home})\n"
            f"Kafka: {self.env['KAFKA_BROKER_ADDRESS']} topic {topic}\nKraken: {kraken}\n"
            "The live_trades_sensor starts the live run within about 30 s. Ctrl-C stops it all.\n",
            flush=True,
        )

    def _start_broker(self) -> None:
        if self.env.get("KAFKA_BROKER_ADDRESS"):
            print(f"Using the broker at {self.env['KAFKA_BROKER_ADDRESS']}", flush=True)
            return
        if self.local_broker == "kafka":
            print("Starting a 3-node Apache Kafka cluster on loopback (about 20 s)...", flush=True)
            self._kafka = KafkaCluster(nodes=3, own_session=True).start()
            print(f"Started Apache Kafka on {self._kafka.bootstrap}", flush=True)
            self.env["KAFKA_BROKER_ADDRESS"] = self._kafka.bootstrap
            return
        try:
            with socket.create_connection(("127.0.0.1", BROKER_PORT), timeout=1):
                print(f"A broker already listens on 127.0.0.1:{BROKER_PORT}; using it", flush=True)
        except OSError:
            self._broker = LocalBroker(
                BROKER_PORT, log_path=self.log_dir / "broker.log", own_session=True
            ).start()
            print(f"Started the local broker (tansu) on {self._broker.address}", flush=True)
        self.env["KAFKA_BROKER_ADDRESS"] = f"127.0.0.1:{BROKER_PORT}"

    def _choose_kraken(self) -> None:
        if self.env.get("KRAKEN_WS_URL"):
            print(f"Using Kraken at {self.env['KRAKEN_WS_URL']}", flush=True)
            return
        if not self.offline and kraken_reachable():
            print("Kraken is reachable: streaming real trades from wss://ws.kraken.com/v2")
            return
        print("Offline: starting the bundled Kraken simulator", flush=True)
        pairs = self.env.get("KRAKEN_PAIRS", "BTC/USD,ETH/USD")
        self._spawn(
            "simulator",
            [
                sys.executable,
                "-m",
                "trades_platform.simulator",
                "--port",
                str(self.simulator_port),
                "--pairs",
                pairs,
                # A low rate keeps a simulated day small enough to backfill in seconds.
                "--trades-per-second",
                self.env.get("SIMULATOR_TRADES_PER_SECOND", "5"),
            ],
        )
        wait_for_port("127.0.0.1", self.simulator_port, timeout_seconds=30)
        self.env["KRAKEN_WS_URL"] = f"ws://127.0.0.1:{self.simulator_port}/v2"
        self.env["KRAKEN_REST_URL"] = f"http://127.0.0.1:{self.simulator_port}"

    def _spawn(self, name: str, command: list[str], log_to_terminal: bool = False) -> None:
        # Log files keep the terminal readable; Dagster's own output is what users watch.
        output = None if log_to_terminal else open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115
        # Own process group: Ctrl-C reaches only this launcher, which then stops each group
        # (with everything it spawned, such as the live run's worker) in order.
        process = subprocess.Popen(
            command,
            env=self.env,
            cwd=PROJECT_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._processes.append((name, process))

    def wait(self) -> int:
        """Block until a child exits; its exit code becomes ours."""
        while True:
            for name, process in self._processes:
                code = process.poll()
                if code is not None:
                    print(f"{name} exited with code {code}; stopping the stack", flush=True)
                    return code
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop Dagster first (it flushes the live run), then the simulator and the broker."""
        for name, process in reversed(self._processes):
            print(f"Stopping {name}...", flush=True)
            stop_process(process, timeout_seconds=STOP_TIMEOUT_SECONDS, group=True)
            # Run workers outlive `dagster dev`'s own exit by a moment; stop them too.
            time.sleep(1)
            signal_group(process, signal.SIGKILL)
        if self._broker is not None:
            self._broker.stop()
        if self._kafka is not None:
            self._kafka.close()


class _Interrupt:
    """Ctrl-C or SIGTERM: the first one stops the stack; any later one only says it is stopping.

    A second signal must not cut the stop short (Ctrl-C pressed twice, or `make` and a `timeout`
    both passing SIGTERM on): that would leave Dagster, the simulator or the broker running.
    """

    def __init__(self) -> None:
        self.received = False

    def __call__(self, _signum: int, _frame: object) -> None:
        if self.received:
            print(
                f"Still stopping (each piece gets {STOP_TIMEOUT_SECONDS} s, then SIGKILL)...",
                flush=True,
            )
            return
        self.received = True
        raise KeyboardInterrupt


def main() -> int:
    """Run the local platform until interrupted."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--port", type=int, default=3000, help="Dagster webserver port")
    parser.add_argument(
        "--offline",
        action="store_true",
        default=os.environ.get("TRADES_PLATFORM_OFFLINE") == "1",
        help="use the simulator even when Kraken is reachable",
    )
    parser.add_argument(
        "--simulator-port", type=int, default=SIMULATOR_PORT, help="0 picks a free port"
    )
    parser.add_argument(
        "--local-broker",
        choices=("tansu", "kafka"),
        default=os.environ.get("LOCAL_BROKER") or "tansu",
        help="the broker started when KAFKA_BROKER_ADDRESS is not set (env LOCAL_BROKER)",
    )
    args = parser.parse_args()
    stack = DevStack(args.port, args.offline, args.simulator_port, args.local_broker)
    interrupt = _Interrupt()
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        stack.start()
        return stack.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        interrupt.received = True  # from here on a signal cannot cut the stop short either
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
