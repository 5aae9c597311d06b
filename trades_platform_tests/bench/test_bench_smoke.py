"""`python -m bench --quick`: every path runs against a real broker and every trade is acked.

No timing assertions: the speed targets live in the benchmark itself (`make bench`).
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

# Runs the whole benchmark in --quick mode: about a minute.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PATHS = {
    "live_limit",
    "live_baseline",
    "live_product",
    "live_latency",
    "backfill_limit",
    "backfill_product",
    "backfill_paced",
}


def test_quick_benchmark_is_well_formed_and_every_trade_acknowledged(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(output)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(output.read_text())

    runs = results["runs"]
    assert {run["path"] for run in runs} == PATHS
    for run in runs:
        assert run["trades"] > 0, run
        assert run["acknowledged"] == run["trades"], run
        assert run["seconds"] > 0 and run["cpu_seconds"] >= 0, run
        assert run["process_maxrss_mb"] > 0, run

    summary = results["summary"]
    numbers = [
        summary["live"]["limit_trades_per_second"],
        summary["live"]["baseline_trades_per_second"],
        summary["live"]["product_trades_per_second"],
        summary["live"]["product_to_limit"],
        summary["backfill"]["product_to_limit"],
        summary["backfill_paced"]["allowance_used"],
        summary["latency"]["1000"]["p99_ms"],
    ]
    assert all(math.isfinite(value) and value > 0 for value in numbers), numbers
    assert summary["backfill_paced"]["rate_limit_waits"] == 0
    assert {"1", "50"} <= summary["resources"].keys()
    for target in summary["targets"]:
        assert set(target) == {"target", "value", "threshold", "comparison", "met"}
    assert "| target |" in results["table"] and results["table"] in done.stdout

    # The scale section: both topics measured in the same repetition, with real numbers.
    scale = results["scale"]
    assert [run["label"] for run in scale["runs"]] == ["empty", "history"]
    assert scale["first_read_records"] >= scale["config"]["history_records"]
    for run in scale["runs"]:
        assert run["partition_seconds"] > 0 and run["live_first_ack_seconds"] > 0, run
    assert [target["target"].split(" (")[0] for target in scale["targets"]] == [
        "one partition",
        "live start to first ack",
    ]
    assert "history ÷ empty" in results["table"]

    # The archive section: one day from the topic to its Parquet file and candles, all checked.
    archive = results["archive"]
    trades = archive["config"]["trades"]
    for run in archive["runs"]:
        assert run["parquet"]["rows"] == trades and run["candles"]["trades"] == trades, run
        assert run["parquet"]["asset_seconds"] > 0 and run["candles"]["total_seconds"] > 0, run
    assert archive["parquet_bytes"] > 0 and archive["candles_rows"] > 0
    assert "kraken_trades_parquet" in results["table"]
