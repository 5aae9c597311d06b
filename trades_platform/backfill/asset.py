"""`kraken_trades_history`: one UTC day of one pair's Kraken trades, from REST into the topic.

A run may cover several partitions (`BACKFILL_PARTITIONS_PER_RUN`, Dagster's multi-run backfill
policy): it writes them one after another in one process with one REST client, each under its
own window lease, with its own scan, claims and metadata, so a backfill of many days keeps the
REST budget busy instead of starting a process per day.
"""

# No `from __future__ import annotations` here: Dagster reads the asset's annotations at import.

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetMaterialization,
    BackfillPolicy,
    MaterializeResult,
    MetadataValue,
    asset,
)

from trades_platform.backfill.partitions import TRADES_HISTORY_PARTITIONS, PartitionWindow
from trades_platform.coverage.claims import ClaimBoard, ObservedClaim
from trades_platform.coverage.coverage_log import (
    POLL_SECONDS,
    POSSIBLY_PERSISTED_SECONDS,
    rejected_warning,
)
from trades_platform.coverage.topic_ids import rejected_warnings, scan_topic_ids
from trades_platform.coverage.window_leases import (
    BACKFILL_PAGE_BOUND_SECONDS,
    WINDOW_LEASE_SECONDS,
    LeaseAhead,
    WindowLeaseHolder,
    describe_lease,
)
from trades_platform.coverage.writer import DeduplicatingWriter
from trades_platform.kraken.protocol import RestTradeRow
from trades_platform.kraken.rest import KrakenRestClient, RestStats
from trades_platform.producer import DeliveryError, TradeProducer
from trades_platform.resources import KrakenResource, RedpandaResource
from trades_platform.settings import BackfillSettings, KafkaSettings, from_environment
from trades_platform.trade import Trade, format_time_us

# Partitions one run covers when a backfill launches many (read once, with the definitions).
PARTITIONS_PER_RUN = from_environment(BackfillSettings).partitions_per_run

# Log progress every this many pages: about every 10 s at Kraken's 1 call/s.
PROGRESS_EVERY_PAGES = 10
# All backfill runs share Kraken's per-IP REST limit: dagster.yaml can cap them by this pool.
KRAKEN_REST_POOL = "kraken_rest"
# Reading the live claims before a page: bounded, since the lease's standing is checked after it.
CLAIMS_READ_TIMEOUT_SECONDS = 5.0


@dataclass
class BackfillSummary:
    """The partition's trades (written now or already present), as columns for pandas."""

    started_at: float = field(default_factory=time.monotonic)
    lease_wait_seconds: float = 0.0
    written: int = 0
    already_present: int = 0
    left_to_live: int = 0
    # Records under the pair's key in the topic that are not plausible trades (skipped).
    rejected_in_topic: int = 0
    # Records of the coverage log that are not valid claims, leases or heartbeats (skipped).
    rejected_in_coverage: int = 0
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
            "records_in_topic_rejected": self.rejected_in_topic,
            "records_in_coverage_rejected": self.rejected_in_coverage,
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


class BackfillTooLongError(RuntimeError):
    """A backfill ran past its bound (BACKFILL_MAX_RUNTIME_SECONDS) and stopped."""


