"""The archive's pieces without a broker: the day's table, its candles, the writer, automation."""

from datetime import UTC, date, datetime
from pathlib import Path

import orjson
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from dagster import (
    AssetKey,
    AssetMaterialization,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    evaluate_automation_conditions,
    in_process_executor,
    instance_for_test,
)

from trades_platform.archive.assets import kraken_candles_1m, kraken_trades_parquet
from trades_platform.archive.automation import ARCHIVE_RUN_TAG
from trades_platform.archive.candles import CANDLES_SCHEMA, candles_1m
from trades_platform.archive.parquet import (
    TRADES_SCHEMA,
    build_day_trades,
    parquet_bytes,
    read_parquet_bytes,
    trades_table,
)
from trades_platform.archive.storage import CANDLES_DATASET, TRADES_DATASET, ArchiveStore
from trades_platform.backfill.asset import kraken_trades_history
from trades_platform.backfill.partitions import PartitionWindow
from trades_platform.backfill.readback import WindowRecord
from trades_platform.definitions import defs
from trades_platform.dev import PROJECT_ROOT
from trades_platform.resources import ArchiveResource, refuse_unsafe_run_config
from trades_platform.settings import ArchiveSettings, SettingsError
from trades_platform.trade import Trade

WINDOW = PartitionWindow.for_day("BTC/USD", date(2024, 1, 2))
MINUTE_US = 60_000_000


def _trade(trade_id: int, offset_us: int, price: float, volume: float, **extra: object) -> Trade:
    fields: dict[str, object] = {
        "pair": "BTC/USD",
        "price": price,
        "volume": volume,
        "time_us": WINDOW.start_us + offset_us,
        "trade_id": trade_id,
        "side": "buy" if trade_id % 2 else "sell",
        "ord_type": "limit",
        "source": "backfill",
        "received_ms": 1_735_000_000_000 + trade_id,
    }
    fields.update(extra)
    return Trade.from_parts(**fields)  # type: ignore[arg-type]


# A day by hand: a trade on the first microsecond, three in minute 0 with the open and close
# sharing a microsecond (ties go by id), a lone trade in minute 2 (minute 1 has none), one
# exactly on 00:03:00 (minute 3, not 2), and the day's last microsecond.
HAND_MADE = [
    _trade(100, 0, 42_000.0, 0.5),
    _trade(101, 10_000_000, 42_010.5, 0.25),
    _trade(102, 59_999_999, 41_990.0, 1.0),
    _trade(103, 59_999_999, 41_995.5, 0.125),
    _trade(104, 2 * MINUTE_US + 30_000_000, 42_100.0, 2.0),
    _trade(105, 3 * MINUTE_US, 42_200.0, 0.75),
    _trade(106, 3 * MINUTE_US + 1, 42_150.0, 0.25),
    _trade(107, WINDOW.end_us - WINDOW.start_us - 1, 43_000.0, 0.01),
]


def _plain_pandas_candles(trades: list[Trade]) -> pd.DataFrame:
    """The straightforward computation: floor each trade's time to its minute, group, aggregate."""
    frame = pd.DataFrame(
        {
            "time": pd.to_datetime([trade.time_us for trade in trades], unit="us", utc=True),
            "trade_id": [trade.trade_id for trade in trades],
            "price": [trade.price for trade in trades],
            "volume": [trade.volume for trade in trades],
        }
    ).sort_values(["time", "trade_id"])
    frame["minute"] = frame["time"].dt.floor("1min")
    frame["notional"] = frame["price"] * frame["volume"]
    grouped = frame.groupby("minute")
    out = grouped.agg(
        open=("price", "first"),
        high=("price", "max"),
        low=("price", "min"),
        close=("price", "last"),
        volume=("volume", "sum"),
        notional=("notional", "sum"),
        trade_count=("trade_id", "size"),
        first_trade_id=("trade_id", "first"),
        last_trade_id=("trade_id", "last"),
    )
    out["vwap"] = out["notional"] / out["volume"]
    return out.drop(columns="notional").reset_index()


