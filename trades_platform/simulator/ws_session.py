"""One WebSocket v2 connection: requests in, acknowledgements, trades and heartbeats out.

A reader (the websockets handler) turns requests into an outbox; one sender task owns
every outgoing frame, so a stall fault can silence the connection completely and
ordering (ack, then snapshot, then updates) holds without locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from trades_platform.simulator.core import SimulatorCore, dumps
from trades_platform.simulator.faults import (
    SLOW_MESSAGE_INTERVAL_SECONDS,
    giant_message,
    hostile_frame,
    malformed_frame,
    slow_message_fragments,
)

log = logging.getLogger(__name__)

API_VERSION = "v2"
SERVER_VERSION = "2.0.9"


@dataclass(slots=True, eq=False)
class _Subscription:
    symbol: str
    snapshot: bool
    cursor: int | None = None  # last trade id sent; None until the snapshot step ran


@dataclass(slots=True, frozen=True)
class _SnapshotStep:
    """Outbox marker: start the subscription (snapshot or not) at the sender's 'now'."""

    subscription: _Subscription


class WsSession:
    """Serve one WebSocket v2 client until it goes away or a fault drops it."""

    def __init__(self, ws: ServerConnection, core: SimulatorCore) -> None:
        self.ws = ws
        self.core = core
        self.subscriptions: dict[str, _Subscription] = {}
        self.outbox: deque[str | _SnapshotStep] = deque()
        self.wake = asyncio.Event()
        self.trades_sent = 0
        self.trade_frames_sent = 0
        self.malformed_index = 0
        self.hostile_index = 0
        self.stalled_once = False
        self.stall_until: float | None = None
        self.dropped = False

    async def run(self) -> None:
        """Read requests while the sender task writes; return when the connection ends."""
        stats = self.core.stats
        stats.connections_accepted += 1
        stats.connections_open += 1
        sender = asyncio.create_task(self._sender())
        try:
            async for message in self.ws:
                self._handle_request(message)
                self.wake.set()
        except ConnectionClosed:
            pass
        finally:
            stats.connections_open -= 1
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await sender

    # -- requests -------------------------------------------------------------------------

    def _handle_request(self, message: str | bytes) -> None:
        time_in = self.core.now_iso()
        try:
            request = json.loads(message)
        except (ValueError, UnicodeDecodeError):
            self._reply_error(None, None, "Malformed request: invalid JSON", time_in)
            return
        if not isinstance(request, dict):
            self._reply_error(None, None, "Malformed request: expected a JSON object", time_in)
            return
        method = request.get("method")
        req_id = request.get("req_id")
        if method == "ping":
            extra = sorted(set(request) - {"method", "req_id"})
            if extra:
                text = f"Unsupported field: '{extra[0]}' for the given msg type: ping"
                self._reply_error(method, req_id, text, time_in)
            else:
                self._reply({"method": "pong", **_req(req_id)}, time_in)
        elif method in ("subscribe", "unsubscribe"):
            self._handle_subscription(method, req_id, request.get("params"), time_in)
        else:
            shown = method if isinstance(method, str) else None
            self._reply_error(shown, req_id, f"Unsupported method: {method!r}", time_in)

    def _handle_subscription(self, method: str, req_id: Any, params: Any, time_in: str) -> None:
        if not isinstance(params, dict):
            self._reply_error(method, req_id, "Missing or invalid field: 'params'", time_in)
            return
        channel = params.get("channel")
        if channel != "trade":
            text = f"Channel {channel!r} is not supported by this simulator (only 'trade')"
            self._reply_error(method, req_id, text, time_in)
            return
        symbols = params.get("symbol")
        if (
            not isinstance(symbols, list)
            or not symbols
            or not all(isinstance(s, str) for s in symbols)
        ):
            text = "Missing or invalid field: 'symbol' (a non-empty list of strings)"
            self._reply_error(method, req_id, text, time_in)
            return
        snapshot = params.get("snapshot", True)
        if method == "subscribe" and not isinstance(snapshot, bool):
            self._reply_error(method, req_id, "Invalid field: 'snapshot' must be a bool", time_in)
            return
        for symbol in dict.fromkeys(symbols):
            if self.core.by_symbol(symbol) is None:
                error = f"Currency pair not supported {symbol}"
                self._reply_error(method, req_id, error, time_in, symbol=symbol)
            elif method == "subscribe":
                self._subscribe(symbol, snapshot, req_id, time_in)
            else:
                self._unsubscribe(symbol, req_id, time_in)

    def _subscribe(self, symbol: str, snapshot: bool, req_id: Any, time_in: str) -> None:
        if symbol in self.subscriptions:
            self._reply_error("subscribe", req_id, "Already subscribed", time_in, symbol=symbol)
            return
        subscription = _Subscription(symbol, snapshot)
        self.subscriptions[symbol] = subscription
        result = {"channel": "trade", "snapshot": snapshot, "symbol": symbol}
        reply = {"method": "subscribe", **_req(req_id), "result": result, "success": True}
        self._reply(reply, time_in)
        self.outbox.append(_SnapshotStep(subscription))

    def _unsubscribe(self, symbol: str, req_id: Any, time_in: str) -> None:
        if self.subscriptions.pop(symbol, None) is None:
            text = "Subscription Not Found"
            self._reply_error("unsubscribe", req_id, text, time_in, symbol=symbol)
            return
        result = {"channel": "trade", "symbol": symbol}
        reply = {"method": "unsubscribe", **_req(req_id), "result": result, "success": True}
        self._reply(reply, time_in)

    def _reply(self, payload: dict[str, Any], time_in: str) -> None:
        payload["time_in"] = time_in
        payload["time_out"] = self.core.now_iso()
        self.outbox.append(dumps(payload))

    def _reply_error(
        self, method: str | None, req_id: Any, text: str, time_in: str, symbol: str | None = None
    ) -> None:
        payload: dict[str, Any] = {"error": text}
        if method is not None:
            payload["method"] = method
        payload.update(_req(req_id))
        payload["success"] = False
        if symbol is not None:
            payload["symbol"] = symbol
        self._reply(payload, time_in)

    # -- sending --------------------------------------------------------------------------

    async def _send_stress_messages(self) -> None:
        """The slow- and giant-message faults, after a trade frame they are due after."""
        faults, stats = self.core.faults, self.core.stats
        slow = faults.slow_message_every_frames
        if slow and self.trade_frames_sent % slow == 0:
            stats.slow_messages_sent += 1
            await self.ws.send(_trickle(slow_message_fragments()))
            self.core.stats.frames_sent += 1
        giant = faults.giant_message_every_frames
        if giant and self.trade_frames_sent % giant == 0:
            stats.giant_messages_sent += 1
            await self._send(giant_message())

    async def _send(self, text: str) -> None:
        await self.ws.send(text)
        self.core.stats.frames_sent += 1

    async def _sender(self) -> None:
        try:
            await self._send(self._status_frame())
            await self._send_loop()
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("sender failed; closing the connection")
            await self.ws.close(1011, "simulator error")

    def _status_frame(self) -> str:
        # Real ids exceed the signed 64-bit range; keep that trap for clients.
        connection_id = random.getrandbits(64) | (1 << 63)
        data = {
            "api_version": API_VERSION,
            "connection_id": connection_id,
            "system": "online",
            "version": SERVER_VERSION,
        }
        return dumps({"channel": "status", "type": "update", "data": [data]})

    async def _send_loop(self) -> None:
        config = self.core.config
        tick = config.tick_ms / 1000.0
        next_tick = time.monotonic()
        last_heartbeat = time.monotonic()
        while not self.dropped:
            if self.stall_until is not None:
                await asyncio.sleep(max(0.0, self.stall_until - time.monotonic()))
                self.stall_until = None
            delay = next_tick - time.monotonic()
            if delay > 0 and not self.outbox:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self.wake.wait()
            self.wake.clear()
            if not await self._flush_outbox():
                continue
            now = time.monotonic()
            if now < next_tick:
                continue
            # Keep the cadence, but never try to catch up on missed ticks in a burst.
            next_tick = max(next_tick + tick, now)
            if not await self._send_updates():
                continue
            if self.subscriptions and now - last_heartbeat >= config.heartbeat_seconds:
                last_heartbeat = now
                await self._send('{"channel":"heartbeat"}')
                self.core.stats.heartbeats_sent += 1
            elif not self.subscriptions:
                last_heartbeat = now

    async def _flush_outbox(self) -> bool:
        """Send queued replies and start new subscriptions; False if a fault fired."""
        while self.outbox:
            item = self.outbox[0]
            if isinstance(item, str):
                await self._send(item)
                self.outbox.popleft()
                continue
            subscription = item.subscription
            if self.subscriptions.get(subscription.symbol) is not subscription:
                self.outbox.popleft()  # unsubscribed before it started
                continue
            carry_on = await self._start_subscription(subscription)
            if subscription.cursor is not None:
                self.outbox.popleft()
            if not carry_on:
                return False
        return True

    async def _start_subscription(self, subscription: _Subscription) -> bool:
        market = self.core.market
        newest = market.last_id_at_or_before(subscription.symbol, self.core.now_us())
        if not subscription.snapshot:
            subscription.cursor = newest
            return True
        first = max(1, newest - self.core.config.snapshot_size + 1)
        return await self._emit(subscription, "snapshot", first, newest)

    async def _send_updates(self) -> bool:
        """Send every subscribed symbol's trades up to 'now'; False if a fault fired."""
        market = self.core.market
        now_us = self.core.now_us()
        per_frame = self.core.config.max_trades_per_frame
        for subscription in list(self.subscriptions.values()):
            if subscription.cursor is None:
                continue
            newest = market.last_id_at_or_before(subscription.symbol, now_us)
            while subscription.cursor < newest:
                if self.subscriptions.get(subscription.symbol) is not subscription:
                    break  # unsubscribed while we were sending
                first = subscription.cursor + 1
                last = min(newest, first + per_frame - 1)
                if not await self._emit(subscription, "update", first, last):
                    return False
        return True

    def _trade_budget(self) -> int | None:
        """Trades this connection may still send before a drop or stall fault fires."""
        faults = self.core.faults
        limits = []
        if faults.drop_after_trades is not None:
            limits.append(faults.drop_after_trades - self.trades_sent)
        if faults.stall_after_trades is not None and not self.stalled_once:
            limits.append(faults.stall_after_trades - self.trades_sent)
        return min(limits) if limits else None

    async def _emit(self, subscription: _Subscription, kind: str, first: int, last: int) -> bool:
        """Send trades first..last in one frame, cut short by drop/stall; False if one fired."""
        budget = self._trade_budget()
        if budget is not None and budget <= 0 and last >= first:
            await self._fire_fault()
            return False
        symbol = subscription.symbol
        ids, through = self._pick(symbol, kind, first, last, budget)
        left_out = through - first + 1 - len(ids)
        stats = self.core.stats
        # An update whose trades were all left out is not sent at all: Kraken's gaps are silent.
        if ids or kind == "snapshot":
            item = self.core.update_item_json if kind == "update" else self.core.trade_item_json
            items = ",".join(item(symbol, trade_id) for trade_id in ids)
            await self._send(f'{{"channel":"trade","type":"{kind}","data":[{items}]}}')
            stats.trade_frames_sent += 1
            self.trade_frames_sent += 1
            every = self.core.faults.malformed_every_frames
            if every and self.trade_frames_sent % every == 0:
                now_iso = self.core.now_iso()
                await self._send(malformed_frame(self.malformed_index, symbol, now_iso))
                self.malformed_index += 1
                stats.malformed_frames_sent += 1
            hostile = self.core.faults.hostile_every_frames
            if hostile and self.trade_frames_sent % hostile == 0:
                frame = hostile_frame(self.hostile_index, symbol, self.core.now_iso())
                # A text frame of raw bytes: websockets sends them unchecked with text=True.
                await self.ws.send(frame, text=True)
                self.core.stats.frames_sent += 1
                self.hostile_index += 1
                stats.hostile_frames_sent += 1
            await self._send_stress_messages()
        if through >= first:
            # Left-out trades are never sent later: the cursor passes them too.
            subscription.cursor = through
        elif subscription.cursor is None:
            subscription.cursor = last  # an empty snapshot: no trades yet
        self.trades_sent += len(ids)
        stats.trades_sent[symbol] += len(ids)
        if left_out:
            stats.trades_left_out[symbol] += left_out
        budget = self._trade_budget()
        if budget is not None and budget <= 0:
            await self._fire_fault()
            return False
        return True

    def _pick(
        self, symbol: str, kind: str, first: int, last: int, budget: int | None
    ) -> tuple[list[int], int]:
        """Choose the ids to send from first..last; also return the last id looked at."""
        if kind != "update" or not self.core.faults.omits_trades:
            count = max(0, last - first + 1)
            if budget is not None:
                count = min(count, max(0, budget))
            return list(range(first, first + count)), first + count - 1
        # Budgets count trades sent, so stop right after the budget's last sent trade.
        left_out = self.core.left_out
        ids: list[int] = []
        trade_id = first - 1
        while trade_id < last and (budget is None or len(ids) < budget):
            trade_id += 1
            if not left_out(symbol, trade_id):
                ids.append(trade_id)
        return ids, trade_id

    async def _fire_fault(self) -> None:
        faults = self.core.faults
        if faults.drop_after_trades is not None and self.trades_sent >= faults.drop_after_trades:
            self.dropped = True
            self.core.stats.drops += 1
            log.info("fault: dropping connection after %d trades", self.trades_sent)
            # close() flushes what was written, then sends FIN without a WebSocket close
            # frame: the client sees an abnormal closure (1006), as behind Cloudflare.
            self.ws.transport.close()
            return
        self.stalled_once = True
        self.stall_until = time.monotonic() + faults.stall_seconds
        self.core.stats.stalls += 1
        log.info(
            "fault: stalling connection for %.1fs after %d trades",
            faults.stall_seconds,
            self.trades_sent,
        )


def _req(req_id: Any) -> dict[str, Any]:
    return {} if req_id is None else {"req_id": req_id}


async def _trickle(fragments: list[str]) -> AsyncIterator[str]:
    """The fragments of one message, SLOW_MESSAGE_INTERVAL_SECONDS apart."""
    for fragment in fragments:
        yield fragment
        await asyncio.sleep(SLOW_MESSAGE_INTERVAL_SECONDS)
