"""The printed (Markdown) table of a benchmark's summary."""

from __future__ import annotations

from typing import Any


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _live(summary: dict[str, Any], config: dict[str, Any]) -> list[str]:
    live = summary["live"]
    cpu = live["cpu_us_per_trade"]
    sizes = config["frame_sizes"]
    frames = (
        f"frames of {'/'.join(str(size) for size in sizes)} trades"
        if sizes
        else "frames of 1 to 20 trades (mean 5.7)"
    )
    return [
        f"Live path, {config['live_pairs']} pairs, {frames}: median of {config['repeats']}; "
        "ratios paired within a repetition",
        "",
        _row("path", "trades/s", "CPU µs/trade", "÷ limit", "÷ baseline"),
        _row("---", "---:", "---:", "---:", "---:"),
        _row(
            "limit: websocket-client + orjson + bare confluent Producer",
            f"{live['limit_trades_per_second']:,.0f}",
            f"{cpu['limit']:.2f}",
            "1.00",
            "",
        ),
        _row(
            "limit, with the product's 1 s socket timeout",
            f"{live['limit_socket_timeout_trades_per_second']:,.0f}",
            f"{cpu['limit_socket_timeout']:.2f}",
            f"({live['product_to_limit_socket_timeout']:.2f} product ÷ this)",
            "",
        ),
        _row(
            "baseline: json + pydantic + Quix per trade + INFO log",
            f"{live['baseline_trades_per_second']:,.0f}",
            f"{cpu['baseline']:.2f}",
            "",
            "1.0",
        ),
        _row(
            "baseline, websocket-client's UTF-8 check off",
            f"{live['baseline_skip_utf8_trades_per_second']:,.0f}",
            f"{cpu['baseline_skip_utf8']:.2f}",
            "",
            "",
        ),
        _row(
            "**product**: KrakenTradeStream -> TradeProducer",
            f"{live['product_trades_per_second']:,.0f}",
            f"{cpu['product']:.2f}",
            f"{live['product_to_limit']:.2f}",
            f"{live['product_to_baseline']:.1f} "
            f"({live['product_to_baseline_skip_utf8']:.1f} without the UTF-8 check)",
        ),
    ]


def _latency(summary: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "Latency of the product path at a fixed rate: replay send -> delivery callback, "
        "after a 1 s warm-up (produce -> ack is librdkafka's share)",
        "",
        _row("run", "p50 ms", "p99 ms", "max ms", "produce->ack p50 / p99 ms", "trades"),
        _row("---", "---:", "---:", "---:", "---:", "---:"),
    ]
    for label, numbers in summary["latency"].items():
        rate = f"{numbers['rate']:,.0f} trades/s"
        name = rate if label.isdigit() else f"{rate}, {label.split('_', 1)[1].replace('_', ' ')}"
        lines.append(
            _row(
                name,
                f"{numbers['p50_ms']:.2f}",
                f"{numbers['p99_ms']:.2f}",
                f"{numbers['max_ms']:.2f}",
                f"{numbers['produce_to_ack_p50_ms']:.2f} / {numbers['produce_to_ack_p99_ms']:.2f}",
                f"{numbers['measured']:,}",
            )
        )
    return lines


def _backfill(summary: dict[str, Any]) -> list[str]:
    backfill, paced = summary["backfill"], summary["backfill_paced"]
    cpu = backfill["cpu_us_per_trade"]
    return [
        "",
        "Backfill path: REST pages of 1000 trades -> topic",
        "",
        _row("path", "trades/s", "CPU µs/trade", "÷ limit"),
        _row("---", "---:", "---:", "---:"),
        _row(
            "limit: requests + orjson + bare Producer, no rate limit",
            f"{backfill['limit_trades_per_second']:,.0f}",
            f"{cpu['limit']:.2f}",
            "1.00",
        ),
        _row(
            "**product**: KrakenRestClient -> TradeProducer, no rate limit",
            f"{backfill['product_trades_per_second']:,.0f}",
            f"{cpu['product']:.2f}",
            f"{backfill['product_to_limit']:.2f}",
        ),
        "",
        f"With the limit on (simulator {paced['allowed_calls_per_second']:g} call/s, client pacer "
        f"1/s): {paced['pages_per_second']:.3f} pages/s = {paced['allowance_used']:.1%} of the "
        f"allowance, {paced['rate_limit_waits']} rate-limit answers.",
    ]


