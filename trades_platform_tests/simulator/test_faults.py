"""Fault switches and the left-out rule, without sockets."""

from __future__ import annotations

from typing import Any

import pytest

from trades_platform.simulator.config import SimulatorConfig
from trades_platform.simulator.core import SimulatorCore
from trades_platform.simulator.faults import FaultSwitches


def test_new_switches_are_off_by_default_and_listed() -> None:
    state = FaultSwitches().to_json()
    assert state["omit_every_nth_id"] is None
    assert state["omit_same_timestamp_followers"] is False
    assert state["rest_unavailable"] is False
    assert state["rest_delay_seconds"] == 0.0
    assert not FaultSwitches().omits_trades


def test_update_accepts_good_values() -> None:
    switches = FaultSwitches()
    switches.update(
        {
            "omit_every_nth_id": 7,
            "omit_same_timestamp_followers": True,
            "rest_unavailable": True,
            "rest_delay_seconds": 2,
        }
    )
    assert switches.to_json() == {
        **FaultSwitches().to_json(),
        "omit_every_nth_id": 7,
        "omit_same_timestamp_followers": True,
        "rest_unavailable": True,
        "rest_delay_seconds": 2.0,
    }
    assert isinstance(switches.rest_delay_seconds, float)
    assert switches.omits_trades
    switches.update({"omit_every_nth_id": 0, "omit_same_timestamp_followers": False})
    assert switches.omit_every_nth_id is None, "0 means off"
    assert not switches.omits_trades
    switches.update({"omit_every_nth_id": None, "rest_delay_seconds": 0.25})
    assert switches.omit_every_nth_id is None and switches.rest_delay_seconds == 0.25


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("omit_every_nth_id", -1),
        ("omit_every_nth_id", 1.5),
        ("omit_every_nth_id", "7"),
        ("omit_every_nth_id", True),
        ("omit_same_timestamp_followers", 1),
        ("omit_same_timestamp_followers", "true"),
        ("omit_same_timestamp_followers", None),
        ("rest_unavailable", 0),
        ("rest_unavailable", "yes"),
        ("rest_delay_seconds", -0.5),
        ("rest_delay_seconds", float("inf")),
        ("rest_delay_seconds", float("nan")),
        ("rest_delay_seconds", "1"),
        ("rest_delay_seconds", None),
        ("rest_delay_seconds", True),
    ],
)
def test_update_refuses_bad_values_and_applies_nothing(name: str, value: Any) -> None:
    switches = FaultSwitches()
    before = switches.to_json()
    with pytest.raises(ValueError, match=name):
        # A valid change in the same request must not be applied either.
        switches.update({"drop_after_trades": 5, name: value})
    assert switches.to_json() == before


def _core(per_match: int, **faults: Any) -> SimulatorCore:
    return SimulatorCore(
        SimulatorConfig(
            pairs=("BTC/USD",),
            trades_per_second=50.0,
            trades_per_match=per_match,
            faults=FaultSwitches(**faults),
        )
    )


def _left_out(core: SimulatorCore, ids: range) -> list[int]:
    return [i for i in ids if core.left_out("BTC/USD", i)]


def test_left_out_every_nth_id() -> None:
    core = _core(1, omit_every_nth_id=7)
    assert _left_out(core, range(1, 50)) == [7, 14, 21, 28, 35, 42, 49]
    assert _left_out(_core(1), range(1, 50)) == []


@pytest.mark.parametrize("per_match", [2, 3, 7])
def test_left_out_followers_are_all_but_the_first_of_each_match(per_match: int) -> None:
    core = _core(per_match, omit_same_timestamp_followers=True)
    ids = range(1, 30 * per_match + 1)
    assert _left_out(core, ids) == [i for i in ids if (i - 1) % per_match]
    assert _left_out(_core(1, omit_same_timestamp_followers=True), ids) == []


def test_left_out_combines_both_rules() -> None:
    core = _core(3, omit_every_nth_id=4, omit_same_timestamp_followers=True)
    sent = [i for i in range(1, 40) if not core.left_out("BTC/USD", i)]
    assert sent == [1, 7, 10, 13, 19, 22, 25, 31, 34, 37]


def test_left_out_decides_by_time_not_by_rounding() -> None:
    # At 2.5M trades/s several ids share a microsecond even without matches: those count too.
    core = SimulatorCore(
        SimulatorConfig(
            pairs=("BTC/USD",),
            trades_per_second=2_500_000.0,
            faults=FaultSwitches(omit_same_timestamp_followers=True),
        )
    )
    market = core.market
    for trade_id in range(2, 200):
        same = market.time_us("BTC/USD", trade_id) == market.time_us("BTC/USD", trade_id - 1)
        assert core.left_out("BTC/USD", trade_id) == same
    assert not core.left_out("BTC/USD", 1)
