"""What runs the archive without a click, and what the UI calls fresh.

After a day's backfill (or any update of `kraken_trades_history`'s partition) the automation
sensor requests that partition's Parquet day, and after the Parquet day its candles (or both in
one run when they are requested together; then the Parquet's blocking checks gate the candles).
The freshness policy is evaluated by the daemon and shown on each asset.
"""

from __future__ import annotations

from datetime import timedelta

from dagster import (
    AssetSelection,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    FreshnessPolicy,
)

from trades_platform.settings import ArchiveSettings, from_environment

ARCHIVE_GROUP = "archive"
# Dagster's eager condition minus "only the latest day": a backfill of any past day is followed
# by its Parquet and candles. Like eager, it waits while an upstream partition is missing or
# running, and does not act on partitions that were already missing when it was turned on
# (materialize those once from the UI).
ARCHIVE_AUTOMATION = (
    AutomationCondition.eager()
    .without(AutomationCondition.in_latest_time_window())
    .with_label("eager, any day")
)
# Read with the definitions: the policy is part of them.
ARCHIVE_FRESHNESS = FreshnessPolicy.time_window(
    fail_window=timedelta(hours=from_environment(ArchiveSettings).freshness_hours)
)
# How often the daemon evaluates the conditions: a day's files follow its backfill within this.
AUTOMATION_INTERVAL_SECONDS = 30
# Every run the sensor launches carries this tag; dagster.yaml queues them one at a time. A
# backfill of 30 days otherwise starts 30 archive processes at once, and on a small host their
# CPU slows the backfill's own paging (measured: 0.82 of the REST allowance instead of 0.9+).
ARCHIVE_RUN_TAG = "trades_platform/archive"

archive_automation_sensor = AutomationConditionSensorDefinition(
    "archive_automation_sensor",
    target=AssetSelection.groups(ARCHIVE_GROUP),
    run_tags={ARCHIVE_RUN_TAG: "day"},
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=AUTOMATION_INTERVAL_SECONDS,
    description=(
        "Materializes a day's kraken_trades_parquet after its kraken_trades_history partition "
        "is updated, and its kraken_candles_1m after the Parquet day (on by default)."
    ),
)
