"""A TCP proxy on 127.0.0.1 that a test can cut (a broker outage) and that heals by itself.

Clients connect to the proxy's port; each connection is forwarded to the target. `cut(seconds)`
closes every open connection and, for `seconds`, refuses new ones (accept, then reset) or
black-holes them (accept and never answer); then the proxy restores itself.
`hold_next_produce(topic, seconds)` takes the next Kafka produce request naming a topic off its
connection and hands it to the broker `seconds` later: a request the client gave up on that still
arrives, as a proxy or a slow network can deliver it. The proxy also stops by itself after
`max_lifetime_seconds`, so a test that forgets it cannot leave it running.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

CutMode = Literal["refuse", "blackhole"]
_POLL_SECONDS = 0.2
_CHUNK = 65536


@dataclass
class ProxyStats:
    """What the proxy saw, for a test's report."""

    connections: int = 0
    refused: int = 0
    blackholed: int = 0
    cuts: int = 0
    restores: int = 0
    connections_cut: int = 0
    bytes_forwarded: int = 0
    # Wall-clock times (time.time()) of the latest cut and restore.
    cut_at: float | None = None
    restored_at: float | None = None
    # The held produce request: when it was taken off its connection, when the broker got it.
    held_at: float | None = None
    delivered_at: float | None = None
    held_bytes: int = 0


def _is_produce_for(data: bytes, topic: str) -> bool:
    """Whether `data` starts a Kafka produce request (API key 0) that names `topic`."""
    if len(data) < 6 or data[4:6] != b"\x00\x00":
        return False
    name = topic.encode()
    # A classic string (int16 length) or, in flexible versions, a compact one (length + 1).
    return struct.pack(">h", len(name)) + name in data or bytes([len(name) + 1]) + name in data


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a network failure looks to the peer, and wake its readers."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class _Link:
    """One client connection and its upstream connection, pumped by two threads."""

    def __init__(self, proxy: TcpProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self._closed = threading.Event()
        self._threads = [
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True),
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True),
        ]

    def start(self) -> None:
        """Start forwarding both ways."""
        for thread in self._threads:
            thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        source.settimeout(_POLL_SECONDS)
        try:
            while not self._closed.is_set():
                try:
                    data = source.recv(_CHUNK)
                except TimeoutError:
                    continue
                if not data:
                    break
                if source is self.client and self.proxy._take_hold(data):
                    data = self._hold_request(data)
                sink.sendall(data)
                self.proxy.stats.bytes_forwarded += len(data)
        except OSError:
            pass
        finally:
            self.close()

    def _hold_request(self, data: bytes) -> bytes:
        """Read the whole request `data` starts, hand it to the proxy to deliver later; return the
        bytes after it."""
        size = 4 + struct.unpack(">i", data[:4])[0]
        while len(data) < size:
            try:
                more = self.client.recv(_CHUNK)
            except TimeoutError:
                continue
            if not more:
                break
            data += more
        self.proxy._deliver_later(data[:size])
        return data[size:]

    def close(self) -> None:
        """Reset both sides (idempotent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        _reset(self.client)
        _reset(self.upstream)
        self.proxy._forget(self)

    def join(self, timeout_seconds: float) -> None:
        """Wait for both pump threads to end."""
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout_seconds)


class TcpProxy:
    """Forwards 127.0.0.1:port to target_host:target_port until stopped; can be cut."""

    def __init__(
        self,
        target_port: int,
        *,
        port: int = 0,
        target_host: str = "127.0.0.1",
        max_lifetime_seconds: float = 900.0,
    ) -> None:
        self.target = (target_host, target_port)
        self.stats = ProxyStats()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self.port: int = self._listener.getsockname()[1]
        self._max_lifetime_seconds = max_lifetime_seconds
        self._lock = threading.RLock()
        self._links: set[_Link] = set()
        self._held: list[socket.socket] = []
        self._cut_mode: CutMode | None = None
        self._cut_until = 0.0
        self._cut_generation = 0
        self._restored = threading.Event()
        self._restored.set()
        self._stop = threading.Event()
        self._acceptor: threading.Thread | None = None
        self._timers: list[threading.Timer] = []
        self._hold: tuple[str, float] | None = None
        self._hold_seconds = 0.0

    @property
    def address(self) -> str:
        """`127.0.0.1:port`, what clients connect to."""
        return f"127.0.0.1:{self.port}"

    @property
    def is_cut(self) -> bool:
        """True while connections are being refused or black-holed."""
        return self._cut_mode is not None

    def start(self) -> TcpProxy:
        """Listen and forward in background threads."""
        self._listener.listen(128)
        self._listener.settimeout(_POLL_SECONDS)
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()
        return self

    def cut(self, seconds: float, mode: CutMode = "refuse") -> None:
        """Close every connection; refuse or black-hole new ones for `seconds`, then restore."""
        with self._lock:
            self._cut_mode = mode
            self._cut_until = time.monotonic() + seconds
            self._cut_generation += 1
            generation = self._cut_generation
            self._restored.clear()
            links = list(self._links)
            self.stats.cuts += 1
            self.stats.connections_cut += len(links)
            self.stats.cut_at = time.time()
        for link in links:
            link.close()
        self._schedule(seconds, lambda: self._restore_if(generation))

    def cut_later(self, delay_seconds: float, seconds: float, mode: CutMode = "refuse") -> None:
        """Cut after `delay_seconds` (from a timer thread), for `seconds`."""
        self._schedule(delay_seconds, lambda: self.cut(seconds, mode))

    def hold_next_produce(self, topic: str, seconds: float) -> None:
        """Take the next produce request naming `topic` off its connection; deliver it to the
        target on a connection of its own `seconds` later (the client has given up by then)."""
        with self._lock:
            self._hold = (topic, seconds)

    def _take_hold(self, data: bytes) -> bool:
        with self._lock:
            if self._hold is None or not _is_produce_for(data, self._hold[0]):
                return False
            self._hold_seconds = self._hold[1]
            self._hold = None
            self.stats.held_at = time.time()
            return True

    def _deliver_later(self, request: bytes) -> None:
        self.stats.held_bytes = len(request)

        def deliver() -> None:
            with socket.create_connection(self.target, timeout=10.0) as upstream:
                upstream.sendall(request)
                self.stats.delivered_at = time.time()
                # The answer goes nowhere: its client is gone. Wait for it, so the broker has it.
                with contextlib.suppress(OSError):
                    upstream.recv(_CHUNK)

        self._schedule(self._hold_seconds, deliver)

    def restore(self) -> None:
        """Accept and forward again (now, before the cut's own end)."""
        with self._lock:
            if self._cut_mode is None:
                return
            self._cut_mode = None
            held, self._held = self._held, []
            self.stats.restores += 1
            self.stats.restored_at = time.time()
            self._restored.set()
        # Black-holed clients have waited in vain; a reset makes them reconnect at once.
        for sock in held:
            _reset(sock)

    def wait_restored(self, timeout_seconds: float) -> bool:
        """Block until no cut is in force; False on timeout."""
        return self._restored.wait(timeout_seconds)

    def stop(self) -> None:
        """Stop listening, close every connection, cancel pending cuts; safe to call twice."""
        self._stop.set()
        for timer in self._timers:
            timer.cancel()
        self.restore()
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()
        for link in links:
            link.join(2.0)
        if self._acceptor is not None and self._acceptor is not threading.current_thread():
            self._acceptor.join(2.0)
        with contextlib.suppress(OSError):
            self._listener.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _schedule(self, delay_seconds: float, action: Callable[[], None]) -> None:
        timer = threading.Timer(delay_seconds, action)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def _restore_if(self, generation: int) -> None:
        # A later cut supersedes this one's end.
        if generation == self._cut_generation:
            self.restore()

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)

    def _accept_loop(self) -> None:
        deadline = time.monotonic() + self._max_lifetime_seconds
        while not self._stop.is_set():
            if time.monotonic() > deadline:
                # Stops by itself: a leaked proxy must not outlive its test by much.
                threading.Thread(target=self.stop, daemon=True).start()
                return
            if self._cut_mode is not None and time.monotonic() > self._cut_until + 1.0:
                self.restore()  # the timer should have done it; never stay cut for good
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._admit(client)

    def _admit(self, client: socket.socket) -> None:
        with self._lock:
            mode = self._cut_mode
            if mode == "refuse":
                self.stats.refused += 1
            elif mode == "blackhole":
                self.stats.blackholed += 1
                self._held.append(client)
                return
        if mode == "refuse":
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5.0)
        except OSError:
            _reset(client)
            return
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(self, client, upstream)
        with self._lock:
            if self._cut_mode is not None or self._stop.is_set():
                link.close()
                return
            self._links.add(link)
            self.stats.connections += 1
        link.start()


