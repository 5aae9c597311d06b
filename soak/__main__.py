"""`make soak`: the live job for a long while against the simulator: a feed that leaves trades
out, and a connection fault every 30 s.

    python -m soak [--minutes 10] [--drop-every 30] [--stall-every 3] [--rate 25]
                   [--omit-every-nth-id 7] [--rest-calls-per-second 1]

Starts its own broker and Kraken simulator, runs `live_trades_job` in process for `--minutes`.
The simulator silently leaves every `--omit-every-nth-id`-th trade out of its update frames (as
Kraken's feed was seen to do); every `--drop-every` seconds (0: never) it drops the WebSocket
abruptly (1006), and every `--stall-every`-th of those faults is instead a stall past the
watchdog, whose gap is more than the 50-trade snapshot. Healing runs at Kraken's pace
(`--rest-calls-per-second`). Then it reads the topic back and prints, per pair: trades the
simulator sent, the ids the market made over the covered range, what is in the topic, healed,
lost and duplicated; and the run's figures against the live writer's targets: the share of the
offered trades written, the lag's 99th percentile, REST calls per second. Exits 1 if anything
was lost or duplicated or the run failed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dagster import instance_for_test

from trades_platform.live.job import live_trades_job
from trades_platform.live.progress import RUN_TOTALS_PREFIX
from trades_platform.local_broker import LocalBroker
from trades_platform.resources import KrakenResource, RedpandaResource
from trades_platform.simulator.market import SimulatedMarket
from trades_platform.testing import (
    SimulatorProcess,
    TopicRecord,
    count_pairs,
    live_run_totals,
    read_topic,
    unique_topic,
)

WATCHDOG_SECONDS = 5.0
# Longer than the watchdog, so the client reconnects and meets a gap it must heal.
STALL_SECONDS = WATCHDOG_SECONDS + 5.0
# A fault switch stays on this long: long enough for the next tick (50 ms) to trip it, short
# enough that the reconnect (at least 0.5 s later) meets a healthy server.
SWITCH_SECONDS = 0.25
# The newest trade in the topic may trail the market this much when the run stops.
TAIL_SLACK_SECONDS = 5.0


@dataclass
class FaultLog:
    """What the fault thread did."""

    drops: int = 0
    stalls: int = 0


@dataclass(frozen=True)
class PairReport:
    """One pair's numbers."""

    pair: str
    sent_by_simulator: int
    market_in_range: int
    in_topic: int
    healed: int
    unique: int
    lost: int
    duplicated: int


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default: 10)")
    parser.add_argument(
        "--drop-every", type=float, default=30.0, help="seconds between faults (default: 30)"
    )
    parser.add_argument(
        "--stall-every",
        type=int,
        default=3,
        help="every Nth fault is a stall past the watchdog instead of a drop; 0: drops only",
    )
    parser.add_argument("--rate", type=float, default=25.0, help="trades/s per pair (default 25)")
    parser.add_argument("--pairs", default="BTC/USD,ETH/USD", help="comma-separated pairs")
    parser.add_argument(
        "--omit-every-nth-id",
        type=int,
        default=7,
        help="the feed leaves out every Nth trade id (default 7; 0: none)",
    )
    parser.add_argument(
        "--rest-calls-per-second",
        type=float,
        default=1.0,
        help="the live run's REST pace for healing (default 1, Kraken's public limit)",
    )
    return parser.parse_args(argv)


def inject_faults(
    simulator: SimulatorProcess,
    every_seconds: float,
    stall_every: int,
    stop: threading.Event,
    log: FaultLog,
) -> None:
    """Every `every_seconds`, trip one fault on every open connection, then switch it off."""
    count = 0
    if every_seconds <= 0:
        return
    while not stop.wait(every_seconds):
        count += 1
        if stall_every and count % stall_every == 0:
            simulator.set_faults(stall_after_trades=1, stall_seconds=STALL_SECONDS)
            time.sleep(SWITCH_SECONDS)
            simulator.set_faults(stall_after_trades=None)
            log.stalls += 1
        else:
            simulator.set_faults(drop_after_trades=1)
            time.sleep(SWITCH_SECONDS)
            simulator.set_faults(drop_after_trades=None)
            log.drops += 1


