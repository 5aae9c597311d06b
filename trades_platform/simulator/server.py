"""One asyncio server, one port: WebSocket v2 at /v2, Kraken REST and the control API over HTTP.

websockets' `process_request` hook answers any request that is not a WebSocket handshake at
/v2, so plain HTTP GETs are served on the same port as the WebSocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from trades_platform.simulator import rest
from trades_platform.simulator.config import SimulatorConfig
from trades_platform.simulator.core import SimulatorCore, dumps
from trades_platform.simulator.ws_session import WsSession

log = logging.getLogger(__name__)

WS_PATH = "/v2"
REST_PREFIX = "/0/public/"
CONTROL_PREFIX = "/_simulator/"
MAX_BODY_BYTES = 64 * 1024
_MAX_HEAD_BYTES = 16 * 1024
# websockets' open_timeout would also cut short a REST answer delayed by rest_delay_seconds, so
# it is off and _BodyReadingConnection gives clients this long for their request instead.
REQUEST_TIMEOUT_SECONDS = 10.0
_JSON = "application/json; charset=utf-8"
_CONTENT_LENGTH = re.compile(
    rb"^content-length:[ \t]*(\d+)[ \t]*\r\n", re.IGNORECASE | re.MULTILINE
)


class _BodyReadingConnection(ServerConnection):
    """Reads an HTTP request body before websockets parses the request.

    websockets only parses bodiless requests (it refuses any Content-Length but 0), and the
    control API takes POSTed JSON: keep the body aside and hand websockets the bare head.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.request_body = b""
        self._head: bytearray | None = bytearray()  # None once handed to websockets
        self._request_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the clock for the request to arrive."""
        super().connection_made(transport)
        self._request_timer = asyncio.get_running_loop().call_later(
            REQUEST_TIMEOUT_SECONDS, self._request_timed_out
        )

    def _request_timed_out(self) -> None:
        if self._head is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        """Buffer the request head (and body) until complete, then let websockets parse."""
        if self._head is None:
            super().data_received(data)
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > _MAX_HEAD_BYTES:
                self._hand_over(bytes(self._head))  # let websockets reject it
            return
        head, rest = bytes(self._head[: end + 4]), bytes(self._head[end + 4 :])
        match = _CONTENT_LENGTH.search(head)
        length = int(match.group(1)) if match else 0
        if match is None or length == 0 or length > MAX_BODY_BYTES:
            self._hand_over(head + rest)
            return
        if len(rest) < length:
            return  # wait for the rest of the body
        self.request_body = rest[:length]
        self._hand_over(head[: match.start()] + head[match.end() :] + rest[length:])

    def _hand_over(self, data: bytes) -> None:
        self._head = None
        if self._request_timer is not None:
            self._request_timer.cancel()
        super().data_received(data)


def json_response(status: int, payload: Any) -> Response:
    """Build an HTTP response with a JSON body, Content-Type and Content-Length."""
    return _response(status, dumps(payload).encode(), ("Content-Type", _JSON))


def redirect_response(location: str) -> Response:
    """HTTP 302 to `location`, with an empty body (the rest_redirect_to fault)."""
    return _response(302, b"", ("Location", location))


def gzip_json_response(gzipped: bytes) -> Response:
    """HTTP 200 with a gzip-compressed JSON body, Content-Encoding: gzip (rest_gzip_bomb)."""
    return _response(200, gzipped, ("Content-Type", _JSON), ("Content-Encoding", "gzip"))


def _response(status: int, body: bytes, *headers: tuple[str, str]) -> Response:
    all_headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            *headers,
            ("Content-Length", str(len(body))),
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, all_headers, body)


class Simulator:
    """The Kraken simulator; use `async with Simulator(config) as sim:` or start()/stop()."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.core = SimulatorCore(config)
        self._rest_limiter = (
            rest.TokenBucket(config.rest_rate_limit, config.rest_rate_burst)
            if config.rest_rate_limit > 0
            else None
        )
        self._server: Server | None = None
        self._stopping = asyncio.Event()
        self.port: int = config.port

    @property
    def ws_url(self) -> str:
        """WebSocket v2 URL, e.g. ws://127.0.0.1:8765/v2."""
        return f"ws://{self.config.host}:{self.port}{WS_PATH}"

    @property
    def rest_url(self) -> str:
        """REST base URL, e.g. http://127.0.0.1:8765 (append /0/public/Trades?...)."""
        return f"http://{self.config.host}:{self.port}"

    async def start(self) -> None:
        """Bind and start serving; sets `port` when the config asked for port 0."""
        self._stopping.clear()
        self._server = await serve(
            self._handle_websocket,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            create_connection=_BodyReadingConnection,
            # Kraken's pings would break the stall fault's "send nothing at all".
            ping_interval=None,
            # Keep server CPU for benchmarks predictable; frames are small JSON anyway.
            compression=None,
            # Shutting down must not wait 10 s for clients that never answer a close frame.
            close_timeout=2.0,
            open_timeout=None,  # see REQUEST_TIMEOUT_SECONDS
            server_header="kraken-simulator",
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "serving %d pairs at %s trades/s each, simulated start %s, speed %s",
            len(self.core.pairs),
            self.config.trades_per_second,
            self.core.now_iso(),
            self.config.speed,
        )

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        self._stopping.set()  # delayed REST answers go out now instead of holding up the stop
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _handle_websocket(self, ws: ServerConnection) -> None:
        await WsSession(ws, self.core).run()

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        url = urlsplit(request.path)
        if url.path == WS_PATH:
            return None  # websockets answers 426 itself if this is not an upgrade
        params = parse_qs(url.query, keep_blank_values=True)
        if url.path.startswith(REST_PREFIX):
            return await self._public_rest(connection, url.path[len(REST_PREFIX) :], params)
        if url.path.startswith(CONTROL_PREFIX):
            body = getattr(connection, "request_body", b"")
            return self._control(request.method, url.path[len(CONTROL_PREFIX) :], body)
        return json_response(404, {"error": ["EGeneral:Unknown method"]})

    async def _public_rest(
        self, connection: ServerConnection, endpoint: str, params: dict[str, list[str]]
    ) -> Response:
        handler = rest.ENDPOINTS.get(endpoint)
        if handler is None:
            return json_response(404, {"error": ["EGeneral:Unknown method"]})
        self.core.stats.rest_requests += 1
        self.core.stats.rest_request_times.append(time.time())
        response = self._rest_response(connection, endpoint, handler, params)
        delay = self.core.faults.rest_delay_seconds
        if delay > 0 and endpoint in rest.DOWN_OR_DELAYED_BY_FAULT:
            # Only this request waits (each connection has its own task): the WebSocket side
            # and other HTTP requests carry on meanwhile.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
        rate = self.core.faults.rest_trickle_bytes_per_second
        if rate > 0 and endpoint in rest.HOSTILE_BY_FAULT:
            self.core.stats.rest_trickled_answers += 1
            await self._trickle(connection, response, rate)
        return response

    async def _trickle(self, connection: ServerConnection, response: Response, rate: float) -> None:
        """Send `response` here and now: its head at once, then its body `rate` bytes a second.

        websockets would send it in one go. Once this returns the connection is closed, so
        websockets sends nothing more: it stops when all is sent, the client has gone (as a
        client with a deadline does) or the simulator stops.
        """
        data = response.serialize()
        sent = data.index(b"\r\n\r\n") + 4
        transport = connection.transport
        transport.write(data[:sent])
        step = max(1, round(rate / 10))  # about ten writes a second, at least a byte each
        while sent < len(data) and not transport.is_closing() and not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(step / rate):
                    await self._stopping.wait()
            if transport.is_closing():
                break
            transport.write(data[sent : sent + step])
            sent += step
        # Written bytes are in the kernel's send buffer and still go out; the request was read
        # in full, so the close is an orderly one, not a reset.
        transport.abort()
        await connection.wait_closed()

    def _rest_response(
        self,
        connection: ServerConnection,
        endpoint: str,
        handler: Callable[[SimulatorCore, rest.Params], rest.RestAnswer],
        params: dict[str, list[str]],
    ) -> Response:
        stats = self.core.stats
        faults = self.core.faults
        if faults.rest_unavailable and endpoint in rest.DOWN_OR_DELAYED_BY_FAULT:
            # Down means down: no rate-limit token or forced rate-limit answer is used up.
            stats.rest_unavailable_answers += 1
            return json_response(503, {"error": [rest.UNAVAILABLE]})
        if endpoint in rest.RATE_LIMITED_BY_FAULT:
            forced = faults.take_rate_limit_answer()
            if forced is not None:
                stats.rate_limit_errors += 1
                status, message = forced
                return json_response(status, {"error": [message]})
        if self._rest_limiter is not None:
            client = str(connection.remote_address[0]) if connection.remote_address else "?"
            if not self._rest_limiter.allow(client, time.monotonic()):
                stats.rate_limit_errors += 1
                return json_response(200, {"error": [rest.RATE_LIMITED]})
        hostile = endpoint in rest.HOSTILE_BY_FAULT
        if hostile and faults.rest_redirect_to is not None:
            stats.rest_redirect_answers += 1
            return redirect_response(faults.rest_redirect_to)
        if hostile and faults.rest_gzip_bomb:
            stats.rest_gzip_bomb_answers += 1
            pair = self.core.by_rest_name(rest.first_param(params, "pair") or "")
            # Compressed once per pair (about half a second), then served from a cache.
            return gzip_json_response(rest.gzip_bomb_body(pair.key if pair else "result"))
        answer = handler(self.core, params)
        if hostile and faults.rest_stuck_pages:
            stuck = rest.stuck_page(answer, params)
            if stuck is not answer:
                stats.rest_stuck_page_answers += 1
                answer = stuck
        return json_response(answer.status, answer.body)

    def _control(self, method: str, endpoint: str, body: bytes) -> Response:
        if endpoint == "health":
            return json_response(200, {"ok": True})
        if endpoint == "stats":
            return json_response(200, self.core.stats.to_json())
        if endpoint == "config":
            return json_response(200, self._config_json())
        if endpoint == "faults" and method == "GET":
            return json_response(200, self.core.faults.to_json())
        if endpoint == "faults" and method == "POST":
            try:
                changes = json.loads(body or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("the body must be a JSON object")
                self.core.faults.update(changes)
            except ValueError as exc:
                return json_response(400, {"ok": False, "error": str(exc)})
            log.info("faults now %s", self.core.faults.to_json())
            return json_response(200, self.core.faults.to_json())
        return json_response(404, {"ok": False, "error": f"no such endpoint: {method} {endpoint}"})

    def _config_json(self) -> dict[str, Any]:
        config = self.config
        return {
            "pairs": [p.name for p in self.core.pairs],
            "trades_per_second": config.trades_per_second,
            "trades_per_match": config.trades_per_match,
            "tick_ms": config.tick_ms,
            "start_time_us": self.core.clock.start_us,
            "speed": config.speed,
            "epoch_us": config.epoch_us,
            "rest_rate_limit": config.rest_rate_limit,
            "now_us": self.core.now_us(),
        }


async def run_simulator(
    config: SimulatorConfig,
    *,
    on_ready: Callable[[Simulator], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until `stop` is set (forever if None); call on_ready once listening."""
    simulator = Simulator(config)
    async with simulator:
        if on_ready is not None:
            on_ready(simulator)
        await (stop or asyncio.Event()).wait()