class ProxyGroup:
    """Proxies in front of every node of a cluster, cut and restored together (the clients'
    network gone, the brokers still talking to each other)."""

    def __init__(self, proxies: Sequence[TcpProxy]) -> None:
        self.proxies = list(proxies)

    @property
    def address(self) -> str:
        """Every proxy's address, comma-separated (a bootstrap list)."""
        return ",".join(proxy.address for proxy in self.proxies)

    @property
    def stats(self) -> ProxyStats:
        """The proxies' counts added up; the latest restore time."""
        total = ProxyStats()
        for proxy in self.proxies:
            for name in ("connections", "refused", "blackholed", "connections_cut"):
                setattr(total, name, getattr(total, name) + getattr(proxy.stats, name))
            total.bytes_forwarded += proxy.stats.bytes_forwarded
        # One cut of the group is one cut, however many proxies it took.
        total.cuts = max((proxy.stats.cuts for proxy in self.proxies), default=0)
        total.restores = max((proxy.stats.restores for proxy in self.proxies), default=0)
        restored = [p.stats.restored_at for p in self.proxies if p.stats.restored_at is not None]
        total.restored_at = max(restored) if restored else None
        cut = [p.stats.cut_at for p in self.proxies if p.stats.cut_at is not None]
        total.cut_at = min(cut) if cut else None
        return total

    def cut(self, seconds: float, mode: CutMode = "refuse") -> None:
        """Cut every proxy for `seconds`."""
        for proxy in self.proxies:
            proxy.cut(seconds, mode)

    def wait_restored(self, timeout_seconds: float) -> bool:
        """Block until no proxy is cut; False on timeout."""
        deadline = time.monotonic() + timeout_seconds
        return all(
            proxy.wait_restored(max(0.0, deadline - time.monotonic())) for proxy in self.proxies
        )
