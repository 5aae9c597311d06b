"""The backfill's definitions: partitions, the job, the nightly schedule, the code location."""

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from dagster import (
    DagsterInstance,
    Definitions,
    MultiPartitionKey,
    build_schedule_context,
    instance_for_test,
)

from trades_platform.backfill.asset import kraken_trades_history
from trades_platform.backfill.job import KRAKEN_REST_TAG
from trades_platform.backfill.partitions import (
    TRADES_HISTORY_PARTITIONS,
    PartitionWindow,
    backfill_start_date,
)
from trades_platform.definitions import defs


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as test_instance:
        yield test_instance


def test_definitions_load_with_the_backfill() -> None:
    Definitions.validate_loadable(defs)
    job = defs.resolve_job_def("backfill_trades_job")
    assert {check.name for check in job.asset_layer.asset_graph.asset_check_keys} == {
        "trade_ids_contiguous",
        "records_match_trade_schema",
    }
    assert job.tags[KRAKEN_REST_TAG] == "backfill"
    # A date range from the UI launches runs of up to BACKFILL_PARTITIONS_PER_RUN days of a pair.
    policy = kraken_trades_history.backfill_policy
    assert policy is not None and policy.max_partitions_per_run == 7


def test_partition_keys_are_utc_day_and_pair() -> None:
    keys = TRADES_HISTORY_PARTITIONS.get_partition_keys(
        current_time=datetime(2024, 1, 3, 12, tzinfo=UTC)
    )
    # Yesterday is the newest day: today is not over.
    assert keys == [
        "2024-01-01|BTC/USD",
        "2024-01-01|ETH/USD",
        "2024-01-02|BTC/USD",
        "2024-01-02|ETH/USD",
    ]
    window = PartitionWindow.from_key(keys[2])
    assert window == PartitionWindow.from_key(
        MultiPartitionKey({"date": "2024-01-02", "pair": "BTC/USD"})
    )
    assert window.pair == "BTC/USD"
    assert window.start_us == int(datetime(2024, 1, 2, tzinfo=UTC).timestamp()) * 1_000_000
    assert window.end_us - window.start_us == 86_400_000_000
    assert (window.start_ms, window.end_ms) == (window.start_us // 1000, window.end_us // 1000)


def test_start_date_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BACKFILL_START_DATE", raising=False)
    assert backfill_start_date() == "2024-01-01"
    monkeypatch.setenv("BACKFILL_START_DATE", "2023-06-01")
    assert backfill_start_date() == "2023-06-01"
    monkeypatch.setenv("BACKFILL_START_DATE", "June 1st")
    with pytest.raises(ValueError, match="BACKFILL_START_DATE='June 1st'"):
        backfill_start_date()


def test_nightly_tick_requests_yesterday_for_every_pair(instance: DagsterInstance) -> None:
    schedule = defs.resolve_schedule_def("daily_backfill_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("15 0 * * *", "UTC")
    context = build_schedule_context(
        instance=instance, scheduled_execution_time=datetime(2024, 3, 5, 0, 15, tzinfo=UTC)
    )

    requests = schedule.evaluate_tick(context).run_requests or []

    assert sorted(request.partition_key for request in requests) == [
        "2024-03-04|BTC/USD",
        "2024-03-04|ETH/USD",
    ]
    for request in requests:
        assert request.tags["dagster/partition/date"] == "2024-03-04"
    assert schedule.job_name == "backfill_trades_job"


def test_the_code_location_loads_without_a_preview_warning_per_check() -> None:
    """Partitioned checks are a Dagster preview the product uses knowingly: no log line each."""
    loaded = subprocess.run(
        [sys.executable, "-W", "default", "-c", "import trades_platform.definitions"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "PreviewWarning" not in loaded.stderr, loaded.stderr
