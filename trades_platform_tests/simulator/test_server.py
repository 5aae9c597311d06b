"""The simulator over real sockets: `python -m trades_platform.simulator` in a subprocess."""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import websocket
import websockets

from trades_platform.processes import stop_process
from trades_platform.simulator.market import SimulatedMarket

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"^kraken simulator ready (?P<ws>ws://\S+/v2) rest (?P<rest>http://\S+)$")
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
PAIRS = "BTC/USD,ETH/USD,DOGE/USD"
RATE = 50  # trades per second per pair: volume within a second or two of wall time
FAULTS_OFF = {
    "drop_after_trades": None,
    "stall_after_trades": None,
    "stall_seconds": 5.0,
    "malformed_every_frames": None,
    "hostile_every_frames": None,
    "slow_message_every_frames": None,
    "giant_message_every_frames": None,
    "rest_rate_limit_next": 0,
    "omit_every_nth_id": None,
    "omit_same_timestamp_followers": False,
    "backdate_after_gap_seconds": 0.0,
    "rest_unavailable": False,
    "rest_delay_seconds": 0.0,
    "rest_redirect_to": None,
    "rest_gzip_bomb": False,
    "rest_trickle_bytes_per_second": 0.0,
    "rest_stuck_pages": False,
}
TRADE_KEYS = ["symbol", "side", "price", "qty", "ord_type", "trade_id", "timestamp"]


@dataclass
class Sim:
    """A running simulator subprocess."""

    process: subprocess.Popen[str]
    ws_url: str
    rest_url: str
    log_path: Path

    def get(self, path: str) -> tuple[int, dict[str, str], Any]:
        """GET path; return (status, headers, parsed JSON body)."""
        return self.request("GET", path)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
        """Send one HTTP request and check the framing headers of the answer."""
        url = urlsplit(self.rest_url)
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {} if data is None else {"Content-Type": "application/json"}
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
            headers = {k.lower(): v for k, v in response.getheaders()}
        finally:
            connection.close()
        assert headers["content-type"].startswith("application/json")
        assert int(headers["content-length"]) == len(raw)
        return response.status, headers, json.loads(raw)

    def set_faults(self, **switches: Any) -> dict[str, Any]:
        """POST /_simulator/faults."""
        status, _, state = self.request("POST", "/_simulator/faults", switches)
        assert status == 200, state
        return state

    def stats(self) -> dict[str, Any]:
        """GET /_simulator/stats."""
        return self.get("/_simulator/stats")[2]


