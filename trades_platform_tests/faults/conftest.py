"""Shared fixtures and checks of the fault-injection suite (`pytest -m faults`).

Every scenario ends the same way: read the topic back and show, per pair, that the ids form one
contiguous run with no id twice (and, for live data, that each record is the simulated market's
trade). `assert_exactly_once` does that and prints one summary line per pair, which is what the
suite reports (`pytest -m faults -s`).
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Consumer
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    ExecuteInProcessResult,
    instance_for_test,
    materialize,
)

from trades_platform.backfill.asset import kraken_trades_history
from trades_platform.backfill.partitions import PartitionWindow
from trades_platform.coverage.claims import ClaimBoard, TailClaim
from trades_platform.id_counts import IdCount
from trades_platform.kafka_cluster import KafkaCluster
from trades_platform.kraken.websocket import (
    REJECTION_LOG_INTERVAL_SECONDS,
    REJECTIONS_LOGGED_PER_INTERVAL,
)
from trades_platform.live.job import live_trades_job
from trades_platform.local_broker import LocalBroker, free_port
from trades_platform.resources import KrakenResource, RedpandaResource
from trades_platform.settings import KafkaSettings
from trades_platform.simulator.market import SimulatedMarket
from trades_platform.testing import (
    SimulatorProcess,
    TopicRecord,
    cli_env,
    count_pairs,
    ids_by_pair,
    live_run_totals,
)
from trades_platform.topic_reader import read_to_end, topic_partitions
from trades_platform.trade import message_key_for
from trades_platform_tests.support.tcp_proxy import ProxyGroup, TcpProxy

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DAGSTER = str(Path(sys.executable).with_name("dagster"))

LIVE_PAIRS = ["BTC/USD", "ETH/USD"]
LIVE_RATE = 25.0
# The live runs report progress every second.
PROGRESS_INTERVAL_SECONDS = 1
LIVE_JOB_COMMAND = ["job", "execute", "-m", "trades_platform.definitions", "-j", "live_trades_job"]
# The backfill tests' rate: about 9,900 trades per pair and day, ten 1000-trade pages.
BACKFILL_RATE = 0.115053


def summary_line(label: str, pair: str, count: IdCount, sent: tuple[int, int] | None = None) -> str:
    """One summary line for the suite's report; `sent` = (WebSocket, REST) trades served."""
    served = "" if sent is None else f"sent_ws={sent[0]} sent_rest={sent[1]} "
    return (
        f"[faults] {label}: {pair} ids {count.first_id}..{count.last_id} {served}"
        f"expected={count.expected} in_topic={count.in_topic} lost={count.lost} "
        f"duplicated={count.duplicated}"
    )


def trades_sent(
    simulator: SimulatorProcess, before: dict[str, Any] | None = None
) -> dict[str, tuple[int, int]]:
    """Per pair, the trades the simulator served (WebSocket, REST), since the `before` stats.

    WebSocket counts include snapshot repeats after reconnects; REST counts include the rows of
    pages fetched more than once. Both are what the writers were offered, not what they kept.
    """
    now = simulator.stats()
    before = before or {}

    def served(counter: str, pair: str) -> int:
        return now[counter].get(pair, 0) - before.get(counter, {}).get(pair, 0)

    pairs = set(now["trades_sent"]) | set(now["rest_trades_sent"])
    return {pair: (served("trades_sent", pair), served("rest_trades_sent", pair)) for pair in pairs}


def live_flags(
    *extra: str, pairs: Sequence[str] = LIVE_PAIRS, rate: float = LIVE_RATE
) -> list[str]:
    """Simulator flags for a live scenario."""
    return ["--pairs", ",".join(pairs), "--trades-per-second", str(rate), *extra]


def live_config(**config: object) -> dict[str, Any]:
    """Run config of `live_trades_job`, logging progress every second."""
    config = {"progress_interval_seconds": PROGRESS_INTERVAL_SECONDS, **config}
    return {"ops": {"stream_live_trades": {"config": config}}}


def live_kraken(simulator: SimulatorProcess, **settings: Any) -> KrakenResource:
    """A Kraken resource on the simulator: quick reconnects, a REST pace fit for healing."""
    base: dict[str, Any] = {
        "ws_url": simulator.ws_url,
        "rest_url": simulator.rest_url,
        "pairs": LIVE_PAIRS,
        "backoff_initial_seconds": 0.1,
        "rest_requests_per_second": 20.0,
    }
    return KrakenResource(**(base | settings))


