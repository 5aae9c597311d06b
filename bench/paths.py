"""The measured paths. Each runs in its own worker process (see `bench.worker`) and returns a dict.

Live (WebSocket frames -> topic):
- `live_limit`: websocket-client, orjson, a bare confluent-kafka Producer; no validation.
- `live_baseline`: a straightforward first version: json.loads, a validated pydantic model per
  trade, Quix `topic.serialize` + `produce` per trade, an INFO log line per trade.
- `live_product`: `KrakenTradeStream` -> `TradeProducer.send` -> acknowledged, as the live job.
- `live_latency`: the product path fed at a fixed rate; send time -> delivery callback time.

Backfill (REST pages -> topic):
- `backfill_limit`: requests + orjson + bare produce of the same rows.
- `backfill_product`: `KrakenRestClient.window_pages` -> `TradeProducer.send`, as the asset does.
- `backfill_paced`: the product against a rate-limited server at the client's 1 call/s pace.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
import websocket
from confluent_kafka import KafkaError, Message, Producer

from bench import frames
from bench.spec import RunSpec
from trades_platform.kraken.rest import KrakenRestClient, RestSettings
from trades_platform.kraken.websocket import KrakenTradeStream, StreamSettings
from trades_platform.producer import TradeProducer, quix_connection
from trades_platform.settings import KafkaSettings
from trades_platform.trade import Trade, parse_time_iso

# Runs must end; a path that stalls fails the benchmark instead of hanging it.
_FLUSH_TIMEOUT_SECONDS = 120.0
_QUIET = logging.getLogger("bench.quiet")
_QUIET.setLevel(logging.ERROR)


class _Clock:
    """Wall and CPU time between `start` and `stop` (CPU of every thread: librdkafka's too)."""

    def __init__(self) -> None:
        self.wall_start = self.wall_stop = 0.0
        self.cpu_start = self.cpu_stop = 0.0
        self.main_start = self.main_stop = 0.0

    @staticmethod
    def _cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def start(self) -> None:
        """Mark the start of the measured window."""
        self.wall_start, self.cpu_start = time.perf_counter(), self._cpu()
        self.main_start = time.thread_time()

    def stop(self) -> None:
        """Mark its end."""
        self.wall_stop, self.cpu_stop = time.perf_counter(), self._cpu()
        self.main_stop = time.thread_time()

    def result(self, path: str, trades: int, acknowledged: int, **extra: Any) -> dict[str, Any]:
        """The common result fields."""
        seconds = self.wall_stop - self.wall_start
        return {
            "path": path,
            "trades": trades,
            "acknowledged": acknowledged,
            "seconds": seconds,
            "trades_per_second": trades / seconds if seconds > 0 else 0.0,
            "cpu_seconds": self.cpu_stop - self.cpu_start,
            # The Python thread alone; the rest of cpu_seconds is librdkafka's threads.
            "main_thread_cpu_seconds": self.main_stop - self.main_start,
            **extra,
        }


def _warm_up(confluent: Producer, topic: str) -> None:
    """Connect, get a producer id and the topic's metadata before the clock starts.

    A new librdkafka producer takes about 0.5 s to its first acknowledgment; inside a window
    of a few seconds that would swamp the comparison. The warm-up record is not counted.
    """
    done: list[KafkaError | None] = []
    confluent.produce(topic, b"{}", b"warm-up", -1, lambda error, _message: done.append(error))
    confluent.flush(30)
    if done != [None]:
        raise RuntimeError(f"warm-up produce failed: {done}")


def _confluent_of(producer: TradeProducer) -> Producer:
    """The librdkafka handle inside TradeProducer (Quix creates it lazily, on first use)."""
    handle: Producer = producer.librdkafka
    return handle


def _producer_settings(spec: RunSpec) -> KafkaSettings:
    return KafkaSettings(broker_address=spec.broker, topic=spec.topic)


def _producer_config(spec: RunSpec) -> dict[str, Any]:
    """The product's producer settings with the run's overrides."""
    return {**_producer_settings(spec).producer_config(), **spec.producer_extra}


def _trade_producer(spec: RunSpec) -> TradeProducer:
    return TradeProducer(_producer_settings(spec), extra_config=dict(spec.producer_extra))


def _ws_url(spec: RunSpec, rate: float = 0.0) -> str:
    url = f"{spec.ws_url}?trades={spec.trades}&pairs={spec.pairs}"
    if spec.frame_sizes:
        url += "&sizes=" + ",".join(str(size) for size in spec.frame_sizes)
    return url + (f"&rate={rate}" if rate else "")


def _subscribe_request(pairs: list[str]) -> str:
    request = {
        "method": "subscribe",
        "params": {"channel": "trade", "symbol": pairs, "snapshot": True},
        "req_id": 1,
    }
    return json.dumps(request)


class _BareProducer:
    """A confluent-kafka Producer with the product's settings and an ack counter."""

    def __init__(self, spec: RunSpec) -> None:
        config = {**_producer_settings(spec).client_config(), **_producer_config(spec)}
        self.producer = Producer(config)
        self.acknowledged = 0
        self.failed = 0

    def on_delivery(self, error: KafkaError | None, _message: Message) -> None:
        """Count an acknowledgment."""
        if error is None:
            self.acknowledged += 1
        else:
            self.failed += 1

    def produce(self, topic: str, value: bytes, key: str) -> None:
        """Queue one message, waiting for room when librdkafka's queue is full."""
        while True:
            try:
                self.producer.produce(topic, value, key, -1, self.on_delivery)
                return
            except BufferError:
                self.producer.poll(0.05)

    def flush(self) -> None:
        """Wait for every acknowledgment."""
        remaining = self.producer.flush(_FLUSH_TIMEOUT_SECONDS)
        if remaining or self.failed:
            raise RuntimeError(f"{remaining} unacknowledged, {self.failed} failed")


# --- live ------------------------------------------------------------------------------------


def live_limit(spec: RunSpec) -> dict[str, Any]:
    """The live path's upper bound: receive, orjson, bare produce; no validation, no model."""
    bare = _BareProducer(spec)
    _warm_up(bare.producer, spec.topic)
    ws = websocket.create_connection(
        _ws_url(spec), skip_utf8_validation=True, enable_multithread=False
    )
    if spec.socket_timeout is not None:
        ws.settimeout(spec.socket_timeout)
    ws.send(_subscribe_request(frames.pair_names(spec.pairs)))
    clock = _Clock()
    loads, dumps = orjson.loads, orjson.dumps
    produce, poll, on_delivery = bare.producer.produce, bare.producer.poll, bare.on_delivery
    topic = spec.topic
    received = 0
    try:
        while received < spec.trades:
            _opcode, data = ws.recv_data()
            frame = loads(data)
            if frame.get("channel") != "trade":
                continue
            if not received:
                clock.start()
            for item in frame["data"]:
                value, key = dumps(item), item["symbol"]
                try:
                    # Positional (partition -1 = the partitioner): the cheapest call there is.
                    produce(topic, value, key, -1, on_delivery)
                except BufferError:
                    bare.produce(topic, value, key)
            received += len(frame["data"])
            poll(0)
        bare.flush()
        clock.stop()
    finally:
        ws.close()
    return clock.result("live_limit", received, bare.acknowledged)


def live_baseline(spec: RunSpec) -> dict[str, Any]:
    """A straightforward first version: json, pydantic per trade, Quix per trade, a log line."""
    from quixstreams import Application

    app = Application(
        broker_address=quix_connection(_producer_settings(spec)),
        producer_extra_config=_producer_config(spec),
        auto_create_topics=True,
    )
    topic = app.topic(spec.topic, key_serializer="str", value_serializer="json")
    producer = app.get_producer()
    _warm_up(producer._producer, spec.topic)
    log = logging.getLogger("bench.baseline")
    log.propagate = False
    log.setLevel(logging.INFO)
    handler = logging.FileHandler("/dev/null")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    acknowledged = 0

    def on_delivery(error: KafkaError | None, _message: Message) -> None:
        nonlocal acknowledged
        if error is None:
            acknowledged += 1

    # A first version takes websocket-client's defaults, UTF-8 validation (pure Python) included.
    ws = websocket.create_connection(_ws_url(spec), skip_utf8_validation=spec.skip_utf8)
    ws.send(_subscribe_request(frames.pair_names(spec.pairs)))
    clock = _Clock()
    received = 0
    try:
        while received < spec.trades:
            frame = json.loads(ws.recv())
            if frame.get("channel") != "trade":
                continue
            if not received:
                clock.start()
            for item in frame["data"]:
                moment = datetime.fromisoformat(item["timestamp"])
                trade = Trade(
                    pair=item["symbol"],
                    price=item["price"],
                    volume=item["qty"],
                    timestamp=item["timestamp"],
                    timestamp_ms=int(moment.timestamp() * 1000),
                    trade_id=item["trade_id"],
                    side=item["side"],
                    ord_type=item["ord_type"],
                    source="live",
                )
                message = topic.serialize(
                    key=trade.message_key, value=trade.model_dump(), timestamp_ms=trade.timestamp_ms
                )
                producer.produce(
                    topic.name,
                    message.value,
                    message.key,
                    timestamp=message.timestamp,
                    on_delivery=on_delivery,
                )
                log.info(f"Trade {trade.pair} {trade.side} {trade.volume} @ {trade.price}")
                received += 1
        remaining = producer.flush(_FLUSH_TIMEOUT_SECONDS)
        clock.stop()
    finally:
        ws.close()
    if remaining:
        raise RuntimeError(f"{remaining} trades not acknowledged")
    return clock.result("live_baseline", received, acknowledged)


def _run_stream(
    spec: RunSpec, producer: TradeProducer, url: str, on_first: Callable[[], None]
) -> int:
    """The live job's loop without Dagster: batches -> send -> poll, until `spec.trades`."""
    stream = KrakenTradeStream(
        StreamSettings(url=url, pairs=frames.pair_names(spec.pairs)), log=_QUIET
    )
    total = 0
    try:
        for batch in stream.batches():
            if batch:
                if not total:
                    on_first()
                producer.send(batch)
                total += len(batch)
            producer.poll()
            if total >= spec.trades:
                break
        producer.flush(_FLUSH_TIMEOUT_SECONDS)
    finally:
        stream.close()
    if stream.stats.rejected or stream.stats.gaps:
        raise RuntimeError(f"unexpected rejections or gaps: {stream.stats}")
    return total


def live_product(spec: RunSpec) -> dict[str, Any]:
    """The product: KrakenTradeStream (parse, validate, de-dup) -> TradeProducer -> acked."""
    producer = _trade_producer(spec)
    _warm_up(_confluent_of(producer), spec.topic)
    clock = _Clock()
    total = _run_stream(spec, producer, _ws_url(spec), clock.start)
    clock.stop()
    maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return clock.result(
        "live_product", total, producer.acknowledged, pairs=spec.pairs, maxrss_kb=maxrss_kb
    )


class _TimedTradeProducer(TradeProducer):
    """Records when each acknowledgment is served, with the message it acknowledges."""

    def __init__(
        self, settings: KafkaSettings, *, extra_config: dict[str, Any] | None = None
    ) -> None:
        super().__init__(settings, extra_config=extra_config)
        self.acks: list[tuple[int, bytes, float]] = []

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        super()._on_delivery(error, message)
        if error is None:
            # latency(): librdkafka's own produce() -> acknowledgment time, to split the total.
            self.acks.append((time.time_ns(), message.value() or b"", message.latency() or 0.0))


def live_latency(spec: RunSpec) -> dict[str, Any]:
    """The product path at `spec.rate` trades/s: trade time (= send time) -> delivery callback."""
    producer = _TimedTradeProducer(_producer_settings(spec), extra_config=dict(spec.producer_extra))
    _warm_up(_confluent_of(producer), spec.topic)
    clock = _Clock()
    total = _run_stream(spec, producer, _ws_url(spec, spec.rate), clock.start)
    clock.stop()
    sent_us = [parse_time_iso(orjson.loads(value)["timestamp"]) for _, value, _ in producer.acks]
    # Steady state only: the first trades also pay for connecting to the broker.
    steady_from = min(sent_us) + int(spec.warmup_seconds * 1e6)
    steady = [
        (ack, sent) for ack, sent in zip(producer.acks, sent_us, strict=True) if sent >= steady_from
    ]
    latencies_ms = sorted((ack_ns / 1000 - sent) / 1000 for (ack_ns, _, _), sent in steady)
    broker_ms = sorted(librdkafka_s * 1000 for (_, _, librdkafka_s), _ in steady)
    return clock.result(
        "live_latency",
        total,
        producer.acknowledged,
        rate=spec.rate,
        measured=len(latencies_ms),
        p50_ms=_percentile(latencies_ms, 0.50),
        p99_ms=_percentile(latencies_ms, 0.99),
        max_ms=latencies_ms[-1] if latencies_ms else 0.0,
        produce_to_ack_p50_ms=_percentile(broker_ms, 0.50),
        produce_to_ack_p99_ms=_percentile(broker_ms, 0.99),
    )


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# --- backfill --------------------------------------------------------------------------------


def backfill_limit(spec: RunSpec) -> dict[str, Any]:
    """The backfill path's upper bound: requests, orjson, bare produce of the same rows."""
    import requests

    bare = _BareProducer(spec)
    _warm_up(bare.producer, spec.topic)
    session = requests.Session()
    url = f"{spec.rest_url}/0/public/Trades"
    since_ns = frames.BASE_TIME_US * 1000
    # Like the product's pair lookup, a first call outside the window warms the session up.
    session.get(f"{spec.rest_url}/0/public/AssetPairs", timeout=10).raise_for_status()
    clock = _Clock()
    clock.start()
    received = pages = 0
    topic, dumps, produce, poll = spec.topic, orjson.dumps, bare.produce, bare.producer.poll
    raw_produce, on_delivery = bare.producer.produce, bare.on_delivery
    while received < spec.trades:
        params = {"pair": frames.REST_ALTNAME, "since": str(since_ns), "count": "1000"}
        result = orjson.loads(session.get(url, params=params, timeout=10).content)["result"]
        rows = result[frames.REST_KEY][: spec.trades - received]
        for row in rows:
            value = dumps(row)
            try:
                raw_produce(topic, value, frames.REST_PAIR, -1, on_delivery)
            except BufferError:
                produce(topic, value, frames.REST_PAIR)
        received += len(rows)
        pages += 1
        since_ns = int(result["last"]) + 1
        poll(0)
    bare.flush()
    clock.stop()
    session.close()
    return clock.result("backfill_limit", received, bare.acknowledged, pages=pages)


def _backfill(
    spec: RunSpec, settings: RestSettings, start_us: int, end_us: int
) -> tuple[_Clock, TradeProducer, KrakenRestClient, int, list[float]]:
    """The asset's loop without Dagster: pages -> records -> send -> poll, then flush."""
    from trades_platform.backfill.asset import BackfillSummary

    producer = _trade_producer(spec)
    _warm_up(_confluent_of(producer), spec.topic)
    client = KrakenRestClient(settings, log=_QUIET)
    summary = BackfillSummary()
    page_times: list[float] = []
    clock = _Clock()
    with client:
        # The pair directory is fetched once per run; keep that call out of the window.
        client.rest_pair(frames.REST_PAIR)
        clock.start()
        for page in client.window_pages(frames.REST_PAIR, start_us, end_us):
            page_times.append(time.perf_counter())
            if page.rows:
                producer.send(
                    row.to_trade(frames.REST_PAIR, "backfill", page.received_ms)
                    for row in page.rows
                )
                summary.add(page.rows)
            producer.poll()
        producer.flush(_FLUSH_TIMEOUT_SECONDS)
        clock.stop()
    return clock, producer, client, summary.count, page_times


def backfill_product(spec: RunSpec) -> dict[str, Any]:
    """The product's backfill with the API's rate limit lifted (local pages, no pacing)."""
    settings = RestSettings(url=spec.rest_url, requests_per_second=1e6)
    end_us = frames.rest_row_time_us(spec.trades)
    clock, producer, client, count, _ = _backfill(spec, settings, frames.BASE_TIME_US, end_us)
    return clock.result(
        "backfill_product", count, producer.acknowledged, pages=client.stats.pages_fetched
    )


def backfill_paced(spec: RunSpec) -> dict[str, Any]:
    """The product against a server allowing `spec.rate` calls/s, the client paced the same."""
    settings = RestSettings(url=spec.rest_url, requests_per_second=spec.rate)
    # A window of the simulator's past: closed, so the client accepts it.
    end_us = (time.time_ns() // 1000 // 3_600_000_000 - 2) * 3_600_000_000
    start_us = end_us - int(spec.window_seconds * 1e6)
    clock, producer, client, count, page_times = _backfill(spec, settings, start_us, end_us)
    stats = client.stats
    # Steady state: pages delivered per second between the first and the last page.
    span = page_times[-1] - page_times[0] if len(page_times) > 1 else 0.0
    pages_per_second = (len(page_times) - 1) / span if span > 0 else 0.0
    seconds = clock.wall_stop - clock.wall_start
    return clock.result(
        "backfill_paced",
        count,
        producer.acknowledged,
        pages=stats.pages_fetched,
        requests=stats.requests,
        rate_limit_waits=stats.rate_limit_waits,
        pages_per_second=pages_per_second,
        calls_per_second=stats.requests / seconds if seconds > 0 else 0.0,
        allowed_calls_per_second=settings.requests_per_second,
    )


PATHS: dict[str, Callable[[RunSpec], dict[str, Any]]] = {
    "live_limit": live_limit,
    "live_baseline": live_baseline,
    "live_product": live_product,
    "live_latency": live_latency,
    "backfill_limit": backfill_limit,
    "backfill_product": backfill_product,
    "backfill_paced": backfill_paced,
}


def run(spec: RunSpec) -> dict[str, Any]:
    """Run one spec's path."""
    return PATHS[spec.path](spec)