def test_candles_match_a_plain_pandas_computation() -> None:
    candles = candles_1m(trades_table(HAND_MADE), WINDOW)
    assert candles.schema == CANDLES_SCHEMA
    got = candles.to_pandas()
    expected = _plain_pandas_candles(HAND_MADE)

    assert list(got["minute"]) == list(expected["minute"])
    # Minute 1 has no trade, so no row: minutes 0, 2, 3 and 23:59.
    assert [minute.strftime("%H:%M") for minute in got["minute"]] == [
        "00:00",
        "00:02",
        "00:03",
        "23:59",
    ]
    for column in ("open", "high", "low", "close", "trade_count", "first_trade_id"):
        assert list(got[column]) == list(expected[column]), column
    assert list(got["last_trade_id"]) == list(expected["last_trade_id"])
    for column in ("volume", "vwap"):
        assert got[column].tolist() == pytest.approx(expected[column].tolist(), rel=1e-12)
    first = got.iloc[0]
    # Open and close of minute 0: ids 100 and 103 (103 ties 102 on time and comes after it).
    assert (first["open"], first["close"], first["trade_count"]) == (42_000.0, 41_995.5, 4)
    assert (first["first_trade_id"], first["last_trade_id"]) == (100, 103)
    assert set(got["pair"]) == {"BTC/USD"}


def test_an_empty_day_has_no_candles() -> None:
    empty = candles_1m(trades_table([]), WINDOW)
    assert empty.num_rows == 0 and empty.schema == CANDLES_SCHEMA


def _record(value: object, offset: int, timestamp_ms: int | None = None) -> WindowRecord:
    data = value if isinstance(value, bytes) else orjson.dumps(value)
    if timestamp_ms is None:
        timestamp_ms = orjson.loads(data)["timestamp_ms"]
    return WindowRecord(value=data, timestamp_ms=timestamp_ms, partition=0, offset=offset)


def test_the_day_is_validated_deduplicated_and_sorted_by_id() -> None:
    valid = HAND_MADE[:4]
    heal_copy = HAND_MADE[1].model_copy(update={"source": "heal", "received_ms": 9})
    other = HAND_MADE[2].model_dump() | {"price": 1.0}  # same id, another trade: reported
    eth = HAND_MADE[3].model_dump() | {"pair": "ETH/USD"}
    records = [
        _record(valid[2].model_dump(), 10),
        _record(valid[0].model_dump(), 11),
        _record(b"not json", 12, timestamp_ms=WINDOW.start_ms),
        _record(heal_copy.model_dump(), 13),
        _record(valid[1].model_dump(), 14),  # after the heal copy in the topic: dropped
        _record(other, 15),
        _record(eth, 16),
        _record(valid[3].model_dump(), 17, timestamp_ms=WINDOW.start_ms + 5),
        _record(valid[3].model_dump(), 18),
    ]

    day = build_day_trades(records, WINDOW)

    assert day.table.schema == TRADES_SCHEMA
    assert day.table.column("trade_id").to_pylist() == [100, 101, 102, 103]
    assert day.records == 9
    assert day.invalid == {
        "value is not JSON": 1,
        "pair 'ETH/USD' under the key of 'BTC/USD'": 1,
        "message timestamp differs from the trade time": 1,
    }
    assert (day.duplicates_dropped, day.duplicates_differing) == (2, 1)
    # The first copy in topic order is kept: the heal of 101, and 102 as first written.
    rows = day.table.to_pylist()
    assert rows[1]["source"] == "heal" and rows[1]["received_ms"] == 9
    assert rows[2]["price"] == valid[2].price
    assert rows[0]["timestamp"] == datetime(2024, 1, 2, tzinfo=UTC)
    assert day.table.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")


