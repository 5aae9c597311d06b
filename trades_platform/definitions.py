"""The Dagster code location: `dagster dev -m trades_platform.definitions` loads `defs`."""

from __future__ import annotations

from dagster import Definitions, in_process_executor

from trades_platform.archive.assets import kraken_candles_1m, kraken_trades_parquet
from trades_platform.archive.automation import archive_automation_sensor
from trades_platform.archive.checks import kraken_candles_1m_checks, kraken_trades_parquet_checks
from trades_platform.backfill.asset import kraken_trades_history
from trades_platform.backfill.checks import kraken_trades_history_checks
from trades_platform.backfill.job import backfill_trades_job, daily_backfill_schedule
from trades_platform.live.job import live_trades_job
from trades_platform.live.observations import (
    kraken_trades_live,
    live_freshness_job,
    live_freshness_schedule,
    pairs_are_fresh,
)
from trades_platform.live.sensor import live_trades_sensor
from trades_platform.resources import ArchiveResource, KrakenResource, RedpandaResource
from trades_platform.settings import check_environment

# A bad setting fails here, naming its variable, not later inside a run or a sensor tick.
check_environment()


def build_resources() -> dict[str, object]:
    """Resources bound to the environment (`settings.py`); unset variables keep the defaults."""
    return {
        "kraken": KrakenResource.from_environment(),
        "redpanda": RedpandaResource.from_environment(),
        "archive": ArchiveResource.from_environment(),
    }


defs = Definitions(
    assets=[kraken_trades_history, kraken_trades_live, kraken_trades_parquet, kraken_candles_1m],
    asset_checks=[
        kraken_trades_history_checks,
        pairs_are_fresh,
        kraken_trades_parquet_checks,
        kraken_candles_1m_checks,
    ],
    jobs=[live_trades_job, backfill_trades_job, live_freshness_job],
    schedules=[daily_backfill_schedule, live_freshness_schedule],
    sensors=[live_trades_sensor, archive_automation_sensor],
    resources=build_resources(),
    # Runs of assets launched from the UI or by the archive's automation: their steps in the
    # run's own process. The multiprocess default starts a Python process per step (4 for a
    # day's archive: Parquet, its checks, candles, theirs), each importing the code location
    # again; on a small host that CPU is taken from the backfill's paging and the live run.
    executor=in_process_executor,
)
