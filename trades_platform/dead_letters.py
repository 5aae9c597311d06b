"""The dead-letter topic `<topic>.dlq`: every frame or item the platform could not use, and why."""

from __future__ import annotations

import time

import orjson
from quixstreams import Application
from quixstreams.models import TopicConfig

from trades_platform.kraken.protocol import short_repr
from trades_platform.kraken.websocket import RejectedFrame
from trades_platform.producer import quix_connection
from trades_platform.settings import KafkaSettings
from trades_platform.topics import dlq_topic, dlq_topic_config

# Raw input is cut to this many characters: the reason matters, a 10 MB frame does not.
MAX_RAW_CHARS = 65_536


class DeadLetterProducer:
    """Writes rejected input with its reason; never raises into the hot path."""

    def __init__(self, settings: KafkaSettings, source: str) -> None:
        self.source = source
        self._app = Application(
            broker_address=quix_connection(settings),
            producer_extra_config=settings.producer_config(),
            auto_create_topics=True,
        )
        self.topic = self._app.topic(
            dlq_topic(settings),
            key_serializer="str",
            value_serializer="json",
            config=TopicConfig(
                num_partitions=1,
                replication_factor=settings.replication_factor,
                extra_config=dlq_topic_config(settings),
            ),
        )
        self._producer = self._app.get_producer()
        self.sent = 0

    def send(self, rejected: RejectedFrame) -> None:
        """Queue one rejected frame or item for the dead-letter topic."""
        text = _raw_text(rejected.raw)
        value = {
            "reason": rejected.reason,
            "raw": text[:MAX_RAW_CHARS],
            "raw_length": len(text),
            "source": self.source,
            "received_at_ms": int(time.time() * 1000),
        }
        message = self.topic.serialize(key=self.source, value=value)
        self._producer.produce(self.topic.name, message.value, message.key)
        self.sent += 1

    def close(self, timeout_seconds: float = 10.0) -> None:
        """Flush what is queued."""
        self._producer.flush(timeout_seconds)


def _raw_text(raw: object) -> str:
    """The rejected input as text: JSON where it can be, a bounded repr where it cannot."""
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace")
    if isinstance(raw, str):
        return raw
    try:
        return orjson.dumps(raw).decode()
    except (TypeError, orjson.JSONEncodeError):
        # Nested deeper than JSON writers go (an item a thousand levels deep), or not JSON.
        return short_repr(raw)