def backfill_kraken(simulator: SimulatorProcess, **settings: Any) -> KrakenResource:
    """A Kraken resource for backfills: the pacer lifted, short back-offs."""
    base: dict[str, Any] = {
        "rest_url": simulator.rest_url,
        "pairs": LIVE_PAIRS,
        "rest_requests_per_second": 200.0,
        "rest_backoff_initial_seconds": 0.05,
        "rest_backoff_max_seconds": 0.2,
    }
    return KrakenResource(**(base | settings))


def run_live(
    kraken: KrakenResource,
    redpanda: RedpandaResource,
    instance: DagsterInstance,
    *,
    raise_on_error: bool = True,
    **config: object,
) -> ExecuteInProcessResult:
    """One bounded run of the live job, in process; with `raise_on_error`, it must succeed."""
    result = live_trades_job.execute_in_process(
        run_config=live_config(**config),
        resources={"kraken": kraken, "redpanda": redpanda},
        instance=instance,
        raise_on_error=False,
    )
    if raise_on_error:
        assert result.success, failure_summary(result)
    return result


def run_backfill(
    partition_key: str,
    kraken: KrakenResource,
    redpanda: RedpandaResource,
    instance: DagsterInstance,
    *,
    raise_on_error: bool = True,
) -> ExecuteInProcessResult:
    """Materialize one backfill partition in process; with `raise_on_error`, it must succeed."""
    result = materialize(
        [kraken_trades_history],
        partition_key=partition_key,
        resources={"kraken": kraken, "redpanda": redpanda},
        instance=instance,
        raise_on_error=False,
    )
    if raise_on_error:
        assert result.success, failure_summary(result)
    return result


def failure_summary(result: ExecuteInProcessResult) -> str:
    """Each failed step's error and its causes, a line each, and where the innermost was raised.

    Dagster's own traceback of a failed step runs to a hundred lines of framework code before the
    error; CI keeps the end of a test's output, so this puts the error itself last.
    """
    lines = ["the run failed:"]
    for event in result.all_events:
        error = event.step_failure_data.error if event.is_step_failure else None
        innermost = error
        while error is not None:
            lines.append(f"  {event.step_key}: {error.message.strip()[:500]}")
            innermost, error = error, error.cause
        if innermost is not None:
            for frame in innermost.stack[-2:]:
                lines.append("    " + " | ".join(part.strip() for part in frame.splitlines()))
    return "\n".join(lines)


def backfill_metadata(result: ExecuteInProcessResult) -> dict[str, Any]:
    """The partition's materialization metadata, as plain values."""
    (materialization,) = result.asset_materializations_for_node("kraken_trades_history")
    return {key: value.value for key, value in materialization.metadata.items()}


def run_messages(instance: DagsterInstance, run_id: str) -> list[str]:
    """The run's log messages, oldest first."""
    return [entry.user_message for entry in instance.all_logs(run_id)]


def run_totals(instance: DagsterInstance, run_id: str) -> dict[str, int | float]:
    """The live run's counters (`LiveProgress.totals`), as its op logged them when it stopped."""
    return live_run_totals(run_messages(instance, run_id))


# A live run's event log outside its progress, gap and rejection lines and its reconnects:
# run and step events, resources, the pairs' claims, the first connection, the stop and totals.
# Measured 18 to 20 entries in the hostile, slow, giant and backwards scenarios (tansu, 2 cores),
# where one line per rejected item would be 349,500 more, one per slow-message fragment 10, one
# per heal REST call 19 and one per backdated trade 128.
LIVE_RUN_LOG_OVERHEAD = 25
# A reconnect costs one "connection lost" warning and the new connection's two info lines.
LOG_ENTRIES_PER_RECONNECT = 3


@dataclass(frozen=True)
class EventLogCensus:
    """A live run's event log, sorted by the kinds of entry a fault could multiply."""

    entries: list[str]
    # Rejections logged one line each, and the per-interval lines counting the rest.
    rejections_one_by_one: list[str]
    rejection_summaries: list[str]
    # "Kraken connection lost (...); reconnect #n": one per reconnect.
    connections_lost: list[str]
    # One progress line per PROGRESS_INTERVAL_SECONDS: time-driven, whatever the input.
    progress: list[str]
    # "PAIR: N trade(s) missed, ids A..B": one DEBUG line per id gap the feed left
    # (`KrakenTradeStream._note_gap`), so it grows with what a lossy feed leaves out.
    gaps: list[str]

    @property
    def others(self) -> int:
        """Entries that are no rejection, progress or gap line (reconnects' lines included)."""
        counted = (self.rejections_one_by_one, self.rejection_summaries, self.progress, self.gaps)
        return len(self.entries) - sum(len(kind) for kind in counted)


