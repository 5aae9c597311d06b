"""Apache Kafka itself on loopback, from Maven Central jars: the second broker the tests run on.

`tansu` (local_broker.py) is light and starts in a second, but it is a young reimplementation;
this is the broker users run. Each node is one JVM in KRaft combined mode (broker and controller),
with its own ports and directory; three nodes form a quorum and replicate every topic three
ways with `min.insync.replicas=2`, so one node can go without losing an acknowledged write.

    python -m trades_platform.kafka_cluster prepare      # fetch the jars once (make install)
    python -m trades_platform.kafka_cluster run --nodes 3
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from confluent_kafka.admin import AdminClient

from trades_platform.local_broker import free_port, wait_for_port
from trades_platform.processes import stop_process

SERVER_DIR = Path(__file__).parent / "kafka_server"
POM = SERVER_DIR / "pom.xml"
LOG_CONFIG = SERVER_DIR / "log4j2.yaml"
# Outside git, beside .venv: the jars are fetched once per checkout (`make install`).
JARS_DIR = Path(__file__).parent.parent / ".kafka" / "lib"
# Written after a complete fetch: the pom's hash, so a changed pom fetches again.
_STAMP = ".pom-sha256"
# A JVM per node on a 2-core machine: a small heap, one GC thread, little JIT.
JVM_OPTIONS = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:CICompilerCount=2",
    "-Djava.awt.headless=true",
)


def kafka_classpath() -> str:
    """The server's classpath, fetching the jars with Maven first if they are missing or stale."""
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    stamp = JARS_DIR / _STAMP
    if not (stamp.exists() and stamp.read_text().strip() == digest):
        _fetch_jars(digest)
    return os.pathsep.join(str(jar) for jar in sorted(JARS_DIR.glob("*.jar")))


