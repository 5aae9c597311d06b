"""A resilient Kraken WebSocket v2 `trade` subscription.

`KrakenTradeStream.batches()` yields the trades of each frame, in order, across reconnects:
it resubscribes with exponential back-off and jitter, reconnects when the link goes silent past
the watchdog, drops trades a snapshot repeats after a reconnect, and reports id gaps.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import websocket

from trades_platform.kraken.protocol import (
    MAX_FRAME_BYTES,
    ErrorMessage,
    Heartbeat,
    IgnoredMessage,
    MalformedMessage,
    Pong,
    RejectedItem,
    StatusMessage,
    SubscribeAck,
    TradesMessage,
    parse_frame,
)
from trades_platform.settings import KrakenSettings, default_of
from trades_platform.trade import Source, Trade

logger = logging.getLogger(__name__)


class UnsupportedPairError(ValueError):
    """Kraken refused to subscribe a pair: retrying cannot help, the configuration is wrong."""

    def __init__(self, pair: str, kraken_error: str | None) -> None:
        super().__init__(
            f"Kraken does not support pair {pair!r}: {kraken_error or 'no reason given'}"
        )
        self.pair = pair


class _Reconnect(Exception):
    """Internal: the current connection is unusable; open a new one."""


# A message bigger than this is not read to its end: the connection is dropped instead (the
# parser dead-letters messages above MAX_FRAME_BYTES that still fit). Kraken's are a few KiB.
MAX_MESSAGE_BYTES = 16 * MAX_FRAME_BYTES


class MessageTooLargeError(websocket.WebSocketException):
    """A WebSocket message grew past MAX_MESSAGE_BYTES while it was being read."""


class MessageTooSlowError(websocket.WebSocketException):
    """A WebSocket message was still arriving after its deadline (sent a byte at a time)."""


class _BoundedWebSocket(websocket.WebSocket):
    """A WebSocket whose messages are bounded in size and in the time they take to arrive.

    websocket-client reads a message to its end whatever it announces or however slowly it
    comes, and a socket timeout only bounds each read: a message sent a byte at a time would hold
    the stream past its watchdog, and a huge one would fill memory. `_recv` is the one place all
    reads of a message pass through (headers, payloads, continuation frames).
    """

    deadline_seconds = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.begin_message()

    def begin_message(self) -> None:
        """Start counting the next message's bytes and time."""
        self._message_bytes = 0
        self._message_started: float | None = None

    def check_deadline(self) -> None:
        """Raise MessageTooSlowError if the message being read is past its deadline."""
        started = self._message_started
        if started is not None and time.monotonic() - started > self.deadline_seconds:
            raise MessageTooSlowError(
                f"a message still incomplete after {self.deadline_seconds:.1f}s "
                f"({self._message_bytes} bytes so far)"
            )

    def _recv(self, bufsize: int) -> bytes:
        self.check_deadline()
        data: bytes = super()._recv(bufsize)  # type: ignore[no-untyped-call]
        if self._message_started is None:
            self._message_started = time.monotonic()
        self._message_bytes += len(data)
        if self._message_bytes > MAX_MESSAGE_BYTES:
            raise MessageTooLargeError(
                f"a message of more than {MAX_MESSAGE_BYTES} bytes; not read further"
            )
        return data


@dataclass(frozen=True)
class StreamSettings:
    """How to reach Kraken and how patient to be with it."""

    url: str
    pairs: Sequence[str]
    snapshot: bool = default_of(KrakenSettings, "snapshot")
    watchdog_seconds: float = default_of(KrakenSettings, "watchdog_seconds")
    connect_timeout_seconds: float = default_of(KrakenSettings, "connect_timeout_seconds")
    subscribe_timeout_seconds: float = 10.0
    backoff_initial_seconds: float = default_of(KrakenSettings, "backoff_initial_seconds")
    backoff_max_seconds: float = default_of(KrakenSettings, "backoff_max_seconds")
    # How often `batches()` yields even without trades, so the caller can log and check its bounds.
    idle_yield_seconds: float = 1.0


@dataclass(frozen=True)
class TradeGap:
    """Trade ids a pair skipped: Kraken ids are sequential per pair, so these were missed.

    The times are exact (µs) times of the trades on either side: missing trades often share a
    timestamp, to the microsecond, with one of them, so a heal must start at or before
    `after_time_us` and select by id, never by a window cut at these times.
    """

    pair: str
    first_missing_id: int
    last_missing_id: int
    # The trade just before the gap (the last one seen, or the topic's newest after a restart).
    after_time_us: int
    # The trade that revealed the gap.
    before_time_us: int

    @property
    def missing(self) -> int:
        """How many ids are missing."""
        return self.last_missing_id - self.first_missing_id + 1


