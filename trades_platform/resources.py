"""Dagster resources: the Kraken client, the Redpanda (Kafka) producer, the Parquet archive."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import UnionType
from typing import TYPE_CHECKING, Any, ClassVar, Self, Union, get_args, get_origin

from dagster import ConfigurableResource, EnvVar, InitResourceContext
from pydantic import Field, SecretStr

from trades_platform.archive.storage import ArchiveStore
from trades_platform.kraken.budget import Purpose
from trades_platform.kraken.rest import KrakenRestClient, RestSettings
from trades_platform.kraken.websocket import (
    KrakenTradeStream,
    RejectedFrame,
    StreamSettings,
    TradeGap,
)
from trades_platform.producer import TradeProducer
from trades_platform.settings import (
    ArchiveSettings,
    KafkaSettings,
    KrakenSettings,
    SettingsError,
    SettingsGroup,
    from_environment,
    is_set,
)
from trades_platform.trade import Source


def _mirror(model: type[SettingsGroup], field: str) -> Any:
    """A resource field mirroring a setting: its default, and its description with the variable."""
    info = model.model_fields[field]
    default = info.get_default(call_default_factory=True)
    if isinstance(default, tuple):
        default = list(default)
    return Field(default=default, description=f"{info.description} ({model.variable(field)})")


if TYPE_CHECKING:
    # Dagster's base is generic in what the resource yields; at run time it is used bare.
    _ResourceBase = ConfigurableResource[Any]
else:
    _ResourceBase = ConfigurableResource


class _MirroredResource(_ResourceBase):
    """A resource whose fields mirror one settings group, field for field.

    What picks where data comes from or goes to, and credentials (`environment_only`), is set by
    the code location's environment or by code, never by a run's config: anyone who can open
    the Launchpad could otherwise send the SASL password to a broker of their choosing. Nor
    may a run's config read the environment (`{env: NAME}`): the op logs its settings, so that
    would print any variable of the code server.
    """

    settings_model: ClassVar[type[SettingsGroup]]
    environment_only: ClassVar[frozenset[str]] = frozenset()

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """Refuse a run whose config sets an environment-only field or reads the environment."""
        run = context.dagster_run
        if run is not None:
            refuse_unsafe_run_config(run.run_config, self.settings_model, self.environment_only)

    @classmethod
    def from_environment(cls) -> Self:
        """The resource bound to the environment: checked there first, then bound by `EnvVar`.

        Text and whole-number settings that are set stay `EnvVar`s, so the UI shows the variable
        a value came from; Dagster has no `EnvVar` for the others, which are passed as read.
        Secrets only ever come from the environment and only as `EnvVar`s.
        """
        model = cls.settings_model
        settings = from_environment(model)
        values: dict[str, Any] = {}
        for name, info in cls.model_fields.items():
            value = getattr(settings, name)
            kind = _plain_type(info.annotation)
            if is_set(model, name) and kind is str:
                value = EnvVar(model.variable(name))
            elif is_set(model, name) and kind is int:
                value = EnvVar.int(model.variable(name))
            elif isinstance(value, SecretStr):
                raise SettingsError(f"{model.variable(name)}: a secret must be a text setting")
            elif isinstance(value, tuple):
                value = list(value)
            values[name] = value
        return cls(**values)

    def _settings(self) -> Any:
        return self.settings_model(
            **{name: getattr(self, name) for name in self.settings_model.model_fields}
        )


def refuse_unsafe_run_config(
    run_config: Mapping[str, Any], model: type[SettingsGroup], environment_only: frozenset[str]
) -> None:
    """Raise SettingsError if any resource's run config sets one of `environment_only` or
    reads the environment anywhere."""
    resources = run_config.get("resources")
    for key, entry in (resources if isinstance(resources, Mapping) else {}).items():
        config = entry.get("config") if isinstance(entry, Mapping) else None
        for name, value in (config if isinstance(config, Mapping) else {}).items():
            where = f"resources.{key}.config.{name}"
            if name in environment_only:
                raise SettingsError(
                    f"{where}: set only by the environment ({model.variable(name)}) of the code "
                    "location, never by a run's config"
                )
            if _reads_environment(value):
                raise SettingsError(
                    f"{where}: a run's config may not read the environment ({{env: ...}}); "
                    "give the value itself, or set the variable where the code location runs"
                )


def _reads_environment(value: Any) -> bool:
    if isinstance(value, Mapping):
        return "env" in value or any(_reads_environment(item) for item in value.values())
    if isinstance(value, list):
        return any(_reads_environment(item) for item in value)
    return False


def _plain_type(annotation: Any) -> Any:
    """`str` for `str` and `str | None`, `int` for `int`, `list[str]` for itself."""
    if get_origin(annotation) not in (Union, UnionType):
        return annotation
    members = [member for member in get_args(annotation) if member is not type(None)]
    return members[0] if len(members) == 1 else annotation


class KrakenResource(_MirroredResource):
    """Kraken's public market data: WebSocket v2 for live trades, REST for history."""

    settings_model: ClassVar[type[SettingsGroup]] = KrakenSettings
    environment_only: ClassVar[frozenset[str]] = frozenset({"ws_url", "rest_url"})

    ws_url: str = _mirror(KrakenSettings, "ws_url")
    rest_url: str = _mirror(KrakenSettings, "rest_url")
    pairs: list[str] = _mirror(KrakenSettings, "pairs")
    snapshot: bool = _mirror(KrakenSettings, "snapshot")
    watchdog_seconds: float = _mirror(KrakenSettings, "watchdog_seconds")
    connect_timeout_seconds: float = _mirror(KrakenSettings, "connect_timeout_seconds")
    backoff_initial_seconds: float = _mirror(KrakenSettings, "backoff_initial_seconds")
    backoff_max_seconds: float = _mirror(KrakenSettings, "backoff_max_seconds")
    rest_requests_per_second: float = _mirror(KrakenSettings, "rest_requests_per_second")
    rest_budget_scope: str = _mirror(KrakenSettings, "rest_budget_scope")
    rest_budget_dir: str = _mirror(KrakenSettings, "rest_budget_dir")
    rest_timeout_seconds: float = _mirror(KrakenSettings, "rest_timeout_seconds")
    rest_max_retries: int = _mirror(KrakenSettings, "rest_max_retries")
    rest_max_rate_limit_retries: int = _mirror(KrakenSettings, "rest_max_rate_limit_retries")
    rest_backoff_initial_seconds: float = _mirror(KrakenSettings, "rest_backoff_initial_seconds")
    rest_backoff_max_seconds: float = _mirror(KrakenSettings, "rest_backoff_max_seconds")
    rest_page_size: int = _mirror(KrakenSettings, "rest_page_size")

    def kraken_settings(self) -> KrakenSettings:
        """The resource's values, checked by the settings model."""
        settings: KrakenSettings = self._settings()
        return settings

    def trade_stream(
        self,
        *,
        pairs: Sequence[str] | None = None,
        source: Source = "live",
        log: logging.Logger | None = None,
        on_rejected: Callable[[RejectedFrame], None] | None = None,
        on_gap: Callable[[TradeGap], None] | None = None,
        resume_after: dict[str, tuple[int, int]] | None = None,
    ) -> KrakenTradeStream:
        """A WebSocket `trade` subscription for `pairs` (default: every configured pair)."""
        kraken = self.kraken_settings()
        settings = StreamSettings(
            url=kraken.ws_url,
            pairs=list(pairs if pairs is not None else kraken.pairs),
            snapshot=kraken.snapshot,
            watchdog_seconds=kraken.watchdog_seconds,
            connect_timeout_seconds=kraken.connect_timeout_seconds,
            backoff_initial_seconds=kraken.backoff_initial_seconds,
            backoff_max_seconds=kraken.backoff_max_seconds,
        )
        return KrakenTradeStream(
            settings,
            source=source,
            log=log or logging.getLogger("trades_platform.kraken"),
            on_rejected=on_rejected,
            on_gap=on_gap,
            resume_after=resume_after,
        )

    def rest_settings(self) -> RestSettings:
        """The plain settings object the REST client is built from."""
        kraken = self.kraken_settings()
        return RestSettings(
            url=kraken.rest_url,
            requests_per_second=kraken.rest_requests_per_second,
            timeout_seconds=kraken.rest_timeout_seconds,
            max_retries=kraken.rest_max_retries,
            max_rate_limit_retries=kraken.rest_max_rate_limit_retries,
            backoff_initial_seconds=kraken.rest_backoff_initial_seconds,
            backoff_max_seconds=kraken.rest_backoff_max_seconds,
            page_size=kraken.rest_page_size,
            budget_dir=kraken.rest_budget_dir,
            budget_scope=kraken.rest_budget_scope,
        )

    def rest_client(
        self, *, log: logging.Logger | None = None, purpose: Purpose = "other"
    ) -> KrakenRestClient:
        """A REST client on the host's shared budget; use it as a context manager.

        `purpose` ranks its calls among waiting processes: heals go before backfills.
        """
        return KrakenRestClient(
            self.rest_settings(),
            log=log or logging.getLogger("trades_platform.kraken"),
            purpose=purpose,
        )


