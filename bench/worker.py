"""One measured run in a fresh process: `python -m bench.worker '<RunSpec JSON>'`.

A fresh process per run keeps runs independent (no warm caches, no leftover librdkafka threads)
and lets the parent read the run's own CPU time and peak RSS with `os.wait4`.
"""

from __future__ import annotations

import json
import sys

from bench.paths import run
from bench.spec import RunSpec

RESULT_PREFIX = "BENCH-RESULT "


def main(argv: list[str]) -> int:
    """Run the spec given as the only argument; print one result line."""
    spec = RunSpec.from_json(argv[1])
    result = run(spec)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
