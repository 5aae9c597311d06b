"""`kraken_trades_history`: one UTC day of one pair's Kraken trades, from REST into the topic."""

# No `from __future__ import annotations` here: Dagster reads the asset's annotations at import.

import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from trades_platform.backfill.partitions import TRADES_HISTORY_PARTITIONS, PartitionWindow
from trades_platform.coverage.claims import (
    BACKFILL_PAGE_BOUND_SECONDS,
    LEASE_SECONDS,
    ClaimBoard,
    TailClaim,
)
from trades_platform.coverage.topic_ids import scan_topic_ids
from trades_platform.coverage.window_leases import LEASE_SECONDS as WINDOW_LEASE_SECONDS
from trades_platform.coverage.window_leases import (
    LeaseAhead,
    WindowLeaseHolder,
    describe_lease,
)
from trades_platform.coverage.writer import DeduplicatingWriter
from trades_platform.kraken.protocol import RestTradeRow
from trades_platform.kraken.rest import KrakenRestClient
from trades_platform.producer import ProducerSettings
from trades_platform.resources import KrakenResource, RedpandaResource
from trades_platform.trade import format_time_us

# Log progress every this many pages: about every 10 s at Kraken's 1 call/s.
PROGRESS_EVERY_PAGES = 10
# All backfill runs share Kraken's per-IP REST limit: dagster.yaml can cap them by this pool.
KRAKEN_REST_POOL = "kraken_rest"


@dataclass
class BackfillSummary:
    """The partition's trades (written now or already present), as columns for pandas."""

    started_at: float = field(default_factory=time.monotonic)
    lease_wait_seconds: float = 0.0
    written: int = 0
    already_present: int = 0
    left_to_live: int = 0
    trade_ids: list[int] = field(default_factory=list)
    times_us: list[int] = field(default_factory=list)
    prices: list[float] = field(default_factory=list)
    volumes: list[float] = field(default_factory=list)

    def add(self, rows: list[RestTradeRow]) -> None:
        """Record a page that was handed to the producer."""
        self.trade_ids.extend(row.trade_id for row in rows)
        self.times_us.extend(row.time_us for row in rows)
        self.prices.extend(row.price for row in rows)
        self.volumes.extend(row.volume for row in rows)

    @property
    def count(self) -> int:
        """Trades written so far."""
        return len(self.trade_ids)

    def hourly(self) -> pd.DataFrame:
        """Trades, id range, price range and volume per UTC hour."""
        frame = pd.DataFrame(
            {
                "time": pd.to_datetime(pd.Series(self.times_us, dtype="int64"), unit="us"),
                "trade_id": pd.Series(self.trade_ids, dtype="int64"),
                "price": pd.Series(self.prices, dtype="float64"),
                "volume": pd.Series(self.volumes, dtype="float64"),
            }
        )
        hourly = frame.groupby(frame["time"].dt.strftime("%H:00")).agg(
            trades=("trade_id", "size"),
            first_id=("trade_id", "min"),
            last_id=("trade_id", "max"),
            low=("price", "min"),
            high=("price", "max"),
            volume=("volume", "sum"),
        )
        hourly.index.name = "hour (UTC)"
        return hourly

    def metadata(
        self, window: PartitionWindow, client: KrakenRestClient, topic: str
    ) -> dict[str, Any]:
        """The materialization's metadata; numbers are plotted across partitions in the UI."""
        seconds = time.monotonic() - self.started_at
        stats = client.stats
        metadata: dict[str, Any] = {
            "dagster/row_count": self.count,
            "written": self.written,
            "already_present": self.already_present,
            "left_to_live_writer": self.left_to_live,
            "seconds_waiting_for_other_backfills": round(self.lease_wait_seconds, 3),
            "pair": window.pair,
            "window": window.describe(),
            "topic": topic,
            "pages_fetched": stats.pages_fetched,
            "requests": stats.requests,
            "rate_limit_waits": stats.rate_limit_waits,
            "retries": stats.retries,
            "seconds_waited": round(stats.seconds_waited, 3),
            "rows_rejected": stats.rows_rejected,
            "duplicates_skipped": stats.duplicates_skipped,
            "seconds": round(seconds, 3),
            "trades_per_second": round(self.count / seconds, 1) if seconds > 0 else 0.0,
            "pages_per_second": round(stats.pages_fetched / seconds, 2) if seconds > 0 else 0.0,
        }
        if stats.rejected_reasons:
            metadata["rejected_reasons"] = MetadataValue.json(dict(stats.rejected_reasons))
        if self.count:
            metadata.update(
                {
                    "first_trade_id": self.trade_ids[0],
                    "last_trade_id": self.trade_ids[-1],
                    "first_trade_time": format_time_us(self.times_us[0]),
                    "last_trade_time": format_time_us(self.times_us[-1]),
                    "hourly": MetadataValue.md(self.hourly().to_markdown(floatfmt=".8g")),
                }
            )
        return metadata


