"""The live sensor's decisions against a real (temporary) Dagster instance."""

import time
from collections.abc import Iterator

import pytest
from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    RunRequest,
    SensorResult,
    SkipReason,
    build_sensor_context,
    instance_for_test,
)
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.events.log import EventLogEntry

from trades_platform.live.job import LIVE_SHARD_TAG, live_trades_job
from trades_platform.live.sensor import live_shards, live_trades_sensor, relaunch_delay_seconds


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as test_instance:
        yield test_instance


def _decide(instance: DagsterInstance) -> RunRequest | SkipReason:
    """The single shard's decision: its run request, or why there is none."""
    result = live_trades_sensor(build_sensor_context(instance=instance))
    assert isinstance(result, SensorResult)
    if result.run_requests:
        (request,) = result.run_requests
        return request
    assert result.skip_reason is not None
    return result.skip_reason


def _run(instance: DagsterInstance, status: DagsterRunStatus) -> str:
    # Launched runs carry the job's shard tag, as the sensor's and the Launchpad's do.
    return instance.create_run_for_job(
        live_trades_job, status=status, tags={LIVE_SHARD_TAG: "0"}
    ).run_id


def _record_status_at(
    instance: DagsterInstance, run_id: str, status: DagsterRunStatus, at: float
) -> None:
    """Record a run status change at a given time, as the run worker would report it."""
    event_type = {
        DagsterRunStatus.STARTED: DagsterEventType.RUN_START,
        DagsterRunStatus.FAILURE: DagsterEventType.RUN_FAILURE,
        DagsterRunStatus.SUCCESS: DagsterEventType.RUN_SUCCESS,
        DagsterRunStatus.CANCELED: DagsterEventType.RUN_CANCELED,
    }[status]
    instance.handle_new_event(
        EventLogEntry(
            error_info=None,
            level="INFO",
            user_message="",
            run_id=run_id,
            timestamp=at,
            dagster_event=DagsterEvent(event_type.value, live_trades_job.name),
        )
    )


def test_launches_when_no_live_run_exists(instance: DagsterInstance) -> None:
    decision = _decide(instance)
    assert isinstance(decision, RunRequest)
    assert decision.run_key == "shard-0-after-none"
    assert decision.tags[LIVE_SHARD_TAG] == "0"


@pytest.mark.parametrize(
    "status",
    # QUEUED is in the same status filter; a test instance cannot hold a queued run without a
    # code location origin, so it is not listed here.
    [
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
        DagsterRunStatus.CANCELING,
    ],
)
def test_skips_while_a_live_run_is_active(
    instance: DagsterInstance, status: DagsterRunStatus
) -> None:
    _run(instance, DagsterRunStatus.FAILURE)
    run_id = _run(instance, status)
    decision = _decide(instance)
    assert isinstance(decision, SkipReason)
    assert run_id in (decision.skip_message or "")


def test_a_run_terminated_on_purpose_stays_stopped(instance: DagsterInstance) -> None:
    run_id = _run(instance, DagsterRunStatus.STARTED)
    _record_status_at(instance, run_id, DagsterRunStatus.CANCELED, time.time() - 3600)
    decision = _decide(instance)
    assert isinstance(decision, SkipReason)
    assert "terminated on purpose" in (decision.skip_message or "")


def test_a_failed_run_is_relaunched_after_its_back_off(instance: DagsterInstance) -> None:
    run_id = _run(instance, DagsterRunStatus.STARTED)
    _record_status_at(instance, run_id, DagsterRunStatus.FAILURE, time.time())
    waiting = _decide(instance)
    assert isinstance(waiting, SkipReason)
    assert "relaunching in" in (waiting.skip_message or "")

    older_id = _run(instance, DagsterRunStatus.STARTED)
    _record_status_at(instance, older_id, DagsterRunStatus.FAILURE, time.time() - 3600)
    # The newest run decides: it failed an hour ago, but it is the second failure in a row.
    decision = _decide(instance)
    assert isinstance(decision, RunRequest)
    assert decision.run_key == f"shard-0-after-{older_id}"


