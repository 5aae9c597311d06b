"""Helpers the tests, the soak, the benchmark and CI share (as `bytewax.testing` does).

Run the Kraken simulator (or another server that prints a ready line) as a real subprocess,
read a topic back with a real Kafka client, make the records of simulated trades, count per
pair the ids lost and duplicated, and shape live scenarios so that they come out the same at
any hour.
They ship with the package (the test suite itself does not), so the soak and CI can import them.
"""

from trades_platform.testing.live import (
    grace_backlog,
    grace_seconds,
    live_run_totals,
    once_every_pair_is_written,
)
from trades_platform.testing.scripted_http import ScriptedHttpServer
from trades_platform.testing.simulator import ServerProcess, SimulatorProcess, cli_env
from trades_platform.testing.topic import (
    TopicRecord,
    count_pairs,
    duplicated_ids,
    ids_by_pair,
    read_topic,
    unique_topic,
)
from trades_platform.testing.trades import simulated_trades

__all__ = [
    "ScriptedHttpServer",
    "ServerProcess",
    "SimulatorProcess",
    "TopicRecord",
    "cli_env",
    "count_pairs",
    "duplicated_ids",
    "grace_backlog",
    "grace_seconds",
    "ids_by_pair",
    "live_run_totals",
    "once_every_pair_is_written",
    "read_topic",
    "simulated_trades",
    "unique_topic",
]