_PROGRESS_LINE = re.compile(r"\d+\.\d trades/s; ")
_GAP_LINE = re.compile(r"\S+: \d+ trade\(s\) missed, ids \d+\.\.\d+$")


def event_log_census(messages: Sequence[str]) -> EventLogCensus:
    """Sort a live run's log messages (`run_messages`) into the kinds of `EventLogCensus`."""
    return EventLogCensus(
        entries=list(messages),
        rejections_one_by_one=[m for m in messages if m.startswith("Skipped bad Kraken input")],
        rejection_summaries=[
            m for m in messages if m.startswith("Skipped ") and "without logging each" in m
        ],
        connections_lost=[m for m in messages if m.startswith("Kraken connection lost")],
        progress=[m for m in messages if _PROGRESS_LINE.match(m)],
        gaps=[m for m in messages if _GAP_LINE.match(m)],
    )


def assert_event_log_bounded(
    messages: Sequence[str], totals: dict[str, int | float]
) -> EventLogCensus:
    """The live run's event log stayed small, whatever the feed sent (`totals`: its counters).

    Rejections: one line each up to the budget per interval, then one summary per interval,
    however many there were (a 1 MiB junk frame is 349,500). Reconnects: one "connection lost"
    line each and the new connection's lines. Progress: one line per interval. Everything else
    at most LIVE_RUN_LOG_OVERHEAD entries: a few dozen entries in all, where logging each
    rejected item, each frame fragment, each REST call or each healed trade adds hundreds.
    The per-gap DEBUG lines are only checked to be one per gap: they are not bounded.
    """
    census = event_log_census(messages)
    seconds = totals["seconds"]
    intervals = int(seconds // REJECTION_LOG_INTERVAL_SECONDS) + 1
    one_by_one = len(census.rejections_one_by_one)
    assert one_by_one <= REJECTIONS_LOGGED_PER_INTERVAL * intervals, one_by_one
    assert len(census.rejection_summaries) <= intervals, census.rejection_summaries
    assert len(census.connections_lost) <= totals["reconnects"], census.connections_lost
    # The reports while running, and the stop's.
    assert len(census.progress) <= seconds / PROGRESS_INTERVAL_SECONDS + 2, len(census.progress)
    assert len(census.gaps) <= totals["gaps"], (len(census.gaps), totals)
    allowed = LIVE_RUN_LOG_OVERHEAD + LOG_ENTRIES_PER_RECONNECT * int(totals["reconnects"])
    assert census.others <= allowed, (census.others, allowed, messages[-60:])
    print(
        f"[faults] event log: {len(messages)} entries for {totals['dead_lettered']} rejections "
        f"and {totals['reconnects']} reconnects in {seconds}s: {one_by_one} + "
        f"{len(census.rejection_summaries)} rejection lines, {len(census.progress)} progress, "
        f"{len(census.gaps)} gap lines, {census.others} others (bound {allowed})",
        flush=True,
    )
    return census


def day_ids(market: SimulatedMarket, partition_key: str) -> list[int]:
    """The ids the market traded in the partition's pair and day."""
    window = PartitionWindow.from_key(partition_key)
    first = market.first_id_at_or_after(window.pair, window.start_us)
    stop = market.first_id_at_or_after(window.pair, window.end_us)
    return list(range(first, stop))


def assert_exactly_once(
    records: list[TopicRecord],
    *,
    label: str,
    market: SimulatedMarket | None = None,
    sources: Sequence[str] = ("live", "heal"),
    pairs: Sequence[str] | None = None,
    reaches_us: int | None = None,
    sent: dict[str, tuple[int, int]] | None = None,
    time_shifts_us: Callable[[int], tuple[int, ...]] = lambda _trade_id: (0,),
) -> dict[str, IdCount]:
    """Each pair's ids form one contiguous run with no repeats; with a market, each is true to it.

    With `reaches_us`, each pair's newest id is at least the market's newest at that time: a
    run that silently stopped writing a pair would otherwise pass, its ids contiguous but short.
    `sent` (from `trades_sent`) goes into the report line. `time_shifts_us(trade_id)`: how much
    earlier than the market's time a record of that id may be (a fault that backdates trades).
    """
    counts = count_pairs(records)
    for pair, count in counts.items():
        served = None if sent is None else sent.get(pair, (0, 0))
        print(summary_line(label, pair, count, served), flush=True)
    if pairs is not None:
        assert set(counts) == set(pairs), f"pairs in the topic: {sorted(counts)}"
    if reaches_us is not None:
        assert market is not None, "reaches_us needs the market"
        short = {
            pair: (count.last_id, market.last_id_at_or_before(pair, reaches_us))
            for pair, count in counts.items()
            if count.last_id < market.last_id_at_or_before(pair, reaches_us)
        }
        assert not short, f"{label}: pairs whose newest id stops short (have, want) {short}"
    repeated = {pair: count.repeated[:20] for pair, count in counts.items() if count.duplicated}
    assert not repeated, f"{label}: duplicated ids {repeated}"
    holes = {pair: count.holes[:10] for pair, count in counts.items() if count.lost}
    assert not holes, f"{label}: lost ids (first holes per pair) {holes}"
    for record in records:
        value = record.value
        assert value["source"] in sources, f"unexpected source {value['source']!r}"
        assert record.key == value["pair"].replace("/", "-")
        if market is not None:
            expected = market.trade(value["pair"], value["trade_id"])
            assert record.timestamp_ms == value["timestamp_ms"], value
            allowed = {
                (expected.time_us - shift) // 1000 for shift in time_shifts_us(value["trade_id"])
            }
            assert value["timestamp_ms"] in allowed, (value, expected)
            assert (value["price"], value["volume"], value["side"], value["ord_type"]) == (
                expected.price,
                expected.qty,
                expected.side,
                expected.ord_type,
            ), f"{value['pair']} {value['trade_id']} differs from the market"
    return counts


def wall_us(seconds_ago: float = 0.0) -> int:
    """Wall-clock time in µs, `seconds_ago` back (the live simulators run on real time)."""
    return int((time.time() - seconds_ago) * 1_000_000)


def ids_of(records: list[TopicRecord], pair: str) -> list[int]:
    """One pair's ids, in topic order."""
    return ids_by_pair(records).get(pair, [])


def partition_of(broker: str, topic: str, pair: str) -> int:
    """The partition the pair's records are in (read back, not computed)."""
    key = message_key_for(pair).encode()
    consumer = Consumer(KafkaSettings(broker_address=broker).consumer_config())
    try:
        partitions = topic_partitions(consumer, topic) or []
        for message in read_to_end(
            consumer, topic, dict.fromkeys(partitions, 0), timeout_seconds=30
        ):
            if message.key() == key:
                return int(message.partition())
    finally:
        consumer.close()
    raise AssertionError(f"no record of {pair} in {topic}")


@dataclass
class ProxiedCluster:
    """A 3-node Kafka cluster whose clients reach every node through a proxy of its own."""

    cluster: KafkaCluster
    proxies: dict[int, TcpProxy]


@pytest.fixture(scope="session")
def proxied_kafka() -> Iterator[ProxiedCluster]:
    """Started once per session, on first use; the nodes replicate around the proxies."""
    ports = {node_id: free_port() for node_id in (1, 2, 3)}
    cluster = KafkaCluster(nodes=3, advertised_ports=ports)
    proxies = {
        node.node_id: TcpProxy(node.port, port=ports[node.node_id], max_lifetime_seconds=5400)
        for node in cluster.nodes
    }
    for proxy in proxies.values():
        proxy.start()
    try:
        with cluster:
            yield ProxiedCluster(cluster, proxies)
    finally:
        for proxy in proxies.values():
            proxy.stop()


@dataclass
class ProxiedBroker:
    """A broker every client reaches through TCP proxies that a test can cut."""

    proxy: TcpProxy | ProxyGroup

    @property
    def address(self) -> str:
        """What clients bootstrap from (the proxies)."""
        return self.proxy.address


@pytest.fixture(params=["tansu", "kafka"])
def proxied_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProxiedBroker]:
    """A fresh tansu broker behind a fresh proxy, or the session's proxied 3-node Kafka cluster;
    either way every client connection goes through a proxy."""
    if request.param == "kafka":
        proxied: ProxiedCluster = request.getfixturevalue("proxied_kafka")
        group = ProxyGroup(list(proxied.proxies.values()))
        assert group.wait_restored(60), "a proxy is still cut from an earlier test"
        yield ProxiedBroker(group)
        return
    real_port = free_port()
    with (
        TcpProxy(real_port, max_lifetime_seconds=600) as proxy,
        LocalBroker(port=real_port, advertised_port=proxy.port, log_path=tmp_path / "broker.log"),
    ):
        yield ProxiedBroker(proxy)


