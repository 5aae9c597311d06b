"""`live_trades_job`: one long-running op streaming Kraken's live trades into the topic."""

# No `from __future__ import annotations` here: Dagster reads the op's annotations at import.

import time
from collections import Counter
from dataclasses import dataclass, field

from dagster import AssetObservation, Config, OpExecutionContext, in_process_executor, job, op
from pydantic import Field

from trades_platform.coverage.claims import ClaimBoard
from trades_platform.coverage.topic_ids import scan_topic_ids
from trades_platform.coverage.writer import DeduplicatingWriter
from trades_platform.dead_letters import DeadLetterProducer
from trades_platform.kraken.websocket import StreamStats
from trades_platform.live.observations import OBSERVATION_INTERVAL_SECONDS, pair_observations
from trades_platform.live.tail import LiveTail, TailStats
from trades_platform.producer import TradeProducer
from trades_platform.resources import KrakenResource, RedpandaResource
from trades_platform.trade import Trade

# Runs of the live job carry this tag; dagster.yaml allows one run per value (one per shard).
LIVE_SHARD_TAG = "trades_platform/live-shard"


class LiveTradesConfig(Config):
    """Run config; leave everything unset for a run that streams until terminated."""

    max_trades: int | None = Field(
        default=None, gt=0, description="Stop after writing this many trades (CI, tests)"
    )
    max_seconds: float | None = Field(
        default=None, gt=0, description="Stop after streaming this long (CI, tests)"
    )
    progress_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often to log throughput and per-pair totals"
    )
    pairs: list[str] | None = Field(
        default=None, description="Pairs for this run (a shard); default: every configured pair"
    )
    observation_interval_seconds: float = Field(
        default=OBSERVATION_INTERVAL_SECONDS,
        gt=0,
        description="How often to record per-pair observations of kraken_trades_live",
    )
    heal_horizon_seconds: float = Field(
        default=6 * 3600,
        gt=0,
        description="At start, heal from the topic's newest trade if it is younger than this; "
        "an older gap is left to the backfill",
    )


@dataclass
class LiveProgress:
    """Per-pair totals and the throughput since the last report."""

    started_at: float = field(default_factory=time.monotonic)
    per_pair: Counter[str] = field(default_factory=Counter)
    total: int = 0
    last_trade_ms: dict[str, int] = field(default_factory=dict)
    _reported_at: float = field(default_factory=time.monotonic)
    _reported_total: int = 0
    _observed_at: float = field(default_factory=time.monotonic)
    _observed_per_pair: Counter[str] = field(default_factory=Counter)

    def add(self, trades: list[Trade]) -> None:
        """Count a batch that was handed to the producer."""
        for trade in trades:
            self.per_pair[trade.pair] += 1
            self.last_trade_ms[trade.pair] = trade.timestamp_ms
        self.total += len(trades)

    def observe(
        self, pairs: list[str], stats: StreamStats, tail: TailStats
    ) -> list[AssetObservation]:
        """Per-pair observations of `kraken_trades_live` since the previous ones."""
        now = time.monotonic()
        minutes = max(now - self._observed_at, 1e-9) / 60
        per_minute = {
            pair: (self.per_pair[pair] - self._observed_per_pair[pair]) / minutes for pair in pairs
        }
        self._observed_at, self._observed_per_pair = now, Counter(self.per_pair)
        return list(
            pair_observations(
                trades_per_minute=per_minute,
                last_trade_ms=self.last_trade_ms,
                reconnects=stats.reconnects,
                gaps_healed=tail.healed,
                dead_lettered=stats.rejected,
                pairs=pairs,
            )
        )

    def observation_due(self, interval_seconds: float) -> bool:
        """True when the last observations are older than the interval."""
        return time.monotonic() - self._observed_at >= interval_seconds

    def report_due(self, interval_seconds: float) -> bool:
        """True when the last report is older than the interval."""
        return time.monotonic() - self._reported_at >= interval_seconds

    def report(self, stats: StreamStats, tail: TailStats, producer: TradeProducer) -> str:
        """One log line: rate, totals per pair, age of the newest trade, connection health."""
        now = time.monotonic()
        rate = (self.total - self._reported_total) / max(now - self._reported_at, 1e-9)
        self._reported_at, self._reported_total = now, self.total
        wall_ms = time.time() * 1000
        ages = ", ".join(
            f"{pair} {(wall_ms - ms) / 1000:.1f}s"
            for pair, ms in sorted(self.last_trade_ms.items())
        )
        totals = ", ".join(f"{pair}={count}" for pair, count in sorted(self.per_pair.items()))
        return (
            f"{rate:.1f} trades/s; {self.total} live trades written "
            f"({producer.acknowledged} acknowledged): {totals or 'none yet'}; "
            f"last trade age: {ages or 'n/a'}; reconnects={stats.reconnects} "
            f"dead-lettered={stats.rejected} gaps={stats.gaps} healed={tail.healed} "
            f"unhealed={tail.unhealed} repeats skipped={stats.repeated_skipped}"
        )