class WindowBackfill:
    """One partition's run: REST pages of the window, written under its lease, around live claims.

    Before each page it reads the live writers' claims on the pair (reading the topic again once
    for every claim that ended since this run first read it), then, immediately before writing,
    checks its lease's standing. Rows a live claim keeps from it are remembered; at the end, a
    claim that turns out to be over (released or presumed dead) gives them back and they are
    written then.
    """

    def __init__(
        self,
        window: PartitionWindow,
        lease: WindowLeaseHolder,
        summary: BackfillSummary,
        settings: KafkaSettings,
        context: AssetExecutionContext,
    ) -> None:
        self.window = window
        self.lease = lease
        self.summary = summary
        self.settings = settings
        self._log = context.log
        self.max_runtime_seconds = from_environment(BackfillSettings).max_runtime_seconds
        self._board = ClaimBoard(settings, owner=context.run_id)
        # Claims already over when this run first read the topic: their writes are in that read.
        self._over_before_scan: set[str] = set()
        self._reread_for: set[str] = set()
        # Rows left to live claims, by trade id, with when their REST page arrived.
        self._left: dict[int, tuple[RestTradeRow, int]] = {}

    def run(self, client: KrakenRestClient, redpanda: RedpandaResource) -> dict[str, Any]:
        """Page through the window with `client`; return the materialization's metadata."""
        pair = self.window.pair
        self._over_before_scan = {
            observed.claim.owner
            for observed in self._board.read(CLAIMS_READ_TIMEOUT_SECONDS).get(pair, [])
            if observed.over
        }
        # What is already in the topic is never written again (see ARCHITECTURE.md).
        scanned = scan_topic_ids(self.settings, [pair])
        for warning in rejected_warnings(scanned):
            self._log.warning(warning)
        self.summary.rejected_in_topic = scanned[pair].rejected.count
        present = scanned[pair].ids
        bound_ms = int(BACKFILL_PAGE_BOUND_SECONDS * 1000)
        try:
            # The window's own REST counters: the client may have served other windows before.
            client.stats = RestStats()
            with redpanda.trade_producer(delivery_timeout_ms=bound_ms) as producer:
                writer = DeduplicatingWriter(producer, {pair: present})
                for page in client.window_pages(pair, self.window.start_us, self.window.end_us):
                    self._check_runtime()
                    if page.rows:
                        self._write(writer, page.rows, page.received_ms)
                        self.summary.add(page.rows)
                    producer.poll()
                    if client.stats.pages_fetched % PROGRESS_EVERY_PAGES == 0:
                        self._log_progress(client, producer)
                self._settle_left_rows(writer)
                # The run succeeds only once the broker acknowledged every trade.
                producer.flush()
                self._report_rejected_coverage()
                return self.summary.metadata(self.window, client, redpanda.topic)
        finally:
            self._board.close()

    def _report_rejected_coverage(self) -> None:
        """Warn about (and count) coverage records this run's lease and claim readers skipped."""
        for rejected in (self.lease.rejected, self._board.rejected):
            self.summary.rejected_in_coverage += rejected.count
            if warning := rejected_warning(rejected, self.lease.topic):
                self._log.warning(warning)

    def _check_runtime(self) -> None:
        """Fail once the run took longer than BACKFILL_MAX_RUNTIME_SECONDS (one REST slot)."""
        elapsed = time.monotonic() - self.summary.started_at
        if elapsed > self.max_runtime_seconds:
            raise BackfillTooLongError(
                f"{self.window.describe()}: still paging after {elapsed:.0f}s, past "
                f"BACKFILL_MAX_RUNTIME_SECONDS={self.max_runtime_seconds}; it holds the one "
                "Kraken REST slot (pool kraken_rest). Re-run the partition: only missing ids "
                "are written"
            )

    def _write(
        self, writer: DeduplicatingWriter, rows: list[RestTradeRow], received_ms: int
    ) -> None:
        """Write the rows no live claim keeps; wait until the broker acknowledged them."""
        claims = self._claims_after_catching_up(writer)
        present = writer.present.get(self.window.pair)
        allowed = []
        for row in rows:
            if present is not None and row.trade_id in present:
                allowed.append(row)  # counted as already present by the writer
            elif all(observed.claim.lets_backfill_write(row.trade_id) for observed in claims):
                allowed.append(row)
            else:
                self._left[row.trade_id] = (row, received_ms)
        # Immediately before the write: nothing that can stall lies between this and the produce.
        self.lease.ensure_held()
        before_present = writer.skipped_present
        written = writer.write(
            row.to_trade(self.window.pair, "backfill", received_ms) for row in allowed
        )
        try:
            writer.producer.flush(BACKFILL_PAGE_BOUND_SECONDS)
        except DeliveryError as error:
            raise self._after_unacknowledged_page(written, error) from error
        self.summary.written += len(written)
        self.summary.already_present += writer.skipped_present - before_present
        self.summary.left_to_live = len(self._left)

    def _after_unacknowledged_page(self, sent: list[Trade], error: DeliveryError) -> DeliveryError:
        """Keep the lease while a page the producer gave up on may still land; say what did.

        The broker may commit such a page later ("possibly persisted"): releasing the lease at
        once would let the next backfill scan before it lands and write its ids again.
        """
        self._log.warning(
            f"{self.window.describe()}: a page of {len(sent)} trades was not acknowledged "
            f"({error}); the broker may still commit it, so this run keeps its lease for "
            f"{POSSIBLY_PERSISTED_SECONDS:.0f}s before it fails"
        )
        time.sleep(POSSIBLY_PERSISTED_SECONDS)
        try:
            in_topic = scan_topic_ids(self.settings, [self.window.pair])[self.window.pair].ids
            landed = str(sum(trade.trade_id in in_topic for trade in sent))
        except Exception as scan_error:  # the broker may still be out of reach: report, go on
            landed = f"an unknown number ({scan_error})"
        return DeliveryError(
            f"{error}; {landed} of the page's {len(sent)} trades were in the topic "
            f"{POSSIBLY_PERSISTED_SECONDS:.0f}s later. Re-run the partition: only missing ids "
            "are written"
        )

    def _claims_after_catching_up(self, writer: DeduplicatingWriter) -> list[ObservedClaim]:
        """The pair's live claims that are not over, after reading the topic again if one ended.

        While a claim was alive its writer wrote ids this run has not seen; once the claim is
        over they are this run's to write again, and writing them from the first reading would
        write them twice. Each ended claim costs one re-read.
        """
        pair = self.window.pair
        claims = self._board.read(CLAIMS_READ_TIMEOUT_SECONDS).get(pair, [])
        ended = (
            {
                observed.claim.owner
                for observed in claims
                if observed.over and observed.claim.from_id is not None
            }
            - self._over_before_scan
            - self._reread_for
        )
        if ended:
            found = scan_topic_ids(self.settings, [pair])[pair]
            writer.replace_present(pair, found.ids)
            self._reread_for |= ended
            self._log.info(
                f"{pair}: the live claims of {sorted(ended)} ended during this run; read the "
                f"topic again ({len(found.ids)} ids of the pair present)"
            )
            claims = self._board.read(CLAIMS_READ_TIMEOUT_SECONDS).get(pair, [])
        return [observed for observed in claims if not observed.over]

    def _settle_left_rows(self, writer: DeduplicatingWriter) -> None:
        """Write the rows left to live claims that turned out to be over; keep the others'.

        A claim this run has not watched long enough may belong to a writer that died: wait
        until its heartbeat is seen to change (it is alive: the rows are its) or to stand still
        for its lease (it is over: the rows are this run's).
        """
        reported_at = float("-inf")
        while self._left:
            claims = self._claims_after_catching_up(writer)
            blocking = [
                observed
                for observed in claims
                if any(not observed.claim.lets_backfill_write(i) for i in self._left)
            ]
            free = {
                trade_id: entry
                for trade_id, entry in self._left.items()
                if all(observed.claim.lets_backfill_write(trade_id) for observed in claims)
            }
            if free:
                for trade_id in free:
                    del self._left[trade_id]
                for received_ms in sorted({received for _, received in free.values()}):
                    rows = [row for row, received in free.values() if received == received_ms]
                    self._write(writer, sorted(rows, key=lambda row: row.trade_id), received_ms)
                continue
            unknown = [observed for observed in blocking if observed.liveness == "unknown"]
            if not unknown:
                return  # every claim keeping rows is alive: its writer writes them
            self.lease.ensure_held()
            if time.monotonic() - reported_at >= 15:
                reported_at = time.monotonic()
                self._log.info(
                    f"{self.window.pair}: {len(self._left)} trades are claimed by live runs "
                    + ", ".join(observed.claim.owner for observed in unknown)
                    + " whose heartbeat this run has not yet seen change; waiting to tell "
                    "whether they are alive (up to their lease)"
                )
            time.sleep(POLL_SECONDS)

    def _log_progress(self, client: KrakenRestClient, producer: TradeProducer) -> None:
        summary = self.summary
        reached = format_time_us(summary.times_us[-1]) if summary.count else "none yet"
        self._log.info(
            f"{client.stats.pages_fetched} pages, {summary.count} trades, reached {reached}; "
            f"{producer.acknowledged} acknowledged, "
            f"{client.stats.rate_limit_waits} rate-limit waits"
        )


