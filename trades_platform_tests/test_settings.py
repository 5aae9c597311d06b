"""Settings: read once from the environment, checked there, bound to Dagster by `EnvVar`."""

import subprocess
import sys
from pathlib import Path

import pytest

from trades_platform.resources import ArchiveResource, KrakenResource, RedpandaResource
from trades_platform.settings import (
    ArchiveSettings,
    BackfillSettings,
    KafkaSettings,
    KrakenSettings,
    LiveSettings,
    SettingsError,
    default_of,
    from_environment,
)

PACKAGE = Path(__file__).resolve().parents[1] / "trades_platform"


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("KRAKEN_PAIRS", '["BTC/USD"]', "use WebSocket v2 names like BTC/USD"),
        ("KRAKEN_PAIRS", "BTC/USD,btc/usd", "a pair is listed twice"),
        ("LIVE_SHARDS", "0", "greater than or equal to 1"),
        ("KAFKA_TOPIC_PARTITIONS", "-1", "greater than or equal to 1"),
        ("KAFKA_SECURITY_PROTOCOL", "TLS", "'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or 'SASL_SSL'"),
        ("KRAKEN_WATCHDOG_SECONDS", "soon", "valid number"),
        ("BACKFILL_START_DATE", "June 1st", "valid date"),
        # REST retries are bounded (and one call by MAX_CALL_SECONDS in all).
        ("KRAKEN_REST_MAX_RATE_LIMIT_RETRIES", "1000", "less than or equal to 100"),
        ("KRAKEN_REST_BACKOFF_MAX_SECONDS", "300", "less than or equal to 120"),
    ],
)
def test_a_bad_value_fails_the_definitions_at_load_naming_the_variable(
    variable: str, value: str, said: str
) -> None:
    """Loaded as Dagster loads it, in a process of its own with the variable set."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import trades_platform.definitions"],
        env={"PATH": "/usr/bin:/bin", variable: value},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loaded.returncode != 0
    error = loaded.stderr.strip().splitlines()[-1]
    assert error.startswith("trades_platform.settings.SettingsError")
    assert f"{variable}={value!r}" in error and said in error, error


def test_unset_variables_keep_the_defaults_written_in_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in (
        "KAFKA_TOPIC",
        "KAFKA_TOPIC_PARTITIONS",
        "KRAKEN_PAIRS",
        "LIVE_SHARDS",
        "ARCHIVE_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    assert from_environment(KafkaSettings) == KafkaSettings()
    assert from_environment(KrakenSettings).pairs == ("BTC/USD", "ETH/USD")
    assert from_environment(LiveSettings).shards == 1
    assert from_environment(BackfillSettings).start_date.isoformat() == "2024-01-01"
    # The resources mirror them: the same defaults, the variable named in each description.
    assert from_environment(ArchiveSettings).url == ".archive"
    for resource, model in (
        (RedpandaResource, KafkaSettings),
        (KrakenResource, KrakenSettings),
        (ArchiveResource, ArchiveSettings),
    ):
        for name, info in resource.model_fields.items():
            default = default_of(model, name)
            assert info.default == (list(default) if isinstance(default, tuple) else default)
            assert model.variable(name) in (info.description or ""), name


def test_set_variables_are_bound_by_envvar_so_the_ui_shows_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_TOPIC", "trades-eu")
    monkeypatch.setenv("KAFKA_TOPIC_PARTITIONS", "6")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
    monkeypatch.setenv("KRAKEN_WATCHDOG_SECONDS", "2.5")
    monkeypatch.setenv("KRAKEN_PAIRS", " sol/usd , BTC/USD ")
    redpanda = RedpandaResource.from_environment()
    kraken = KrakenResource.from_environment()
    # What the UI shows: text and whole numbers stay bound to their variables; Dagster has no
    # EnvVar for floats or lists, which are passed as read (and checked) from the environment.
    config = redpanda._convert_to_config_dictionary()
    assert config["topic"] == {"env": "KAFKA_TOPIC"}
    assert config["topic_partitions"] == {"env": "KAFKA_TOPIC_PARTITIONS"}
    assert config["sasl_password"] == {"env": "KAFKA_SASL_PASSWORD"}
    assert config["broker_address"] == default_of(KafkaSettings, "broker_address")
    assert kraken._convert_to_config_dictionary()["watchdog_seconds"] == 2.5
    # As a run sees them, once Dagster has resolved the variables.
    settings = redpanda.process_config_and_initialize().kafka_settings()
    assert (settings.topic, settings.topic_partitions) == ("trades-eu", 6)
    assert settings.security_protocol == "SASL_SSL"
    # The secret is read, used, and never shown.
    assert settings.client_config()["sasl.password"] == "s3cret"
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())
    assert "s3cret" not in str(config)
    assert kraken.process_config_and_initialize().kraken_settings().pairs == ("SOL/USD", "BTC/USD")


def test_a_secret_in_a_bad_setting_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "")
    monkeypatch.setenv("KAFKA_TOPIC_PARTITIONS", "many")
    with pytest.raises(SettingsError) as raised:
        from_environment(KafkaSettings)
    assert "KAFKA_TOPIC_PARTITIONS='many'" in str(raised.value)


def test_only_the_settings_module_reads_the_environment() -> None:
    """`os.environ` appears only where settings are read and where `make run` starts processes."""
    readers = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "os.environ" in path.read_text() or "os.getenv" in path.read_text()
    )
    allowed = {"settings.py", "dev.py"}
    assert [
        path for path in readers if path not in allowed and not path.startswith("testing")
    ] == []


def test_the_readme_lists_every_setting() -> None:
    """The configuration table names every variable the settings read, and no other of theirs."""
    readme = (PACKAGE.parent / "README.md").read_text()
    groups = (KafkaSettings, KrakenSettings, LiveSettings, BackfillSettings, ArchiveSettings)
    variables = {model.variable(name) for model in groups for name in model.model_fields}
    missing = sorted(variable for variable in variables if f"`{variable}`" not in readme)
    assert missing == []
