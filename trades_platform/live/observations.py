"""What the live runs report to the UI: per-pair observations of `kraken_trades_live`, and the
freshness check that fails when a pair's newest trade is too old.

The live op logs one observation per pair every minute (trades per minute, lag, trades Kraken's
feed left out, healed, pending and handed back, REST calls, reconnects, dead-lettered frames);
the asset page plots each number over time.
`live_freshness_schedule` runs the check every five minutes, so a stopped or stuck live run shows
up as a failed check even though it reports nothing itself.
"""

# No `from __future__ import annotations`: Dagster reads the check's annotations at import.

import time
from collections.abc import Iterator

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetKey,
    AssetObservation,
    AssetRecordsFilter,
    AssetSelection,
    AssetSpec,
    DefaultScheduleStatus,
    MetadataValue,
    ScheduleDefinition,
    StaticPartitionsDefinition,
    asset_check,
    define_asset_job,
)

from trades_platform.settings import LiveSettings, configured_pairs, from_environment

LIVE_ASSET_KEY = AssetKey("kraken_trades_live")
OBSERVATION_INTERVAL_SECONDS = 60.0

LIVE_PAIRS = StaticPartitionsDefinition(configured_pairs())

kraken_trades_live = AssetSpec(
    LIVE_ASSET_KEY,
    description=(
        "Live Kraken trades in the trades topic, written by live_trades_job. Observed every "
        "minute per pair: trades_per_minute, last_trade_age_seconds (the lag now), "
        "lag_p99_seconds, trades_left_out (by Kraken's feed), gaps_healed (trades healed from "
        "REST), pending_heals, handed_back (to the backfill), rest_calls_per_minute, reconnects, "
        "dead_lettered."
    ),
    group_name="live",
    kinds={"kafka", "python"},
    partitions_def=LIVE_PAIRS,
)


def freshness_bound_seconds() -> float:
    """How old a pair's newest trade may be (`LIVE_FRESHNESS_SECONDS`)."""
    return from_environment(LiveSettings).freshness_seconds


def pair_observations(figures: dict[str, dict[str, float | int]]) -> Iterator[AssetObservation]:
    """One observation per pair, numbers only, so the UI plots them."""
    for pair, metadata in figures.items():
        yield AssetObservation(asset_key=LIVE_ASSET_KEY, partition=pair, metadata=metadata)


@asset_check(
    asset=LIVE_ASSET_KEY,
    name="pairs_are_fresh",
    description="Fails when a pair's newest trade is older than LIVE_FRESHNESS_SECONDS.",
)
def pairs_are_fresh(context: AssetCheckExecutionContext) -> AssetCheckResult:
    """Each pair's newest observed trade time, against the bound."""
    bound = freshness_bound_seconds()
    now_ms = time.time() * 1000
    ages: dict[str, float | None] = {}
    for pair in LIVE_PAIRS.get_partition_keys():
        records = context.instance.fetch_observations(
            AssetRecordsFilter(asset_key=LIVE_ASSET_KEY, asset_partitions=[pair]), limit=1
        ).records
        observation = records[0].asset_observation if records else None
        last_ms = observation.metadata.get("last_trade_time_ms") if observation else None
        ages[pair] = None if last_ms is None else round((now_ms - last_ms.value) / 1000, 1)
    stale = {pair: age for pair, age in ages.items() if age is None or age > bound}
    return AssetCheckResult(
        passed=not stale,
        severity=AssetCheckSeverity.ERROR,
        description=(
            f"stale pairs: {sorted(stale)}" if stale else f"every pair traded within {bound:.0f}s"
        ),
        metadata={
            "bound_seconds": bound,
            "stale_pairs": len(stale),
            "last_trade_age_seconds": MetadataValue.json(ages),
        },
    )


live_freshness_job = define_asset_job(
    "live_freshness_job",
    selection=AssetSelection.checks(pairs_are_fresh),
    description="Checks that every live pair traded recently.",
)

live_freshness_schedule = ScheduleDefinition(
    job=live_freshness_job,
    cron_schedule="*/5 * * * *",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Runs the live freshness check every five minutes.",
)
