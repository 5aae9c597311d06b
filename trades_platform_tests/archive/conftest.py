"""The archive tests share the backfill tests' simulator and market (same rate, same days)."""

from trades_platform_tests.backfill.conftest import market, simulator

__all__ = ["market", "simulator"]
