"""The archive section of `make bench`: one day's Parquet file and candles for 100,000 trades.

A topic on a local broker holds one pair's day of `trades` trades (evenly spread, written once
through `TradeProducer`); each repetition deletes the day's files and materializes, in-process
as a run does, `kraken_trades_parquet` with its checks, then `kraken_candles_1m` with its
checks. Reported per step: the asset alone (its own `seconds` metadata: read the day back from
the topic, validate every record, sort, write; or read the Parquet day, compute, write) and the
whole materialization with its checks (which read the topic, or the files, back again).
"""

from __future__ import annotations

import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

from dagster import AssetsDefinition, instance_for_test, materialize

from trades_platform.archive.assets import kraken_candles_1m, kraken_trades_parquet
from trades_platform.archive.checks import kraken_candles_1m_checks, kraken_trades_parquet_checks
from trades_platform.backfill.partitions import PartitionWindow
from trades_platform.local_broker import LocalBroker
from trades_platform.producer import TradeProducer
from trades_platform.resources import ArchiveResource, RedpandaResource
from trades_platform.settings import KafkaSettings
from trades_platform.testing import unique_topic
from trades_platform.trade import Trade

PAIR = "BTC/USD"
DAY = date(2024, 5, 1)


@dataclass(frozen=True)
class ArchiveConfig:
    """Sizes of the archive section."""

    trades: int = 100_000
    repeats: int = 3


FULL_ARCHIVE = ArchiveConfig()
QUICK_ARCHIVE = ArchiveConfig(trades=5_000, repeats=1)


def run_archive(
    config: ArchiveConfig, log_dir: Path, progress: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the section; return its runs and medians."""
    window = PartitionWindow.for_day(PAIR, DAY)
    key = f"{DAY.isoformat()}|{PAIR}"
    archive_dir = Path(tempfile.mkdtemp(prefix="trades-bench-archive-"))
    try:
        with LocalBroker(log_path=log_dir / "archive-broker.log") as broker:
            settings = KafkaSettings(
                broker_address=broker.address, topic=unique_topic("bench-archive")
            )
            started = time.monotonic()
            _write_day(settings, window, config.trades)
            write_seconds = time.monotonic() - started
            progress(f"archive: {config.trades:,} trades of {key} written in {write_seconds:.1f}s")
            resources = {
                "redpanda": RedpandaResource(
                    broker_address=settings.broker_address, topic=settings.topic
                ),
                "archive": ArchiveResource(url=str(archive_dir)),
            }
            runs = []
            for repeat in range(config.repeats):
                # A real write each time, not "unchanged".
                shutil.rmtree(archive_dir, ignore_errors=True)
                parquet = _materialize(
                    [kraken_trades_parquet, kraken_trades_parquet_checks], key, resources
                )
                candles = _materialize(
                    [kraken_candles_1m, kraken_candles_1m_checks], key, resources
                )
                if parquet["rows"] != config.trades or candles["trades"] != config.trades:
                    raise RuntimeError(f"the archive lost trades: {parquet} {candles}")
                run = {"repeat": repeat, "parquet": parquet, "candles": candles}
                runs.append(run)
                progress(
                    f"  parquet {parquet['asset_seconds']:.2f}s (with checks "
                    f"{parquet['total_seconds']:.2f}s), candles {candles['asset_seconds']:.2f}s "
                    f"(with checks {candles['total_seconds']:.2f}s)"
                )
    finally:
        shutil.rmtree(archive_dir, ignore_errors=True)

    def median(step: str, measure: str) -> float:
        return float(statistics.median(run[step][measure] for run in runs))

    last = runs[-1]
    return {
        "config": asdict(config),
        "topic_write_seconds": write_seconds,
        "parquet_asset_seconds": median("parquet", "asset_seconds"),
        "parquet_total_seconds": median("parquet", "total_seconds"),
        "candles_asset_seconds": median("candles", "asset_seconds"),
        "candles_total_seconds": median("candles", "total_seconds"),
        "parquet_read_seconds": median("parquet", "read_seconds"),
        "parquet_bytes": last["parquet"]["bytes"],
        "candles_bytes": last["candles"]["bytes"],
        "candles_rows": last["candles"]["rows"],
        "runs": runs,
    }


def _write_day(settings: KafkaSettings, window: PartitionWindow, trades: int) -> None:
    """`trades` trades of the pair spread evenly over the day, ids from 1, a random walk."""
    spacing_us = (window.end_us - window.start_us) // trades
    walk = random.Random(42)
    price = 60_000.0
    producer = TradeProducer(settings)
    try:
        batch: list[Trade] = []
        for number in range(trades):
            price = round(price * (1 + walk.uniform(-0.0005, 0.0005)), 1)
            batch.append(
                Trade.from_parts(
                    pair=window.pair,
                    price=price,
                    volume=round(walk.uniform(0.0001, 2.0), 8),
                    time_us=window.start_us + number * spacing_us,
                    trade_id=number + 1,
                    side="buy" if walk.random() < 0.5 else "sell",
                    ord_type="limit" if walk.random() < 0.7 else "market",
                    source="backfill",
                )
            )
            if len(batch) == 1000:
                producer.send(batch)
                producer.poll()
                batch = []
        producer.send(batch)
        producer.flush(120.0)
    finally:
        producer.close()


def _materialize(assets: list[Any], key: str, resources: dict[str, Any]) -> dict[str, float | int]:
    """Materialize one partition of an asset with its checks; its timings and sizes."""
    asset: AssetsDefinition = assets[0]
    with instance_for_test() as instance:
        started = time.monotonic()
        result = materialize(assets, partition_key=key, resources=resources, instance=instance)
        total = time.monotonic() - started
    checks = result.get_asset_check_evaluations()
    if not result.success or not checks or not all(check.passed for check in checks):
        raise RuntimeError(f"{asset.key.to_user_string()} of {key} failed or its checks did")
    (materialization,) = result.asset_materializations_for_node(asset.op.name)
    metadata: dict[str, Any] = {
        name: entry.value for name, entry in materialization.metadata.items()
    }
    return {
        "asset_seconds": float(metadata["seconds"]),
        "read_seconds": float(metadata.get("read_seconds", 0.0)),
        "total_seconds": total,
        "rows": int(metadata["dagster/row_count"]),
        "trades": int(metadata.get("trades", metadata["dagster/row_count"])),
        "bytes": int(metadata["bytes"]),
    }