# A rejection's reason is cut to this many characters: it names the problem, not the input.
MAX_REASON_CHARS = 300
# A frame's bad items beyond this many go to the dead-letter topic as one summary record.
ITEMS_DEAD_LETTERED_PER_FRAME = 100
# At most this many rejections are logged one by one per interval; the rest are counted in one
# line per interval (all of them still go to the dead-letter topic and the counters).
REJECTIONS_LOGGED_PER_INTERVAL = 10
REJECTION_LOG_INTERVAL_SECONDS = 60.0


@dataclass(frozen=True)
class RejectedFrame:
    """A frame, or part of one, that could not be used, and why."""

    reason: str
    raw: object

    def __post_init__(self) -> None:
        if len(self.reason) > MAX_REASON_CHARS:
            object.__setattr__(self, "reason", self.reason[: MAX_REASON_CHARS - 3] + "...")


class RejectionLog:
    """Logs rejected input one line each up to a budget per interval, then one summary line.

    A feed that turns to junk (a 1 MiB frame of bad items is half a million rejections) must
    not flood the run's event log; the counts and the dead-letter topic keep everything.
    """

    def __init__(
        self,
        log: logging.Logger,
        *,
        per_interval: int = REJECTIONS_LOGGED_PER_INTERVAL,
        interval_seconds: float = REJECTION_LOG_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._per_interval = per_interval
        self._interval = interval_seconds
        self._clock = clock
        self._started = clock()
        self._logged = 0
        self._unlogged: Counter[str] = Counter()

    def rejected(self, reason: str) -> None:
        """Log one rejection, or count it once this interval's budget is spent."""
        self._roll()
        if self._logged < self._per_interval:
            self._logged += 1
            self._log.warning(f"Skipped bad Kraken input: {reason}")
        else:
            # Counted by the reason's first words: the ids and values in it vary.
            self._unlogged[reason.split(":", 1)[0][:80]] += 1

    def flush(self) -> None:
        """Log the summary of what was counted but not logged (when the stream closes)."""
        self._roll(force=True)

    def _roll(self, *, force: bool = False) -> None:
        now = self._clock()
        if now - self._started < self._interval and not force:
            return
        if self._unlogged:
            self._log.warning(
                f"Skipped {self._unlogged.total()} more bad Kraken input(s) in the last "
                f"{now - self._started:.0f}s without logging each (all are in the dead-letter "
                f"topic): {dict(self._unlogged.most_common(5))}"
            )
        self._started, self._logged, self._unlogged = now, 0, Counter()


@dataclass
class StreamStats:
    """Counters a caller can report while the stream runs."""

    connections: int = 0
    reconnects: int = 0
    frames: int = 0
    trades: int = 0
    rejected: int = 0
    repeated_skipped: int = 0
    gaps: int = 0
    missing_trades: int = 0
    missing_per_pair: Counter[str] = field(default_factory=Counter)
    last_trade_id: dict[str, int] = field(default_factory=dict)


class KrakenTradeStream:
    """Subscribes to Kraken's `trade` channel and yields batches of new trades until closed."""

    def __init__(
        self,
        settings: StreamSettings,
        *,
        source: Source = "live",
        on_rejected: Callable[[RejectedFrame], None] | None = None,
        on_gap: Callable[[TradeGap], None] | None = None,
        log: logging.Logger = logger,
        sleep: Callable[[float], None] = time.sleep,
        resume_after: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        if not settings.pairs:
            raise ValueError("no pairs configured: set KRAKEN_PAIRS, e.g. 'BTC/USD,ETH/USD'")
        self.settings = settings
        self.stats = StreamStats()
        # (last id, its time in µs) per pair already in the topic: older trades are skipped and a
        # jump past it is reported as a gap, exactly as after a reconnect.
        self._resume_time_us: dict[str, int] = {}
        for pair, (last_id, last_time_us) in (resume_after or {}).items():
            self.stats.last_trade_id[pair] = last_id
            self._resume_time_us[pair] = last_time_us
        # The newest trade seen per pair: its exact time starts the next gap's heal.
        self._last_trade: dict[str, Trade] = {}
        self._source: Source = source
        self._on_rejected = on_rejected
        self._on_gap = on_gap
        self._log = log
        self._rejections = RejectionLog(log)
        self._sleep = sleep
        self._socket: _BoundedWebSocket | None = None
        self._request_ids = itertools.count(1)
        self._closed = False
        # Consecutive failed connections; reset once a subscription is fully acknowledged.
        self._failures = 0

    def batches(self) -> Iterator[list[Trade]]:
        """Yield each frame's new trades; yield `[]` when idle so the caller keeps control."""
        while not self._closed:
            try:
                self._connect()
                yield from self._read_until_broken()
            except _Reconnect as reason:
                self._disconnect()
                if self._closed:
                    return
                self._failures += 1
                self.stats.reconnects += 1
                delay = self._backoff_delay(self._failures)
                self._log.warning(
                    f"Kraken connection lost ({reason}); reconnect #{self.stats.reconnects} "
                    f"in {delay:.2f}s"
                )
                yield from self._sleep_yielding(delay)
        self._disconnect()

    def close(self) -> None:
        """Stop the stream and close the socket; safe to call more than once."""
        self._closed = True
        self._disconnect()
        self._rejections.flush()

    def _connect(self) -> None:
        settings = self.settings
        try:
            connection = websocket.create_connection(
                settings.url,
                timeout=settings.connect_timeout_seconds,
                skip_utf8_validation=True,
                enable_multithread=False,
                class_=_BoundedWebSocket,
            )
        except (OSError, websocket.WebSocketException) as error:
            raise _Reconnect(f"connect to {settings.url} failed: {error}") from error
        assert isinstance(connection, _BoundedWebSocket)
        # A message must arrive whole within the watchdog, however it trickles in.
        connection.deadline_seconds = settings.watchdog_seconds
        self._socket = connection
        self.stats.connections += 1
        self._socket.settimeout(min(settings.idle_yield_seconds, settings.watchdog_seconds))
        self._send(
            {
                "method": "subscribe",
                "params": {
                    "channel": "trade",
                    "symbol": list(settings.pairs),
                    # Always explicit: Kraken's documented default and its behaviour disagree.
                    "snapshot": settings.snapshot,
                },
                "req_id": next(self._request_ids),
            }
        )
        self._log.info(f"Connected to {settings.url}; subscribing to trade for {settings.pairs}")

    def _read_until_broken(self) -> Iterator[list[Trade]]:
        settings = self.settings
        awaiting_ack = set(settings.pairs)
        connected_at = time.monotonic()
        last_frame_at = connected_at
        ping_sent = False
        while not self._closed:
            raw = self._receive()
            now = time.monotonic()
            # When the frame arrived, on the wall clock: each live record carries it.
            received_ms = time.time_ns() // 1_000_000
            if raw is None:
                silence = now - last_frame_at
                if silence > settings.watchdog_seconds:
                    raise _Reconnect(f"no frame for {silence:.1f}s (watchdog)")
                if awaiting_ack and now - connected_at > settings.subscribe_timeout_seconds:
                    raise _Reconnect(f"no subscribe ack for {sorted(awaiting_ack)}")
                if silence > settings.watchdog_seconds / 2 and not ping_sent:
                    self._send({"method": "ping", "req_id": next(self._request_ids)})
                    ping_sent = True
                yield []
                continue
            last_frame_at = now
            ping_sent = False
            self.stats.frames += 1
            try:
                message = parse_frame(raw, self._source, received_ms)
            except Exception as error:
                # The parser is built never to raise; if some input still makes it, that frame
                # is dead-lettered and the stream goes on.
                message = MalformedMessage(f"frame not parsed: {type(error).__name__}", raw)
            if isinstance(message, TradesMessage):
                self._reject_items(message.rejected)
                yield self._new_trades(message.trades)
            elif isinstance(message, SubscribeAck):
                self._check_ack(message, awaiting_ack)
            elif isinstance(message, MalformedMessage):
                self._reject(RejectedFrame(message.reason, message.raw))
            elif isinstance(message, StatusMessage):
                log = self._log.info if message.system == "online" else self._log.warning
                log(f"Kraken status: system={message.system} version={message.version}")
            elif isinstance(message, ErrorMessage):
                self._log.warning(f"Kraken error for {message.method}: {message.error}")
            elif isinstance(message, IgnoredMessage) and message.description.startswith("channel"):
                # Only `trade` is subscribed: data on any other channel is unexpected input.
                self._reject(RejectedFrame(f"unsubscribed {message.description}", raw))
            elif isinstance(message, (Heartbeat, Pong, IgnoredMessage)):
                pass

    def _receive(self) -> str | bytes | None:
        """The next frame, or None when nothing arrived within the poll interval."""
        assert self._socket is not None
        try:
            # Raw bytes, not `recv()`: that decodes text frames as UTF-8 and raises on invalid
            # bytes (validation is off for speed); the parser rejects them as invalid JSON.
            opcode, data = self._socket.recv_data()
        except websocket.WebSocketTimeoutException:
            # Part of a message may have come: it stays buffered, within its deadline.
            try:
                self._socket.check_deadline()
            except MessageTooSlowError as error:
                raise _Reconnect(f"receive failed: {error}") from error
            return None
        except (OSError, websocket.WebSocketException) as error:
            raise _Reconnect(f"receive failed: {type(error).__name__}: {error}") from error
        self._socket.begin_message()
        if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
            return data  # type: ignore[no-any-return]
        return ""

    def _send(self, request: dict[str, object]) -> None:
        assert self._socket is not None
        try:
            self._socket.send(orjson.dumps(request).decode())
        except (OSError, websocket.WebSocketException) as error:
            raise _Reconnect(f"send failed: {error}") from error

    def _check_ack(self, ack: SubscribeAck, awaiting_ack: set[str]) -> None:
        if ack.success:
            awaiting_ack.discard(ack.symbol or "")
            if not awaiting_ack:
                self._failures = 0
            return
        if ack.symbol is not None and ack.symbol in self.settings.pairs:
            raise UnsupportedPairError(ack.symbol, ack.error)
        self._log.warning(f"Kraken refused a subscription: {ack.error}")

    def _new_trades(self, trades: list[Trade]) -> list[Trade]:
        """Drop trades already seen (a snapshot after a reconnect repeats them); note id gaps.

        Gaps are reported before the frame's trades are returned, so a caller that orders by id
        knows of every hole below a trade by the time it sees the trade.
        """
        stats = self.stats
        fresh: list[Trade] = []
        last_trade = self._last_trade
        for trade in trades:
            pair = trade.pair
            last_id = stats.last_trade_id.get(pair)
            if last_id is not None:
                if trade.trade_id <= last_id:
                    stats.repeated_skipped += 1
                    continue
                if trade.trade_id > last_id + 1:
                    previous = last_trade.get(pair)
                    after_time_us = (
                        previous.time_us if previous is not None else self._resume_time_us[pair]
                    )
                    self._note_gap(
                        TradeGap(
                            pair, last_id + 1, trade.trade_id - 1, after_time_us, trade.time_us
                        )
                    )
            stats.last_trade_id[pair] = trade.trade_id
            last_trade[pair] = trade
            fresh.append(trade)
        stats.trades += len(fresh)
        return fresh

    def _note_gap(self, gap: TradeGap) -> None:
        self.stats.gaps += 1
        self.stats.missing_trades += gap.missing
        self.stats.missing_per_pair[gap.pair] += gap.missing
        # A gap per left-out trade is routine on a lossy feed: the progress line counts them.
        self._log.debug(
            f"{gap.pair}: {gap.missing} trade(s) missed, "
            f"ids {gap.first_missing_id}..{gap.last_missing_id}"
        )
        if self._on_gap is not None:
            self._on_gap(gap)

    def _reject_items(self, items: list[RejectedItem]) -> None:
        """Dead-letter a frame's bad items: the first few one by one, the rest as one summary."""
        for item in items[:ITEMS_DEAD_LETTERED_PER_FRAME]:
            self._reject(RejectedFrame(item.reason, item.raw))
        rest = items[ITEMS_DEAD_LETTERED_PER_FRAME:]
        if rest:
            reasons = Counter(item.reason.split(":", 1)[0][:80] for item in rest)
            self.stats.rejected += len(rest) - 1  # the summary below counts one
            self._reject(
                RejectedFrame(
                    f"{len(rest)} more bad items in one frame, not dead-lettered one by one: "
                    f"{dict(reasons.most_common(5))}",
                    rest[0].raw,
                )
            )

    def _reject(self, rejected: RejectedFrame) -> None:
        self.stats.rejected += 1
        self._rejections.rejected(rejected.reason)
        if self._on_rejected is not None:
            self._on_rejected(rejected)

    def _backoff_delay(self, failures: int) -> float:
        """Full-jitter exponential back-off: spreads reconnects of many clients over time."""
        settings = self.settings
        ceiling = min(settings.backoff_max_seconds, settings.backoff_initial_seconds * 2**failures)
        return random.uniform(settings.backoff_initial_seconds, max(ceiling, 1e-3))

    def _sleep_yielding(self, delay: float) -> Iterator[list[Trade]]:
        """Sleep in short steps, yielding between them so the caller can stop or log meanwhile."""
        remaining = delay
        while not self._closed and remaining > 0:
            step = min(remaining, self.settings.idle_yield_seconds)
            self._sleep(step)
            remaining -= step
            yield []

    def _disconnect(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError, websocket.WebSocketException):
                self._socket.close(timeout=1)
            self._socket = None
