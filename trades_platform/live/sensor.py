"""`live_trades_sensor`: keeps exactly one live ingestion run alive per shard.

`LIVE_SHARDS` (default 1) splits the configured pairs round-robin into that many runs, each
tagged `trades_platform/live-shard=<n>` and configured with its pairs. For each shard, the rule,
in the order it is checked:
0. A run marked STARTED whose worker has written nothing to the event log for
   `LIVE_RUN_STALE_SECONDS` (default 120; the live op logs progress every few seconds) is dead:
   its process was killed or its machine went away without telling the instance. It is marked
   FAILURE, and rule 4 replaces it.
1. A live run is queued, starting, running or being cancelled: do nothing.
2. No live run ever: launch one.
3. The newest live run was CANCELED: someone terminated it on purpose (UI or API), so leave
   ingestion stopped. Launching `live_trades_job` again by hand (Launchpad, `dagster job launch`)
   resumes it, and the sensor keeps that run alive from then on.
4. The newest run FAILED (crash, SIGTERM, SIGKILL, lost broker): relaunch once a back-off has
   passed, doubling with each consecutive failure, so a crash loop cannot flood the instance.
5. The newest run SUCCEEDED (a bounded run reached its max_trades/max_seconds): relaunch now.
"""

from __future__ import annotations

import time

from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from trades_platform.live.job import LIVE_SHARD_TAG, live_trades_job
from trades_platform.settings import (
    LiveSettings,
    SettingsError,
    configured_pairs,
    from_environment,
)

ACTIVE_STATUSES = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]
FIRST_RETRY_SECONDS = 10.0
MAX_RETRY_SECONDS = 300.0
# Failures beyond this many in a row all wait the maximum back-off.
_FAILURE_HISTORY = 8


def relaunch_delay_seconds(consecutive_failures: int) -> float:
    """Back-off before relaunching after `consecutive_failures` failed runs in a row."""
    if consecutive_failures <= 0:
        return 0.0
    return min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * float(1 << (consecutive_failures - 1)))


@sensor(
    job=live_trades_job,
    minimum_interval_seconds=10,
    default_status=DefaultSensorStatus.RUNNING,
    description="Keeps one live_trades_job run alive per shard; leaves a terminated one stopped.",
)
def live_trades_sensor(context: SensorEvaluationContext) -> SensorResult:
    """Decide, shard by shard, whether a new live run is needed now (see the module docstring)."""
    requests: list[RunRequest] = []
    reasons: list[str] = []
    for shard, pairs in enumerate(live_shards()):
        decision = _decide_for_shard(context, shard, pairs)
        if isinstance(decision, RunRequest):
            requests.append(decision)
        else:
            reasons.append(f"shard {shard}: {decision}")
    return SensorResult(
        run_requests=requests, skip_reason="; ".join(reasons) if not requests else None
    )


def live_shards() -> list[list[str]]:
    """The pairs of each live run: `LIVE_SHARDS` runs (default 1), pairs dealt round-robin."""
    pairs = configured_pairs()
    count = from_environment(LiveSettings).shards
    if count > len(pairs):
        raise SettingsError(f"LIVE_SHARDS={count}: at most the {len(pairs)} configured pairs")
    return [pairs[shard::count] for shard in range(count)]


def _decide_for_shard(
    context: SensorEvaluationContext, shard: int, pairs: list[str]
) -> RunRequest | str:
    instance = context.instance
    shard_runs = RunsFilter(job_name=live_trades_job.name, tags={LIVE_SHARD_TAG: str(shard)})
    active = instance.get_run_records(
        RunsFilter(job_name=shard_runs.job_name, tags=shard_runs.tags, statuses=ACTIVE_STATUSES),
        limit=1,
    )
    if active:
        run = active[0].dagster_run
        silence = _seconds_since_last_event(instance, run)
        if run.status != DagsterRunStatus.STARTED or silence < stale_after_seconds():
            return f"live run {run.run_id} is {run.status.value}"
        message = f"no event from the run worker for {silence:.0f}s: presumed dead"
        context.log.warning(f"Marking live run {run.run_id} failed: {message}")
        instance.report_run_failed(run, message)

    recent = instance.get_run_records(shard_runs, limit=_FAILURE_HISTORY)
    if not recent:
        return _launch(shard, pairs, previous_run_id=None, why="no live run yet")

    newest = recent[0].dagster_run
    if newest.status == DagsterRunStatus.CANCELED:
        return (
            f"live run {newest.run_id} was terminated on purpose; launch live_trades_job "
            "by hand to resume"
        )
    if newest.status == DagsterRunStatus.FAILURE:
        failures = 0
        for record in recent:
            if record.dagster_run.status != DagsterRunStatus.FAILURE:
                break
            failures += 1
        delay = relaunch_delay_seconds(failures)
        ended_at = recent[0].end_time or recent[0].update_timestamp.timestamp()
        wait = ended_at + delay - time.time()
        if wait > 0:
            return (
                f"live run {newest.run_id} failed ({failures} in a row); relaunching in {wait:.0f}s"
            )
        why = f"run {newest.run_id} failed ({failures} in a row)"
        return _launch(shard, pairs, newest.run_id, why=why)
    return _launch(
        shard, pairs, newest.run_id, why=f"run {newest.run_id} ended {newest.status.value}"
    )


def stale_after_seconds() -> float:
    """How long a STARTED live run may stay silent before it is presumed dead."""
    return from_environment(LiveSettings).run_stale_seconds


def _seconds_since_last_event(instance: DagsterInstance, run: DagsterRun) -> float:
    newest = instance.get_records_for_run(run.run_id, limit=1, ascending=False).records
    if not newest:
        return 0.0
    return time.time() - newest[0].timestamp


def _launch(shard: int, pairs: list[str], previous_run_id: str | None, why: str) -> RunRequest:
    # The daemon de-duplicates run keys forever, so the key names the run being replaced.
    return RunRequest(
        run_key=f"shard-{shard}-after-{previous_run_id or 'none'}",
        run_config={"ops": {"stream_live_trades": {"config": {"pairs": pairs}}}},
        tags={
            LIVE_SHARD_TAG: str(shard),
            "trades_platform/live-pairs": ",".join(pairs),
            "trades_platform/launched-because": why[:200],
        },
    )
