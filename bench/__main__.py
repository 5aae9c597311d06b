"""`python -m bench [--quick] [--output PATH]`: run the benchmark, print the table, write JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.archive import FULL_ARCHIVE, QUICK_ARCHIVE, run_archive
from bench.harness import Harness
from bench.report import render, render_archive, render_scale
from bench.scale import FULL_SCALE, QUICK_SCALE, run_scale
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
        "--section",
        choices=("all", "trade-path", "scale", "archive"),
        default="all",
        help="the trade path's runs, the scale section (empty topic vs 10 M records), the "
        "archive section (one day of 100,000 trades -> Parquet and candles), or all three",
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
    results: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "config": config.to_json(),
    }
    tables: list[str] = []
    if args.section in ("all", "trade-path"):
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
        results.update(summary=summary, runs=runs)
        tables.append(render(summary, config.to_json()))
    if args.section in ("all", "scale"):
        log_dir = Path(tempfile.mkdtemp(prefix="trades-bench-scale-"))
        print(f"scale section, logs in {log_dir}")
        scale = run_scale(QUICK_SCALE if args.quick else FULL_SCALE, log_dir)
        results["scale"] = scale
        tables.append(render_scale(scale))
    if args.section in ("all", "archive"):
        log_dir = Path(tempfile.mkdtemp(prefix="trades-bench-archive-"))
        print(f"archive section, logs in {log_dir}")
        archive = run_archive(QUICK_ARCHIVE if args.quick else FULL_ARCHIVE, log_dir)
        results["archive"] = archive
        tables.append(render_archive(archive))
    results["seconds"] = time.monotonic() - started
    results["table"] = "\n\n".join(tables)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(results["table"])
    print(f"\nbenchmark in {results['seconds']:.0f}s; results in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
