"""Dagster resources: the Kraken client and the Redpanda (Kafka) producer."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

from dagster import ConfigurableResource
from pydantic import Field

from trades_platform.kraken.rest import MAX_PAGE_SIZE, KrakenRestClient, RestSettings
from trades_platform.kraken.websocket import (
    KrakenTradeStream,
    RejectedFrame,
    StreamSettings,
    TradeGap,
)
from trades_platform.producer import ProducerSettings, TradeProducer
from trades_platform.trade import Source


class KrakenResource(ConfigurableResource):
    """Kraken's public market data: WebSocket v2 for live trades, REST for history."""

    ws_url: str = Field(default="wss://ws.kraken.com/v2", description="KRAKEN_WS_URL")
    rest_url: str = Field(default="https://api.kraken.com", description="KRAKEN_REST_URL")
    pairs: list[str] = Field(description="WebSocket v2 pair names, from KRAKEN_PAIRS")
    snapshot: bool = Field(default=True, description="Ask for the last 50 trades on subscribe")
    watchdog_seconds: float = Field(
        default=5.0,
        description="Reconnect after this long without any frame (KRAKEN_WATCHDOG_SECONDS)",
    )
    connect_timeout_seconds: float = 10.0
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    rest_requests_per_second: float = Field(
        default=1.0,
        gt=0,
        description="Client-side pace of REST calls; Kraken's public limit is about 1/s per IP "
        "(KRAKEN_REST_REQUESTS_PER_SECOND)",
    )
    rest_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Per REST call (KRAKEN_REST_TIMEOUT_SECONDS)"
    )
    rest_max_retries: int = Field(
        default=5,
        ge=0,
        description="Retries of one REST call after network errors, 5xx or EService errors "
        "(KRAKEN_REST_MAX_RETRIES)",
    )
    rest_max_rate_limit_retries: int = Field(
        default=30,
        ge=0,
        description="Retries of one REST call after rate-limit answers "
        "(KRAKEN_REST_MAX_RATE_LIMIT_RETRIES)",
    )
    rest_backoff_initial_seconds: float = Field(
        default=1.0, ge=0, description="First back-off after a failed REST call"
    )
    rest_backoff_max_seconds: float = Field(
        default=60.0, ge=0, description="Longest back-off between two REST attempts"
    )
    rest_page_size: int = Field(
        default=MAX_PAGE_SIZE,
        ge=1,
        le=MAX_PAGE_SIZE,
        description="Trades per /0/public/Trades page (`count`; KRAKEN_REST_PAGE_SIZE)",
    )

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
        settings = StreamSettings(
            url=self.ws_url,
            pairs=list(pairs if pairs is not None else self.pairs),
            snapshot=self.snapshot,
            watchdog_seconds=self.watchdog_seconds,
            connect_timeout_seconds=self.connect_timeout_seconds,
            backoff_initial_seconds=self.backoff_initial_seconds,
            backoff_max_seconds=self.backoff_max_seconds,
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
        return RestSettings(
            url=self.rest_url,
            requests_per_second=self.rest_requests_per_second,
            timeout_seconds=self.rest_timeout_seconds,
            max_retries=self.rest_max_retries,
            max_rate_limit_retries=self.rest_max_rate_limit_retries,
            backoff_initial_seconds=self.rest_backoff_initial_seconds,
            backoff_max_seconds=self.rest_backoff_max_seconds,
            page_size=self.rest_page_size,
        )

    def rest_client(self, *, log: logging.Logger | None = None) -> KrakenRestClient:
        """A REST client (one HTTP session, one pacer); use it as a context manager."""
        return KrakenRestClient(
            self.rest_settings(), log=log or logging.getLogger("trades_platform.kraken")
        )


class RedpandaResource(ConfigurableResource):
    """The Kafka-protocol broker (Redpanda in production) and the `trades` topic on it."""

    broker_address: str = Field(default="127.0.0.1:19092", description="KAFKA_BROKER_ADDRESS")
    topic: str = Field(default="trades", description="KAFKA_TOPIC")
    partitions: int = Field(default=3, description="Partitions when the topic is created")
    replication_factor: int = Field(default=1, description="KAFKA_REPLICATION_FACTOR")
    linger_ms: int = 5
    compression_type: str = "lz4"
    delivery_timeout_ms: int = Field(
        default=120_000,
        description="How long a trade may wait for an unreachable broker before the run fails",
    )
    security_protocol: str | None = Field(default=None, description="KAFKA_SECURITY_PROTOCOL")
    sasl_mechanism: str | None = Field(default=None, description="KAFKA_SASL_MECHANISM")
    sasl_username: str | None = Field(default=None, description="KAFKA_SASL_USERNAME")
    sasl_password: str | None = Field(default=None, description="KAFKA_SASL_PASSWORD")
    ssl_ca_location: str | None = Field(default=None, description="KAFKA_SSL_CA_LOCATION")

    def producer_settings(self) -> ProducerSettings:
        """The plain settings object the producer is built from."""
        return ProducerSettings(
            broker_address=self.broker_address,
            topic=self.topic,
            partitions=self.partitions,
            replication_factor=self.replication_factor,
            linger_ms=self.linger_ms,
            compression_type=self.compression_type,
            delivery_timeout_ms=self.delivery_timeout_ms,
            security_protocol=self.security_protocol,
            sasl_mechanism=self.sasl_mechanism,
            sasl_username=self.sasl_username,
            sasl_password=self.sasl_password,
            ssl_ca_location=self.ssl_ca_location,
        )

    @contextmanager
    def trade_producer(self, delivery_timeout_ms: int | None = None) -> Iterator[TradeProducer]:
        """A producer that is flushed on the way out, even when the run is interrupted."""
        settings = self.producer_settings()
        if delivery_timeout_ms is not None:
            settings = replace(settings, delivery_timeout_ms=delivery_timeout_ms)
        producer = TradeProducer(settings)
        try:
            yield producer
        finally:
            producer.close()
