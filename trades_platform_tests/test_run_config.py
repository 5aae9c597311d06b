"""A run's config (the Launchpad) cannot pick the broker or Kraken endpoints, set a credential,
or read the code server's environment: such a run fails before any resource connects."""

import pytest
from dagster import instance_for_test

from trades_platform.live.job import live_trades_job
from trades_platform.resources import KrakenResource, RedpandaResource, refuse_unsafe_run_config
from trades_platform.settings import KafkaSettings, SettingsError
from trades_platform.testing import unique_topic

SECRET = "pg-secret-9f3a"
OP_CONFIG = {"ops": {"stream_live_trades": {"config": {"max_seconds": 5}}}}


@pytest.mark.parametrize(
    ("resource", "config", "refusal"),
    [
        ("redpanda", {"broker_address": "elsewhere:9092"}, "KAFKA_BROKER_ADDRESS"),
        ("redpanda", {"sasl_password": "guess"}, "KAFKA_SASL_PASSWORD"),
        ("kraken", {"rest_url": "http://elsewhere"}, "KRAKEN_REST_URL"),
        ("redpanda", {"topic": {"env": "DAGSTER_PG_PASSWORD"}}, "may not read the environment"),
    ],
    ids=["broker", "sasl-password", "rest-url", "env-in-topic"],
)
def test_a_run_config_that_reaches_for_connections_or_the_environment_is_refused(
    broker: str,
    resource: str,
    config: dict[str, object],
    refusal: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", SECRET)
    with instance_for_test() as instance:
        result = live_trades_job.execute_in_process(
            run_config={**OP_CONFIG, "resources": {resource: {"config": config}}},
            resources={
                # Nothing listens on the Kraken side: a refused run never gets that far.
                "kraken": KrakenResource(ws_url="ws://127.0.0.1:9/v2", pairs=["BTC/USD"]),
                "redpanda": RedpandaResource(broker_address=broker, topic=unique_topic()),
            },
            instance=instance,
            raise_on_error=False,
        )
        entries = instance.all_logs(result.run_id)
        messages = [
            str(entry.dagster_event.event_specific_data)
            for entry in entries
            if entry.dagster_event is not None and entry.dagster_event.is_failure
        ]
        everything = "\n".join(f"{entry.user_message} {entry.dagster_event}" for entry in entries)
    assert not result.success
    text = "\n".join(messages)
    assert "SettingsError" in text and refusal in text, text[-3000:]
    assert "never by a run's config" in text or "may not read the environment" in text
    assert SECRET not in everything


def test_literal_settings_that_pick_no_connection_stay_allowed() -> None:
    allowed = {"resources": {"redpanda": {"config": {"topic": "trades-replay", "linger_ms": 1}}}}
    refuse_unsafe_run_config(allowed, KafkaSettings, RedpandaResource.environment_only)
    nested = {"resources": {"redpanda": {"config": {"topic": {"nested": [{"env": "X"}]}}}}}
    with pytest.raises(SettingsError, match="may not read the environment"):
        refuse_unsafe_run_config(nested, KafkaSettings, RedpandaResource.environment_only)
