"""Settings read from the environment when the definitions load.

Resources read their values through `dagster.EnvVar`, so the UI shows where a value came from and
secrets never appear in run config. Only what shapes the definitions themselves (the pairs, which
become partitions) is read here directly.
"""

from __future__ import annotations

import os
from typing import Any

from dagster import EnvVar

DEFAULT_PAIRS = ("BTC/USD", "ETH/USD")


def configured_pairs() -> list[str]:
    """Pairs from `KRAKEN_PAIRS` (comma-separated WebSocket v2 names), e.g. `BTC/USD,ETH/USD`."""
    raw = os.environ.get("KRAKEN_PAIRS", "")
    pairs = [pair.strip().upper() for pair in raw.split(",") if pair.strip()]
    if not pairs:
        return list(DEFAULT_PAIRS)
    malformed = [pair for pair in pairs if pair.count("/") != 1 or pair.startswith("/")]
    if malformed:
        raise ValueError(
            f"KRAKEN_PAIRS has malformed pairs {malformed}: use WebSocket v2 names like BTC/USD"
        )
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"KRAKEN_PAIRS lists a pair twice: {pairs}")
    return pairs


def env_or_default(name: str, default: Any) -> Any:
    """`EnvVar(name)` when the variable is set, else the default, so both show in the UI."""
    if name not in os.environ:
        return default
    if isinstance(default, bool):
        return os.environ[name].strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return EnvVar.int(name)
    if isinstance(default, float):
        # EnvVar has no float form; a bad value must still fail with the variable's name.
        try:
            return float(os.environ[name])
        except ValueError:
            raise ValueError(f"{name}={os.environ[name]!r} is not a number") from None
    return EnvVar(name)
