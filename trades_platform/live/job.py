"""`live_trades_job`: one long-running op streaming Kraken's live trades into the topic."""

# No `from __future__ import annotations` here: Dagster reads the op's annotations at import.

import time

from dagster import Config, OpExecutionContext, in_process_executor, job, op
from pydantic import Field

from trades_platform.coverage.claims import ObservedClaim, TailClaimHolder, claim_lease_seconds
from trades_platform.coverage.coverage_log import rejected_warning
from trades_platform.coverage.index_refresher import IndexRefresher
from trades_platform.coverage.topic_ids import PairIds, rejected_warnings, scan_topic_ids
from trades_platform.coverage.writer import DeduplicatingWriter
from trades_platform.dead_letters import DeadLetterProducer
from trades_platform.live.healer import GapHealer
from trades_platform.live.observations import OBSERVATION_INTERVAL_SECONDS, pair_observations
from trades_platform.live.progress import LiveProgress
from trades_platform.live.tail import LiveTail
from trades_platform.producer import TradeProducer
from trades_platform.resources import KrakenResource, RedpandaResource

# Runs of the live job carry this tag; dagster.yaml allows one run per value (one per shard).
LIVE_SHARD_TAG = "trades_platform/live-shard"
# A bounded run that reached its bound waits this long for heals still under way.
DRAIN_SECONDS = 30.0


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
    heal_hold_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How long a pair's trades after a missing one wait for its heal, so that ids "
        "reach the topic in order; after it they are written and the missing one lands late",
    )
    heal_give_up_seconds: float = Field(
        default=600.0,
        gt=0,
        description="How long the live run keeps asking REST for a missing trade before it hands "
        "the id back to the backfill of its day (in the live claim)",
    )


@op(description="Streams Kraken trades into the topic until terminated or a configured bound.")
def stream_live_trades(
    context: OpExecutionContext,
    config: LiveTradesConfig,
    kraken: KrakenResource,
    redpanda: RedpandaResource,
) -> None:
    """Claim, wait for any other live writer, read the topic, stream; release on the way out."""
    pairs = list(config.pairs or kraken.pairs)
    settings = redpanda.kafka_settings()
    context.log.info(
        f"Streaming {pairs} from {kraken.ws_url} to topic {redpanda.topic!r} at "
        f"{redpanda.broker_address} (max_trades={config.max_trades}, "
        f"max_seconds={config.max_seconds})"
    )
    holder = TailClaimHolder(
        settings,
        pairs,
        lease_seconds=claim_lease_seconds(settings.delivery_timeout_ms),
        owner=context.run_id,
        on_heartbeat_failure=context.log.warning,
    )
    holder.acquire()
    producer: TradeProducer | None = None
    try:
        # Another live writer of these pairs first finishes (or is presumed dead): only then is
        # the topic read, so that nothing it writes meanwhile is missed (ARCHITECTURE.md).
        waited = holder.wait_for_turn(lambda ahead: _log_waiting(context, ahead))
        if waited:
            context.log.info(f"Waited {waited:.0f}s for other live writers of {pairs}")
        if warning := rejected_warning(holder.rejected, holder.topic):
            context.log.warning(warning)
        scanned = scan_topic_ids(settings, pairs)
        context.log.info(
            "In the topic: "
            + ", ".join(f"{pair} {len(found.ids)} ids" for pair, found in scanned.items())
        )
        for warning in rejected_warnings(scanned):
            context.log.warning(warning)
        with redpanda.trade_producer() as producer:
            _stream(context, config, kraken, redpanda, holder, producer, scanned, pairs)
    finally:
        _release_claims(holder, producer, context)


def _stream(
    context: OpExecutionContext,
    config: LiveTradesConfig,
    kraken: KrakenResource,
    redpanda: RedpandaResource,
    holder: TailClaimHolder,
    producer: TradeProducer,
    scanned: dict[str, PairIds],
    pairs: list[str],
) -> None:
    """The streaming loop proper: socket in, ordered writes out, heals beside it."""
    settings = redpanda.kafka_settings()
    dead_letters = DeadLetterProducer(settings, source="live")
    healer = GapHealer(
        kraken.rest_client(log=context.log, purpose="heal"),
        give_up_seconds=config.heal_give_up_seconds,
        log=context.log,
    ).start()
    writer = DeduplicatingWriter(producer, {pair: found.ids for pair, found in scanned.items()})
    tail = LiveTail(
        settings=settings,
        writer=writer,
        holder=holder,
        healer=healer,
        log=context.log,
        heal_horizon_seconds=config.heal_horizon_seconds,
        hold_seconds=config.heal_hold_seconds,
        write_limit=config.max_trades,
    )
    stream = kraken.trade_stream(
        pairs=pairs,
        log=context.log,
        on_rejected=dead_letters.send,
        on_gap=tail.note_gap,
        resume_after=tail.start(pairs, scanned),
    )
    progress = LiveProgress(pairs, writer, tail, healer, stream.stats, producer)
    index = IndexRefresher(settings, on_failure=context.log.warning).start()
    # try/finally, not except: a UI terminate or SIGTERM arrives as a BaseException.
    try:
        for batch in stream.batches():
            if batch:
                tail.accept(batch)
            tail.service()
            producer.poll()
            progress.sample()
            if progress.report_due(config.progress_interval_seconds):
                context.log.info(progress.report())
            if progress.observation_due(config.observation_interval_seconds):
                for observation in pair_observations(progress.figures()):
                    context.log_event(observation)
            if _bound_reached(config, tail, progress):
                tail.drain(DRAIN_SECONDS)
                break
        # A normal end fails the run if the broker did not acknowledge everything.
        producer.flush()
    finally:
        index.close()
        stream.close()
        healer.close()
        dead_letters.close()
        # Flushed before the last line, so that it says what the broker acknowledged.
        producer.close()
        context.log.info(
            f"Stopped: {writer.written} trades written, {producer.acknowledged} acknowledged "
            f"by the broker, {producer.failed} failed; {progress.report()}; "
            f"open_holes={sum(tail.open_holes().values())} "
            f"seconds={time.monotonic() - progress.started_at:.0f}"
        )
        # The same counters for tools: tests, the soak and CI read these, not the sentence.
        context.log.info(progress.totals_message())


def _log_waiting(context: OpExecutionContext, ahead: list[ObservedClaim]) -> None:
    """Say which live runs this one waits for."""
    context.log.warning(
        "Waiting for other live writers of "
        + ", ".join(
            f"{observed.claim.pair} (run {observed.claim.owner}, heartbeat unchanged for "
            f"{observed.silent_seconds:.0f}s, presumed over after "
            f"{observed.claim.lease_seconds:.0f}s)"
            for observed in ahead
        )
    )


def _release_claims(
    holder: TailClaimHolder, producer: TradeProducer | None, context: OpExecutionContext
) -> None:
    """Release the claims once every write is acknowledged; otherwise let them expire."""
    if producer is not None and producer.pending:
        # A trade still in the producer's hands may land later: only the lease covers that.
        context.log.warning(
            f"{producer.pending} trade(s) not acknowledged; the live claims are not released and "
            "expire after their lease"
        )
        holder.close()
        return
    try:
        holder.release()
    except Exception as error:
        context.log.warning(f"Could not release the tail claims ({error}); they expire by lease")
        holder.close()


def _bound_reached(config: LiveTradesConfig, tail: LiveTail, progress: LiveProgress) -> bool:
    if tail.limit_reached:
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
