"""Runs a Python process as if its host's wall clock were off by SKEWED_CLOCK_OFFSET_SECONDS.

Python imports `sitecustomize` at start-up from its path: `skewed_clock.env()` puts this
directory on a child process's PYTHONPATH (and every Python process it starts inherits it). The
wall clock (`time.time`, `time.time_ns`) moves by the offset; the monotonic clock does not, as on
a real host whose clock is set wrong. Debian's `faketime` would do this below Python, but its
libfaketime 0.9.10 makes timed waits (`threading.Event.wait`) hang or fail here.
"""

import os
import time

_offset_ns = int(float(os.environ.get("SKEWED_CLOCK_OFFSET_SECONDS", "0")) * 1e9)
if _offset_ns:
    _time_ns = time.time_ns

    def _skewed_time() -> float:
        return (_time_ns() + _offset_ns) / 1e9

    def _skewed_time_ns() -> int:
        return _time_ns() + _offset_ns

    time.time = _skewed_time
    time.time_ns = _skewed_time_ns
