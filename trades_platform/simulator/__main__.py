"""CLI: python -m trades_platform.simulator [flags]; prints one ready line on stdout."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from trades_platform.simulator.config import SimulatorConfig, parse_start_time
from trades_platform.simulator.faults import FaultSwitches
from trades_platform.simulator.pairs import DEFAULT_PAIRS, resolve_pairs, synthetic_names
from trades_platform.simulator.server import Simulator, run_simulator

log = logging.getLogger("trades_platform.simulator")


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the CLI's argument parser."""
    defaults = SimulatorConfig()
    parser = argparse.ArgumentParser(
        prog="python -m trades_platform.simulator",
        description=(
            "Kraken simulator: WebSocket v2 trades at ws://HOST:PORT/v2 and public REST "
            "(/0/public/Trades, AssetPairs, Time, SystemStatus) on the same port, plus a "
            "control API under /_simulator/ (health, stats, config, faults)."
        ),
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    add("--port", type=int, default=8765, help="port; 0 picks a free one (default: %(default)s)")
    add(
        "--pairs",
        default=",".join(DEFAULT_PAIRS),
        help="comma-separated WebSocket v2 symbols; catalogue pairs or synthetic "
        "[A-Z0-9]{2,10}/USD names (default: the whole catalogue: %(default)s)",
    )
    add(
        "--synthetic-pairs",
        type=_count,
        default=0,
        metavar="N",
        help="also trade N synthetic pairs SYM001/USD..SYMnnn/USD (for benchmarks)",
    )
    add(
        "--trades-per-second",
        type=_positive_float,
        default=5.0,
        help="trades per second per pair, in simulated time (default: %(default)s)",
    )
    add(
        "--trades-per-match",
        type=_positive_int,
        default=defaults.trades_per_match,
        metavar="K",
        help="consecutive trade ids come in matches of K sharing one timestamp, like the fills "
        "of one order; the average rate stays --trades-per-second (default: %(default)s)",
    )
    add(
        "--tick-ms",
        type=_positive_float,
        default=50.0,
        help="how often each connection sends new trades, ms (default: %(default)s)",
    )
    add(
        "--start-time",
        default=None,
        help="simulated time at start, ISO-8601 (naive means UTC; default: real now)",
    )
    add(
        "--speed",
        type=_positive_float,
        default=1.0,
        help="simulated seconds per real second (default: %(default)s)",
    )
    add(
        "--rest-rate-limit",
        type=_non_negative_float,
        default=0.0,
        help="REST calls per second per client IP before EAPI:Rate limit exceeded; "
        "0 = unlimited (default: %(default)s)",
    )
    add(
        "--rest-rate-burst",
        type=_count,
        default=3,
        help="burst size of the REST rate limit (default: %(default)s)",
    )
    faults = parser.add_argument_group("faults (also settable at runtime: POST /_simulator/faults)")
    faults.add_argument(
        "--drop-after-trades",
        type=_count,
        metavar="N",
        help="close each WebSocket abruptly (no close frame: 1006) after it sent N trades",
    )
    faults.add_argument(
        "--stall-after-trades",
        type=_count,
        metavar="N",
        help="once per connection, after N trades, send nothing for --stall-seconds",
    )
    faults.add_argument(
        "--stall-seconds",
        type=_non_negative_float,
        default=5.0,
        help="length of a stall (default: %(default)s)",
    )
    faults.add_argument(
        "--malformed-every-frames",
        type=_count,
        metavar="N",
        help="after every N-th trade frame, send one extra malformed frame",
    )
    faults.add_argument(
        "--hostile-every-frames",
        type=_count,
        metavar="N",
        help="after every N-th trade frame, send one hostile frame: invalid UTF-8 in a text "
        "frame, an item nested 1000 deep, or a frame of 349,500 junk items, just under 1 MiB "
        "(in turn)",
    )
    faults.add_argument(
        "--slow-message-every-frames",
        type=_count,
        metavar="N",
        help="after every N-th trade frame, send one message a character per fragment, 0.5 s "
        "apart (30 s in all)",
    )
    faults.add_argument(
        "--giant-message-every-frames",
        type=_count,
        metavar="N",
        help="after every N-th trade frame, send one message of 17 MiB",
    )
    faults.add_argument(
        "--rest-rate-limit-next",
        type=_count,
        default=0,
        metavar="N",
        help="answer the next N Trades/AssetPairs requests with rate-limit errors",
    )
    faults.add_argument(
        "--omit-every-nth-id",
        type=_count,
        metavar="N",
        help="silently leave out of update frames (not snapshots) every trade whose id is a "
        "multiple of N",
    )
    faults.add_argument(
        "--omit-same-timestamp-followers",
        action="store_true",
        help="silently leave out of update frames every trade with the same timestamp as the "
        "id before it: only the first fill of a match arrives (see --trades-per-match)",
    )
    faults.add_argument(
        "--backdate-after-gap-seconds",
        type=_non_negative_float,
        default=defaults.faults.backdate_after_gap_seconds,
        metavar="S",
        help="send the first trade after each left-out one S seconds early (WebSocket only): "
        "a gap whose time runs backwards",
    )
    faults.add_argument(
        "--rest-unavailable",
        action="store_true",
        help="answer every Trades request with HTTP 503 EService:Unavailable",
    )
    faults.add_argument(
        "--rest-delay-seconds",
        type=_non_negative_float,
        default=defaults.faults.rest_delay_seconds,
        metavar="S",
        help="hold every Trades answer S seconds before sending it (default: %(default)s)",
    )
    faults.add_argument(
        "--rest-redirect-to",
        metavar="URL",
        help="answer every Trades request with HTTP 302 to URL (an http:// or https:// URL, "
        "e.g. a plain-http copy of the REST URL): a client must refuse, not follow it",
    )
    faults.add_argument(
        "--rest-gzip-bomb",
        action="store_true",
        help="answer every Trades request with a ~50 kB body, Content-Encoding: gzip, that "
        "inflates to ~50 MB of valid JSON (an empty page padded with whitespace)",
    )
    faults.add_argument(
        "--rest-trickle-bytes-per-second",
        type=_non_negative_float,
        default=defaults.faults.rest_trickle_bytes_per_second,
        metavar="N",
        help="send every Trades answer's head at once and its body N bytes per second, so "
        "each read gets data and no read timeout fires; 0 = all at once (default: %(default)s)",
    )
    faults.add_argument(
        "--rest-stuck-pages",
        action="store_true",
        help="answer every Trades request with its rows but a `last` 2 ns past `since`: a "
        "client paging on `last` moves on a nanosecond a call and gets the same full page",
    )
    add(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="stderr log level (default: %(default)s)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """Turn parsed CLI arguments into a SimulatorConfig; ValueError if inconsistent."""
    names = [n for n in args.pairs.split(",") if n.strip()]
    names += synthetic_names(args.synthetic_pairs)
    pairs = tuple(p.name for p in resolve_pairs(names))
    switches = FaultSwitches()
    switches.update(
        {
            "drop_after_trades": args.drop_after_trades,
            "stall_after_trades": args.stall_after_trades,
            "stall_seconds": args.stall_seconds,
            "malformed_every_frames": args.malformed_every_frames,
            "hostile_every_frames": args.hostile_every_frames,
            "slow_message_every_frames": args.slow_message_every_frames,
            "giant_message_every_frames": args.giant_message_every_frames,
            "rest_rate_limit_next": args.rest_rate_limit_next,
            "omit_every_nth_id": args.omit_every_nth_id,
            "backdate_after_gap_seconds": args.backdate_after_gap_seconds,
            "omit_same_timestamp_followers": args.omit_same_timestamp_followers,
            "rest_unavailable": args.rest_unavailable,
            "rest_delay_seconds": args.rest_delay_seconds,
            "rest_redirect_to": args.rest_redirect_to,
            "rest_gzip_bomb": args.rest_gzip_bomb,
            "rest_trickle_bytes_per_second": args.rest_trickle_bytes_per_second,
            "rest_stuck_pages": args.rest_stuck_pages,
        }
    )
    return SimulatorConfig(
        host=args.host,
        port=args.port,
        pairs=pairs,
        trades_per_second=args.trades_per_second,
        trades_per_match=args.trades_per_match,
        tick_ms=args.tick_ms,
        start_time_us=None if args.start_time is None else parse_start_time(args.start_time),
        speed=args.speed,
        rest_rate_limit=args.rest_rate_limit,
        rest_rate_burst=args.rest_rate_burst,
        faults=switches,
    )


async def _serve(config: SimulatorConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def announce(simulator: Simulator) -> None:
        print(f"kraken simulator ready {simulator.ws_url} rest {simulator.rest_url}", flush=True)

    await run_simulator(config, on_ready=announce, stop=stop)
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator until SIGTERM or SIGINT."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # websockets logs every plain HTTP answer at INFO: one line per REST call is noise.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    asyncio.run(_serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
