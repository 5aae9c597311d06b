"""The backfill from the command line, as CI and operators run it: real subprocesses."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trades_platform.simulator.market import SimulatedMarket
from trades_platform.testing import (
    SimulatorProcess,
    duplicated_ids,
    ids_by_pair,
    read_topic,
    unique_topic,
)
from trades_platform_tests.backfill.conftest import PAIRS, expected_ids

pytestmark = pytest.mark.slow

DAGSTER = str(Path(sys.executable).with_name("dagster"))
KEY = "2024-01-02|BTC/USD"


def _env(broker: str, simulator: SimulatorProcess, topic: str) -> dict[str, str]:
    env = {
        **os.environ,
        "KAFKA_BROKER_ADDRESS": broker,
        "KAFKA_TOPIC": topic,
        "KRAKEN_REST_URL": simulator.rest_url,
        "KRAKEN_PAIRS": ",".join(PAIRS),
        # The simulator has no rate limit here; lift the pacer to keep the test short.
        "KRAKEN_REST_REQUESTS_PER_SECOND": "100",
    }
    env.pop("DAGSTER_HOME", None)  # a temporary instance, deleted on exit
    return env


def _dagster(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DAGSTER, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(
            [
                *("asset", "materialize", "-m", "trades_platform.definitions"),
                *("--select", "kraken_trades_history", "--partition", KEY),
            ],
            id="asset-materialize",
        ),
        pytest.param(
            [
                *(
                    "job",
                    "execute",
                    "-m",
                    "trades_platform.definitions",
                    "-j",
                    "backfill_trades_job",
                ),
                *("--tags", '{"dagster/partition": "' + KEY + '"}'),
            ],
            id="job-execute",
        ),
    ],
)
def test_cli_backfills_one_partition_exactly(
    command: list[str], broker: str, simulator: SimulatorProcess, market: SimulatedMarket
) -> None:
    topic = unique_topic()

    finished = _dagster(*command, env=_env(broker, simulator, topic))

    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    log = finished.stdout + finished.stderr
    assert "Asset check 'trade_ids_contiguous' on 'kraken_trades_history' passed" in log
    assert "Asset check 'records_match_trade_schema' on 'kraken_trades_history' passed" in log
    ids = expected_ids(market, KEY)
    records = read_topic(broker, topic, expected=len(ids))
    assert ids_by_pair(records) == {"BTC/USD": ids}
    assert duplicated_ids(records) == {}


def test_cli_fails_with_exit_1_on_an_unknown_pair(broker: str) -> None:
    topic = unique_topic()
    with SimulatorProcess("--pairs", "BTC/USD", "--trades-per-second", "0.05") as only_btc:
        finished = _dagster(
            *("asset", "materialize", "-m", "trades_platform.definitions"),
            *("--select", "kraken_trades_history", "--partition", "2024-01-02|ETH/USD"),
            env=_env(broker, only_btc, topic),
        )
    assert finished.returncode == 1
    assert "Kraken does not list pair 'ETH/USD'" in finished.stdout + finished.stderr
