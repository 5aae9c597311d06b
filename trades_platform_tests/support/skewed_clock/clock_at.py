"""A pytest plugin: each test module starts as if the wall clock read SKEWED_CLOCK_AT (UTC).

    SKEWED_CLOCK_AT=23:55 .venv/bin/python -m pytest \
        -p trades_platform_tests.support.skewed_clock.clock_at trades_platform_tests/live

Checks that a test's outcome does not depend on the hour. When a module starts, this process's
`time.time` and `time.time_ns` are moved to that time of the current UTC day, and every Python
process started from then on (the simulator, `dagster` CLI runs) by the same offset, through
sitecustomize.py beside this file; within a module the clock runs on. The monotonic clock,
`datetime.now()` and other programs (the broker, PostgreSQL, Chromium) keep the host's time, so
tests that compare those with `time.time` (the simulator's `/0/public/Time` against
`datetime.now()`, `dagster dev`'s code server heartbeats) fail under it for that reason alone.
"""

from __future__ import annotations

import os
import sys
import time

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))
# The host's wall clock, even when sitecustomize.py already moved this process's.
_host_time_ns = getattr(sys.modules.get("sitecustomize"), "_time_ns", time.time_ns)
_offset_ns = 0
_module: str | None = None


def _time() -> float:
    return (_host_time_ns() + _offset_ns) / 1e9


def _time_ns() -> int:
    return _host_time_ns() + _offset_ns


# Loaded with -p, before the tests and what they import: every later `time.time()` reads this.
time.time = _time
time.time_ns = _time_ns


def _move_clock() -> None:
    """Move the clock to SKEWED_CLOCK_AT of the current UTC day, here and in later children."""
    global _offset_ns
    hours, minutes = (int(part) for part in os.environ["SKEWED_CLOCK_AT"].split(":"))
    now = _host_time_ns() / 1e9
    offset = now // 86_400 * 86_400 + hours * 3600 + minutes * 60 - now
    _offset_ns = int(offset * 1e9)
    os.environ["SKEWED_CLOCK_OFFSET_SECONDS"] = repr(offset)
    path = os.environ.get("PYTHONPATH", "")
    if _HERE not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(part for part in (_HERE, path) if part)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """At each module's first test, before its fixtures, move the clock."""
    global _module
    module = item.nodeid.split("::")[0]
    if module != _module:
        _module = module
        _move_clock()
        clock = time.strftime("%H:%M:%S", time.gmtime(_time()))
        print(f"\n[clock_at] {module}: wall clock {clock} UTC", flush=True)
