"""A Kraken simulator: WebSocket v2 trades and public REST from a deterministic market.

It stands in for Kraken in tests, CI, benchmarks and offline demos. It shares no code with
the platform's Kraken client on purpose: it is an independent implementation of Kraken's side.
"""

from trades_platform.simulator.config import SimulatorConfig
from trades_platform.simulator.faults import FaultSwitches
from trades_platform.simulator.market import (
    EPOCH_US,
    SimulatedMarket,
    SimulatedTrade,
    trade_time_iso,
)
from trades_platform.simulator.pairs import CATALOGUE, DARK_POOL, PairInfo
from trades_platform.simulator.server import Simulator, run_simulator

__all__ = [
    "CATALOGUE",
    "DARK_POOL",
    "EPOCH_US",
    "FaultSwitches",
    "PairInfo",
    "SimulatedMarket",
    "SimulatedTrade",
    "Simulator",
    "SimulatorConfig",
    "run_simulator",
    "trade_time_iso",
]
