"""The Dagster code location: `dagster dev -m trades_platform.definitions` loads `defs`."""

from __future__ import annotations

from dagster import Definitions, EnvVar

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
from trades_platform.resources import KrakenResource, RedpandaResource
from trades_platform.settings import configured_pairs, env_or_default


def build_resources() -> dict[str, object]:
    """Resources bound to the environment; unset variables fall back to safe local defaults."""
    return {
        "kraken": KrakenResource(
            ws_url=env_or_default("KRAKEN_WS_URL", "wss://ws.kraken.com/v2"),
            rest_url=env_or_default("KRAKEN_REST_URL", "https://api.kraken.com"),
            pairs=configured_pairs(),
            watchdog_seconds=env_or_default("KRAKEN_WATCHDOG_SECONDS", 5.0),
            rest_requests_per_second=env_or_default("KRAKEN_REST_REQUESTS_PER_SECOND", 1.0),
            rest_timeout_seconds=env_or_default("KRAKEN_REST_TIMEOUT_SECONDS", 10.0),
            rest_max_retries=env_or_default("KRAKEN_REST_MAX_RETRIES", 5),
            rest_max_rate_limit_retries=env_or_default("KRAKEN_REST_MAX_RATE_LIMIT_RETRIES", 30),
            rest_backoff_initial_seconds=env_or_default("KRAKEN_REST_BACKOFF_INITIAL_SECONDS", 1.0),
            rest_backoff_max_seconds=env_or_default("KRAKEN_REST_BACKOFF_MAX_SECONDS", 60.0),
            rest_page_size=env_or_default("KRAKEN_REST_PAGE_SIZE", 1000),
        ),
        "redpanda": RedpandaResource(
            broker_address=env_or_default("KAFKA_BROKER_ADDRESS", "127.0.0.1:19092"),
            topic=env_or_default("KAFKA_TOPIC", "trades"),
            partitions=env_or_default("KAFKA_TOPIC_PARTITIONS", 3),
            replication_factor=env_or_default("KAFKA_REPLICATION_FACTOR", 1),
            delivery_timeout_ms=env_or_default("KAFKA_DELIVERY_TIMEOUT_MS", 120_000),
            security_protocol=env_or_default("KAFKA_SECURITY_PROTOCOL", None),
            sasl_mechanism=env_or_default("KAFKA_SASL_MECHANISM", None),
            sasl_username=env_or_default("KAFKA_SASL_USERNAME", None),
            # Secrets only ever come from the environment, never from code or run config.
            sasl_password=EnvVar("KAFKA_SASL_PASSWORD") if _is_set("KAFKA_SASL_PASSWORD") else None,
            ssl_ca_location=env_or_default("KAFKA_SSL_CA_LOCATION", None),
        ),
    }


def _is_set(name: str) -> bool:
    import os

    return bool(os.environ.get(name))


defs = Definitions(
    assets=[kraken_trades_history, kraken_trades_live],
    asset_checks=[kraken_trades_history_checks, pairs_are_fresh],
    jobs=[live_trades_job, backfill_trades_job, live_freshness_job],
    schedules=[daily_backfill_schedule, live_freshness_schedule],
    sensors=[live_trades_sensor],
    resources=build_resources(),
)