def start_simulator(log_path: Path, *flags: str) -> Sim:
    """Start the CLI on port 0 and wait for its ready line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "trades_platform.simulator", "--port", "0", *flags]
    log_file = log_path.open("w")
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log_file, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    match = READY.match(line)
    if match is None:
        stop_process(process)
        raise AssertionError(f"no ready line, got {line!r}; log:\n{log_path.read_text()}")
    return Sim(process, match["ws"], match["rest"], log_path)


def stop_simulator(sim: Sim) -> int:
    """SIGTERM, and return the exit code (SIGKILL's after 10 s)."""
    stop_process(sim.process)
    return sim.process.returncode


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """One simulator with two hours of history at RATE trades/s per pair."""
    start = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    log_path = tmp_path_factory.mktemp("simulator") / "simulator.log"
    running = start_simulator(
        log_path,
        "--pairs",
        PAIRS,
        "--trades-per-second",
        str(RATE),
        "--tick-ms",
        "50",
        "--start-time",
        start,
    )
    yield running
    assert stop_simulator(running) == 0, "SIGTERM must stop the simulator cleanly"


@pytest.fixture(autouse=True)
def _faults_off(sim: Sim) -> Iterator[None]:
    sim.set_faults(**FAULTS_OFF)
    yield
    sim.set_faults(**FAULTS_OFF)


# -- helpers -----------------------------------------------------------------------------


def connect(sim: Sim) -> websocket.WebSocket:
    """Connect and consume the status frame."""
    ws = websocket.create_connection(sim.ws_url, timeout=5)
    status = json.loads(ws.recv())
    assert status["channel"] == "status" and status["type"] == "update"
    return ws


def subscribe(ws: websocket.WebSocket, symbols: list[str], req_id: int, **params: Any) -> None:
    """Send a trade subscription."""
    body = {"channel": "trade", "symbol": symbols, **params}
    ws.send(json.dumps({"method": "subscribe", "params": body, "req_id": req_id}))


def collect(ws: websocket.WebSocket, seconds: float) -> list[tuple[float, str]]:
    """Receive text frames for a while; return (arrival time, text) pairs."""
    frames: list[tuple[float, str]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ws.settimeout(left)
        try:
            text = ws.recv()
        except websocket.WebSocketTimeoutException:
            break
        frames.append((time.monotonic(), text))
    ws.settimeout(5)
    return frames


def trades_of(frames: list[tuple[float, str]], symbol: str) -> list[dict[str, Any]]:
    """Trade items of a symbol, from snapshot and update frames, in arrival order."""
    items: list[dict[str, Any]] = []
    for _, text in frames:
        message = json.loads(text)
        if message.get("channel") == "trade":
            items += [item for item in message["data"] if item["symbol"] == symbol]
    return items


def iso_to_us(text: str) -> int:
    """RFC 3339 with microseconds to µs since the Unix epoch."""
    parsed = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return (parsed - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def assert_consecutive(ids: list[int]) -> None:
    """Ids must go up by exactly one each time."""
    assert ids, "no trades"
    assert ids == list(range(ids[0], ids[0] + len(ids))), "ids are not consecutive"


def ids_by_kind(frames: list[tuple[float, str]], symbol: str) -> tuple[list[int], list[int]]:
    """Trade ids of a symbol from its snapshot frames and from its update frames."""
    snapshot: list[int] = []
    updates: list[int] = []
    for _, text in frames:
        message = json.loads(text)
        if message.get("channel") == "trade":
            ids = [item["trade_id"] for item in message["data"] if item["symbol"] == symbol]
            (snapshot if message["type"] == "snapshot" else updates).extend(ids)
    return snapshot, updates


def rest_rows(sim: Sim, rest_name: str, since_ns: int, through_id: int) -> list[list[Any]]:
    """Page /0/public/Trades from since_ns until through_id is covered; rows without repeats."""
    rows: dict[int, list[Any]] = {}
    while not rows or max(rows) < through_id:
        status, _, body = sim.get(f"/0/public/Trades?pair={rest_name}&since={since_ns}")
        assert status == 200 and body["error"] == [], body
        (page,) = [v for k, v in body["result"].items() if k != "last"]
        assert page, "REST ran out of trades"
        rows.update((row[6], row) for row in page)
        since_ns = int(body["result"]["last"])
    return [rows[trade_id] for trade_id in sorted(rows)]


def wait_for_no_connections(sim: Sim) -> None:
    """Wait until the simulator has seen every WebSocket close."""
    deadline = time.monotonic() + 5
    while sim.stats()["connections_open"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sim.stats()["connections_open"] == 0


# -- WebSocket ---------------------------------------------------------------------------


def test_status_subscribe_snapshot_updates_heartbeat_ping(sim: Sim) -> None:
    ws = websocket.create_connection(sim.ws_url, timeout=5)
    try:
        status = json.loads(ws.recv())
        assert list(status) == ["channel", "type", "data"]
        assert status["channel"] == "status" and status["type"] == "update"
        (data,) = status["data"]
        assert data["api_version"] == "v2" and data["system"] == "online"
        assert data["version"] == "2.0.9"
        assert data["connection_id"] >= 2**63  # does not fit a signed 64-bit integer

        subscribe(ws, ["BTC/USD", "ETH/USD", "XYZ/USD"], 42, snapshot=True)
        frames = collect(ws, 2.5)
        ws.send(json.dumps({"method": "ping", "req_id": 7}))
        frames += collect(ws, 0.3)
    finally:
        ws.close()

    messages = [json.loads(text) for _, text in frames]
    acks = [m for m in messages if m.get("method") == "subscribe"]
    assert len(acks) == 3
    for ack in acks:
        assert ack["req_id"] == 42 and ISO.match(ack["time_in"]) and ISO.match(ack["time_out"])
    good = {a["result"]["symbol"]: a for a in acks if a["success"]}
    assert set(good) == {"BTC/USD", "ETH/USD"}
    assert list(good["BTC/USD"]) == ["method", "req_id", "result", "success", "time_in", "time_out"]
    assert good["BTC/USD"]["result"] == {"channel": "trade", "snapshot": True, "symbol": "BTC/USD"}
    (bad,) = [a for a in acks if not a["success"]]
    assert bad["error"] == "Currency pair not supported XYZ/USD"
    assert bad["symbol"] == "XYZ/USD"

    snapshots = [m for m in messages if m.get("type") == "snapshot"]
    assert sorted(s["data"][0]["symbol"] for s in snapshots) == ["BTC/USD", "ETH/USD"]
    for symbol in ("BTC/USD", "ETH/USD"):
        (snapshot,) = [s for s in snapshots if s["data"][0]["symbol"] == symbol]
        assert len(snapshot["data"]) == 50
        items = trades_of(frames, symbol)
        assert_consecutive([item["trade_id"] for item in items])
        assert len(items) > 50 + RATE  # the updates kept coming after the snapshot
        for item in items:
            assert list(item) == TRADE_KEYS
            assert item["side"] in ("buy", "sell") and item["ord_type"] in ("market", "limit")
            assert isinstance(item["price"], float) and item["price"] > 0
            assert isinstance(item["qty"], float) and item["qty"] > 0
            assert ISO.match(item["timestamp"])
        times = [iso_to_us(item["timestamp"]) for item in items]
        assert times == sorted(times)
    updates = [m for m in messages if m.get("type") == "update" and m["channel"] == "trade"]
    assert any(len(u["data"]) > 1 for u in updates), "several trades can share a frame"
    assert all(len({i["symbol"] for i in u["data"]}) == 1 for u in updates)

    assert 2 <= messages.count({"channel": "heartbeat"}) <= 4
    (pong,) = [m for m in messages if m.get("method") == "pong"]
    assert pong["req_id"] == 7 and ISO.match(pong["time_in"]) and ISO.match(pong["time_out"])


def test_snapshot_defaults_to_true_and_can_be_off_and_unsubscribe(sim: Sim) -> None:
    ws = connect(sim)
    try:
        subscribe(ws, ["BTC/USD"], 1)
        subscribe(ws, ["ETH/USD"], 2, snapshot=False)
        frames = collect(ws, 0.5)
        unsubscribe = {"channel": "trade", "symbol": ["ETH/USD"]}
        ws.send(json.dumps({"method": "unsubscribe", "params": unsubscribe, "req_id": 3}))
        subscribe(ws, ["BTC/USD"], 4)
        after = collect(ws, 0.8)
    finally:
        ws.close()
    messages = [json.loads(text) for _, text in frames]
    acks = {m["req_id"]: m for m in messages if m.get("method") == "subscribe"}
    assert acks[1]["result"]["snapshot"] is True
    assert acks[2]["result"]["snapshot"] is False
    snapshots = [m for m in messages if m.get("type") == "snapshot"]
    assert [s["data"][0]["symbol"] for s in snapshots] == ["BTC/USD"]
    assert trades_of(frames, "ETH/USD"), "updates flow without a snapshot"

    later = [json.loads(text) for _, text in after]
    (unsub,) = [m for m in later if m.get("method") == "unsubscribe"]
    assert unsub["success"] is True and unsub["result"] == {"channel": "trade", "symbol": "ETH/USD"}
    after_ack = after[[json.loads(t) for _, t in after].index(unsub) + 1 :]
    assert not trades_of(after_ack, "ETH/USD"), "no trades after the unsubscribe ack"
    (again,) = [m for m in later if m.get("req_id") == 4]
    assert again["success"] is False and again["error"] == "Already subscribed"
    assert_consecutive([t["trade_id"] for t in trades_of(frames + after, "BTC/USD")])


def test_bad_requests_get_error_frames_and_the_connection_lives(sim: Sim) -> None:
    ws = connect(sim)
    try:
        ws.send("this is not json")
        ws.send(json.dumps({"method": "dance", "req_id": 5}))
        book = {"channel": "book", "symbol": ["BTC/USD"]}
        ws.send(json.dumps({"method": "subscribe", "params": book, "req_id": 6}))
        ws.send(json.dumps({"method": "ping", "req_id": 8, "params": {}}))
        ws.send(json.dumps({"method": "ping", "req_id": 9}))
        replies = [json.loads(ws.recv()) for _ in range(5)]
    finally:
        ws.close()
    invalid, unknown, channel, ping_params, pong = replies
    assert invalid["success"] is False and "JSON" in invalid["error"]
    assert unknown == {**unknown, "method": "dance", "req_id": 5, "success": False}
    assert channel["success"] is False and "book" in channel["error"] and channel["req_id"] == 6
    assert ping_params["error"] == "Unsupported field: 'params' for the given msg type: ping"
    assert pong["method"] == "pong" and pong["req_id"] == 9


# -- REST --------------------------------------------------------------------------------


def test_rest_trades_pages_cover_a_range_and_match_the_websocket(sim: Sim) -> None:
    ws = connect(sim)
    try:
        subscribe(ws, ["BTC/USD"], 1, snapshot=True)
        ws_trades = trades_of(collect(ws, 1.0), "BTC/USD")
    finally:
        ws.close()
    by_id = {t["trade_id"]: t for t in ws_trades}
    first_ws, last_ws = min(by_id), max(by_id)

    since = iso_to_us(by_id[first_ws]["timestamp"]) * 1000 - 30 * 10**9  # 30 s before
    pages: list[list[list[Any]]] = []
    while not pages or pages[-1][-1][6] < last_ws:
        status, _, body = sim.get(f"/0/public/Trades?pair=XBTUSD&since={since}&count=400")
        assert status == 200 and body["error"] == []
        assert set(body["result"]) == {"XXBTZUSD", "last"}
        rows = body["result"]["XXBTZUSD"]
        assert 0 < len(rows) <= 400
        assert body["result"]["last"] == str(round(rows[-1][2] * 1e6) * 1000)
        assert round(rows[0][2] * 1e6) * 1000 >= since
        pages.append(rows)
        since = int(body["result"]["last"])
        assert len(pages) < 20
    for previous, page in itertools.pairwise(pages):
        assert page[0][6] == previous[-1][6], "pages overlap by the edge trade"
    ids = [row[6] for page in pages for row in page]
    merged = list(dict.fromkeys(ids))
    assert_consecutive(merged)
    assert merged[0] < first_ws and merged[-1] >= last_ws

    rows_by_id = {row[6]: row for page in pages for row in page}
    for trade_id, item in by_id.items():
        price, qty, when, side, ord_type, misc, row_id = rows_by_id[trade_id]
        assert row_id == trade_id and misc == ""
        assert re.fullmatch(r"\d+\.\d", price) and re.fullmatch(r"\d+\.\d{8}", qty)
        assert float(price) == item["price"] and float(qty) == item["qty"]
        assert side == item["side"][0] and ord_type == item["ord_type"][0]
        assert round(when * 1e6) == iso_to_us(item["timestamp"])


def test_rest_trades_names_since_forms_and_latest(sim: Sim) -> None:
    _, _, by_alt = sim.get("/0/public/Trades?pair=XBTUSD&since=1700000000000000000&count=5")
    _, _, by_key = sim.get("/0/public/Trades?pair=XXBTZUSD&since=1700000000&count=5")
    _, _, lower = sim.get("/0/public/Trades?pair=xbtusd&since=1700000000.0&count=5")
    assert by_alt["result"]["XXBTZUSD"] == by_key["result"]["XXBTZUSD"]
    assert lower["result"]["XXBTZUSD"] == by_key["result"]["XXBTZUSD"]
    assert len(by_key["result"]["XXBTZUSD"]) == 5

    _, _, doge = sim.get("/0/public/Trades?pair=XDGUSD&count=3")
    rows = doge["result"]["XDGUSD"]
    assert len(rows) == 3 and all(re.fullmatch(r"\d+\.\d{7}", r[0]) for r in rows)
    _, _, now = sim.get("/0/public/Time")
    assert now["result"]["unixtime"] - 2 <= rows[-1][2] <= now["result"]["unixtime"] + 2

    _, _, latest = sim.get("/0/public/Trades?pair=ETHUSD")
    assert len(latest["result"]["XETHZUSD"]) == 1000

    future = (now["result"]["unixtime"] + 3600) * 10**9
    _, _, empty = sim.get(f"/0/public/Trades?pair=ETHUSD&since={future}")
    assert empty["result"] == {"XETHZUSD": [], "last": str(future)}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("pair=BTC/USD", "EQuery:Unknown asset pair"),
        ("pair=XBT/USD", "EQuery:Unknown asset pair"),
        ("pair=XYZUSD", "EQuery:Unknown asset pair"),
        ("pair=SOLUSD", "EQuery:Unknown asset pair"),  # catalogued, but not traded here
        ("", "EGeneral:Invalid arguments"),
        ("pair=XBTUSD&count=0", "EGeneral:Invalid arguments"),
        ("pair=XBTUSD&count=1001", "EGeneral:Invalid arguments"),
        ("pair=XBTUSD&count=ten", "EGeneral:Invalid arguments"),
        ("pair=XBTUSD&since=yesterday", "EGeneral:Invalid arguments"),
        ("pair=XBTUSD&since=-1", "EGeneral:Invalid arguments"),
    ],
)
def test_rest_trades_errors(sim: Sim, query: str, message: str) -> None:
    status, _, body = sim.get(f"/0/public/Trades?{query}")
    assert (status, body) == (200, {"error": [message]})


def test_rest_asset_pairs_status_time(sim: Sim) -> None:
    _, _, body = sim.get("/0/public/AssetPairs")
    result = body["result"]
    assert body["error"] == []
    assert set(result) == {"XXBTZUSD", "XETHZUSD", "XDGUSD", "XXBTZUSD.d"}
    btc = result["XXBTZUSD"]
    assert (btc["altname"], btc["wsname"], btc["base"], btc["quote"]) == (
        "XBTUSD",
        "XBT/USD",
        "XXBT",
        "ZUSD",
    )
    assert (btc["pair_decimals"], btc["lot_decimals"], btc["status"]) == (1, 8, "online")
    assert result["XDGUSD"]["wsname"] == "XDG/USD" and result["XDGUSD"]["pair_decimals"] == 7
    assert "wsname" not in result["XXBTZUSD.d"] and result["XXBTZUSD.d"]["altname"] == "XBTUSD.d"

    _, _, one = sim.get("/0/public/AssetPairs?pair=ETHUSD")
    assert list(one["result"]) == ["XETHZUSD"]
    _, _, unknown = sim.get("/0/public/AssetPairs?pair=NOPE")
    assert unknown == {"error": ["EQuery:Unknown asset pair"]}

    _, _, status = sim.get("/0/public/SystemStatus")
    assert status["result"]["status"] == "online"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", status["result"]["timestamp"])
    _, _, now = sim.get("/0/public/Time")
    two_hours_ago = time.time() - 7200
    assert abs(now["result"]["unixtime"] - two_hours_ago) < 30  # the simulated clock
    assert now["result"]["rfc1123"].endswith(" +0000")

    status_code, _, missing = sim.get("/0/public/Nope")
    assert status_code == 404 and missing == {"error": ["EGeneral:Unknown method"]}
    assert sim.get("/_simulator/health")[:1] == (200,)
    assert sim.get("/_simulator/health")[2] == {"ok": True}


# -- faults ------------------------------------------------------------------------------


def test_fault_control_endpoint(sim: Sim) -> None:
    state = sim.set_faults(drop_after_trades=7, stall_seconds=1.5)
    assert state == {**FAULTS_OFF, "drop_after_trades": 7, "stall_seconds": 1.5}
    assert sim.get("/_simulator/faults")[2] == state
    status, _, error = sim.request("POST", "/_simulator/faults", {"no_such_fault": 1})
    assert status == 400 and "no_such_fault" in error["error"]
    status, _, error = sim.request("POST", "/_simulator/faults", {"drop_after_trades": "x"})
    assert status == 400
    assert sim.get("/_simulator/faults")[2] == state, "a bad request changes nothing"


def test_fault_drop_closes_abruptly_after_n_trades(sim: Sim) -> None:
    drops_before = sim.stats()["drops"]
    sim.set_faults(drop_after_trades=70)
    ws = connect(sim)
    subscribe(ws, ["BTC/USD", "ETH/USD"], 1, snapshot=True)
    trades = 0
    opcodes: list[int] = []
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        for _ in range(1000):
            opcode, payload = ws.recv_data(control_frame=True)
            opcodes.append(opcode)
            message = json.loads(payload)
            if message.get("channel") == "trade":
                trades += len(message["data"])
    ws.close()
    assert trades == 70
    assert websocket.ABNF.OPCODE_CLOSE not in opcodes, "no close frame, like a 1006"
    assert sim.stats()["drops"] == drops_before + 1


def test_fault_stall_goes_silent_then_resumes_without_gaps(sim: Sim) -> None:
    sim.set_faults(stall_after_trades=60, stall_seconds=2.0)
    ws = connect(sim)
    try:
        subscribe(ws, ["BTC/USD"], 1, snapshot=True)
        frames = collect(ws, 0.6)  # the snapshot (50) and 10 more trades, then silence
        ping_sent = time.monotonic()
        ws.send(json.dumps({"method": "ping", "req_id": 99}))
        frames += collect(ws, 2.5)
    finally:
        ws.close()
    arrivals = [at for at, _ in frames]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert max(gaps) >= 1.7, "nothing at all is sent during the stall"
    assert sorted(gaps)[-2] < 1.0, "the stall happens once"
    (pong_at,) = [at for at, text in frames if json.loads(text).get("method") == "pong"]
    assert pong_at - ping_sent >= 1.0, "pongs wait for the stall to end"
    items = trades_of(frames, "BTC/USD")
    assert_consecutive([t["trade_id"] for t in items])
    assert len(items) > 60 + RATE
    before_stall = trades_of([f for f in frames if f[0] < ping_sent], "BTC/USD")
    assert len(before_stall) == 60, "the stall starts right after the 60th trade"
    after_stall = [json.loads(t) for at, t in frames if at > ping_sent + 1.0]
    catch_up = next(m for m in after_stall if m.get("channel") == "trade")
    assert len(catch_up["data"]) >= RATE, "trades from the stall are sent afterwards"
    assert sim.stats()["stalls"] >= 1


def _classify(text: str) -> str | None:
    """Name the malformation of a frame, or None for a well-formed one."""
    try:
        message = json.loads(text)
    except ValueError:
        return "invalid_json"
    if len(text) > 1 << 20:
        return "oversized"
    if message.get("channel") not in ("trade", "heartbeat", "status", None):
        return "unknown_channel"
    if message.get("channel") != "trade":
        return None
    kinds = set()
    for item in message["data"]:
        if "price" not in item:
            kinds.add("missing_price")
        elif isinstance(item["qty"], str):
            kinds.add("string_qty")
        elif not math.isfinite(item["price"]):
            kinds.add("non_finite_price")
        elif item["price"] < 0:
            kinds.add("negative_price")
        else:
            continue
        assert item["trade_id"] <= 0, "malformed items never reuse a real id"
    assert len(kinds) <= 1
    return kinds.pop() if kinds else None


def test_fault_malformed_frames_are_extra_and_cycle_through_kinds(sim: Sim) -> None:
    malformed_before = sim.stats()["malformed_frames_sent"]
    sim.set_faults(malformed_every_frames=2)
    ws = connect(sim)
    try:
        subscribe(ws, ["BTC/USD"], 1, snapshot=True)
        frames = collect(ws, 1.5)
    finally:
        ws.close()
    kinds = [_classify(text) for _, text in frames]
    seen = [k for k in kinds if k is not None]
    assert set(seen) == {
        "invalid_json",
        "missing_price",
        "string_qty",
        "negative_price",
        "non_finite_price",
        "unknown_channel",
        "oversized",
    }
    real = [
        item
        for (_, text), kind in zip(frames, kinds, strict=True)
        if kind is None and json.loads(text).get("channel") == "trade"
        for item in json.loads(text)["data"]
    ]
    assert_consecutive([item["trade_id"] for item in real])
    assert len(real) >= 50 + RATE
    real_frames = sum(
        1
        for (_, text), kind in zip(frames, kinds, strict=True)
        if kind is None and json.loads(text).get("channel") == "trade"
    )
    assert abs(len(seen) - real_frames // 2) <= 1, "one extra after every 2nd trade frame"
    assert sim.stats()["malformed_frames_sent"] >= malformed_before + len(seen)


def test_fault_rest_rate_limit_next(sim: Sim) -> None:
    before = sim.stats()["rate_limit_errors"]
    sim.set_faults(rest_rate_limit_next=3)
    answers = []
    for path in ("Trades?pair=XBTUSD&count=1", "AssetPairs", "Trades?pair=XBTUSD&count=1"):
        status, _, body = sim.get(f"/0/public/{path}")
        answers.append((status, body["error"][0]))
    assert sorted(answers) == [
        (200, "EAPI:Rate limit exceeded"),
        (200, "EGeneral:Too many requests"),
        (429, "EAPI:Rate limit exceeded"),
    ]
    status, _, body = sim.get("/0/public/Trades?pair=XBTUSD&count=1")
    assert status == 200 and body["error"] == []
    assert sim.get("/_simulator/faults")[2]["rest_rate_limit_next"] == 0
    assert sim.stats()["rate_limit_errors"] == before + 3


def test_stats_count_what_was_sent(sim: Sim) -> None:
    before = sim.stats()
    ws = connect(sim)
    subscribe(ws, ["BTC/USD"], 1)
    sent_here = len(trades_of(collect(ws, 0.5), "BTC/USD"))
    ws.close()
    _, _, body = sim.get("/0/public/Trades?pair=ETHUSD&since=1700000000&count=7")
    assert len(body["result"]["XETHZUSD"]) == 7
    deadline = time.monotonic() + 5
    while sim.stats()["connections_open"] and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = sim.stats()
    assert stats["connections_accepted"] == before["connections_accepted"] + 1
    assert stats["connections_open"] == 0
    assert stats["trades_sent"]["BTC/USD"] >= before["trades_sent"].get("BTC/USD", 0) + sent_here
    assert sent_here > 0
    assert stats["trades_sent_total"] == sum(stats["trades_sent"].values())
    assert stats["frames_sent"] > stats["trade_frames_sent"] > 0
    assert stats["rest_requests"] > 0
    assert stats["rest_trades_sent"]["ETH/USD"] == before["rest_trades_sent"].get("ETH/USD", 0) + 7


def test_fault_omit_every_nth_id_leaves_trades_out_of_updates_silently(sim: Sim) -> None:
    before = sim.stats()
    state = sim.set_faults(omit_every_nth_id=7)
    assert state == {**FAULTS_OFF, "omit_every_nth_id": 7}
    ws = connect(sim)
    try:
        subscribe(ws, ["BTC/USD"], 1, snapshot=True)
        frames = collect(ws, 2.5)
    finally:
        ws.close()
    snapshot, updates = ids_by_kind(frames, "BTC/USD")
    assert len(snapshot) == 50, "snapshots keep every trade"
    assert_consecutive(snapshot)
    assert len(updates) > RATE
    covered = range(snapshot[-1] + 1, updates[-1] + 1)
    assert updates == [i for i in covered if i % 7], "exactly the multiples of 7 are missing"
    # Nothing else changes: no error, no reconnect, heartbeats keep coming.
    messages = [json.loads(text) for _, text in frames]
    assert messages.count({"channel": "heartbeat"}) >= 2
    assert {m.get("channel") for m in messages} == {"trade", "heartbeat", None}  # None: the ack
    assert all(m.get("success", True) for m in messages)

    first_time_ns = iso_to_us(trades_of(frames, "BTC/USD")[0]["timestamp"]) * 1000
    rows = rest_rows(sim, "XBTUSD", first_time_ns, updates[-1])
    rest_ids = [row[6] for row in rows]
    assert_consecutive(rest_ids)
    assert set(covered) <= set(rest_ids), "REST still has the left-out trades"

    stats = sim.stats()
    left_out = [i for i in covered if i % 7 == 0]
    assert len(left_out) >= 5
    got = stats["trades_left_out"]["BTC/USD"] - before["trades_left_out"].get("BTC/USD", 0)
    assert got >= len(left_out)
    assert stats["trades_left_out_total"] == sum(stats["trades_left_out"].values())
    sent = stats["trades_sent"]["BTC/USD"] - before["trades_sent"].get("BTC/USD", 0)
    assert sent >= len(snapshot) + len(updates)


def test_fault_drop_counts_sent_trades_when_some_are_left_out(sim: Sim) -> None:
    sim.set_faults(omit_every_nth_id=3, drop_after_trades=120)
    ws = connect(sim)
    subscribe(ws, ["BTC/USD"], 1, snapshot=True)
    frames: list[tuple[float, str]] = []
    with pytest.raises(websocket.WebSocketConnectionClosedException):
        for _ in range(1000):
            frames.append((time.monotonic(), ws.recv()))
    ws.close()
    snapshot, updates = ids_by_kind(frames, "BTC/USD")
    assert len(snapshot) + len(updates) == 120, "the budget counts what was sent"
    assert updates == [i for i in range(snapshot[-1] + 1, updates[-1] + 1) if i % 3]


def test_fault_stall_counts_sent_trades_and_resumes_past_left_out_ones(sim: Sim) -> None:
    sim.set_faults(omit_every_nth_id=3, stall_after_trades=80, stall_seconds=1.2)
    ws = connect(sim)
    try:
        subscribe(ws, ["BTC/USD"], 1, snapshot=True)
        frames = collect(ws, 4.0)
    finally:
        ws.close()
    arrivals = [at for at, _ in frames]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    stall = gaps.index(max(gaps))
    assert max(gaps) >= 1.0, "the stall happened"
    before_stall = trades_of(frames[: stall + 1], "BTC/USD")
    assert len(before_stall) == 80, "the stall starts right after the 80th trade sent"
    snapshot, updates = ids_by_kind(frames, "BTC/USD")
    assert len(updates) > 80
    covered = range(snapshot[-1] + 1, updates[-1] + 1)
    assert updates == [i for i in covered if i % 3], "no gap but the left-out ids, no repeat"


def test_fault_rest_unavailable_answers_trades_with_503(sim: Sim) -> None:
    before = sim.stats()
    state = sim.set_faults(rest_unavailable=True, rest_rate_limit_next=1)
    assert state == {**FAULTS_OFF, "rest_unavailable": True, "rest_rate_limit_next": 1}
    for query in ("pair=XBTUSD&count=1", "pair=ETHUSD", "pair=NOPE"):
        status, _, body = sim.get(f"/0/public/Trades?{query}")
        assert (status, body) == (503, {"error": ["EService:Unavailable"]})
    assert sim.get("/_simulator/faults")[2]["rest_rate_limit_next"] == 1, "down: nothing used up"
    status, _, body = sim.get("/0/public/Time")
    assert status == 200 and body["error"] == [], "only Trades is down"
    status, _, body = sim.get("/0/public/AssetPairs")
    assert body == {"error": ["EAPI:Rate limit exceeded"]}, "the forced rate limit still applies"
    stats = sim.stats()
    assert stats["rest_unavailable_answers"] == before["rest_unavailable_answers"] + 3
    assert stats["rest_requests"] == before["rest_requests"] + 5

    sim.set_faults(rest_unavailable=False)
    status, _, body = sim.get("/0/public/Trades?pair=XBTUSD&count=1")
    assert status == 200 and len(body["result"]["XXBTZUSD"]) == 1


def test_fault_rest_delay_holds_trades_answers_and_nothing_else(sim: Sim) -> None:
    delay = 2.0
    state = sim.set_faults(rest_delay_seconds=delay)
    assert state == {**FAULTS_OFF, "rest_delay_seconds": delay}
    ws = connect(sim)
    try:
        subscribe(ws, ["BTC/USD"], 1, snapshot=False)
        collect(ws, 0.3)
        answer: dict[str, Any] = {}

        def fetch() -> None:
            sent_at = time.monotonic()
            answer["status"], _, answer["body"] = sim.get("/0/public/Trades?pair=XBTUSD&count=5")
            answer["at"] = time.monotonic()
            answer["elapsed"] = answer["at"] - sent_at

        fetcher = threading.Thread(target=fetch)
        asked_at = time.monotonic()
        fetcher.start()
        time.sleep(0.2)
        timed = time.monotonic()
        assert sim.get("/0/public/Time")[0] == 200
        assert sim.get("/0/public/AssetPairs?pair=XBTUSD")[0] == 200
        other_requests = time.monotonic() - timed
        frames = collect(ws, delay + 0.5)
        fetcher.join(10)
    finally:
        ws.close()
    assert answer["status"] == 200 and len(answer["body"]["result"]["XXBTZUSD"]) == 5
    assert delay - 0.1 <= answer["elapsed"] < delay + 3.0
    assert other_requests < 1.0, "other HTTP requests are not held"
    during = [(at, text) for at, text in frames if asked_at < at < answer["at"]]
    assert {"channel": "heartbeat"} in [json.loads(text) for _, text in during]
    assert len(trades_of(during, "BTC/USD")) >= RATE, "trades keep flowing during the delay"
    assert max(b - a for (a, _), (b, _) in itertools.pairwise(during)) < 0.5


@pytest.mark.parametrize(
    "changes",
    [
        {"omit_every_nth_id": -7},
        {"omit_every_nth_id": "7"},
        {"omit_every_nth_id": 2.5},
        {"omit_same_timestamp_followers": 1},
        {"omit_same_timestamp_followers": "true"},
        {"rest_unavailable": None},
        {"rest_delay_seconds": -1},
        {"rest_delay_seconds": "2"},
        {"rest_delay_seconds": float("inf")},
        {"rest_unavailable": True, "rest_delay_seconds": -1},
    ],
)
def test_fault_control_refuses_bad_new_switches(sim: Sim, changes: dict[str, Any]) -> None:
    state = sim.get("/_simulator/faults")[2]
    status, _, error = sim.request("POST", "/_simulator/faults", changes)
    assert status == 400 and error["ok"] is False
    assert any(name in error["error"] for name in changes)
    assert sim.get("/_simulator/faults")[2] == state, "a bad request changes nothing"


# -- other processes ---------------------------------------------------------------------


def test_rest_rate_limit_flag(tmp_path: Path) -> None:
    limited = start_simulator(
        tmp_path / "limited.log", "--pairs", "BTC/USD", "--rest-rate-limit", "1"
    )
    try:
        errors = [limited.get("/0/public/Time")[2]["error"] for _ in range(6)]
        assert errors[:3] == [[], [], []]  # the burst
        assert ["EAPI:Rate limit exceeded"] in errors[3:]
        time.sleep(1.1)
        assert limited.get("/0/public/Time")[2]["error"] == []
        assert limited.get("/_simulator/health")[2] == {"ok": True}  # never limited
    finally:
        assert stop_simulator(limited) == 0


def test_cli_help_documents_every_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trades_platform.simulator", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    for flag in (
        "--host",
        "--port",
        "--pairs",
        "--synthetic-pairs",
        "--trades-per-second",
        "--tick-ms",
        "--start-time",
        "--speed",
        "--rest-rate-limit",
        "--drop-after-trades",
        "--stall-after-trades",
        "--stall-seconds",
        "--malformed-every-frames",
        "--rest-rate-limit-next",
        "--trades-per-match",
        "--omit-every-nth-id",
        "--omit-same-timestamp-followers",
        "--rest-unavailable",
        "--rest-delay-seconds",
    ):
        assert flag in result.stdout


def test_in_process_api() -> None:
    from websockets.asyncio.client import connect as ws_connect

    from trades_platform.simulator import FaultSwitches, SimulatorConfig, run_simulator

    async def scenario() -> None:
        config = SimulatorConfig(
            port=0,
            pairs=("SOL/USD", "SYM007/USD"),
            trades_per_second=100,
            faults=FaultSwitches(drop_after_trades=60),
        )
        stop = asyncio.Event()
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            run_simulator(config, on_ready=lambda s: ready.set_result(s.ws_url), stop=stop)
        )
        url = await asyncio.wait_for(ready, 10)
        ids: list[int] = []
        async with ws_connect(url) as ws:
            await ws.recv()
            params = {"channel": "trade", "symbol": ["SYM007/USD"], "snapshot": True}
            await ws.send(json.dumps({"method": "subscribe", "params": params, "req_id": 1}))
            with pytest.raises(websockets.exceptions.ConnectionClosedError) as closed:
                while True:
                    message = json.loads(await ws.recv())
                    ids += [t["trade_id"] for t in message.get("data", []) if "trade_id" in t]
            assert closed.value.rcvd is None  # no close frame: 1006
        assert len(ids) == 60
        assert_consecutive(ids)
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())


