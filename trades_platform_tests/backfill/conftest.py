"""Fixtures for the backfill tests: one simulator at a rate that puts a trade on midnight."""

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from trades_platform.backfill.partitions import PartitionWindow
from trades_platform.resources import KrakenResource, RedpandaResource
from trades_platform.simulator.market import SimulatedMarket
from trades_platform.testing import SimulatorProcess

PAIRS = ("BTC/USD", "ETH/USD")
# At this rate BTC/USD trade 14741879 is at exactly 2024-01-23T00:00:00.000000Z (found by a
# search over rates; `test_the_midnight_trade_is_where_the_tests_expect_it` guards it).
RATE = 0.115053
MIDNIGHT_KEY = "2024-01-23|BTC/USD"
MIDNIGHT_ID = 14741879
MIDNIGHT = datetime(2024, 1, 23, tzinfo=UTC)


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimulatorProcess]:
    """The Kraken simulator every backfill test reads from (its REST is stateless)."""
    with SimulatorProcess("--pairs", ",".join(PAIRS), "--trades-per-second", str(RATE)) as sim:
        yield sim


@pytest.fixture(scope="session")
def market() -> SimulatedMarket:
    """The same market as the simulator's, computed here: the expected trades."""
    return SimulatedMarket(PAIRS, RATE)


def backfill_resources(
    broker: str, simulator: SimulatorProcess, topic: str, **kraken: Any
) -> dict[str, Any]:
    """Resources for one test: its own topic, the simulator, a pacer lifted for speed."""
    settings: dict[str, Any] = {
        "rest_url": simulator.rest_url,
        "pairs": list(PAIRS),
        "rest_requests_per_second": 200.0,
        "rest_backoff_initial_seconds": 0.05,
        "rest_backoff_max_seconds": 0.2,
    }
    return {
        "kraken": KrakenResource(**(settings | kraken)),
        "redpanda": RedpandaResource(broker_address=broker, topic=topic),
    }


def expected_ids(market: SimulatedMarket, partition_key: str) -> list[int]:
    """Trade ids of the partition's pair and day, from the market itself."""
    window = PartitionWindow.from_key(partition_key)
    first = market.first_id_at_or_after(window.pair, window.start_us)
    stop = market.first_id_at_or_after(window.pair, window.end_us)
    return list(range(first, stop))