def _log_waiting(ahead: list[LeaseAhead], context: AssetExecutionContext) -> None:
    for other in ahead:
        context.log.info(
            f"Waiting for the backfill {describe_lease(other.lease)}: it holds an overlapping "
            f"window (heartbeat {other.heartbeat[0]}, unchanged for {other.silent_seconds:.0f}s; "
            f"presumed dead after {WINDOW_LEASE_SECONDS:.0f}s)"
        )


@asset(
    partitions_def=TRADES_HISTORY_PARTITIONS,
    description=(
        "Kraken trades of one pair on one UTC day, fetched from REST /0/public/Trades and written "
        "to the trades topic (source=backfill). Ids already in the topic are not written again, "
        "so a partition can be re-run safely; two runs of one partition at once (even from two "
        "Dagster instances) take turns through a lease in the `<topic>.coverage` topic. A "
        "backfill of many partitions runs up to BACKFILL_PARTITIONS_PER_RUN days of a pair per "
        "run, one after another, each with its own lease, metadata and checks."
    ),
    kinds={"kafka", "python"},
    group_name="backfill",
    pool=KRAKEN_REST_POOL,
    # Dagster groups a backfill's partitions by pair into runs of consecutive days.
    backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=PARTITIONS_PER_RUN),
)
def kraken_trades_history(
    context: AssetExecutionContext, kraken: KrakenResource, redpanda: RedpandaResource
) -> Iterator[MaterializeResult[None] | AssetMaterialization]:
    """Backfill each partition of the run in turn (one day of one pair each), then report."""
    keys = list(context.partition_keys)
    done: list[tuple[str, dict[str, Any]]] = []
    # One client for the run: Kraken's pairs and clock are asked once, not once per day.
    with kraken.rest_client(log=context.log, purpose="backfill") as client:
        try:
            for key in keys:
                metadata = _backfill_partition(context, key, client, kraken, redpanda)
                done.append((key, metadata))
        except BaseException:
            if len(keys) > 1:
                # The days finished before the failure are in the topic: record them (the
                # failed step produces no output, so Dagster would record none of them).
                for key, metadata in done:
                    yield AssetMaterialization(
                        asset_key=context.asset_key, partition=key, metadata=metadata
                    )
            raise
    if len(keys) == 1:
        yield MaterializeResult(metadata=done[0][1])
        return
    # A run over a range: Dagster records one materialization per partition, each with the
    # metadata given for it here.
    for key, metadata in done:
        context.add_asset_metadata(metadata, partition_key=key)
    yield MaterializeResult()