def _fetch_jars(digest: str) -> None:
    """Copy the pom's dependencies into JARS_DIR (Maven keeps its own cache in ~/.m2)."""
    if shutil.which("mvn") is None:
        raise RuntimeError("Apache Kafka's jars need Maven (mvn) and Java 17+: install both")
    if JARS_DIR.exists():
        shutil.rmtree(JARS_DIR)
    JARS_DIR.mkdir(parents=True)
    command = [
        "mvn",
        "--batch-mode",
        "--quiet",
        "--file",
        str(POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={JARS_DIR}",
    ]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise RuntimeError(
            f"fetching Kafka's jars failed ({' '.join(command)}):\n"
            f"{finished.stdout[-3000:]}{finished.stderr[-3000:]}"
        )
    (JARS_DIR / _STAMP).write_text(digest + "\n")


def random_cluster_id() -> str:
    """A KRaft cluster id: a UUID in URL-safe base64 without padding, as Kafka's tools make."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass
class KafkaNode:
    """One node of the cluster: its id, ports, directory and, while it runs, its process."""

    node_id: int
    port: int
    controller_port: int
    # The brokers' own traffic (replication): never through a client-side proxy.
    internal_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """Where clients reach this node."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """The node's stdout and stderr."""
        return self.directory / "server.log"

    @property
    def running(self) -> bool:
        """Whether its JVM is alive."""
        return self.process is not None and self.process.poll() is None


class KafkaCluster:
    """Runs 1 or 3 Kafka nodes on 127.0.0.1 for as long as the context is open.

    The data outlives a node (`kill`, `start_node`) and the whole cluster (`stop`, `start`) until
    the context closes; then the directory is removed, unless the block raised: then it is kept,
    logs and data, and its path printed.
    """

    def __init__(
        self,
        nodes: int = 3,
        directory: Path | None = None,
        extra_properties: Mapping[str, object] | None = None,
        advertised_ports: Mapping[int, int] | None = None,
        own_session: bool = False,
    ) -> None:
        """`extra_properties`: server.properties on top of (or instead of) the cluster's own.
        `advertised_ports`: node id -> the port clients are told to reach it on (a proxy's).
        `own_session`: each node leads a process group of its own, so a Ctrl-C meant for the
        cluster's owner does not stop it under clients still flushing; the owner stops it.
        """
        if nodes not in (1, 3):
            raise ValueError(f"a cluster of 1 or 3 nodes, not {nodes}")
        self._own_directory = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="kafka-cluster-"))
        self.cluster_id = random_cluster_id()
        self.nodes = [
            KafkaNode(
                node_id, free_port(), free_port(), free_port(), self.directory / f"node-{node_id}"
            )
            for node_id in range(1, nodes + 1)
        ]
        self._extra_properties = dict(extra_properties or {})
        self._advertised_ports = dict(advertised_ports or {})
        self._own_session = own_session
        self._formatted = False
        self._admin_client: AdminClient | None = None

    @property
    def bootstrap(self) -> str:
        """Every node's client address, comma-separated."""
        return ",".join(node.address for node in self.nodes)

    @property
    def replication_factor(self) -> int:
        """What the cluster gives a topic created with the broker's default."""
        return len(self.nodes)

    @property
    def min_insync_replicas(self) -> int:
        """Replicas that must have a write before an `acks=all` producer hears it landed."""
        return 2 if len(self.nodes) == 3 else 1

    # --- the cluster's life ----------------------------------------------------------------

    def start(self, timeout_seconds: float = 120.0) -> KafkaCluster:
        """Format storage on the first start, start every node, wait until all are brokers."""
        classpath = kafka_classpath()
        if not self._formatted:
            for node in self.nodes:
                self._format(node, classpath)
            self._formatted = True
        for node in self.nodes:
            self._launch(node, classpath)
        self.wait_ready(timeout_seconds)
        return self

    def stop(self, timeout_seconds: float = 60.0) -> None:
        """Stop every node cleanly (SIGTERM, SIGKILL after the timeout); the data stays."""
        # Dropped first: a client left connected would log every refused reconnect.
        self._admin_client = None
        for node in self.nodes:
            if node.running:
                assert node.process is not None
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            stop_process(node.process, timeout_seconds=timeout_seconds)
            node.process = None

    def kill(self, node_id: int) -> None:
        """SIGKILL one node, as a crash or a pulled plug would stop it."""
        node = self.node(node_id)
        if node.process is not None:
            node.process.kill()
            node.process.wait()
        node.process = None

    def start_node(self, node_id: int, timeout_seconds: float = 120.0) -> None:
        """Start one stopped node on its data again; return once the cluster lists it."""
        self._launch(self.node(node_id), kafka_classpath())
        self.wait_ready(timeout_seconds)

    def node(self, node_id: int) -> KafkaNode:
        """The node with this id (1-based)."""
        return self.nodes[node_id - 1]

    def wait_ready(self, timeout_seconds: float) -> None:
        """Block until every running node accepts connections and the cluster lists them all."""
        deadline = time.monotonic() + timeout_seconds
        running = [node for node in self.nodes if node.running]
        for node in running:
            self._wait(lambda node=node: _accepts(node), deadline, f"node {node.node_id}'s port")
        wanted = {node.node_id for node in running}
        self._wait(lambda: self.broker_ids() >= wanted, deadline, f"brokers {sorted(wanted)}")

    def broker_ids(self) -> set[int]:
        """The brokers the cluster's metadata lists now (empty if no node answers)."""
        try:
            return set(self._admin().list_topics(timeout=5).brokers)
        except Exception:
            return set()

    def leader_of(self, topic: str, partition: int) -> int:
        """The node id that leads a partition now, or -1 while there is none."""
        metadata = self._admin().list_topics(topic, timeout=10).topics[topic]
        leader: int = metadata.partitions[partition].leader
        return leader

    def in_sync_replicas(self, topic: str, partition: int) -> list[int]:
        """The node ids in a partition's ISR now."""
        metadata = self._admin().list_topics(topic, timeout=10).topics[topic]
        return sorted(metadata.partitions[partition].isrs)

    def close(self, keep: bool = False) -> None:
        """Stop every node; remove the directory unless `keep` (or it was given)."""
        self.stop()
        if keep or not self._own_directory:
            print(f"Kafka cluster logs and data kept in {self.directory}", file=sys.stderr)
        else:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> KafkaCluster:
        try:
            return self.start()
        except BaseException:
            self.close(keep=True)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close(keep=exc_type is not None)

    # --- internals -------------------------------------------------------------------------

    def _admin(self) -> AdminClient:
        if self._admin_client is None:
            self._admin_client = AdminClient({"bootstrap.servers": self.bootstrap})
        return self._admin_client

    def _properties(self, node: KafkaNode) -> str:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        replicas = self.replication_factor
        settings = {
            "process.roles": "broker,controller",
            "node.id": node.node_id,
            # A static quorum: every node knows the voters from its configuration.
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:"
            f"{node.controller_port},INTERNAL://127.0.0.1:{node.internal_port}",
            "advertised.listeners": "PLAINTEXT://127.0.0.1:"
            f"{self._advertised_ports.get(node.node_id, node.port)},"
            f"INTERNAL://127.0.0.1:{node.internal_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "INTERNAL",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,"
            "INTERNAL:PLAINTEXT",
            "log.dirs": node.directory / "data",
            # Topics created with the broker's default get the cluster's full replication.
            "default.replication.factor": replicas,
            "min.insync.replicas": self.min_insync_replicas,
            "offsets.topic.replication.factor": replicas,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": self.min_insync_replicas,
            "num.partitions": 1,
            # Tests join consumer groups at once, not after the 3 s a production broker waits.
            "group.initial.rebalance.delay.ms": 0,
            # Few threads per JVM: three of them share two cores.
            "num.network.threads": 2,
            "num.io.threads": 2,
            "num.recovery.threads.per.data.dir": 1,
            "background.threads": 2,
            "log.cleaner.threads": 1,
            # A node that comes back is told its partitions' leaders soon after.
            "leader.imbalance.check.interval.seconds": 10,
        }
        settings.update(self._extra_properties)
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def _format(self, node: KafkaNode, classpath: str) -> None:
        node.directory.mkdir(parents=True, exist_ok=True)
        properties = node.directory / "server.properties"
        properties.write_text(self._properties(node))
        command = [
            "java",
            *JVM_OPTIONS,
            f"-Dlog4j2.configurationFile={LOG_CONFIG}",
            "-cp",
            classpath,
            "kafka.tools.StorageTool",
            "format",
            # One argument with "=": an id may start with "-" (base64url), which the tool's
            # parser would otherwise take for an option ("--cluster-id: expected one argument").
            f"--cluster-id={self.cluster_id}",
            "--config",
            str(properties),
        ]
        finished = subprocess.run(command, capture_output=True, text=True, check=False)
        if finished.returncode != 0:
            raise RuntimeError(
                f"formatting node {node.node_id} failed: {finished.stdout}{finished.stderr}"
            )

    def _launch(self, node: KafkaNode, classpath: str) -> None:
        if node.running:
            return
        command = [
            "java",
            *JVM_OPTIONS,
            f"-Dlog4j2.configurationFile={LOG_CONFIG}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(node.directory / "server.properties"),
        ]
        with open(node.log_path, "ab") as log:
            node.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=self._own_session
            )

    def _wait(self, ready: object, deadline: float, what: str) -> None:
        assert callable(ready)
        while not ready():
            for node in self.nodes:
                if node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(
                        f"Kafka node {node.node_id} exited ({node.process.returncode}); "
                        f"its log: {node.log_path}"
                    )
            if time.monotonic() > deadline:
                raise TimeoutError(f"Kafka cluster: {what} not ready; logs in {self.directory}")
            time.sleep(0.2)


def _accepts(node: KafkaNode) -> bool:
    try:
        wait_for_port("127.0.0.1", node.port, timeout_seconds=0.1)
    except TimeoutError:
        return False
    return True


def main() -> None:
    """`prepare` fetches the jars; `run` keeps a cluster up in the foreground until Ctrl-C."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("prepare", help="fetch Kafka's jars (cached in .kafka/lib)")
    run = commands.add_parser("run", help="run a cluster on loopback until interrupted")
    run.add_argument("--nodes", type=int, choices=(1, 3), default=3)
    args = parser.parse_args()
    if args.command == "prepare":
        jars = kafka_classpath().count(os.pathsep) + 1
        print(f"Apache Kafka: {jars} jars in {JARS_DIR}")
        return
    with KafkaCluster(args.nodes) as cluster:
        print(f"Apache Kafka ({args.nodes} node(s)) on {cluster.bootstrap}", flush=True)
        print(f"export KAFKA_BROKER_ADDRESS={cluster.bootstrap}", flush=True)
        try:
            while all(node.running for node in cluster.nodes):
                time.sleep(1)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