def report(
    records: list[TopicRecord],
    market: SimulatedMarket,
    pairs: list[str],
    sent: dict[str, int],
    stopped_us: int,
) -> list[PairReport]:
    """Per pair: the covered range (first id in the topic to the market's newest at the stop)."""
    healed: Counter[str] = Counter()
    for record in records:
        healed[record.value["pair"]] += record.value["source"] == "heal"
    # The run may have stopped a moment before the market did; anything older is owed.
    owed = {pair: market.last_id_at_or_before(pair, stopped_us) for pair in pairs}
    counts = count_pairs(records, pairs=pairs, last_ids=owed)
    return [
        PairReport(
            pair=pair,
            sent_by_simulator=sent.get(pair, 0),
            market_in_range=counts[pair].expected,
            in_topic=counts[pair].in_topic,
            healed=healed[pair],
            unique=counts[pair].distinct,
            lost=counts[pair].lost,
            duplicated=counts[pair].duplicated,
        )
        for pair in pairs
    ]


def print_targets(reports: list[PairReport], counts: dict[str, int | float]) -> None:
    """The run against the live writer's targets (reported, not enforced: timings are noisy)."""
    offered = sum(row.market_in_range for row in reports)
    written = sum(row.unique for row in reports)
    share = written / offered if offered else 0.0
    lag_p99 = counts.get("lag_p99_seconds", 0)
    seconds = max(counts.get("seconds", 0), 1)
    rest_per_second = counts.get("rest_calls", 0) / seconds
    print(
        f"\ntargets: written {written} of {offered} offered, {share:.1%} (>= 95%: "
        f"{'met' if share >= 0.95 else 'MISSED'}); lag p99 {lag_p99:.1f}s (< 5 s: "
        f"{'met' if lag_p99 < 5 else 'MISSED'}); REST {counts.get('rest_calls', 0)} calls in "
        f"{seconds}s = {rest_per_second:.2f}/s (<= 1/s: "
        f"{'met' if rest_per_second <= 1.0 else 'MISSED'})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak and print its counts; 0 when nothing was lost or duplicated."""
    args = parse_args(argv)
    pairs = [pair.strip() for pair in args.pairs.split(",") if pair.strip()]
    seconds = args.minutes * 60
    topic = unique_topic("soak")
    logs = Path(tempfile.mkdtemp(prefix="soak-"))
    faults = FaultLog()
    stop = threading.Event()
    socket_faults = (
        f"a socket fault every {args.drop_every:g}s: a drop, or (1 in "
        f"{args.stall_every or 'no'}) a {STALL_SECONDS:g}s stall past the "
        f"{WATCHDOG_SECONDS:g}s watchdog"
        if args.drop_every > 0
        else "no socket faults"
    )
    left_out = (
        f"every {args.omit_every_nth_id}th trade left out of the feed"
        if args.omit_every_nth_id
        else "no trade left out"
    )
    print(
        f"soak: {args.minutes:g} min, {pairs} at {args.rate:g} trades/s each, {left_out}, "
        f"{socket_faults}; REST at {args.rest_calls_per_second:g} calls/s; logs in {logs}",
        flush=True,
    )
    flags = (
        *("--pairs", ",".join(pairs), "--trades-per-second", str(args.rate)),
        *("--omit-every-nth-id", str(args.omit_every_nth_id)),
    )
    with (
        LocalBroker(log_path=logs / "broker.log") as broker,
        SimulatorProcess(*flags, "--log-level", "WARNING") as simulator,
        instance_for_test() as instance,
    ):
        injector = threading.Thread(
            target=inject_faults,
            args=(simulator, args.drop_every, args.stall_every, stop, faults),
            daemon=True,
        )
        injector.start()
        started = time.monotonic()
        try:
            result = live_trades_job.execute_in_process(
                run_config={
                    "loggers": {"console": {"config": {"log_level": "WARNING"}}},
                    "ops": {
                        "stream_live_trades": {
                            "config": {"max_seconds": seconds, "progress_interval_seconds": 30}
                        }
                    },
                },
                resources={
                    "kraken": KrakenResource(
                        ws_url=simulator.ws_url,
                        rest_url=simulator.rest_url,
                        pairs=pairs,
                        watchdog_seconds=WATCHDOG_SECONDS,
                        rest_requests_per_second=args.rest_calls_per_second,
                    ),
                    "redpanda": RedpandaResource(broker_address=broker.address, topic=topic),
                },
                instance=instance,
                raise_on_error=False,
            )
        finally:
            stop.set()
            injector.join(10)
        stopped_us = int((time.time() - TAIL_SLACK_SECONDS) * 1_000_000)
        elapsed = time.monotonic() - started
        stats = simulator.stats()
        messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
        stopped = next((m for m in reversed(messages) if m.startswith("Stopped:")), "")
        has_totals = any(RUN_TOTALS_PREFIX in message for message in messages)
        records = read_topic(broker.address, topic, max_seconds=300)
    counts = live_run_totals(messages) if has_totals else {}
    reports = report(
        records, SimulatedMarket(pairs, args.rate), pairs, stats["trades_sent"], stopped_us
    )
    sources = Counter(record.value["source"] for record in records)
    outcome = "succeeded" if result.success else "FAILED"
    print(f"\nsoak finished after {elapsed:.0f}s; run {outcome}")
    print(
        f"faults: {faults.drops} drops and {faults.stalls} stalls injected; simulator counted "
        f"{stats['drops']} drops, {stats['stalls']} stalls, "
        f"{stats['connections_accepted']} connections"
    )
    print(
        f"live job: reconnects={counts.get('reconnects', 0)} gaps={counts.get('gaps', 0)} "
        f"left out by the feed={counts.get('left_out', 0)} "
        f"healed from REST={counts.get('healed', 0)} (late: {counts.get('healed_late', 0)}) "
        f"out of order={counts.get('out_of_order', 0)} "
        f"handed back={counts.get('handed_back', 0)} open holes={counts.get('open_holes', 0)} "
        f"repeats skipped={counts.get('repeats_skipped', 0)}; simulator left out "
        f"{stats['trades_left_out_total']}"
    )
    print(f"records by source: {dict(sources)}")
    header = (
        "pair",
        "sent by simulator",
        "market ids in range",
        "in topic",
        "of which healed",
        "lost",
        "duplicated",
    )
    widths = [max(len(title), 10) for title in header]
    print()
    print("  ".join(f"{title:>{width}}" for title, width in zip(header, widths, strict=True)))
    for row in reports:
        cells = (
            row.pair,
            row.sent_by_simulator,
            row.market_in_range,
            row.in_topic,
            row.healed,
            row.lost,
            row.duplicated,
        )
        print("  ".join(f"{cell!s:>{width}}" for cell, width in zip(cells, widths, strict=True)))
    print(
        "\n(sent by simulator: trades in WebSocket frames, snapshot repeats after reconnects "
        "included, the trades of a stall excluded (REST heals those); market ids in range: from "
        f"the first id in the topic to the market's newest {TAIL_SLACK_SECONDS:g}s before the "
        "stop)"
    )
    print_targets(reports, counts)
    bad = [row for row in reports if row.lost or row.duplicated or not row.unique]
    if bad or not result.success:
        print("soak: FAILED: " + (stopped or "the run did not log its Stopped line"))
        return 1
    print("soak: OK: nothing lost, nothing duplicated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
