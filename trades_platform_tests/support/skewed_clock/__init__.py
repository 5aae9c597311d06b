"""A child process whose wall clock is off (see sitecustomize.py beside this file)."""

import os
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)


def env(base: dict[str, str], offset_seconds: float) -> dict[str, str]:
    """`base` for a child process whose wall clock runs `offset_seconds` ahead (or behind) of
    this one's (which may be skewed itself: the offsets add up)."""
    path = base.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    own = float(os.environ.get("SKEWED_CLOCK_OFFSET_SECONDS", "0"))
    return {
        **base,
        "PYTHONPATH": os.pathsep.join(part for part in (_HERE, path) if part),
        "SKEWED_CLOCK_OFFSET_SECONDS": str(own + offset_seconds),
    }
