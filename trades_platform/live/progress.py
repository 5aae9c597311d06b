"""What a live run reports while it streams: the progress line and the per-pair figures.

Every figure comes from the objects that do the work (the stream's counters, the tail's, the
healer's, the writer's); this module only samples and formats them. The lag is now minus the
time of the newest trade written for a pair, sampled ten times a second.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from trades_platform.coverage.writer import DeduplicatingWriter
from trades_platform.kraken.websocket import StreamStats
from trades_platform.live.healer import GapHealer
from trades_platform.live.tail import LiveTail
from trades_platform.producer import TradeProducer

LAG_SAMPLE_SECONDS = 0.1
# The live op's last log message starts with this, followed by `LiveProgress.totals()` as JSON:
# what tests, the soak and other tools read (`trades_platform.testing.live_run_totals`).
RUN_TOTALS_PREFIX = "Run totals: "
# The lag histogram's resolution and range: 0.1 s steps up to 10 minutes, then one last bin.
_LAG_STEP_SECONDS = 0.1
_LAG_BINS = 6000


@dataclass
class LagHistogram:
    """Lag samples in fixed bins, so a run of any length keeps constant memory."""

    counts: list[int] = field(default_factory=lambda: [0] * (_LAG_BINS + 1))
    samples: int = 0

    def add(self, seconds: float) -> None:
        """Count one sample."""
        index = min(_LAG_BINS, max(0, int(seconds / _LAG_STEP_SECONDS)))
        self.counts[index] += 1
        self.samples += 1

    def quantile(self, q: float) -> float | None:
        """The upper edge of the bin holding the q-quantile, or None without samples."""
        if not self.samples:
            return None
        wanted = q * self.samples
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= wanted:
                return round((index + 1) * _LAG_STEP_SECONDS, 1)
        return round(len(self.counts) * _LAG_STEP_SECONDS, 1)


@dataclass
class _Window:
    """Counters at the start of a reporting interval."""

    at: float
    written: Counter[str]
    total: int
    rest_requests: int
    lag: dict[str, LagHistogram] = field(default_factory=dict)


class LiveProgress:
    """Samples the live run and turns it into a log line and per-pair figures."""

    def __init__(
        self,
        pairs: Iterable[str],
        writer: DeduplicatingWriter,
        tail: LiveTail,
        healer: GapHealer,
        stream: StreamStats,
        producer: TradeProducer,
    ) -> None:
        self.pairs = list(pairs)
        self.started_at = time.monotonic()
        self._writer = writer
        self._tail = tail
        self._healer = healer
        self._stream = stream
        self._producer = producer
        self.run_lag = LagHistogram()
        self._sampled_at = 0.0
        self._report = self._window()
        self._observed = self._window()

    def sample(self) -> None:
        """Record each pair's lag (at most every LAG_SAMPLE_SECONDS)."""
        now = time.monotonic()
        if now - self._sampled_at < LAG_SAMPLE_SECONDS:
            return
        self._sampled_at = now
        now_ms = time.time() * 1000
        for pair, newest_ms in self._tail.newest_written_ms().items():
            lag = (now_ms - newest_ms) / 1000
            self.run_lag.add(lag)
            for window in (self._report, self._observed):
                window.lag.setdefault(pair, LagHistogram()).add(lag)

    def report_due(self, interval_seconds: float) -> bool:
        """True when the last report is older than the interval."""
        return time.monotonic() - self._report.at >= interval_seconds

    def observation_due(self, interval_seconds: float) -> bool:
        """True when the last observations are older than the interval."""
        return time.monotonic() - self._observed.at >= interval_seconds

    def report(self) -> str:
        """One log line: rate, totals, lag, the feed's losses and how they were healed."""
        window, self._report = self._report, self._window()
        seconds = max(time.monotonic() - window.at, 1e-9)
        rate = (self._writer.written - window.total) / seconds
        rest_per_minute = (self._healer.stats.requests - window.rest_requests) / seconds * 60
        tail = self._tail.stats
        lags = ", ".join(
            f"{pair} {histogram.quantile(0.99)}s" for pair, histogram in sorted(window.lag.items())
        )
        totals = ", ".join(
            f"{pair}={count}" for pair, count in sorted(self._writer.written_per_pair.items())
        )
        pending = sum(self._healer.pending().values())
        now_ms = time.time() * 1000
        lag_now = ", ".join(
            f"{pair} {(now_ms - newest_ms) / 1000:.1f}s"
            for pair, newest_ms in sorted(self._tail.newest_written_ms().items())
        )
        return (
            f"{rate:.1f} trades/s; {self._writer.written} trades written "
            f"({self._producer.acknowledged} acknowledged): {totals or 'none yet'}; "
            f"lag now: {lag_now or 'n/a'}; p99 since the last report: {lags or 'n/a'} "
            f"(run: {self.run_lag.quantile(0.99)}s); "
            f"reconnects={self._stream.reconnects} dead-lettered={self._stream.rejected} "
            f"gaps={self._stream.gaps} left_out={tail.total(tail.left_out)} "
            f"healed={tail.total(tail.healed)} healed_late={tail.healed_late} "
            f"pending_heals={pending} handed_back={tail.total(tail.handed_back)} "
            f"out_of_order={tail.released_out_of_order} "
            f"rest_calls={self._healer.stats.requests} ({rest_per_minute:.0f}/min) "
            f"repeats_skipped={self._stream.repeated_skipped}"
        )

    def totals(self) -> dict[str, int | float]:
        """The run's counters since it started, for tools to read (`totals_message`)."""
        tail = self._tail.stats
        return {
            "written": self._writer.written,
            "acknowledged": self._producer.acknowledged,
            "failed": self._producer.failed,
            "reconnects": self._stream.reconnects,
            "dead_lettered": self._stream.rejected,
            "gaps": self._stream.gaps,
            "left_out": tail.total(tail.left_out),
            "healed": tail.total(tail.healed),
            "healed_late": tail.healed_late,
            "pending_heals": sum(self._healer.pending().values()),
            "handed_back": tail.total(tail.handed_back),
            "open_holes": sum(self._tail.open_holes().values()),
            "out_of_order": tail.released_out_of_order,
            "rest_calls": self._healer.stats.requests,
            "repeats_skipped": self._stream.repeated_skipped,
            "lag_p99_seconds": self.run_lag.quantile(0.99) or 0.0,
            "seconds": round(time.monotonic() - self.started_at, 1),
        }

    def totals_message(self) -> str:
        """`RUN_TOTALS_PREFIX` and the totals as one JSON object."""
        return RUN_TOTALS_PREFIX + json.dumps(self.totals(), sort_keys=True)

    def figures(self) -> dict[str, dict[str, float | int]]:
        """Per pair, the numbers of one observation of `kraken_trades_live`, since the last."""
        window, self._observed = self._observed, self._window()
        minutes = max(time.monotonic() - window.at, 1e-9) / 60
        rest_per_minute = (self._healer.stats.requests - window.rest_requests) / minutes
        pending = self._healer.pending()
        tail = self._tail.stats
        now_ms = time.time() * 1000
        newest = self._tail.newest_written_ms()
        figures: dict[str, dict[str, float | int]] = {}
        for pair in self.pairs:
            written = self._writer.written_per_pair[pair] - window.written[pair]
            pair_figures: dict[str, float | int] = {
                "trades_per_minute": round(written / minutes, 2),
                "reconnects": self._stream.reconnects,
                "dead_lettered": self._stream.rejected,
                "trades_left_out": tail.left_out.get(pair, 0),
                "gaps_healed": tail.healed.get(pair, 0),
                "pending_heals": pending.get(pair, 0),
                "handed_back": tail.handed_back.get(pair, 0),
                "rest_calls_per_minute": round(rest_per_minute, 1),
            }
            lag = window.lag.get(pair)
            p99 = lag.quantile(0.99) if lag is not None else None
            if p99 is not None:
                pair_figures["lag_p99_seconds"] = p99
            if pair in newest:
                pair_figures["last_trade_age_seconds"] = round((now_ms - newest[pair]) / 1000, 3)
                pair_figures["last_trade_time_ms"] = newest[pair]
            figures[pair] = pair_figures
        return figures

    def _window(self) -> _Window:
        return _Window(
            at=time.monotonic(),
            written=Counter(self._writer.written_per_pair),
            total=self._writer.written,
            rest_requests=self._healer.stats.requests,
        )
