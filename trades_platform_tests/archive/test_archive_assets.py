"""The archive on the session broker and the simulator: a day in the topic -> Parquet -> candles."""

import hashlib
from pathlib import Path
from typing import Any

import pandas as pd
from confluent_kafka import Producer
from dagster import (
    AssetCheckSeverity,
    AssetSelection,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    define_asset_job,
    instance_for_test,
    materialize,
)

from trades_platform.archive.assets import kraken_candles_1m, kraken_trades_parquet
from trades_platform.archive.checks import (
    CANDLES_DAY_CHECK,
    CANDLES_TRADES_CHECK,
    PARQUET_IDS_CHECK,
    PARQUET_TOPIC_CHECK,
    kraken_candles_1m_checks,
    kraken_trades_parquet_checks,
)
from trades_platform.backfill.asset import kraken_trades_history
from trades_platform.backfill.checks import kraken_trades_history_checks
from trades_platform.backfill.partitions import TRADES_HISTORY_PARTITIONS, PartitionWindow
from trades_platform.producer import TradeProducer
from trades_platform.resources import ArchiveResource, RedpandaResource
from trades_platform.settings import KafkaSettings
from trades_platform.simulator.market import SimulatedMarket
from trades_platform.testing import SimulatorProcess, simulated_trades, unique_topic
from trades_platform_tests.backfill.conftest import MIDNIGHT_KEY, backfill_resources, expected_ids

ARCHIVE = [
    kraken_trades_parquet,
    kraken_trades_parquet_checks,
    kraken_candles_1m,
    kraken_candles_1m_checks,
]


def _materialize(
    assets: list[Any],
    key: str,
    resources: dict[str, Any],
    instance: DagsterInstance,
    *,
    raise_on_error: bool = True,
) -> ExecuteInProcessResult:
    return materialize(
        assets,
        partition_key=key,
        resources=resources,
        instance=instance,
        raise_on_error=raise_on_error,
    )


def _metadata(result: ExecuteInProcessResult, node: str) -> dict[str, Any]:
    (materialization,) = result.asset_materializations_for_node(node)
    return {key: value.value for key, value in materialization.metadata.items()}


def _checks(result: ExecuteInProcessResult) -> dict[str, Any]:
    return {check.check_name: check for check in result.get_asset_check_evaluations()}


def _files(archive: Path, window: PartitionWindow) -> dict[str, bytes]:
    name = f"BTC-USD/{window.day.isoformat()}.parquet"
    return {
        dataset: (archive / dataset / name).read_bytes() for dataset in ("trades", "candles_1m")
    }