@op(description="Streams Kraken trades into the topic until terminated or a configured bound.")
def stream_live_trades(
    context: OpExecutionContext,
    config: LiveTradesConfig,
    kraken: KrakenResource,
    redpanda: RedpandaResource,
) -> None:
    """Subscribe, write every new trade, log progress; flush and close on any exit."""
    pairs = config.pairs or kraken.pairs
    settings = redpanda.producer_settings()
    progress = LiveProgress()
    context.log.info(
        f"Streaming {pairs} from {kraken.ws_url} to topic {redpanda.topic!r} at "
        f"{redpanda.broker_address} (max_trades={config.max_trades}, "
        f"max_seconds={config.max_seconds})"
    )
    # What is already in the topic decides what this run writes (see ARCHITECTURE.md).
    scanned = scan_topic_ids(settings, list(pairs))
    context.log.info(
        "In the topic: "
        + ", ".join(f"{pair} {len(found.ids)} ids" for pair, found in scanned.items())
    )
    dead_letters = DeadLetterProducer(settings, source="live")
    board = ClaimBoard(settings, owner=context.run_id)
    # try/finally, not except: a UI terminate or SIGTERM arrives as a BaseException.
    with redpanda.trade_producer() as producer, kraken.rest_client(log=context.log) as rest:
        writer = DeduplicatingWriter(producer, {pair: found.ids for pair, found in scanned.items()})
        tail = LiveTail(
            settings=settings,
            writer=writer,
            board=board,
            rest=rest,
            log=context.log,
            heal_horizon_seconds=config.heal_horizon_seconds,
        )
        stream = kraken.trade_stream(
            pairs=pairs,
            log=context.log,
            on_rejected=dead_letters.send,
            on_gap=tail.heal,
            resume_after=tail.start(list(pairs), scanned),
        )
        try:
            for batch in stream.batches():
                if config.max_trades is not None:
                    batch = batch[: config.max_trades - writer.written]
                if batch:
                    tail.before_write(batch)
                    progress.add(writer.write(batch))
                else:
                    tail.keep_claims_fresh()
                producer.poll()
                if progress.report_due(config.progress_interval_seconds):
                    context.log.info(progress.report(stream.stats, tail.stats, producer))
                if progress.observation_due(config.observation_interval_seconds):
                    for observation in progress.observe(list(pairs), stream.stats, tail.stats):
                        context.log_event(observation)
                if _bound_reached(config, writer.written, progress):
                    break
            # A normal end fails the run if the broker did not acknowledge everything.
            producer.flush()
        finally:
            stream.close()
            producer.close()
            dead_letters.close()
            _release_claims(tail, context)
            context.log.info(
                f"Stopped: {writer.written} trades written, {producer.acknowledged} acknowledged "
                f"by the broker, {producer.failed} failed; "
                + progress.report(stream.stats, tail.stats, producer)
            )


def _release_claims(tail: LiveTail, context: OpExecutionContext) -> None:
    # Best effort: an unreleased claim simply expires after its lease.
    try:
        tail.release()
    except Exception as error:
        context.log.warning(f"Could not release the tail claims ({error}); they expire by lease")
    finally:
        tail.board.close()


def _bound_reached(config: LiveTradesConfig, written: int, progress: LiveProgress) -> bool:
    if config.max_trades is not None and written >= config.max_trades:
        return True
    elapsed = time.monotonic() - progress.started_at
    return config.max_seconds is not None and elapsed >= config.max_seconds


@job(
    description="Kraken WebSocket v2 trades -> topic; long-running, kept alive by a sensor.",
    executor_def=in_process_executor,
    tags={LIVE_SHARD_TAG: "0"},
)
def live_trades_job() -> None:
    """The live ingestion job."""
    stream_live_trades()