# A claim carries its writer's clock: compare it with this run's with this much slack.
_CLAIM_CLOCK_SKEW_MS = 60_000


@dataclass
class _TopicReading:
    """When this run read the topic, and the ended claims it has read it again for since."""

    started_ms: int
    reread_for: set[tuple[str, int]] = field(default_factory=set)


def _write_page(
    rows: list[RestTradeRow],
    window: PartitionWindow,
    writer: DeduplicatingWriter,
    lease: WindowLeaseHolder,
    board: ClaimBoard,
    summary: BackfillSummary,
    reading: _TopicReading,
    context: AssetExecutionContext,
) -> None:
    """Write a page's missing ids below any live claim; wait until the broker acknowledged them."""
    lease.ensure_held()
    # Checked before every page: the live writer waits out a page's bound after it claims.
    claim = board.claims().get(window.pair)
    below_id = None
    if claim is not None and claim.owner != board.owner:
        if claim.alive():
            below_id = claim.from_id
        else:
            _catch_up_with_ended_claim(claim, window, writer, board, reading, context)
    before_present = writer.skipped_present
    written = writer.write(
        (row.to_trade(window.pair, source="backfill") for row in rows), below_id=below_id
    )
    writer.producer.flush(BACKFILL_PAGE_BOUND_SECONDS)
    summary.add(rows)
    summary.written += len(written)
    summary.already_present += writer.skipped_present - before_present
    summary.left_to_live += len(rows) - len(written) - (writer.skipped_present - before_present)


def _catch_up_with_ended_claim(
    claim: TailClaim,
    window: PartitionWindow,
    writer: DeduplicatingWriter,
    board: ClaimBoard,
    reading: _TopicReading,
    context: AssetExecutionContext,
) -> None:
    """Read the topic again if a live writer's claim ended after this run first read it.

    While its claim was alive the live writer wrote ids this run has not seen; now that the
    ids are the backfill's again, writing them from the first reading would write them twice.
    """
    # A released claim's writer flushed before releasing; a dead one wrote until its lease ran out.
    ended_ms = claim.heartbeat_ms + (0 if claim.released else int(LEASE_SECONDS * 1000))
    key = (claim.owner, claim.heartbeat_ms)
    if ended_ms < reading.started_ms - _CLAIM_CLOCK_SKEW_MS or key in reading.reread_for:
        return
    found = scan_topic_ids(board.settings, [window.pair])[window.pair]
    writer.replace_present(window.pair, found.ids)
    reading.reread_for.add(key)
    context.log.info(
        f"{window.pair}: the live claim from id {claim.from_id} ended during this run; read the "
        f"topic again ({len(found.ids)} ids of the pair present)"
    )


def _log_waiting(ahead: list[LeaseAhead], context: AssetExecutionContext) -> None:
    for other in ahead:
        context.log.info(
            f"Waiting for the backfill {describe_lease(other.lease)}: it holds an overlapping "
            f"window (heartbeat {other.heartbeat[0]}, unchanged for {other.silent_seconds:.0f}s; "
            f"presumed dead after {WINDOW_LEASE_SECONDS:.0f}s)"
        )