def test_a_backfilled_day_becomes_parquet_and_candles_whose_checks_pass(
    broker: str, simulator: SimulatorProcess, market: SimulatedMarket, tmp_path: Path
) -> None:
    topic = unique_topic()
    resources = backfill_resources(broker, simulator, topic) | {
        "archive": ArchiveResource(url=str(tmp_path))
    }
    window = PartitionWindow.from_key(MIDNIGHT_KEY)
    ids = expected_ids(market, MIDNIGHT_KEY)
    with instance_for_test() as instance:
        history = _materialize(
            [kraken_trades_history, kraken_trades_history_checks], MIDNIGHT_KEY, resources, instance
        )
        assert all(check.passed for check in history.get_asset_check_evaluations())

        result = _materialize(ARCHIVE, MIDNIGHT_KEY, resources, instance)

        checks = _checks(result)
        assert set(checks) == {
            PARQUET_TOPIC_CHECK,
            PARQUET_IDS_CHECK,
            CANDLES_TRADES_CHECK,
            CANDLES_DAY_CHECK,
        }
        assert all(check.passed for check in checks.values()), checks
        parquet = _metadata(result, "kraken_trades_parquet")
        candles = _metadata(result, "kraken_candles_1m")
        assert parquet["dagster/row_count"] == len(ids) == 9941
        assert (parquet["invalid_records"], parquet["duplicates_dropped"]) == (0, 0)
        assert (parquet["first_trade_id"], parquet["last_trade_id"]) == (ids[0], ids[-1])
        assert parquet["rewritten"] and candles["rewritten"]
        assert candles["trades"] == len(ids)
        # Checked against the backfill's own report too: the same first and last trade.
        assert checks[PARQUET_IDS_CHECK].metadata["backfill_found"].value == len(ids)

        frame = pd.read_parquet(tmp_path / "trades" / "BTC-USD")
        assert frame["trade_id"].tolist() == ids
        for row in frame.iloc[[0, len(ids) // 2, -1]].itertuples():
            expected = market.trade("BTC/USD", row.trade_id)
            assert row.timestamp.value // 1000 == expected.time_us
            assert (row.price, row.volume) == (expected.price, expected.qty)
            assert row.side == expected.side
            assert row.source == "backfill"
        minutes = pd.read_parquet(tmp_path / "candles_1m" / "BTC-USD")
        assert minutes["trade_count"].sum() == len(ids)
        assert minutes["minute"].min() >= pd.Timestamp(window.day.isoformat(), tz="UTC")
        first_files = _files(tmp_path, window)

        # Re-run: the same bytes, and the files are left alone.
        again = _materialize(ARCHIVE, MIDNIGHT_KEY, resources, instance)
        assert all(check.passed for check in again.get_asset_check_evaluations())
        assert not _metadata(again, "kraken_trades_parquet")["rewritten"]
        assert not _metadata(again, "kraken_candles_1m")["rewritten"]
        assert _files(tmp_path, window) == first_files

        # Built afresh (files deleted): still the same bytes.
        for path in (tmp_path / "trades", tmp_path / "candles_1m"):
            for file in path.rglob("*.parquet"):
                file.unlink()
        rebuilt = _materialize(ARCHIVE, MIDNIGHT_KEY, resources, instance)
        assert _metadata(rebuilt, "kraken_trades_parquet")["rewritten"]
        assert _files(tmp_path, window) == first_files
        assert (
            _metadata(rebuilt, "kraken_trades_parquet")["sha256"]
            == hashlib.sha256(first_files["trades"]).hexdigest()
        )


def test_a_day_missing_a_trade_in_the_topic_fails_the_parquet_check(
    broker: str, market: SimulatedMarket, tmp_path: Path
) -> None:
    """The day's trades but one, written straight to the topic, with a repeat and a bad record."""
    key = "2024-01-10|BTC/USD"
    window = PartitionWindow.from_key(key)
    ids = expected_ids(market, key)
    left_out = ids[len(ids) // 2]
    settings = KafkaSettings(broker_address=broker, topic=unique_topic())
    trades = simulated_trades(market, "BTC/USD", [i for i in ids if i != left_out])
    producer = TradeProducer(settings)
    try:
        producer.send(trades)
        # The same trade again, as a heal would have written it: dropped and counted.
        producer.send([trades[10].model_copy(update={"source": "heal"})])
        producer.flush()
    finally:
        producer.close()
    raw = Producer(settings.client_config())
    raw.produce(settings.topic, key=b"BTC-USD", value=b"{not json", timestamp=window.start_ms + 1)
    assert raw.flush(10) == 0
    resources = {
        "redpanda": RedpandaResource(broker_address=broker, topic=settings.topic),
        "archive": ArchiveResource(url=str(tmp_path)),
    }

    with instance_for_test() as instance:
        result = _materialize(
            [kraken_trades_parquet, kraken_trades_parquet_checks],
            key,
            resources,
            instance,
            raise_on_error=False,
        )
        # The missing trade lands late (a heal): the file no longer matches the topic...
        late = TradeProducer(settings)
        try:
            late.send(simulated_trades(market, "BTC/USD", [left_out]))
            late.flush()
        finally:
            late.close()
        checks_only = (
            Definitions(
                assets=[kraken_trades_parquet],
                asset_checks=[kraken_trades_parquet_checks],
                jobs=[
                    define_asset_job(
                        "parquet_checks",
                        selection=AssetSelection.checks_for_assets(kraken_trades_parquet),
                        partitions_def=TRADES_HISTORY_PARTITIONS,
                    )
                ],
                resources=resources,
            )
            .resolve_job_def("parquet_checks")
            # Dagster refuses `partition_key` for a run of checks alone (no asset to take the
            # partitions from); the partition's tags are what the run goes by.
            .execute_in_process(
                tags={
                    "dagster/partition": key,
                    "dagster/partition/date": window.day.isoformat(),
                    "dagster/partition/pair": window.pair,
                },
                instance=instance,
                raise_on_error=False,
            )
        )
        stale = _checks(checks_only)
        # ...and a re-run of the partition catches up: every check passes.
        caught_up = _materialize(
            [kraken_trades_parquet, kraken_trades_parquet_checks], key, resources, instance
        )

    assert not stale[PARQUET_TOPIC_CHECK].passed
    assert stale[PARQUET_TOPIC_CHECK].metadata["missing_from_parquet"].value == 1
    assert stale[PARQUET_TOPIC_CHECK].metadata["examples"].value["missing_from_parquet"] == [
        left_out
    ]
    assert all(check.passed for check in caught_up.get_asset_check_evaluations())
    assert _metadata(caught_up, "kraken_trades_parquet")["dagster/row_count"] == len(ids)

    metadata = _metadata(result, "kraken_trades_parquet")
    assert metadata["dagster/row_count"] == len(ids) - 1
    assert (metadata["invalid_records"], metadata["duplicates_dropped"]) == (1, 1)
    assert metadata["duplicates_differing"] == 0
    assert metadata["invalid_reasons"] == {"value is not JSON": 1}
    checks = _checks(result)
    # The file is what the topic holds...
    assert checks[PARQUET_TOPIC_CHECK].passed
    # ...and the topic lacks a trade: the hole fails the day, as an error (blocking).
    holes = checks[PARQUET_IDS_CHECK]
    assert not holes.passed and holes.severity == AssetCheckSeverity.ERROR
    assert holes.metadata["holes_ids"].value == 1
    assert holes.metadata["problems"].value["holes"] == [f"{left_out}..{left_out}"]
    assert not result.success  # a blocking check that fails fails the run
