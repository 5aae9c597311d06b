"""Shared fixtures: a real Kafka-protocol broker for the whole session, simulators on demand."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from trades_platform.local_broker import LocalBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """Address of a tansu broker started for this test session."""
    with LocalBroker() as running:
        yield running.address
