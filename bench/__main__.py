"""`python -m bench [--quick] [--output PATH]`: run the benchmark, print the table, write JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench.harness import Harness
from bench.report import render
from bench.suite import FULL, QUICK, run_suite, summarize

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results.json"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its results."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--repeats", type=int, help="override the number of repetitions")
    parser.add_argument(
        "--only", default="", help="comma-separated label prefixes to run (partial results)"
    )
    parser.add_argument(
        "--frame-sizes", default="", help="trades per frame in the live runs, e.g. 1 or 1,2,50"
    )
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    if args.repeats:
        config = replace(config, repeats=args.repeats)
    if args.frame_sizes:
        sizes = tuple(int(size) for size in args.frame_sizes.split(","))
        config = replace(config, frame_sizes=sizes)
    only = tuple(prefix for prefix in args.only.split(",") if prefix)
    started = time.monotonic()
    rest_trades = config.backfill_trades + 5_000
    with Harness(rest_trades=rest_trades) as harness:
        print(
            f"broker {harness.broker}, replay {harness.ws_url}, "
            f"logs in {harness.log_dir} (kept if a run fails)"
        )
        runs = run_suite(config, harness, only=only)
    if only:
        print(json.dumps(runs, indent=2))
        return 0
    summary = summarize(config, runs)
    table = render(summary, config.to_json())
    results = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "config": config.to_json(),
        "seconds": time.monotonic() - started,
        "summary": summary,
        "runs": runs,
        "table": table,
    }
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(table)
    print(f"\n{len(runs)} runs in {results['seconds']:.0f}s; results in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
