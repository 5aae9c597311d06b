"""Every setting of the platform, once: its environment variable, default, description and check.

Each group is a pydantic model (`KafkaSettings`, `KrakenSettings`, `LiveSettings`,
`BackfillSettings`, `ArchiveSettings`) whose field `name` is read from the variable `<PREFIX><NAME>`
(`KAFKA_TOPIC_PARTITIONS` is `KafkaSettings.topic_partitions`). `from_environment` reads and
checks a group at once; a bad value fails there, naming the variable and what it allows. Code
and tests build the models directly with keyword arguments; only `from_environment` looks at the
process environment. The Dagster resources mirror these fields (`resources.py`), bound to the
variables with `dagster.EnvVar` where Dagster can (text and whole numbers), so the UI shows where
a value came from and a secret never appears in run config.
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from datetime import date
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from trades_platform.trade import PAIR_PATTERN

# Kraken's limit for `count` in /0/public/Trades.
KRAKEN_MAX_PAGE_SIZE = 1000
# The longest a trade may wait for the broker (10 min): a live claim's lease grows with it, and
# readers of the coverage log reject leases longer than this allows.
MAX_DELIVERY_TIMEOUT_MS = 600_000
# Kafka's own rule for topic names (the platform adds `.coverage` and `.dlq` to it).
_TOPIC_PATTERN = r"^[A-Za-z0-9._-]{1,200}$"

M = TypeVar("M", bound=BaseModel)


class SettingsError(ValueError):
    """A setting from the environment is not valid: names the variable and what it allows."""


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


class SettingsGroup(BaseModel):
    """What every group shares: immutable, no unknown fields, an environment prefix."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    ENV_PREFIX: ClassVar[str] = ""

    @classmethod
    def variable(cls, field: str) -> str:
        """The environment variable of a field, e.g. `KAFKA_TOPIC_PARTITIONS`."""
        return f"{cls.ENV_PREFIX}{field.upper()}"


class KafkaSettings(SettingsGroup):
    """The broker, the topic, and how every Kafka client of the platform talks to them."""

    ENV_PREFIX: ClassVar[str] = "KAFKA_"
    broker_address: str = Field(
        default="127.0.0.1:19092",
        min_length=1,
        description="Bootstrap servers, comma-separated; unset, `make run` starts a local broker",
    )
    topic: str = Field(default="trades", pattern=_TOPIC_PATTERN, description="The trades topic")
    topic_partitions: int = Field(
        default=3, ge=1, le=10_000, description="Partitions when the platform creates the topic"
    )
    replication_factor: int = Field(
        default=-1,
        ge=-1,
        le=32,
        description="Replication factor when the platform creates a topic; -1: the broker's "
        "default (Kafka's default.replication.factor, Redpanda's default_topic_replications)",
    )
    dlq_retention_days: int = Field(
        default=30,
        ge=1,
        le=3650,
        description="Days the dead-letter topic keeps what could not be used (the trades topic "
        "keeps everything)",
    )
    delivery_timeout_ms: int = Field(
        default=120_000,
        ge=1_000,
        le=MAX_DELIVERY_TIMEOUT_MS,
        description="How long a trade may wait for an unreachable broker before the run fails",
    )
    linger_ms: int = Field(
        default=5, ge=0, le=1_000, description="How long the producer waits to fill a batch"
    )
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        default="lz4", description="Compression of produced batches"
    )
    security_protocol: Annotated[
        Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None,
        BeforeValidator(_upper),
    ] = Field(default=None, description="How clients connect; unset: PLAINTEXT")
    sasl_mechanism: Annotated[
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None, BeforeValidator(_upper)
    ] = Field(default=None, description="SASL mechanism")
    sasl_username: str | None = Field(default=None, description="SASL user")
    sasl_password: SecretStr | None = Field(
        default=None, description="SASL password (only ever from the environment)"
    )
    ssl_ca_location: str | None = Field(default=None, description="CA bundle for TLS")

    def client_config(self) -> dict[str, Any]:
        """What every librdkafka client (producer, consumer, admin) is built from."""
        config: dict[str, Any] = {"bootstrap.servers": self.broker_address}
        optional: dict[str, Any] = {
            "security.protocol": self.security_protocol,
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password.get_secret_value() if self.sasl_password else None,
            "ssl.ca.location": self.ssl_ca_location,
        }
        config.update({name: value for name, value in optional.items() if value})
        return config

    @field_validator("replication_factor")
    @classmethod
    def _replicas_or_broker_default(cls, value: int) -> int:
        if value == 0:
            raise ValueError(
                "0 replicas keep nothing: give 1 to 32, or -1 for the broker's default"
            )
        return value

    def producer_config(self) -> dict[str, Any]:
        """A producer's settings beyond the connection; idempotence keeps retries from repeating."""
        return {
            "enable.idempotence": True,
            "acks": "all",
            # Most of a trade's send-to-ack latency: it waits up to linger.ms for its batch.
            "linger.ms": self.linger_ms,
            "compression.type": self.compression_type,
            # Otherwise a small produce request can wait for the previous one's TCP ACK (Nagle's
            # algorithm): latency for nothing on a stream of small batches.
            "socket.nagle.disable": True,
            "delivery.timeout.ms": self.delivery_timeout_ms,
        }

    def consumer_config(self) -> dict[str, Any]:
        """A throwaway, read-committed consumer that reads partitions it assigns itself."""
        return {
            **self.client_config(),
            "group.id": f"trades-platform-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            # Readers read to the end and stop: a fetch that finds nothing new should say so
            # soon, not after librdkafka's 500 ms default (measured: 1 s per read of a short
            # log); not at once either, since a reader stays assigned between its reads.
            "fetch.wait.max.ms": 100,
        }


