"""A measured run's parameters, passed from the harness to a worker process as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunSpec:
    """One measured run, passed to a worker process as JSON."""

    path: str
    broker: str
    topic: str
    ws_url: str = ""
    rest_url: str = ""
    trades: int = 0
    pairs: int = 1
    rate: float = 0.0
    warmup_seconds: float = 1.0
    window_seconds: float = 0.0
    # Trades per frame, cycled; empty means the replay server's default mix.
    frame_sizes: tuple[int, ...] = ()
    # The limit with a socket timeout like the product's (its watchdog needs one), to show what
    # that costs: with a timeout, CPython polls the socket before every recv.
    socket_timeout: float | None = None
    # The baseline with websocket-client's pure-Python UTF-8 check off, to show what it costs.
    skip_utf8: bool = False
    # librdkafka settings on top of KafkaSettings.producer_config(), for experiments.
    producer_extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The spec as a JSON string (a worker's argument)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        """Inverse of `to_json`."""
        fields = json.loads(text)
        fields["frame_sizes"] = tuple(fields.get("frame_sizes", ()))
        return cls(**fields)