def _backfill_partition(
    context: AssetExecutionContext,
    key: str,
    client: KrakenRestClient,
    kraken: KrakenResource,
    redpanda: RedpandaResource,
) -> dict[str, Any]:
    """Fetch one partition's day page by page under its window lease; its metadata."""
    window = PartitionWindow.from_key(key)
    summary = BackfillSummary()
    context.log.info(
        f"Backfilling {window.describe()} from {kraken.rest_url} to topic {redpanda.topic!r} at "
        f"{redpanda.broker_address} (pace {kraken.rest_requests_per_second} calls/s, "
        f"{kraken.rest_page_size} trades/page)"
    )
    settings = redpanda.kafka_settings()
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
        metadata = WindowBackfill(window, lease, summary, settings, context).run(client, redpanda)
    context.log.info(
        f"{window.describe()}: {summary.count} trades in the window, {summary.written} written, "
        f"{summary.already_present} already in the topic, {summary.left_to_live} left to the "
        f"live writer; {metadata['seconds']}s "
        f"({metadata['pages_fetched']} pages, {metadata['rate_limit_waits']} rate-limit waits, "
        f"{metadata['retries']} retries, {metadata['rows_rejected']} rows rejected, "
        f"{metadata['seconds_waiting_for_other_backfills']}s waiting for another backfill)"
    )
    return metadata
