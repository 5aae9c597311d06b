"""What a benchmark runs, in which order, and how its runs become a summary and target checks."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from bench.harness import Harness

# What KrakenTradeStream sets on its socket: min(idle_yield_seconds, watchdog_seconds).
_STREAM_SOCKET_TIMEOUT_SECONDS = 1.0
# The simulator's default pace, trades per second per pair (one REST page = 1000 trades).
_SIMULATOR_TRADES_PER_SECOND = 5.0


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of a benchmark; `FULL` is `make bench`, `QUICK` the smoke test."""

    repeats: int = 5
    live_trades: int = 300_000
    live_pairs: int = 10
    # Trades per frame in the live runs, cycled; () is the replay server's mix (1,1,2,3,5,8,20).
    frame_sizes: tuple[int, ...] = ()
    baseline_trades: int = 40_000
    latency_rates: tuple[float, ...] = (1_000.0, 10_000.0)
    latency_seconds: float = 6.0
    latency_warmup_seconds: float = 1.0
    backfill_trades: int = 200_000
    paced_pages: int = 10
    paced_allowed_calls_per_second: float = 1.0
    resource_pairs: tuple[int, ...] = (1, 50, 500)
    resource_trades: int = 300_000
    # A latency run with this linger.ms instead of the product's, to show what linger costs.
    latency_probe_linger_ms: int | None = 1

    def to_json(self) -> dict[str, Any]:
        """The configuration, for results.json."""
        return asdict(self)


FULL = BenchConfig()
QUICK = BenchConfig(
    repeats=1,
    live_trades=3_000,
    live_pairs=3,
    baseline_trades=1_000,
    latency_rates=(1_000.0,),
    latency_seconds=2.0,
    latency_warmup_seconds=0.5,
    backfill_trades=3_000,
    paced_pages=2,
    resource_pairs=(1, 50),
    resource_trades=3_000,
)