def test_back_off_doubles_with_consecutive_failures_and_is_capped() -> None:
    assert relaunch_delay_seconds(0) == 0
    assert relaunch_delay_seconds(1) == 10
    assert relaunch_delay_seconds(2) == 20
    assert relaunch_delay_seconds(3) == 40
    assert relaunch_delay_seconds(20) == 300


def test_back_off_counts_the_consecutive_failures(instance: DagsterInstance) -> None:
    for _ in range(3):
        run_id = _run(instance, DagsterRunStatus.STARTED)
        _record_status_at(instance, run_id, DagsterRunStatus.FAILURE, time.time() - 30)
    # Three failures in a row wait 40 s; the last ended 30 s ago.
    decision = _decide(instance)
    assert isinstance(decision, SkipReason)
    assert "3 in a row" in (decision.skip_message or "")


def test_a_finished_bounded_run_is_replaced_at_once(instance: DagsterInstance) -> None:
    run_id = _run(instance, DagsterRunStatus.STARTED)
    _record_status_at(instance, run_id, DagsterRunStatus.SUCCESS, time.time())
    decision = _decide(instance)
    assert isinstance(decision, RunRequest)
    assert decision.run_key == f"shard-0-after-{run_id}"


def test_a_silent_started_run_is_presumed_dead_and_replaced(instance: DagsterInstance) -> None:
    run_id = _run(instance, DagsterRunStatus.STARTED)
    _record_status_at(instance, run_id, DagsterRunStatus.STARTED, time.time() - 600)
    decision = _decide(instance)
    # Marked failed now, so the first failure's back-off applies before the relaunch.
    assert isinstance(decision, SkipReason)
    assert "relaunching in" in (decision.skip_message or "")
    run = instance.get_run_by_id(run_id)
    assert run is not None and run.status == DagsterRunStatus.FAILURE


def test_a_started_run_that_logs_recently_is_left_alone(instance: DagsterInstance) -> None:
    run_id = _run(instance, DagsterRunStatus.STARTED)
    _record_status_at(instance, run_id, DagsterRunStatus.STARTED, time.time() - 5)
    decision = _decide(instance)
    assert isinstance(decision, SkipReason)
    assert "is STARTED" in (decision.skip_message or "")


def test_each_shard_gets_its_own_run_and_pairs(
    instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KRAKEN_PAIRS", "BTC/USD,ETH/USD,SOL/USD,XRP/USD,DOGE/USD")
    monkeypatch.setenv("LIVE_SHARDS", "2")
    assert live_shards() == [["BTC/USD", "SOL/USD", "DOGE/USD"], ["ETH/USD", "XRP/USD"]]
    result = live_trades_sensor(build_sensor_context(instance=instance))
    assert isinstance(result, SensorResult)
    requests = {request.tags[LIVE_SHARD_TAG]: request for request in result.run_requests}
    assert set(requests) == {"0", "1"}
    config = requests["1"].run_config["ops"]["stream_live_trades"]["config"]
    assert config["pairs"] == ["ETH/USD", "XRP/USD"]
    assert requests["1"].run_key == "shard-1-after-none"
    # A running shard 0 does not stop shard 1 from being (re)launched.
    instance.create_run_for_job(
        live_trades_job, status=DagsterRunStatus.STARTED, tags={LIVE_SHARD_TAG: "0"}
    )
    result = live_trades_sensor(build_sensor_context(instance=instance))
    assert isinstance(result, SensorResult)
    assert [request.tags[LIVE_SHARD_TAG] for request in result.run_requests] == ["1"]


@pytest.mark.parametrize("shards", ["0", "9", "two"])
def test_a_bad_shard_count_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, shards: str) -> None:
    monkeypatch.setenv("LIVE_SHARDS", shards)
    with pytest.raises(ValueError, match="LIVE_SHARDS"):
        live_shards()