def test_trades_per_match_and_omit_followers_flags(tmp_path: Path) -> None:
    start = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    flags = ["--pairs", "BTC/USD", "--trades-per-second", "60", "--start-time", start]
    flags += ["--trades-per-match", "3", "--omit-same-timestamp-followers"]
    grouped = start_simulator(tmp_path / "grouped.log", *flags)
    try:
        faults = grouped.get("/_simulator/faults")[2]
        assert faults == {**FAULTS_OFF, "omit_same_timestamp_followers": True}
        assert grouped.get("/_simulator/config")[2]["trades_per_match"] == 3
        ws = connect(grouped)
        try:
            subscribe(ws, ["BTC/USD"], 1, snapshot=True)
            frames = collect(ws, 2.0)
        finally:
            ws.close()
        snapshot, updates = ids_by_kind(frames, "BTC/USD")
        assert len(snapshot) == 50 and snapshot[-1] % 3 == 0, "snapshots keep whole matches"
        assert_consecutive(snapshot)
        covered = range(snapshot[-1] + 1, updates[-1] + 1)
        assert updates == [i for i in covered if i % 3 == 1], "only each match's first trade"
        assert len(updates) > 20
        items = trades_of(frames, "BTC/USD")
        stamps = {item["trade_id"]: item["timestamp"] for item in items}
        for trade_id in snapshot[1:]:
            assert (stamps[trade_id] == stamps[trade_id - 1]) == (trade_id % 3 != 1)
        assert len({stamps[i] for i in updates}) == len(updates)

        # REST has every trade, and WebSocket, REST and a local model of the market agree.
        market = SimulatedMarket(["BTC/USD"], 60, trades_per_match=3)
        rows = rest_rows(grouped, "XBTUSD", iso_to_us(stamps[snapshot[0]]) * 1000, updates[-1])
        assert_consecutive([row[6] for row in rows])
        assert set(covered) <= {row[6] for row in rows}
        for row in rows:
            trade = market.trade("BTC/USD", row[6])
            assert round(row[2] * 1e6) == trade.time_us and float(row[0]) == trade.price
            if row[6] in stamps:
                assert iso_to_us(stamps[row[6]]) == trade.time_us

        wait_for_no_connections(grouped)
        stats = grouped.stats()
        sent = stats["trades_sent"]["BTC/USD"]
        assert sent >= len(snapshot) + len(updates)
        # The snapshot (50) is whole; each update trade sent stands for two left out.
        assert stats["trades_left_out"] == {"BTC/USD": 2 * (sent - 50)}
        assert stats["trades_left_out_total"] == 2 * (sent - 50)
        assert stats["trades_sent_total"] == sent, "trades_sent counts only what was sent"
    finally:
        assert stop_simulator(grouped) == 0