def _backfill_window(
    window: PartitionWindow,
    lease: WindowLeaseHolder,
    summary: BackfillSummary,
    settings: ProducerSettings,
    kraken: KrakenResource,
    redpanda: RedpandaResource,
    context: AssetExecutionContext,
) -> dict[str, Any]:
    """Page through the window under the lease; return the materialization's metadata."""
    # What is already in the topic is never written again (see ARCHITECTURE.md).
    reading = _TopicReading(started_ms=int(time.time() * 1000))
    present = scan_topic_ids(settings, [window.pair])[window.pair].ids
    board = ClaimBoard(settings, owner=context.run_id)
    bound_ms = int(BACKFILL_PAGE_BOUND_SECONDS * 1000)
    with (
        kraken.rest_client(log=context.log) as client,
        redpanda.trade_producer(delivery_timeout_ms=bound_ms) as producer,
    ):
        writer = DeduplicatingWriter(producer, {window.pair: present})
        for rows in client.trade_rows(window.pair, window.start_us, window.end_us):
            if rows:
                _write_page(rows, window, writer, lease, board, summary, reading, context)
            producer.poll()
            if client.stats.pages_fetched % PROGRESS_EVERY_PAGES == 0:
                reached = format_time_us(summary.times_us[-1]) if summary.count else "none yet"
                context.log.info(
                    f"{client.stats.pages_fetched} pages, {summary.count} trades, reached "
                    f"{reached}; {producer.acknowledged} acknowledged, "
                    f"{client.stats.rate_limit_waits} rate-limit waits"
                )
        # The run succeeds only once the broker acknowledged every trade.
        producer.flush()
        board.close()
        return summary.metadata(window, client, redpanda.topic)


@asset(
    partitions_def=TRADES_HISTORY_PARTITIONS,
    description=(
        "Kraken trades of one pair on one UTC day, fetched from REST /0/public/Trades and written "
        "to the trades topic (source=backfill). Ids already in the topic are not written again, "
        "so a partition can be re-run safely; two runs of one partition at once (even from two "
        "Dagster instances) take turns through a lease in the `<topic>.coverage` topic."
    ),
    kinds={"kafka", "python"},
    group_name="backfill",
    pool=KRAKEN_REST_POOL,
)
def kraken_trades_history(
    context: AssetExecutionContext, kraken: KrakenResource, redpanda: RedpandaResource
) -> MaterializeResult:
    """Fetch the partition's day page by page, write each page, flush, report."""
    window = PartitionWindow.from_key(context.partition_key)
    summary = BackfillSummary()
    context.log.info(
        f"Backfilling {window.describe()} from {kraken.rest_url} to topic {redpanda.topic!r} at "
        f"{redpanda.broker_address} (pace {kraken.rest_requests_per_second} calls/s, "
        f"{kraken.rest_page_size} trades/page)"
    )
    settings = redpanda.producer_settings()
    # One backfill of a window at a time, across Dagster instances (coverage/window_leases.py).
    with WindowLeaseHolder(
        settings,
        window.pair,
        window.start_us,
        window.end_us,
        owner=context.run_id,
        on_heartbeat_failure=context.log.warning,
    ) as lease:
        summary.lease_wait_seconds = lease.wait_for_turn(lambda ahead: _log_waiting(ahead, context))
        metadata = _backfill_window(window, lease, summary, settings, kraken, redpanda, context)
    context.log.info(
        f"{window.describe()}: {summary.count} trades in the window, {summary.written} written, "
        f"{summary.already_present} already in the topic, {summary.left_to_live} left to the "
        f"live writer; {metadata['seconds']}s "
        f"({metadata['pages_fetched']} pages, {metadata['rate_limit_waits']} rate-limit waits, "
        f"{metadata['retries']} retries, {metadata['rows_rejected']} rows rejected, "
        f"{metadata['seconds_waiting_for_other_backfills']}s waiting for another backfill)"
    )
    return MaterializeResult(metadata=metadata)
