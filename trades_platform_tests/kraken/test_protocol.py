"""Parsing Kraken's wire formats, on real frames and REST responses captured from Kraken."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from trades_platform.kraken.protocol import (
    ErrorMessage,
    Heartbeat,
    IgnoredMessage,
    MalformedMessage,
    Pong,
    RestTradeRow,
    StatusMessage,
    SubscribeAck,
    TradesMessage,
    parse_frame,
    parse_rest_row,
)
from trades_platform_tests.support.trades import KRAKEN_TRADE_ITEM

SAMPLES = Path(__file__).parent / "samples"


def _samples(file_name: str) -> dict[str, list[str]]:
    by_kind: dict[str, list[str]] = {}
    for line in (SAMPLES / file_name).read_text().splitlines():
        if line.strip():
            sample = json.loads(line)
            by_kind.setdefault(sample["kind"], []).append(sample["raw"])
    return by_kind


REAL = _samples("ws_v2_kraken_async_rs.jsonl")
DOCS = _samples("docs_examples.jsonl")


def test_real_snapshot_frame_becomes_trades_with_every_field() -> None:
    message = parse_frame(REAL["trade_snapshot"][0], received_ms=1716813191002)
    assert isinstance(message, TradesMessage)
    assert message.is_snapshot and not message.rejected
    first = message.trades[0]
    assert first.model_dump() == {
        "pair": "BTC/USD",
        "price": 68466.9,
        "volume": 0.01919415,
        "timestamp": "2024-05-27T12:33:10.826003Z",
        "timestamp_ms": 1716813190826,
        "trade_id": 70635251,
        "side": "sell",
        "ord_type": "market",
        "exchange": "kraken",
        "source": "live",
        "received_ms": 1716813191002,
    }
    assert [trade.trade_id for trade in message.trades] == [70635251, 70635252]


def test_real_update_frame_keeps_trades_sharing_a_timestamp() -> None:
    message = parse_frame(REAL["trade_update"][0].encode(), source="heal")
    assert isinstance(message, TradesMessage)
    assert not message.is_snapshot
    assert [trade.trade_id for trade in message.trades] == [70635299, 70635300]
    assert {trade.timestamp for trade in message.trades} == {"2024-05-27T12:43:11.798009Z"}
    assert {trade.source for trade in message.trades} == {"heal"}


def test_documentation_update_example() -> None:
    raw = (SAMPLES / "ws-v2-trade-update-docs-example.json").read_text()
    message = parse_frame(raw)
    assert isinstance(message, TradesMessage)
    (trade,) = message.trades
    assert (trade.pair, trade.price, trade.volume, trade.trade_id) == (
        "MATIC/USD",
        0.5117,
        40.0,
        4665906,
    )
    assert trade.message_key == "MATIC-USD"


@pytest.mark.parametrize("raw", REAL["status"])
def test_status_frames_including_a_connection_id_beyond_int64(raw: str) -> None:
    message = parse_frame(raw)
    assert message == StatusMessage(system="online", api_version="v2", version="2.0.4")


def test_subscribe_ack_pong_heartbeat_and_errors() -> None:
    ack = parse_frame(REAL["trade_subscribe_ack"][0])
    assert ack == SubscribeAck(symbol="BTC/USD", success=True, error=None, req_id=0)
    refused = parse_frame(DOCS["ws_v2_subscribe_failure"][0])
    assert refused == SubscribeAck(
        symbol="XBT/USD", success=False, error="Currency pair not supported XBT/USD", req_id=None
    )
    assert parse_frame(REAL["pong"][0]) == Pong(req_id=1)
    assert parse_frame(DOCS["ws_v2_heartbeat"][0]) == Heartbeat()
    ping_error = parse_frame(REAL["error"][0])
    assert isinstance(ping_error, ErrorMessage) and ping_error.method == "ping"
    assert isinstance(parse_frame(REAL["error"][1]), SubscribeAck)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "not an object"),
        ('{"foo": 1}', "neither a channel nor a method"),
        ('{"channel":"trade","type":"update"}', "without a data array"),
        ('{"channel":"trade","type":"weird","data":[]}', "type 'weird'"),
        (" " * 1_100_000, "exceeds"),
    ],
)
def test_malformed_frames_are_reported_not_raised(raw: str, reason: str) -> None:
    message = parse_frame(raw)
    assert isinstance(message, MalformedMessage)
    assert reason in message.reason


def test_other_channels_and_methods_are_ignored() -> None:
    assert isinstance(parse_frame('{"channel":"book","type":"update","data":[]}'), IgnoredMessage)
    assert isinstance(parse_frame('{"method":"unsubscribe","success":true}'), IgnoredMessage)


GOOD = KRAKEN_TRADE_ITEM


@pytest.mark.parametrize(
    ("bad_item", "reason"),
    [
        ({**GOOD, "price": "100.5"}, "price"),
        ({**GOOD, "qty": -1.0}, "qty"),
        ({**GOOD, "price": 0}, "price"),
        ({key: value for key, value in GOOD.items() if key != "price"}, "price"),
        ({**GOOD, "side": "up"}, "side"),
        ({**GOOD, "trade_id": 0}, "trade_id"),
        ({**GOOD, "trade_id": "7"}, "trade_id"),
        ({**GOOD, "timestamp": "yesterday"}, "timestamp"),
        ({**GOOD, "timestamp": "2024-01-02T00:00:00+02:00"}, "not UTC"),
        ({**GOOD, "symbol": "btc-usd"}, "symbol"),
        ("not an object", "item"),
    ],
)
def test_a_bad_item_is_rejected_and_its_good_neighbours_kept(bad_item: object, reason: str) -> None:
    frame = {
        "channel": "trade",
        "type": "update",
        "data": [GOOD, bad_item, {**GOOD, "trade_id": 8}],
    }
    message = parse_frame(json.dumps(frame))
    assert isinstance(message, TradesMessage)
    assert [trade.trade_id for trade in message.trades] == [7, 8]
    (rejected,) = message.rejected
    assert reason in rejected.reason
    assert rejected.raw == bad_item


def test_non_finite_price_is_rejected() -> None:
    raw = json.dumps({"channel": "trade", "type": "update", "data": [GOOD]}).replace(
        "100.5", "1e999"
    )
    message = parse_frame(raw)
    # orjson refuses 1e999 outright; either way nothing non-finite becomes a trade.
    assert isinstance(message, (MalformedMessage, TradesMessage))
    if isinstance(message, TradesMessage):
        assert not message.trades and message.rejected


def test_real_rest_rows_parse_to_exact_microseconds() -> None:
    response = json.loads((SAMPLES / "rest_trades_XXBTZUSD_kraken_async_rs.json").read_text())
    rows = [parse_rest_row(row) for row in response["result"]["XXBTZUSD"]]
    assert all(isinstance(row, RestTradeRow) for row in rows)
    ids = [row.trade_id for row in rows]
    assert ids == list(range(64754585, 64754616))
    first = rows[0]
    assert first == RestTradeRow(
        trade_id=64754585,
        time_us=1701019771038366,
        price=37247.0,
        volume=0.00026451,
        side="buy",
        ord_type="limit",
    )
    trade = first.to_trade("BTC/USD", source="backfill")
    assert trade.timestamp == "2023-11-26T17:29:31.038366Z"
    assert trade.timestamp_ms == 1701019771038


def test_documentation_rest_example_keeps_seven_digit_times_in_order() -> None:
    response = json.loads((SAMPLES / "rest-trades-docs-example.json").read_text())
    rows = [parse_rest_row(row) for row in response["result"]["XXBTZUSD"]]
    assert [row.time_us for row in rows] == [1688669597827737, 1688669598280411, 1688669602698379]


@pytest.mark.parametrize(
    "row",
    [
        ["1.0", "1.0", 1.5, "b", "m", ""],
        ["1.0", "1.0", 1.5, "x", "m", "", 5],
        ["1.0", "1.0", 1.5, "b", "m", "", 0],
        ["abc", "1.0", 1.5, "b", "m", "", 5],
        [1.0, "1.0", 1.5, "b", "m", "", 5],
        ["-1.0", "1.0", 1.5, "b", "m", "", 5],
        ["1.0", "1.0", "soon", "b", "m", "", 5],
        ["1.0", "nan", 1.5, "b", "m", "", 5],
    ],
)
def test_bad_rest_rows_are_rejected_with_a_reason(row: list[object]) -> None:
    assert isinstance(parse_rest_row(row), str)


def _in_a_day() -> str:
    return (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"trade_id": 2**60}, "out of range"),
        ({"timestamp": "0001-01-01T00:00:00.000000Z"}, "before 2013 or in the future"),
        ({"timestamp": "future"}, "before 2013 or in the future"),
        # Below 2**53, but more ids than 10,000 trades a second from 2013 to 2023 could make.
        ({"trade_id": 2**52}, "more ids than any pair traded since 2013"),
    ],
    ids=["id-past-2**53", "year-1", "a-day-ahead", "id-past-any-pace"],
)
def test_implausible_trades_are_rejected_on_the_websocket_path(
    change: dict[str, object], reason: str
) -> None:
    if change.get("timestamp") == "future":
        change = {"timestamp": _in_a_day()}
    frame = {"channel": "trade", "type": "update", "data": [GOOD, {**GOOD, **change}]}
    message = parse_frame(json.dumps(frame))
    assert isinstance(message, TradesMessage)
    assert [trade.trade_id for trade in message.trades] == [GOOD["trade_id"]]
    (rejected,) = message.rejected
    assert rejected.reason.startswith("implausible trade") and reason in rejected.reason


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (["1.0", "1.0", 1704153600.5, "b", "l", "", 2**60], "out of range"),
        (["1.0", "1.0", 1.5, "b", "l", "", 7], "before 2013"),
        (["1.0", "1.0", 4102444800.0, "b", "l", "", 7], "in the future"),
        (["1.0", "1.0", 1704153600.5, "b", "l", "", 2**52], "more ids than any pair traded"),
    ],
    ids=["id-past-2**53", "1970", "year-2100", "id-past-any-pace"],
)
def test_implausible_trades_are_rejected_on_the_rest_path(row: list[object], reason: str) -> None:
    verdict = parse_rest_row(row)
    assert isinstance(verdict, str) and verdict.startswith("implausible trade"), verdict
    assert reason in verdict