def test_omit_and_rest_fault_flags(tmp_path: Path) -> None:
    flags = ["--pairs", "ETH/USD", "--trades-per-second", "50", "--omit-every-nth-id", "7"]
    flags += ["--rest-unavailable", "--rest-delay-seconds", "1.0"]
    faulty = start_simulator(tmp_path / "faulty.log", *flags)
    try:
        assert faulty.get("/_simulator/faults")[2] == {
            **FAULTS_OFF,
            "omit_every_nth_id": 7,
            "rest_unavailable": True,
            "rest_delay_seconds": 1.0,
        }
        asked = time.monotonic()
        status, _, body = faulty.get("/0/public/Trades?pair=ETHUSD")
        elapsed = time.monotonic() - asked
        assert (status, body) == (503, {"error": ["EService:Unavailable"]})
        assert 0.95 <= elapsed < 4.0, "503 answers are delayed too"
        asked = time.monotonic()
        assert faulty.get("/0/public/Time")[0] == 200
        assert time.monotonic() - asked < 0.8, "only Trades is delayed"
        assert faulty.stats()["rest_unavailable_answers"] == 1

        ws = connect(faulty)
        try:
            subscribe(ws, ["ETH/USD"], 1, snapshot=True)
            frames = collect(ws, 1.5)
        finally:
            ws.close()
        snapshot, updates = ids_by_kind(frames, "ETH/USD")
        assert_consecutive(snapshot)
        assert updates == [i for i in range(snapshot[-1] + 1, updates[-1] + 1) if i % 7]
        assert len(updates) > 20
    finally:
        assert stop_simulator(faulty) == 0


