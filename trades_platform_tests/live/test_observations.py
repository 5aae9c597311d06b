"""Per-pair observations of kraken_trades_live from a real live run, and the freshness check."""

from collections.abc import Iterator

import pytest
from dagster import AssetRecordsFilter, DagsterInstance, Definitions, instance_for_test

from trades_platform.live.job import live_trades_job
from trades_platform.live.observations import (
    LIVE_ASSET_KEY,
    kraken_trades_live,
    live_freshness_job,
    pairs_are_fresh,
)
from trades_platform.resources import KrakenResource, RedpandaResource
from trades_platform.testing import SimulatorProcess, grace_backlog, unique_topic

PAIRS = ["BTC/USD", "ETH/USD"]
RATE = 20  # trades per second and pair


@pytest.fixture(scope="module")
def observed_instance(broker: str) -> Iterator[DagsterInstance]:
    """An instance holding a live run of about 6 s that observed every second; the feed leaves
    every 7th trade out, so there is healing to report."""
    # Bounded by trades (the snapshots and 6 s of trades), not seconds: from about 23:50 UTC its
    # claims first wait their grace period (testing.live), and 6 s would leave one observation.
    trades = grace_backlog(len(PAIRS), RATE) + (50 + 6 * RATE) * len(PAIRS)
    flags = (
        *("--pairs", ",".join(PAIRS), "--trades-per-second", str(RATE)),
        *("--omit-every-nth-id", "7"),
    )
    with (
        SimulatorProcess(*flags) as sim,
        instance_for_test() as instance,
    ):
        result = live_trades_job.execute_in_process(
            run_config={
                "ops": {
                    "stream_live_trades": {
                        "config": {
                            "max_trades": trades,
                            # Only a backstop: a feed that stopped fails the test, not hangs it.
                            "max_seconds": 120,
                            "observation_interval_seconds": 1,
                        }
                    }
                }
            },
            resources={
                "kraken": KrakenResource(ws_url=sim.ws_url, rest_url=sim.rest_url, pairs=PAIRS),
                "redpanda": RedpandaResource(broker_address=broker, topic=unique_topic()),
            },
            instance=instance,
        )
        assert result.success
        yield instance


def test_each_pair_is_observed_with_plottable_numbers(observed_instance: DagsterInstance) -> None:
    for pair in PAIRS:
        records = observed_instance.fetch_observations(
            AssetRecordsFilter(asset_key=LIVE_ASSET_KEY, asset_partitions=[pair]), limit=100
        ).records
        assert len(records) >= 3, pair
        metadata = records[0].asset_observation.metadata
        assert {
            "trades_per_minute",
            "last_trade_age_seconds",
            "last_trade_time_ms",
            "lag_p99_seconds",
            "reconnects",
            "trades_left_out",
            "gaps_healed",
            "pending_heals",
            "handed_back",
            "rest_calls_per_minute",
            "dead_lettered",
        } <= metadata.keys()
        # 20 trades/s less one in seven is about 1000 a minute (the first interval also holds
        # the 50-trade snapshot).
        rates = [record.asset_observation.metadata["trades_per_minute"].value for record in records]
        assert max(rates) > 600
        # Records come newest first: by the last one the feed had left trades out, and they
        # were healed by REST calls.
        newest = {key: value.value for key, value in metadata.items()}
        assert newest["trades_left_out"] > 0 and newest["gaps_healed"] > 0, newest
        assert (
            max(
                record.asset_observation.metadata["rest_calls_per_minute"].value
                for record in records
            )
            > 0
        )


def _run_freshness_check(instance: DagsterInstance) -> bool:
    defs = Definitions(
        assets=[kraken_trades_live], asset_checks=[pairs_are_fresh], jobs=[live_freshness_job]
    )
    result = defs.resolve_job_def("live_freshness_job").execute_in_process(instance=instance)
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation.passed


def test_the_freshness_check_passes_while_trades_are_recent(
    observed_instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIVE_FRESHNESS_SECONDS", "300")
    assert _run_freshness_check(observed_instance)


def test_the_freshness_check_fails_when_the_newest_trade_is_too_old(
    observed_instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIVE_FRESHNESS_SECONDS", "0.5")
    assert not _run_freshness_check(observed_instance)


def test_the_freshness_check_fails_without_any_observation() -> None:
    with instance_for_test() as empty:
        assert not _run_freshness_check(empty)
