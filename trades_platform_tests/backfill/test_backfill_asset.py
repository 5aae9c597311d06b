"""`kraken_trades_history` against the simulator and the session broker."""

import time
from collections import Counter
from typing import Any

import pytest
from dagster import (
    Definitions,
    ExecuteInProcessResult,
    instance_for_test,
    materialize,
)
from dagster._core.instance import DagsterInstance

from trades_platform.backfill.asset import kraken_trades_history
from trades_platform.backfill.checks import IDS_CHECK, RECORDS_CHECK, kraken_trades_history_checks
from trades_platform.backfill.job import backfill_trades_job
from trades_platform.backfill.partitions import PartitionWindow
from trades_platform.simulator.market import SimulatedMarket
from trades_platform.testing import (
    SimulatorProcess,
    duplicated_ids,
    ids_by_pair,
    read_topic,
    unique_topic,
)
from trades_platform.trade import format_time_us
from trades_platform_tests.backfill.conftest import (
    MIDNIGHT,
    MIDNIGHT_ID,
    MIDNIGHT_KEY,
    backfill_resources,
    expected_ids,
)


def _run(
    partition_key: str,
    resources: dict[str, Any],
    instance: DagsterInstance,
    *,
    raise_on_error: bool = True,
) -> ExecuteInProcessResult:
    """Materialize one partition with its checks, as the job does."""
    return materialize(
        [kraken_trades_history, kraken_trades_history_checks],
        partition_key=partition_key,
        resources=resources,
        instance=instance,
        raise_on_error=raise_on_error,
    )


def _metadata(result: ExecuteInProcessResult) -> dict[str, Any]:
    (materialization,) = result.asset_materializations_for_node("kraken_trades_history")
    return {key: value.value for key, value in materialization.metadata.items()}


def _checks(result: ExecuteInProcessResult) -> dict[str, Any]:
    return {
        evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()
    }


def test_the_midnight_trade_is_where_the_tests_expect_it(market: SimulatedMarket) -> None:
    assert market.time_us("BTC/USD", MIDNIGHT_ID) == int(MIDNIGHT.timestamp()) * 1_000_000


@pytest.mark.both_brokers
def test_partition_writes_exactly_its_days_trades_in_id_order(
    broker: str, simulator: SimulatorProcess, market: SimulatedMarket
) -> None:
    topic = unique_topic()
    started_ms = time.time() * 1000
    with instance_for_test() as instance:
        result = _run(MIDNIGHT_KEY, backfill_resources(broker, simulator, topic), instance)
    ended_ms = time.time() * 1000
    ids = expected_ids(market, MIDNIGHT_KEY)
    window = PartitionWindow.from_key(MIDNIGHT_KEY)

    records = read_topic(broker, topic, expected=len(ids))
    assert [record.value["trade_id"] for record in records] == ids
    assert ids[0] == MIDNIGHT_ID  # the trade at exactly 00:00:00.000000 is this day's
    for record, trade_id in zip(records, ids, strict=True):
        expected = market.trade("BTC/USD", trade_id)
        assert record.key == "BTC-USD"
        assert record.timestamp_ms == expected.time_us // 1000
        # When its REST page arrived: during the run.
        assert started_ms <= record.value["received_ms"] <= ended_ms
        assert record.value == {
            "pair": "BTC/USD",
            "price": expected.price,
            "volume": expected.qty,
            "timestamp": format_time_us(expected.time_us),
            "timestamp_ms": expected.time_us // 1000,
            "trade_id": trade_id,
            "side": expected.side,
            "ord_type": expected.ord_type,
            "exchange": "kraken",
            "source": "backfill",
            "received_ms": record.value["received_ms"],
        }

    metadata = _metadata(result)
    assert metadata["dagster/row_count"] == len(ids)
    assert (metadata["first_trade_id"], metadata["last_trade_id"]) == (ids[0], ids[-1])
    assert metadata["first_trade_time"] == format_time_us(window.start_us)
    assert metadata["last_trade_time"] == format_time_us(market.time_us("BTC/USD", ids[-1]))
    # 9941 trades at 1000 a page, plus the page that crosses midnight: nothing far past it.
    assert metadata["pages_fetched"] == 10
    assert metadata["rate_limit_waits"] == 0 and metadata["rows_rejected"] == 0
    assert metadata["trades_per_second"] > 0
    assert "| 23:00" in metadata["hourly"] and "| 00:00" in metadata["hourly"]
    assert all(evaluation.passed for evaluation in _checks(result).values())
    assert set(_checks(result)) == {IDS_CHECK, RECORDS_CHECK}


@pytest.mark.slow
def test_the_day_before_ends_just_before_the_midnight_trade(
    broker: str, simulator: SimulatorProcess, market: SimulatedMarket
) -> None:
    topic = unique_topic()
    key = "2024-01-22|BTC/USD"
    with instance_for_test() as instance:
        result = _run(key, backfill_resources(broker, simulator, topic), instance)
    ids = expected_ids(market, key)

    assert ids[-1] == MIDNIGHT_ID - 1
    records = read_topic(broker, topic, expected=len(ids))
    assert ids_by_pair(records) == {"BTC/USD": ids}
    assert _metadata(result)["last_trade_id"] == MIDNIGHT_ID - 1
    assert all(evaluation.passed for evaluation in _checks(result).values())