def test_matches_split_across_frames_still_lose_only_followers() -> None:
    from websockets.asyncio.client import connect as ws_connect

    from trades_platform.simulator import FaultSwitches, Simulator, SimulatorConfig

    config = SimulatorConfig(
        port=0,
        pairs=("SOL/USD",),
        trades_per_second=300,
        trades_per_match=3,
        start_time_us=(time.time_ns() // 1000) - 3_600_000_000,
        # Two ids per frame: matches of three straddle frame boundaries all the time.
        max_trades_per_frame=2,
        faults=FaultSwitches(omit_same_timestamp_followers=True),
    )

    async def scenario() -> tuple[list[list[int]], dict[str, Any]]:
        frames: list[list[int]] = []
        async with Simulator(config) as simulator:
            async with ws_connect(simulator.ws_url) as ws:
                await ws.recv()
                params = {"channel": "trade", "symbol": ["SOL/USD"], "snapshot": False}
                await ws.send(json.dumps({"method": "subscribe", "params": params, "req_id": 1}))
                deadline = time.monotonic() + 1.5
                while time.monotonic() < deadline:
                    message = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    if message.get("channel") == "trade":
                        frames.append([item["trade_id"] for item in message["data"]])
            stats = simulator.core.stats.to_json()
        return frames, stats

    frames, stats = asyncio.run(scenario())
    assert frames and all(frames), "an update whose trades were all left out is not sent"
    assert all(len(ids) <= 2 for ids in frames)
    ids = [trade_id for frame in frames for trade_id in frame]
    assert len(ids) > 100
    assert ids == list(range(ids[0], ids[-1] + 1, 3)) and ids[0] % 3 == 1
    assert stats["trades_left_out"]["SOL/USD"] >= 2 * len(ids) - 2


def test_rest_delay_outlasts_the_request_timeout_and_never_holds_up_a_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from trades_platform.simulator import FaultSwitches, Simulator, SimulatorConfig
    from trades_platform.simulator import server as server_module

    # A short request timeout shows that a delayed answer is not cut short by it.
    monkeypatch.setattr(server_module, "REQUEST_TIMEOUT_SECONDS", 0.3)
    config = SimulatorConfig(
        port=0, pairs=("BTC/USD",), faults=FaultSwitches(rest_delay_seconds=0.8)
    )

    async def http_get(port: int, path: str) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: sim\r\n\r\n".encode())
        await writer.drain()
        try:
            return await reader.read()
        finally:
            writer.close()

    async def scenario() -> None:
        simulator = Simulator(config)
        await simulator.start()
        try:
            asked = time.monotonic()
            answer = await http_get(simulator.port, "/0/public/Trades?pair=XBTUSD&count=2")
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert 0.75 <= time.monotonic() - asked < 3.0

            # A client that never sends its request is still let go after the timeout.
            reader, writer = await asyncio.open_connection("127.0.0.1", simulator.port)
            assert await asyncio.wait_for(reader.read(), 3) == b""
            writer.close()

            simulator.core.faults.update({"rest_delay_seconds": 60})
            pending = asyncio.create_task(http_get(simulator.port, "/0/public/Trades?pair=XBTUSD"))
            await asyncio.sleep(0.3)
        finally:
            stopping = time.monotonic()
            await asyncio.wait_for(simulator.stop(), 10)
        assert time.monotonic() - stopping < 5, "stop() does not wait for a delay"
        await asyncio.wait_for(pending, 5)

    asyncio.run(scenario())
