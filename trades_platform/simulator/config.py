"""Simulator configuration, the simulated clock and the counters served at /_simulator/stats."""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from trades_platform.simulator.faults import FaultSwitches
from trades_platform.simulator.market import EPOCH_US
from trades_platform.simulator.pairs import DEFAULT_PAIRS


@dataclass(slots=True)
class SimulatorConfig:
    """Everything the simulator needs; the CLI flags map one to one onto these fields."""

    host: str = "127.0.0.1"
    port: int = 8765  # 0 picks a free port; Simulator.port tells which
    pairs: tuple[str, ...] = DEFAULT_PAIRS  # WebSocket v2 names
    trades_per_second: float = 5.0  # per pair, in simulated time
    trades_per_match: int = 1  # consecutive ids sharing one timestamp, like one order's fills
    tick_ms: float = 50.0  # how often each connection's send loop looks for new trades
    start_time_us: int | None = None  # simulated time at start; None means real now
    speed: float = 1.0  # simulated seconds per real second
    rest_rate_limit: float = 0.0  # REST calls per second per IP; 0 means unlimited
    rest_rate_burst: int = 3
    faults: FaultSwitches = field(default_factory=FaultSwitches)
    epoch_us: int = EPOCH_US  # time of trade id 1
    snapshot_size: int = 50
    heartbeat_seconds: float = 1.0
    max_trades_per_frame: int = 1000  # splits catch-up bursts (after stalls, high speed)


def parse_start_time(text: str) -> int:
    """Parse an ISO-8601 time (naive means UTC) to microseconds since the Unix epoch."""
    parsed = datetime.fromisoformat(text.strip())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    delta = parsed - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def real_now_us() -> int:
    """Return the real wall-clock time in microseconds since the Unix epoch."""
    return time.time_ns() // 1000


class SimClock:
    """Simulated time: start + (monotonic time elapsed since start) * speed."""

    def __init__(self, start_us: int, speed: float) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be positive: {speed}")
        self.start_us = start_us
        self.speed = speed
        self._mono_start = time.monotonic()

    def now_us(self) -> int:
        """Return the simulated time in microseconds since the Unix epoch."""
        return self.start_us + int((time.monotonic() - self._mono_start) * 1e6 * self.speed)


@dataclass(slots=True)
class Stats:
    """Counters since the simulator started."""

    connections_accepted: int = 0
    connections_open: int = 0
    trades_sent: Counter[str] = field(default_factory=Counter)
    # Trades a connection skipped in update frames (omit_* faults), per pair.
    trades_left_out: Counter[str] = field(default_factory=Counter)
    # Update items sent early by backdate_after_gap_seconds.
    trades_backdated: int = 0
    frames_sent: int = 0
    trade_frames_sent: int = 0
    heartbeats_sent: int = 0
    malformed_frames_sent: int = 0
    hostile_frames_sent: int = 0
    slow_messages_sent: int = 0
    giant_messages_sent: int = 0
    rest_requests: int = 0
    # When the latest REST requests arrived (wall clock, s): rates over a window, measured here.
    rest_request_times: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    # Trades answered by /0/public/Trades, per pair (pages that overlap count twice).
    rest_trades_sent: Counter[str] = field(default_factory=Counter)
    rate_limit_errors: int = 0
    rest_unavailable_answers: int = 0
    # Trades answers spoiled by the hostile REST faults, one counter per fault.
    rest_redirect_answers: int = 0
    rest_gzip_bomb_answers: int = 0
    rest_trickled_answers: int = 0
    rest_stuck_page_answers: int = 0
    drops: int = 0
    stalls: int = 0

    def to_json(self) -> dict[str, Any]:
        """Return the counters as a JSON-ready dict."""
        return {
            "connections_accepted": self.connections_accepted,
            "connections_open": self.connections_open,
            "trades_sent": dict(sorted(self.trades_sent.items())),
            "trades_sent_total": sum(self.trades_sent.values()),
            "trades_left_out": dict(sorted(self.trades_left_out.items())),
            "trades_left_out_total": sum(self.trades_left_out.values()),
            "trades_backdated": self.trades_backdated,
            "frames_sent": self.frames_sent,
            "trade_frames_sent": self.trade_frames_sent,
            "heartbeats_sent": self.heartbeats_sent,
            "malformed_frames_sent": self.malformed_frames_sent,
            "hostile_frames_sent": self.hostile_frames_sent,
            "slow_messages_sent": self.slow_messages_sent,
            "giant_messages_sent": self.giant_messages_sent,
            "rest_requests": self.rest_requests,
            "rest_request_times": list(self.rest_request_times),
            "rest_trades_sent": dict(sorted(self.rest_trades_sent.items())),
            "rate_limit_errors": self.rate_limit_errors,
            "rest_unavailable_answers": self.rest_unavailable_answers,
            "rest_redirect_answers": self.rest_redirect_answers,
            "rest_gzip_bomb_answers": self.rest_gzip_bomb_answers,
            "rest_trickled_answers": self.rest_trickled_answers,
            "rest_stuck_page_answers": self.rest_stuck_page_answers,
            "drops": self.drops,
            "stalls": self.stalls,
        }
