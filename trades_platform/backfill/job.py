"""`backfill_trades_job` and the schedule that backfills yesterday, every pair, every night."""

from __future__ import annotations

from dagster import (
    AssetSelection,
    build_schedule_from_partitioned_job,
    define_asset_job,
    in_process_executor,
)

from trades_platform.backfill.asset import kraken_trades_history
from trades_platform.backfill.partitions import TRADES_HISTORY_PARTITIONS
from trades_platform.settings import BackfillSettings, from_environment

_BACKFILL = from_environment(BackfillSettings)

# Every backfill run carries this tag: dagster.yaml can limit how many share Kraken's REST limit.
KRAKEN_REST_TAG = "trades_platform/kraken-rest"

backfill_trades_job = define_asset_job(
    "backfill_trades_job",
    # Checks of the selected asset come with it: they run after it, in the same run.
    selection=AssetSelection.assets(kraken_trades_history),
    partitions_def=TRADES_HISTORY_PARTITIONS,
    description="Kraken REST trades of one UTC day x pair -> the trades topic, then checks.",
    tags={
        KRAKEN_REST_TAG: "backfill",
        # Run monitoring (dagster.yaml) fails a run past this even if it is stuck in a call;
        # the asset checks the bound of each partition before every page, and a run may cover
        # up to BACKFILL_PARTITIONS_PER_RUN of them.
        "dagster/max_runtime": str(_BACKFILL.max_runtime_seconds * _BACKFILL.partitions_per_run),
    },
    # One process per run: the checks read back right after the asset, without a process start.
    executor_def=in_process_executor,
)

# 00:15 UTC: yesterday is over and Kraken's REST history of it is complete by then.
daily_backfill_schedule = build_schedule_from_partitioned_job(
    backfill_trades_job,
    name="daily_backfill_schedule",
    hour_of_day=0,
    minute_of_hour=15,
    description="Backfills yesterday (UTC) for every configured pair, one run per pair.",
)
