"""Replay server: Kraken v2 trade frames as fast as possible (or at a fixed rate), REST pages.

Runs in its own process (`python -m bench.replay_server`) so that producing frames never competes
with the measured client for the GIL. One port serves both:

- WebSocket at `/v2?trades=N&pairs=P[&sizes=1,2][&rate=R]`: a `status` frame, one ack per
  subscribed symbol, then N trades over P pairs in frames of the given sizes (default
  `FRAME_SIZES`), pre-serialized and pushed back to back; with `rate`, frames are built
  as they become due (R trades/s) and each trade's `timestamp` is its send time, so a consumer can
  measure send -> broker acknowledgment. Heartbeats follow until the client leaves.
- REST `/0/public/{AssetPairs,Time,Trades}` over pre-serialized rows of `REST_PAIR`, with no rate
  limit: the backfill path's upper bound is then the client, not the server.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import http
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from bench import frames
from trades_platform.trade import format_time_us

# Frames per transport write.
_BURST = 256


class ReplayServer:
    """The WebSocket and REST handlers over pre-built data."""

    def __init__(self, rest_trades: int) -> None:
        self._frame_cache: OrderedDict[tuple[int, int, tuple[int, ...]], list[bytes]] = (
            OrderedDict()
        )
        self._rest_rows = frames.rest_rows(rest_trades)
        self._rest_times_ns = [frames.rest_row_time_ns(index) for index in range(rest_trades)]
        self._page_cache: dict[tuple[int, int], bytes] = {}

    # --- WebSocket -------------------------------------------------------------------------

    async def handle(self, ws: ServerConnection) -> None:
        """Serve one client: status, acks, trades, then heartbeats."""
        assert ws.request is not None
        query = parse_qs(urlsplit(ws.request.path).query)
        total = int(query.get("trades", ["0"])[0])
        pair_count = int(query.get("pairs", ["1"])[0])
        rate = float(query.get("rate", ["0"])[0])
        sizes = tuple(int(size) for size in query.get("sizes", [""])[0].split(",") if size)
        try:
            await ws.send(frames.STATUS_FRAME, text=True)
            request = orjson.loads(await ws.recv())
            params = request.get("params", {})
            for symbol in params.get("symbol", []):
                await ws.send(frames.subscribe_ack(symbol, request.get("req_id")), text=True)
            pairs = frames.pair_names(pair_count)
            if rate > 0:
                await self._paced(ws, total, pairs, rate)
            else:
                await self._burst(ws, self._frames(total, pair_count, sizes or frames.FRAME_SIZES))
            while True:
                await asyncio.sleep(1.0)
                await ws.send(frames.HEARTBEAT_FRAME, text=True)
        except ConnectionClosed:
            return

    def _frames(self, total: int, pair_count: int, sizes: tuple[int, ...]) -> list[bytes]:
        """The run's frames, already WebSocket-encoded and joined into write-sized chunks."""
        key = (total, pair_count, sizes)
        cached = self._frame_cache.get(key)
        if cached is None:
            payloads = frames.replay_frames(total, frames.pair_names(pair_count), sizes)
            cached = [
                b"".join(_text_frame(payload) for payload in payloads[start : start + _BURST])
                for start in range(0, len(payloads), _BURST)
            ]
            self._frame_cache[key] = cached
            # A repetition uses four configurations; the frames of each weigh tens of MB.
            while len(self._frame_cache) > 4:
                self._frame_cache.popitem(last=False)
        return cached

    @staticmethod
    async def _burst(ws: ServerConnection, chunks: list[bytes]) -> None:
        # Pre-encoded frames straight to the transport, with websockets' own flow control:
        # `send()` per frame costs ~7 µs of Python, which capped single-trade frames at ~140k/s,
        # below what the clients under test take.
        for chunk in chunks:
            ws.transport.write(chunk)
            await ws.drain()

    @staticmethod
    async def _paced(ws: ServerConnection, total: int, pairs: list[str], rate: float) -> None:
        source = frames.FrameSource(pairs)
        started = time.monotonic()
        sent = 0
        while sent < total:
            due = min(total, int((time.monotonic() - started) * rate) + 1)
            while sent < due:
                # The send time is the trade time: latency = ack time - `timestamp`.
                now = format_time_us(time.time_ns() // 1000)
                items = source.next_items(due - sent, _repeat(now))
                sent += len(items)
                await ws.send(frames.trade_frame(items), text=True)
            await asyncio.sleep(0.0005)

    # --- REST ------------------------------------------------------------------------------

    def process_request(self, _connection: ServerConnection, request: Request) -> Response | None:
        """Answer REST GETs; let WebSocket handshakes at /v2 through."""
        url = urlsplit(request.path)
        if url.path == "/v2":
            return None
        params = parse_qs(url.query)
        if url.path == "/0/public/Time":
            now = time.time()
            return _response(orjson.dumps({"error": [], "result": {"unixtime": int(now)}}))
        if url.path == "/0/public/AssetPairs":
            entry = {"altname": frames.REST_ALTNAME, "wsname": "XBT/USD"}
            return _response(orjson.dumps({"error": [], "result": {frames.REST_KEY: entry}}))
        if url.path == "/0/public/Trades":
            since = int(params.get("since", ["0"])[0])
            count = int(params.get("count", ["1000"])[0])
            return _response(self._trades_page(since, count))
        return _response(b'{"error":["EGeneral:Unknown method"]}', status=404)

    def _trades_page(self, since_ns: int, count: int) -> bytes:
        first = bisect.bisect_left(self._rest_times_ns, since_ns)
        key = (first, count)
        body = self._page_cache.get(key)
        if body is None:
            rows = self._rest_rows[first : first + count]
            last_index = min(first + count, len(self._rest_rows)) - 1
            last_ns = self._rest_times_ns[last_index] if rows else since_ns
            body = b"".join(
                (
                    b'{"error":[],"result":{"',
                    frames.REST_KEY.encode(),
                    b'":[',
                    b",".join(rows),
                    b'],"last":"',
                    str(last_ns).encode(),
                    b'"}}',
                )
            )
            self._page_cache[key] = body
        return body


def _text_frame(payload: bytes) -> bytes:
    """An unmasked, final, uncompressed text frame (RFC 6455 5.2), as a server sends it."""
    length = len(payload)
    if length < 126:
        header = bytes((0x81, length))
    elif length < 65_536:
        header = bytes((0x81, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + length.to_bytes(8, "big")
    return header + payload


def _repeat(value: str) -> Iterator[str]:
    while True:
        yield value


def _response(body: bytes, status: int = 200) -> Response:
    headers = Headers(
        [
            ("Connection", "close"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


async def _serve(host: str, port: int, rest_trades: int) -> None:
    server = ReplayServer(rest_trades)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(
        server.handle,
        host,
        port,
        process_request=server.process_request,
        ping_interval=None,
        compression=None,
        close_timeout=1.0,
        max_queue=None,
    ) as running:
        bound = running.sockets[0].getsockname()[1]
        print(f"replay ready ws://{host}:{bound}/v2 rest http://{host}:{bound}", flush=True)
        await stop.wait()


def main() -> int:
    """Run the replay server until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rest-trades", type=int, default=200_000)
    args = parser.parse_args()
    asyncio.run(_serve(args.host, args.port, args.rest_trades))
    return 0


if __name__ == "__main__":
    sys.exit(main())