def run_suite(
    config: BenchConfig,
    harness: Harness,
    progress: Callable[[str], None] = print,
    only: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Every run of the benchmark; repetitions interleave paths so drift hits all alike.

    `only` keeps the runs whose label starts with one of its prefixes (for quick experiments).
    """
    runs: list[dict[str, Any]] = []

    def measure(label: str, path: str, **fields: Any) -> None:
        if only and not label.startswith(only):
            return
        result = harness.run(harness.spec(path, **fields))
        result["label"] = label
        runs.append(result)
        progress(
            f"  {label:<26} {result['trades']:>8} trades  {result['trades_per_second']:>11,.0f}/s"
            f"  acked {result['acknowledged']}"
        )

    for repeat in range(config.repeats):
        progress(f"repetition {repeat + 1}/{config.repeats}")
        live = {"pairs": config.live_pairs, "frame_sizes": config.frame_sizes}
        measure("live_limit", "live_limit", trades=config.live_trades, **live)
        measure(
            "live_limit_socket_timeout",
            "live_limit",
            trades=config.live_trades,
            socket_timeout=_STREAM_SOCKET_TIMEOUT_SECONDS,
            **live,
        )
        measure("live_baseline", "live_baseline", trades=config.baseline_trades, **live)
        measure(
            "live_baseline_skip_utf8",
            "live_baseline",
            trades=config.baseline_trades,
            skip_utf8=True,
            **live,
        )
        measure("live_product", "live_product", trades=config.live_trades, **live)
        measure("backfill_limit", "backfill_limit", trades=config.backfill_trades)
        measure("backfill_product", "backfill_product", trades=config.backfill_trades)
        window = config.paced_pages * 1000 / _SIMULATOR_TRADES_PER_SECOND
        measure(
            "backfill_paced",
            "backfill_paced",
            rest_url=harness.paced_rest_url,
            rate=config.paced_allowed_calls_per_second,
            window_seconds=window,
        )
        for pairs in config.resource_pairs:
            measure(
                f"resources_{pairs}_pairs",
                "live_product",
                trades=config.resource_trades,
                pairs=pairs,
            )
    latency_runs: list[tuple[str, float, dict[str, Any]]] = [
        (f"latency_{int(rate)}", rate, {}) for rate in config.latency_rates
    ]
    if config.latency_probe_linger_ms is not None:
        rate = config.latency_rates[0]
        linger = config.latency_probe_linger_ms
        latency_runs.append((f"latency_{int(rate)}_linger_{linger}ms", rate, {"linger.ms": linger}))
    for label, rate, extra in latency_runs:
        measure(
            label,
            "live_latency",
            trades=int(rate * (config.latency_seconds + config.latency_warmup_seconds)),
            pairs=config.live_pairs,
            rate=rate,
            warmup_seconds=config.latency_warmup_seconds,
            producer_extra=extra,
        )
    return runs


def _by_label(runs: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
    return [run for run in runs if run["label"] == label]


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _paired_ratio(runs: list[dict[str, Any]], top: str, bottom: str) -> list[float]:
    """Per repetition, `top` rate / `bottom` rate: both measured in the same repetition."""
    return [
        a["trades_per_second"] / b["trades_per_second"]
        for a, b in zip(_by_label(runs, top), _by_label(runs, bottom), strict=True)
        if b["trades_per_second"] > 0
    ]


def summarize(config: BenchConfig, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians across repetitions, paired ratios, latency, resources, target checks."""

    def rate(label: str) -> float:
        return _median([run["trades_per_second"] for run in _by_label(runs, label)])

    def cpu_us(label: str) -> float:
        """Median CPU (all threads) per trade in the measured window, µs."""
        return _median([run["cpu_seconds"] / run["trades"] * 1e6 for run in _by_label(runs, label)])

    summary: dict[str, Any] = {
        "live": {
            "limit_trades_per_second": rate("live_limit"),
            "baseline_trades_per_second": rate("live_baseline"),
            "baseline_skip_utf8_trades_per_second": rate("live_baseline_skip_utf8"),
            "product_trades_per_second": rate("live_product"),
            "product_to_limit": _median(_paired_ratio(runs, "live_product", "live_limit")),
            "limit_socket_timeout_trades_per_second": rate("live_limit_socket_timeout"),
            "product_to_limit_socket_timeout": _median(
                _paired_ratio(runs, "live_product", "live_limit_socket_timeout")
            ),
            "product_to_baseline": _median(_paired_ratio(runs, "live_product", "live_baseline")),
            "product_to_baseline_skip_utf8": _median(
                _paired_ratio(runs, "live_product", "live_baseline_skip_utf8")
            ),
            "product_to_limit_each": _paired_ratio(runs, "live_product", "live_limit"),
            "product_to_baseline_each": _paired_ratio(runs, "live_product", "live_baseline"),
            "cpu_us_per_trade": {
                "limit": cpu_us("live_limit"),
                "limit_socket_timeout": cpu_us("live_limit_socket_timeout"),
                "baseline": cpu_us("live_baseline"),
                "baseline_skip_utf8": cpu_us("live_baseline_skip_utf8"),
                "product": cpu_us("live_product"),
            },
        },
        "backfill": {
            "limit_trades_per_second": rate("backfill_limit"),
            "product_trades_per_second": rate("backfill_product"),
            "product_to_limit": _median(_paired_ratio(runs, "backfill_product", "backfill_limit")),
            "product_to_limit_each": _paired_ratio(runs, "backfill_product", "backfill_limit"),
            "cpu_us_per_trade": {
                "limit": cpu_us("backfill_limit"),
                "product": cpu_us("backfill_product"),
            },
        },
        "latency": {
            run["label"].removeprefix("latency_"): {
                key: run[key]
                for key in (
                    "rate",
                    "p50_ms",
                    "p99_ms",
                    "max_ms",
                    "produce_to_ack_p50_ms",
                    "produce_to_ack_p99_ms",
                    "measured",
                )
            }
            for run in _by_label_prefix(runs, "latency_")
        },
    }
    paced = _by_label(runs, "backfill_paced")
    allowed = config.paced_allowed_calls_per_second
    summary["backfill_paced"] = {
        "allowed_calls_per_second": allowed,
        "pages_per_second": _median([run["pages_per_second"] for run in paced]),
        "allowance_used": _median([run["pages_per_second"] / allowed for run in paced]),
        "allowance_used_each": [run["pages_per_second"] / allowed for run in paced],
        "rate_limit_waits": sum(run["rate_limit_waits"] for run in paced),
    }
    resources: dict[str, Any] = {}
    for pairs in config.resource_pairs:
        group = _by_label(runs, f"resources_{pairs}_pairs")
        resources[str(pairs)] = {
            "cpu_seconds_per_million": _median(
                [run["cpu_seconds"] / run["trades"] * 1e6 for run in group]
            ),
            "process_cpu_seconds": _median([run["process_cpu_seconds"] for run in group]),
            "peak_rss_mb": max(run["process_maxrss_mb"] for run in group),
            "trades_per_second": _median([run["trades_per_second"] for run in group]),
        }
    summary["resources"] = resources
    summary["targets"] = _targets(config, summary)
    return summary


def _by_label_prefix(runs: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [run for run in runs if run["label"].startswith(prefix)]


def _targets(config: BenchConfig, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets: value, threshold, met."""
    targets: list[dict[str, Any]] = []

    def check(name: str, value: float, threshold: float, at_least: bool) -> None:
        met = value >= threshold if at_least else value <= threshold
        targets.append(
            {
                "target": name,
                "value": value,
                "threshold": threshold,
                "comparison": ">=" if at_least else "<=",
                "met": met,
            }
        )

    live, backfill = summary["live"], summary["backfill"]
    check("live product / limit", live["product_to_limit"], 0.7, True)
    check("live product / baseline", live["product_to_baseline"], 10.0, True)
    check("backfill product / limit", backfill["product_to_limit"], 0.7, True)
    if "1000" in summary["latency"]:
        check("p99 latency at 1k trades/s (ms)", summary["latency"]["1000"]["p99_ms"], 10.0, False)
    check("API allowance used", summary["backfill_paced"]["allowance_used"], 0.95, True)
    resources = summary["resources"]
    first, last = str(config.resource_pairs[0]), str(config.resource_pairs[-1])
    base_cpu = resources[first]["cpu_seconds_per_million"]
    if base_cpu > 0:
        check(
            f"CPU per trade, {last} pairs / {first} pair",
            resources[last]["cpu_seconds_per_million"] / base_cpu,
            1.2,
            False,
        )
    check(f"peak RSS at {last} pairs (MB)", resources[last]["peak_rss_mb"], 250.0, False)
    return targets