class KrakenSettings(SettingsGroup):
    """Where Kraken is, which pairs to follow, and how patient to be with it."""

    ENV_PREFIX: ClassVar[str] = "KRAKEN_"
    ws_url: str = Field(default="wss://ws.kraken.com/v2", description="WebSocket v2 endpoint")
    rest_url: str = Field(default="https://api.kraken.com", description="REST base URL")
    pairs: Annotated[tuple[str, ...], NoDecode] = Field(
        default=("BTC/USD", "ETH/USD"),
        min_length=1,
        description="Pairs, WebSocket v2 names, comma-separated; also the backfill's partitions",
    )
    snapshot: bool = Field(default=True, description="Ask for the last 50 trades on subscribe")
    # Kraken's reconnection guide: about 5 s without any frame (heartbeats included) is a dead link.
    watchdog_seconds: float = Field(
        default=5.0, gt=0, description="Reconnect when no frame arrives for this long"
    )
    connect_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Timeout of opening the WebSocket"
    )
    backoff_initial_seconds: float = Field(
        default=0.5, gt=0, description="First back-off before a WebSocket reconnect"
    )
    backoff_max_seconds: float = Field(
        default=30.0, gt=0, description="Longest back-off before a WebSocket reconnect"
    )
    rest_requests_per_second: float = Field(
        default=1.0,
        gt=0,
        description="Client-side pace of REST calls (Kraken's public limit is about 1/s per IP)",
    )
    rest_budget_scope: Literal["ip", "pair"] = Field(
        default="ip",
        description="What one REST budget of KRAKEN_REST_REQUESTS_PER_SECOND covers: `ip`, every "
        "call of the host's processes (Kraken's public limit is per IP); `pair`, each pair's "
        "Trades calls apart (should Kraken's Trades limit be per pair), other calls together",
    )
    rest_budget_dir: str = Field(
        default=os.path.join(tempfile.gettempdir(), "trades-platform-kraken-rest"),
        min_length=1,
        description="Directory of the REST budget shared by the host's processes (live heals "
        "and backfills): one small schedule file per REST server, locked with flock",
    )
    rest_timeout_seconds: float = Field(default=10.0, gt=0, description="Timeout of a REST call")
    # Bounded; and one call, its retries and waits included, ends at its time budget
    # (kraken.rest.MAX_CALL_SECONDS): the backfill's runtime bound is checked between calls only.
    rest_max_retries: int = Field(
        default=5,
        ge=0,
        le=20,
        description="Retries of a REST call after network errors, 5xx, EService",
    )
    rest_max_rate_limit_retries: int = Field(
        default=30,
        ge=0,
        le=100,
        description="Retries of a REST call after rate-limit answers (a call ends anyway at its "
        "time budget, kraken.rest.MAX_CALL_SECONDS)",
    )
    rest_backoff_initial_seconds: float = Field(
        default=1.0, ge=0, le=60, description="First back-off of a retried REST call"
    )
    rest_backoff_max_seconds: float = Field(
        default=60.0,
        ge=0,
        le=120,
        description="Longest back-off of a retried REST call, and the longest Retry-After honoured",
    )
    rest_page_size: int = Field(
        default=KRAKEN_MAX_PAGE_SIZE,
        ge=1,
        le=KRAKEN_MAX_PAGE_SIZE,
        description="`count` of one Trades page (1000, Kraken's maximum, by default)",
    )

    @field_validator("rest_budget_dir")
    @classmethod
    def _absolute_budget_dir(cls, value: str) -> str:
        if not os.path.isabs(value):
            raise ValueError(
                "an absolute path of a directory every process of the host can write (a "
                "relative one would differ between processes started in different directories)"
            )
        return value

    @field_validator("pairs", mode="before")
    @classmethod
    def _split_pairs(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [pair for pair in value.split(",") if pair.strip()]
        if isinstance(value, list | tuple):
            value = tuple(str(pair).strip().upper() for pair in value)
        return value

    @field_validator("pairs")
    @classmethod
    def _check_pairs(cls, pairs: tuple[str, ...]) -> tuple[str, ...]:
        malformed = [pair for pair in pairs if re.fullmatch(PAIR_PATTERN, pair) is None]
        if malformed:
            raise ValueError(
                f"malformed pairs {malformed}: use WebSocket v2 names like BTC/USD, comma-separated"
            )
        if len(set(pairs)) != len(pairs):
            raise ValueError(f"a pair is listed twice: {list(pairs)}")
        return pairs


class LiveSettings(SettingsGroup):
    """How the live runs are kept alive and watched."""

    ENV_PREFIX: ClassVar[str] = "LIVE_"
    shards: int = Field(
        default=1, ge=1, description="Number of live runs; the pairs are dealt round-robin"
    )
    run_stale_seconds: float = Field(
        default=120.0, gt=0, description="A live run silent this long is presumed dead, replaced"
    )
    freshness_seconds: float = Field(
        default=300.0,
        gt=0,
        description="The freshness check fails when a pair's newest trade is older than this",
    )


class BackfillSettings(SettingsGroup):
    """The backfill's partitions."""

    ENV_PREFIX: ClassVar[str] = "BACKFILL_"
    start_date: date = Field(
        default=date(2024, 1, 1), description="First day partition of kraken_trades_history"
    )
    max_runtime_seconds: int = Field(
        default=7200,
        ge=1,
        description="A backfill of one partition still going after this long fails (re-running "
        "it writes only what is missing); times the partitions per run, the job's "
        "dagster/max_runtime tag",
    )
    partitions_per_run: int = Field(
        default=7,
        ge=1,
        le=366,
        description="Partitions (days of one pair) one run covers when a backfill launches many: "
        "fewer process starts between REST calls; each keeps its own lease, metadata and checks",
    )


class ArchiveSettings(SettingsGroup):
    """Where the Parquet archive and the candles of each day go, and how fresh they should be."""

    ENV_PREFIX: ClassVar[str] = "ARCHIVE_"
    url: str = Field(
        default=".archive",
        min_length=1,
        description="Base of the Parquet archive: a local directory (relative to the code "
        "location's working directory) or an fsspec URL such as s3://bucket/prefix (needs the "
        "optional dependency s3fs)",
    )
    freshness_hours: float = Field(
        default=26.0,
        gt=0,
        le=24 * 30,
        description="The archive assets' freshness policy fails when no day was archived for "
        "this long (the nightly backfill runs at 00:15 UTC; 26 h leaves it two hours)",
    )


def from_environment(model: type[M]) -> M:
    """The group's settings from the environment (unset variables keep their defaults).

    Raises SettingsError naming each bad variable, its value (never a secret's) and the rule.
    """
    prefix: str = model.ENV_PREFIX  # type: ignore[attr-defined]
    # The model's own fields and checks, read from `<PREFIX><FIELD>` by pydantic-settings.
    reader = type(
        f"{model.__name__}FromEnvironment",
        (model, BaseSettings),
        {
            "model_config": SettingsConfigDict(
                env_prefix=prefix, extra="ignore", frozen=True, env_ignore_empty=True
            )
        },
    )
    try:
        read = reader()
    except ValidationError as error:
        raise SettingsError(_describe(model, error)) from None
    return model.model_validate(read.model_dump(exclude_unset=True))


def check_environment() -> None:
    """Read every group once, so that a bad value fails when the definitions load."""
    for model in (KafkaSettings, KrakenSettings, LiveSettings, BackfillSettings, ArchiveSettings):
        from_environment(model)


def configured_pairs() -> list[str]:
    """The pairs (`KRAKEN_PAIRS`): the live runs' and the backfill's partitions'."""
    return list(from_environment(KrakenSettings).pairs)


def is_set(model: type[SettingsGroup], field: str) -> bool:
    """True when the field's variable is set (to something other than blanks)."""
    return bool(os.environ.get(model.variable(field), "").strip())


def default_of(model: type[BaseModel], field: str) -> Any:
    """A field's default: for code that needs one setting's default without the environment."""
    return model.model_fields[field].get_default(call_default_factory=True)


def local_broker_port(default: int) -> int:
    """`LOCAL_BROKER_PORT`: the port `make broker` listens on."""
    raw = os.environ.get("LOCAL_BROKER_PORT", "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) < 65_536:
        raise SettingsError(f"LOCAL_BROKER_PORT={raw!r}: a port number, 1 to 65535")
    return int(raw)


def _describe(model: type[M], error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        field = str(problem["loc"][0]) if problem["loc"] else "?"
        variable = model.variable(field)  # type: ignore[attr-defined]
        shown = "<secret>" if "password" in field else repr(os.environ.get(variable))
        lines.append(f"{variable}={shown}: {problem['msg']}")
    return "invalid settings: " + "; ".join(lines)