class RedpandaResource(_MirroredResource):
    """The Kafka-protocol broker (Redpanda in production) and the `trades` topic on it."""

    settings_model: ClassVar[type[SettingsGroup]] = KafkaSettings
    environment_only: ClassVar[frozenset[str]] = frozenset(
        {
            "broker_address",
            "security_protocol",
            "sasl_mechanism",
            "sasl_username",
            "sasl_password",
            "ssl_ca_location",
        }
    )

    broker_address: str = _mirror(KafkaSettings, "broker_address")
    topic: str = _mirror(KafkaSettings, "topic")
    topic_partitions: int = _mirror(KafkaSettings, "topic_partitions")
    replication_factor: int = _mirror(KafkaSettings, "replication_factor")
    dlq_retention_days: int = _mirror(KafkaSettings, "dlq_retention_days")
    delivery_timeout_ms: int = _mirror(KafkaSettings, "delivery_timeout_ms")
    linger_ms: int = _mirror(KafkaSettings, "linger_ms")
    compression_type: str = _mirror(KafkaSettings, "compression_type")
    security_protocol: str | None = _mirror(KafkaSettings, "security_protocol")
    sasl_mechanism: str | None = _mirror(KafkaSettings, "sasl_mechanism")
    sasl_username: str | None = _mirror(KafkaSettings, "sasl_username")
    sasl_password: str | None = _mirror(KafkaSettings, "sasl_password")
    ssl_ca_location: str | None = _mirror(KafkaSettings, "ssl_ca_location")

    def kafka_settings(self) -> KafkaSettings:
        """The resource's values, checked by the settings model."""
        settings: KafkaSettings = self._settings()
        return settings

    @contextmanager
    def trade_producer(self, delivery_timeout_ms: int | None = None) -> Iterator[TradeProducer]:
        """A producer that is flushed on the way out, even when the run is interrupted."""
        settings = self.kafka_settings()
        if delivery_timeout_ms is not None:
            settings = settings.model_copy(update={"delivery_timeout_ms": delivery_timeout_ms})
        producer = TradeProducer(settings)
        try:
            yield producer
        finally:
            producer.close()


class ArchiveResource(_MirroredResource):
    """Where the Parquet archive of the topic and its candles are written (`ARCHIVE_URL`)."""

    settings_model: ClassVar[type[SettingsGroup]] = ArchiveSettings
    # Where data goes: the environment's choice, never a run's config (see _MirroredResource).
    environment_only: ClassVar[frozenset[str]] = frozenset({"url"})

    url: str = _mirror(ArchiveSettings, "url")

    def archive_settings(self) -> ArchiveSettings:
        """The resource's values, checked by the settings model (the freshness bound is read
        with the definitions, not per run)."""
        return ArchiveSettings(url=self.url)

    def store(self) -> ArchiveStore:
        """The archive's files at the resource's (checked) URL: how assets and checks reach them."""
        return ArchiveStore(self.archive_settings().url)
