"""The scale section of `make bench`: a writer's start on an empty topic and on 10 M older records.

Side by side in one run, on one broker and one simulator: a `kraken_trades_history` partition
(pacing lifted) and the time from a live run's start to its first acknowledged trade, once on a
topic that holds nothing else and once on a topic that holds `history_records` older records of
`history_pairs` other pairs (written once, then indexed once, as the writers that wrote them would
have done as they went: that first read is reported on its own). Repetitions alternate the two
topics and use a new day each time, so both topics see the same sequence of work; the ratio is
10 M / empty, per repetition, median.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from dagster import instance_for_test, materialize

from trades_platform.backfill.asset import kraken_trades_history
from trades_platform.backfill.checks import kraken_trades_history_checks
from trades_platform.coverage.topic_ids import ScanCost, scan_topic_ids
from trades_platform.live.job import live_trades_job
from trades_platform.local_broker import LocalBroker
from trades_platform.producer import TradeProducer
from trades_platform.resources import KrakenResource, RedpandaResource
from trades_platform.settings import KafkaSettings
from trades_platform.testing import SimulatorProcess, unique_topic
from trades_platform.trade import format_time_us

PAIR = "BTC/USD"
# The simulator's pace: 21,600 trades a day, 22 REST pages (the measurement had 20,000).
TRADES_PER_SECOND = 0.25
# History from 2023 and the measured days from 2024: every record of the history is older.
HISTORY_START_MS = 1_672_531_200_000  # 2023-01-01
FIRST_DAY = date(2024, 3, 1)


@dataclass(frozen=True)
class ScaleConfig:
    """Sizes of the scale section."""

    history_records: int = 10_000_000
    history_pairs: int = 10
    repeats: int = 3
    # Most a ratio (10 M / empty) may be.
    ratio_target: float = 1.2


FULL_SCALE = ScaleConfig()
QUICK_SCALE = ScaleConfig(history_records=50_000, repeats=1)


def run_scale(
    config: ScaleConfig, log_dir: Path, progress: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the section; return its runs, medians, ratios and target checks."""
    with (
        LocalBroker(log_path=log_dir / "scale-broker.log") as broker,
        SimulatorProcess(
            *("--pairs", PAIR, "--trades-per-second", str(TRADES_PER_SECOND)),
            *("--log-level", "WARNING"),
            log_path=log_dir / "scale-simulator.log",
        ) as simulator,
    ):
        empty = KafkaSettings(broker_address=broker.address, topic=unique_topic("scale-empty"))
        full = KafkaSettings(broker_address=broker.address, topic=unique_topic("scale-history"))
        for settings in (empty, full):
            TradeProducer(settings).close()  # the topic, as the platform creates it
        progress(f"scale: writing {config.history_records:,} older records of "
                 f"{config.history_pairs} pairs")  # fmt: skip
        started = time.monotonic()
        _write_history(full, config)
        write_seconds = time.monotonic() - started
        cost = ScanCost()
        started = time.monotonic()
        scan_topic_ids(full, [PAIR], cost=cost)
        index_seconds = time.monotonic() - started
        progress(f"scale: written in {write_seconds:.0f}s; first read (builds the index) "
                 f"{index_seconds:.0f}s for {cost.records_read:,} records")  # fmt: skip
        runs: list[dict[str, Any]] = []
        for repeat in range(config.repeats):
            day = FIRST_DAY + timedelta(days=repeat)
            for label, settings in (("empty", empty), ("history", full)):
                run = {
                    "label": label,
                    "repeat": repeat,
                    "partition_seconds": _one_partition(settings, simulator, day),
                    "live_first_ack_seconds": _live_first_ack(settings, simulator),
                }
                runs.append(run)
                progress(
                    f"  {label:<8} partition {day} {run['partition_seconds']:6.1f}s   "
                    f"live start to first ack {run['live_first_ack_seconds']:5.2f}s"
                )
    return _summary(config, runs, write_seconds, index_seconds, cost.records_read)