def _resources(summary: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "Product live path per process, by number of pairs (CPU of all threads)",
        "",
        _row("pairs", "CPU s / million trades", "process CPU s", "peak RSS MB", "trades/s"),
        _row("---:", "---:", "---:", "---:", "---:"),
    ]
    for pairs, numbers in summary["resources"].items():
        lines.append(
            _row(
                pairs,
                f"{numbers['cpu_seconds_per_million']:.2f}",
                f"{numbers['process_cpu_seconds']:.2f}",
                f"{numbers['peak_rss_mb']:.0f}",
                f"{numbers['trades_per_second']:,.0f}",
            )
        )
    return lines


def _targets(summary: dict[str, Any]) -> list[str]:
    lines = ["", _row("target", "value", "threshold", "met"), _row("---", "---:", "---:", "---")]
    for target in summary["targets"]:
        lines.append(
            _row(
                target["target"],
                f"{target['value']:.3g}",
                f"{target['comparison']} {target['threshold']:g}",
                "yes" if target["met"] else "**no**",
            )
        )
    return lines


def render_scale(scale: dict[str, Any]) -> str:
    """The scale section's table: empty topic against one holding older history."""
    config = scale["config"]
    history = f"{config['history_records']:,} older records of {config['history_pairs']} pairs"
    lines = [
        f"Scale: an empty topic against one holding {history}; median of {config['repeats']}, "
        "ratios paired within a repetition",
        f"(history written in {scale['history_write_seconds']:.0f}s; its first read, which "
        f"builds the index, {scale['first_read_seconds']:.0f}s for "
        f"{scale['first_read_records']:,} records)",
        "",
        _row("measure", "empty topic, s", "with history, s", "history ÷ empty"),
        _row("---", "---:", "---:", "---:"),
        _row(
            "one backfill partition (pacing lifted), with its checks",
            f"{scale['partition_seconds']['empty']:.1f}",
            f"{scale['partition_seconds']['history']:.1f}",
            f"{scale['partition_ratio']:.2f}",
        ),
        _row(
            "live run: start to first acknowledged trade",
            f"{scale['live_first_ack_seconds']['empty']:.2f}",
            f"{scale['live_first_ack_seconds']['history']:.2f}",
            f"{scale['live_first_ack_ratio']:.2f}",
        ),
    ]
    return "\n".join(lines + _targets(scale))


def render_archive(archive: dict[str, Any]) -> str:
    """The archive section's table: one day's Parquet file and candles from the topic."""
    config = archive["config"]
    lines = [
        f"Archive: one pair's day of {config['trades']:,} trades in the topic -> its Parquet "
        f"file and 1-minute candles; median of {config['repeats']}",
        f"(Parquet {archive['parquet_bytes']:,} bytes; {archive['candles_rows']:,} candles, "
        f"{archive['candles_bytes']:,} bytes)",
        "",
        _row("step", "asset alone, s", "with its checks, s"),
        _row("---", "---:", "---:"),
        _row(
            "kraken_trades_parquet: read the day back, validate, sort, write "
            f"(of which the topic read {archive['parquet_read_seconds']:.2f} s)",
            f"{archive['parquet_asset_seconds']:.2f}",
            f"{archive['parquet_total_seconds']:.2f}",
        ),
        _row(
            "kraken_candles_1m: read the Parquet day, compute, write",
            f"{archive['candles_asset_seconds']:.2f}",
            f"{archive['candles_total_seconds']:.2f}",
        ),
    ]
    return "\n".join(lines)


def render(summary: dict[str, Any], config: dict[str, Any]) -> str:
    """Markdown tables: live, latency, backfill, resources, targets."""
    lines = (
        _live(summary, config)
        + _latency(summary)
        + _backfill(summary)
        + _resources(summary)
        + _targets(summary)
    )
    return "\n".join(lines)