@pytest.mark.slow
def test_rate_limit_answers_slow_the_partition_down_but_lose_nothing(
    broker: str, simulator: SimulatorProcess, market: SimulatedMarket
) -> None:
    topic = unique_topic()
    key = "2024-02-10|ETH/USD"
    errors_before = simulator.stats()["rate_limit_errors"]
    simulator.set_faults(rest_rate_limit_next=4)
    with instance_for_test() as instance:
        result = _run(key, backfill_resources(broker, simulator, topic), instance)
    ids = expected_ids(market, key)

    metadata = _metadata(result)
    assert metadata["rate_limit_waits"] == 4
    assert metadata["seconds_waited"] > 0
    assert simulator.stats()["rate_limit_errors"] - errors_before == 4
    assert metadata["dagster/row_count"] == len(ids)
    records = read_topic(broker, topic, expected=len(ids))
    assert ids_by_pair(records) == {"ETH/USD": ids}
    assert all(evaluation.passed for evaluation in _checks(result).values())


def test_unknown_pair_fails_the_run_with_a_clear_message(broker: str) -> None:
    topic = unique_topic()
    with (
        SimulatorProcess("--pairs", "BTC/USD", "--trades-per-second", "0.05") as only_btc,
        instance_for_test() as instance,
    ):
        result = _run(
            "2024-01-23|ETH/USD",
            backfill_resources(broker, only_btc, topic),
            instance,
            raise_on_error=False,
        )

    assert not result.success
    (failure,) = result.get_step_failure_events()
    cause = failure.step_failure_data.error.cause  # type: ignore[union-attr]
    assert cause is not None and cause.cls_name == "UnknownPairError"
    message = cause.message
    assert "Kraken does not list pair 'ETH/USD'" in message
    assert "known pairs (1): BTC/USD" in message
    assert read_topic(broker, topic, idle_seconds=1.0) == []


@pytest.mark.slow
@pytest.mark.both_brokers
def test_a_partition_run_twice_writes_its_day_once(
    broker: str, simulator: SimulatorProcess, market: SimulatedMarket
) -> None:
    """The second run finds every id of the day in the topic and writes none of them again."""
    topic = unique_topic()
    key = "2024-02-11|ETH/USD"
    resources = backfill_resources(broker, simulator, topic)
    with instance_for_test() as instance:
        first = _run(key, resources, instance)
        second = _run(key, resources, instance)
    ids = expected_ids(market, key)

    records = read_topic(broker, topic, expected=len(ids))
    assert ids_by_pair(records) == {"ETH/USD": ids}
    assert not duplicated_ids(records)
    assert Counter(record.value["source"] for record in records) == {"backfill": len(ids)}
    first_metadata = _metadata(first)
    second_metadata = _metadata(second)
    assert (first_metadata["written"], first_metadata["already_present"]) == (len(ids), 0)
    assert (second_metadata["written"], second_metadata["already_present"]) == (0, len(ids))
    assert second_metadata["dagster/row_count"] == len(ids)
    for result in (first, second):
        assert _checks(result)[IDS_CHECK].passed
        assert _checks(result)[RECORDS_CHECK].passed


@pytest.mark.slow
@pytest.mark.both_brokers
def test_the_job_runs_the_asset_and_its_checks_for_one_partition(
    broker: str, simulator: SimulatorProcess, market: SimulatedMarket
) -> None:
    topic = unique_topic()
    key = "2024-02-12|BTC/USD"
    defs = Definitions(
        assets=[kraken_trades_history],
        asset_checks=[kraken_trades_history_checks],
        jobs=[backfill_trades_job],
        resources=backfill_resources(broker, simulator, topic),
    )
    with instance_for_test() as instance:
        result = defs.resolve_job_def("backfill_trades_job").execute_in_process(
            partition_key=key, instance=instance
        )
    ids = expected_ids(market, key)

    assert result.success
    assert ids_by_pair(read_topic(broker, topic, expected=len(ids))) == {"BTC/USD": ids}
    assert {e.check_name: e.passed for e in result.get_asset_check_evaluations()} == {
        IDS_CHECK: True,
        RECORDS_CHECK: True,
    }


def test_a_backfill_past_its_runtime_bound_fails_and_says_how_to_recover(
    broker: str, simulator: SimulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two calls a second for a ten-page day: about 5 s of paging, past a 2 s bound.
    monkeypatch.setenv("BACKFILL_MAX_RUNTIME_SECONDS", "2")
    resources = backfill_resources(broker, simulator, unique_topic(), rest_requests_per_second=2.0)
    with instance_for_test() as instance:
        result = _run(MIDNIGHT_KEY, resources, instance, raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node("kraken_trades_history")
    assert failure is not None and failure.error is not None
    error = failure.error.to_string()
    assert "BackfillTooLongError" in error and "BACKFILL_MAX_RUNTIME_SECONDS=2" in error, error
    assert "Re-run the partition" in error


def test_the_backfill_job_carries_its_runtime_bound_for_run_monitoring() -> None:
    # 7200 s per partition, times the 7 partitions a backfill's run may cover.
    assert backfill_trades_job.tags["dagster/max_runtime"] == str(7200 * 7)
