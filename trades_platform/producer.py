"""Writes trade records to the `trades` topic through one Quix Streams producer.

Every writer (live, backfill, heal) goes through `TradeProducer`, so the key, the JSON value, the
message timestamp and the delivery guarantees are decided in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, Message
from quixstreams import Application
from quixstreams.kafka.configuration import ConnectionConfig
from quixstreams.models import TopicConfig

from trades_platform.settings import KafkaSettings
from trades_platform.topics import TRADES_TOPIC_CONFIG, check_keeps_history
from trades_platform.trade import Trade

logger = logging.getLogger(__name__)


class DeliveryError(RuntimeError):
    """The broker refused or never acknowledged a trade: the run must fail, not go on silently."""


def quix_connection(settings: KafkaSettings) -> ConnectionConfig:
    """Quix Streams' connection settings, from the one librdkafka client configuration."""
    return ConnectionConfig.from_librdkafka_dict(settings.client_config())


class TradeProducer:
    """Produces trades with the pair as key and the trade time as message timestamp."""

    def __init__(
        self, settings: KafkaSettings, *, extra_config: dict[str, Any] | None = None
    ) -> None:
        """`extra_config`: librdkafka producer overrides (benchmarks, tests)."""
        self.settings = settings
        self._app = Application(
            broker_address=quix_connection(settings),
            producer_extra_config={**settings.producer_config(), **(extra_config or {})},
            auto_create_topics=True,
        )
        # Declaring the topic creates it on the broker when it does not exist yet.
        self.topic = self._app.topic(
            settings.topic,
            key_serializer="str",
            value_serializer="json",
            config=TopicConfig(
                num_partitions=settings.topic_partitions,
                replication_factor=settings.replication_factor,
                extra_config=TRADES_TOPIC_CONFIG,
            ),
        )
        # A topic made elsewhere, or by an older version, may delete history: refuse it.
        check_keeps_history(settings)
        self._producer = self._app.get_producer()
        self.sent = 0
        self.acknowledged = 0
        self.failed = 0
        self._first_error: str | None = None

    def send(self, trades: Iterable[Trade]) -> None:
        """Queue trades for delivery; raises if an earlier delivery has failed."""
        self._raise_on_failure()
        # Straight into librdkafka's queue, not through Quix's produce(), which polls after every
        # message: that cost as much as the produce itself (`poll()` serves the callbacks once
        # per batch instead). The message is what Quix's `topic.serialize` makes of a trade: the
        # key str as UTF-8, the value as JSON by orjson (Quix's serializer), the trade's time in
        # ms as the Kafka timestamp.
        confluent = self.librdkafka
        produce, topic, on_delivery = confluent.produce, self.topic.name, self._on_delivery
        to_json, any_partition = Trade.to_json, -1
        sent = 0
        try:
            for trade in trades:
                # Positional, because keyword arguments cost a third of the call. The C signature
                # is (topic, value, key, partition, callback, on_delivery, timestamp, headers);
                # partition -1 means "use the partitioner", as when it is left out. The key is
                # `trade.message_key` without its two Python calls.
                message = (
                    topic,
                    to_json(trade),
                    trade.pair.replace("/", "-"),
                    any_partition,
                    on_delivery,
                    None,
                    trade.timestamp_ms,
                )
                while True:
                    try:
                        produce(*message)
                        break
                    except BufferError:
                        # librdkafka's queue is full (the broker is slow or away): wait for room,
                        # but give up once deliveries fail (by delivery.timeout.ms at the latest).
                        confluent.poll(0.1)
                        self._raise_on_failure()
                sent += 1
        finally:
            self.sent += sent

    @property
    def librdkafka(self) -> Any:
        """The confluent-kafka producer inside Quix's, built from this producer's configuration.

        Quix Streams has no public handle on it, and its `produce()` polls after every message;
        `send` and the benchmark produce into this one directly. The one place that reaches
        into Quix: a Quix upgrade that renames it fails here, in every test that writes.
        """
        return self._producer._producer

    def poll(self) -> None:
        """Serve delivery callbacks without blocking."""
        self._producer.poll(0)
        self._raise_on_failure()

    @property
    def pending(self) -> int:
        """Trades sent but not yet acknowledged or failed."""
        return self.sent - self.acknowledged - self.failed

    def flush(self, timeout_seconds: float = 30.0) -> None:
        """Wait until every sent trade is acknowledged; raise if any was not."""
        remaining = self._producer.flush(timeout_seconds)
        self._raise_on_failure()
        if remaining or self.pending:
            raise DeliveryError(
                f"{self.pending} trade(s) not acknowledged by {self.settings.broker_address} "
                f"within {timeout_seconds}s"
            )

    def close(self, timeout_seconds: float = 30.0) -> None:
        """Flush what is queued and log, rather than raise, if that fails (used in `finally`)."""
        try:
            self.flush(timeout_seconds)
        except DeliveryError as error:
            logger.error(f"Closing the producer: {error}")

    def _on_delivery(self, error: KafkaError | None, _message: Message) -> None:
        if error is None:
            self.acknowledged += 1
            return
        self.failed += 1
        if self._first_error is None:
            self._first_error = str(error)

    def _raise_on_failure(self) -> None:
        if self._first_error is not None:
            raise DeliveryError(
                f"{self.failed} trade(s) failed delivery to topic {self.settings.topic!r}: "
                f"{self._first_error}"
            )