def test_files_are_atomic_deterministic_and_readable_with_pandas(tmp_path: Path) -> None:
    table = trades_table(HAND_MADE)
    data = parquet_bytes(table)
    assert parquet_bytes(trades_table(HAND_MADE)) == data  # same rows, same bytes
    store = ArchiveStore(str(tmp_path))

    first = store.write(TRADES_DATASET, WINDOW, data)
    path = tmp_path / "trades" / "BTC-USD" / "2024-01-02.parquet"
    assert first.rewritten and first.url == str(path) and path.read_bytes() == data
    modified = path.stat().st_mtime_ns
    again = store.write(TRADES_DATASET, WINDOW, parquet_bytes(trades_table(HAND_MADE)))
    assert not again.rewritten and again.sha256 == first.sha256
    assert path.stat().st_mtime_ns == modified
    # A different day's content replaces the file whole; no temporary file stays behind.
    store.write(TRADES_DATASET, WINDOW, parquet_bytes(trades_table(HAND_MADE[:3])))
    assert read_parquet_bytes(path.read_bytes()).num_rows == 3
    assert [entry.name for entry in path.parent.iterdir()] == ["2024-01-02.parquet"]
    assert store.read(CANDLES_DATASET, WINDOW) is None

    # What a user does: a pair's directory as one frame, typed.
    store.write(TRADES_DATASET, WINDOW, data)
    frame = pd.read_parquet(tmp_path / "trades" / "BTC-USD")
    assert str(frame["timestamp"].dtype) == "datetime64[us, UTC]"
    assert frame["trade_id"].dtype == "int64" and frame["price"].dtype == "float64"
    assert frame["trade_id"].tolist() == [trade.trade_id for trade in HAND_MADE]


def test_relative_archive_paths_are_resolved_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = ArchiveStore(".archive")
    assert store.url == str(tmp_path / ".archive")
    assert ArchiveResource().url == ".archive"  # the default, from settings.py


def _requested(result: object, key: AssetKey) -> set[str]:
    return {str(partition) for partition in result.get_requested_partitions(key)}  # type: ignore[attr-defined]


def test_a_backfilled_day_requests_its_parquet_and_candles_and_nothing_else() -> None:
    day = "2024-01-02|BTC/USD"
    with instance_for_test() as instance:
        now = datetime(2024, 3, 1, tzinfo=UTC)
        # The first evaluation only starts the clock: days already missing are not requested.
        first = evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=now)
        assert first.total_requested == 0

        instance.report_runless_asset_event(
            AssetMaterialization(asset_key=kraken_trades_history.key, partition=day)
        )
        second = evaluate_automation_conditions(
            defs=defs, instance=instance, evaluation_time=now, cursor=first.cursor
        )

        assert _requested(second, kraken_trades_parquet.key) == {day}
        # Requested in the same tick: it runs after the Parquet day, in the same run.
        assert _requested(second, kraken_candles_1m.key) == {day}
        assert second.total_requested == 2


def test_the_archive_is_in_the_definitions() -> None:
    graph = defs.resolve_asset_graph()
    assert graph.get(kraken_trades_parquet.key).parent_keys == {kraken_trades_history.key}
    assert graph.get(kraken_candles_1m.key).parent_keys == {kraken_trades_parquet.key}
    checks = {key.name for key in graph.asset_check_keys}
    assert {
        "parquet_matches_topic",
        "parquet_trade_ids_contiguous",
        "candles_match_trades",
        "candles_within_day",
    } <= checks
    sensor = defs.resolve_sensor_def("archive_automation_sensor")
    assert sensor.default_status == DefaultSensorStatus.RUNNING
    # Its runs queue one at a time (dagster.yaml), not all at once after a long backfill.
    assert isinstance(sensor, AutomationConditionSensorDefinition)
    assert sensor.run_tags == {ARCHIVE_RUN_TAG: "day"}
    instance_config = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    limits = instance_config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert {"key": ARCHIVE_RUN_TAG, "limit": 1} in limits
    # ... and each runs in one process, not one per step.
    assert defs.resolve_implicit_global_asset_job_def().executor_def is in_process_executor
    for asset in (kraken_trades_parquet, kraken_candles_1m):
        spec = next(iter(asset.specs))
        assert spec.freshness_policy is not None
        assert spec.partitions_def == kraken_trades_history.partitions_def


def test_a_runs_config_cannot_move_the_archive() -> None:
    moved = {"resources": {"archive": {"config": {"url": "s3://someone-elses-bucket"}}}}
    with pytest.raises(SettingsError, match="ARCHIVE_URL"):
        refuse_unsafe_run_config(moved, ArchiveSettings, ArchiveResource.environment_only)