def _write_history(settings: KafkaSettings, config: ScaleConfig) -> None:
    """`history_records` trades of `history_pairs` pairs, one a second per pair from 2023."""
    producer = Producer(
        {
            "bootstrap.servers": settings.broker_address,
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    per_pair = config.history_records // config.history_pairs
    pairs = [f"H{number:02d}/USD" for number in range(config.history_pairs)]
    for trade_id in range(1, per_pair + 1):
        time_ms = HISTORY_START_MS + trade_id * 1000
        stamp = format_time_us(time_ms * 1000)
        for pair in pairs:
            value = {
                "pair": pair,
                "price": 100.0,
                "volume": 0.5,
                "timestamp": stamp,
                "timestamp_ms": time_ms,
                "trade_id": trade_id,
                "side": "buy",
                "ord_type": "limit",
                "exchange": "kraken",
                "source": "backfill",
            }
            while True:
                try:
                    producer.produce(
                        settings.topic,
                        key=pair.replace("/", "-").encode(),
                        value=orjson.dumps(value),
                        timestamp=time_ms,
                    )
                    break
                except BufferError:
                    producer.poll(0.1)
    if producer.flush(300):
        raise RuntimeError("the history was not all acknowledged")


def _one_partition(settings: KafkaSettings, simulator: SimulatorProcess, day: date) -> float:
    """Seconds to materialize one partition (pacing lifted) with its checks."""
    resources = {
        "kraken": KrakenResource(
            rest_url=simulator.rest_url, pairs=[PAIR], rest_requests_per_second=1000.0
        ),
        "redpanda": RedpandaResource(broker_address=settings.broker_address, topic=settings.topic),
    }
    with instance_for_test() as instance:
        started = time.monotonic()
        result = materialize(
            [kraken_trades_history, kraken_trades_history_checks],
            partition_key=f"{day.isoformat()}|{PAIR}",
            resources=resources,
            instance=instance,
        )
        seconds = time.monotonic() - started
    if not result.success or not all(e.passed for e in result.get_asset_check_evaluations()):
        raise RuntimeError(f"the partition of {day} failed or its checks did")
    return seconds


def _live_first_ack(settings: KafkaSettings, simulator: SimulatorProcess) -> float:
    """Seconds from a live run's start to its first trade readable in the topic (acks=all)."""
    watcher = _FirstLiveTrade(settings)
    resources = {
        "kraken": KrakenResource(
            ws_url=simulator.ws_url, rest_url=simulator.rest_url, pairs=[PAIR]
        ),
        "redpanda": RedpandaResource(broker_address=settings.broker_address, topic=settings.topic),
    }
    with instance_for_test() as instance:
        started = time.monotonic()
        watcher.start(time.time())
        result = live_trades_job.execute_in_process(
            run_config={"ops": {"stream_live_trades": {"config": {"max_trades": 5}}}},
            resources=resources,
            instance=instance,
        )
    first = watcher.wait(60.0)
    if not result.success or first is None:
        raise RuntimeError("the live run failed or its first trade was never read back")
    return first - started


class _FirstLiveTrade:
    """Watches the end of a topic for the first live trade received after a given time."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._seen_at: float | None = None
        self._done = threading.Event()
        self._consumer = Consumer({**settings.consumer_config(), "enable.partition.eof": False})
        metadata = self._consumer.list_topics(settings.topic, timeout=10).topics[settings.topic]
        ends = []
        for partition in metadata.partitions:
            _low, high = self._consumer.get_watermark_offsets(
                TopicPartition(settings.topic, partition), timeout=10
            )
            ends.append(TopicPartition(settings.topic, partition, high))
        # tansu answers `high` short by up to a batch: older records are filtered by time below.
        self._consumer.assign(ends)

    def start(self, after_wall: float) -> None:
        """Begin watching for a live trade received after `after_wall` (epoch seconds)."""
        self._after_ms = int(after_wall * 1000)
        threading.Thread(target=self._watch, daemon=True).start()

    def wait(self, timeout_seconds: float) -> float | None:
        """When (monotonic) the first such trade was read, or None."""
        self._done.wait(timeout_seconds)
        self._done.set()
        return self._seen_at

    def _watch(self) -> None:
        try:
            while not self._done.is_set():
                message = self._consumer.poll(0.01)
                if message is None or message.error():
                    continue
                value = orjson.loads(message.value() or b"{}")
                if (
                    value.get("source") == "live"
                    and (value.get("received_ms") or 0) >= self._after_ms
                ):
                    self._seen_at = time.monotonic()
                    self._done.set()
        finally:
            self._consumer.close()


def _summary(
    config: ScaleConfig,
    runs: list[dict[str, Any]],
    write_seconds: float,
    index_seconds: float,
    index_records: int,
) -> dict[str, Any]:
    def paired(measure: str) -> list[float]:
        by_repeat: dict[int, dict[str, float]] = {}
        for run in runs:
            by_repeat.setdefault(run["repeat"], {})[run["label"]] = run[measure]
        return [pair["history"] / pair["empty"] for pair in by_repeat.values() if pair["empty"] > 0]

    def median(label: str, measure: str) -> float:
        return float(statistics.median(run[measure] for run in runs if run["label"] == label))

    partition_ratios, live_ratios = paired("partition_seconds"), paired("live_first_ack_seconds")
    ratios = {
        "partition_ratio": statistics.median(partition_ratios),
        "live_first_ack_ratio": statistics.median(live_ratios),
    }
    summary: dict[str, Any] = {
        "config": asdict(config),
        "history_write_seconds": write_seconds,
        "first_read_seconds": index_seconds,
        "first_read_records": index_records,
        "partition_seconds": {
            label: median(label, "partition_seconds") for label in ("empty", "history")
        },
        "live_first_ack_seconds": {
            label: median(label, "live_first_ack_seconds") for label in ("empty", "history")
        },
        **ratios,
        "partition_ratio_each": partition_ratios,
        "live_first_ack_ratio_each": live_ratios,
        "runs": runs,
    }
    summary["targets"] = [
        {
            "target": f"{name} ({config.history_records:,} older records / empty)",
            "value": ratios[key],
            "threshold": config.ratio_target,
            "comparison": "<=",
            "met": ratios[key] <= config.ratio_target,
        }
        for name, key in (
            ("one partition", "partition_ratio"),
            ("live start to first ack", "live_first_ack_ratio"),
        )
    ]
    return summary