# Dagster captures a step's stdout by swapping file descriptor 1, which a test's own output
# does not need. (Never run two in-process runs at once, in threads: they swap that descriptor
# out of order, and their logging set-up can deadlock. A concurrent run is a CLI subprocess.)
_NO_CAPTURE = {
    "compute_logs": {
        "module": "dagster._core.storage.noop_compute_log_manager",
        "class": "NoOpComputeLogManager",
    }
}


@contextmanager
def fresh_instance() -> Iterator[DagsterInstance]:
    """A throwaway Dagster instance that does not capture stdout."""
    with instance_for_test(overrides=_NO_CAPTURE) as instance:
        yield instance


@pytest.fixture
def dagster_instance() -> Iterator[DagsterInstance]:
    """A throwaway Dagster instance."""
    with fresh_instance() as instance:
        yield instance


class CliRun:
    """A `dagster` CLI command in its own process group, its output collected by a thread."""

    def __init__(self, args: Sequence[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [DAGSTER, *args],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # Its own group: a SIGKILL then takes the run worker and any step process with it.
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        """Everything it printed so far."""
        return "".join(self.lines)

    def wait_for_output(self, text: str, timeout_seconds: float) -> None:
        """Block until `text` appears in the output; fail with the output if it does not."""
        deadline = time.monotonic() + timeout_seconds
        while text not in self.output:
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{text!r} never appeared; output:\n{self.output[-4000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the whole process group, as an OOM killer or a lost machine would."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self._reader.join(5)

    def wait(self, timeout_seconds: float) -> int:
        """Wait for it to exit by itself; kill it (and fail) if it overruns."""
        try:
            code = self.process.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"did not finish in {timeout_seconds}s; output:\n{self.output[-4000:]}")
        self._reader.join(5)
        return code

    def __enter__(self) -> "CliRun":
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Whatever happened in the test, leave no process behind.
        if self.process.poll() is None:
            self.kill()


def live_cli(
    sim: SimulatorProcess,
    broker: str,
    topic: str,
    home: Path,
    *,
    pairs: Sequence[str] = ("BTC/USD",),
    env: dict[str, str] | None = None,
    **config: object,
) -> CliRun:
    """A live run as its own process (`dagster job execute`), with op config `config`."""
    config_path = home.parent / f"live-{home.name}.yaml"
    home.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(live_config(**config)))
    run_env = cli_env(sim, broker, topic, home, pairs=pairs, **(env or {}))
    return CliRun([*LIVE_JOB_COMMAND, "-c", str(config_path)], run_env)


def wait_for_claim(redpanda: RedpandaResource, pair: str, timeout_seconds: float) -> TailClaim:
    """The first live claim on `pair` that claims ids and is not over."""
    board = ClaimBoard(redpanda.kafka_settings(), owner="faults-test-observer")
    try:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            for observed in board.read().get(pair, []):
                if observed.claim.from_id is not None and not observed.over:
                    return observed.claim
            time.sleep(0.2)
    finally:
        board.close()
    pytest.fail(f"no live claim on {pair} within {timeout_seconds}s")


def backfill_command(partition_key: str) -> list[str]:
    """`dagster asset materialize` of one backfill partition."""
    return [
        *("asset", "materialize", "-m", "trades_platform.definitions"),
        *("--select", "kraken_trades_history", "--partition", partition_key),
    ]


def cli_backfill_metadata(home: Path, partition_key: str) -> dict[str, Any]:
    """The metadata of the partition's newest materialization in a CLI run's instance (`home`)."""
    with DagsterInstance.from_config(str(home)) as instance:
        records = instance.fetch_materializations(
            AssetRecordsFilter(
                asset_key=AssetKey("kraken_trades_history"), asset_partitions=[partition_key]
            ),
            limit=1,
        ).records
    assert records, f"no materialization of {partition_key} in the instance at {home}"
    materialization = records[0].asset_materialization
    assert materialization is not None
    return {key: value.value for key, value in materialization.metadata.items()}
