"""The hand-written trade-item checks agree with the pydantic model they stand in for."""

import itertools
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from trades_platform.kraken.protocol import (
    TradesMessage,
    _validated_trade,
    _well_formed_trade,
    parse_frame,
)
from trades_platform.trade import Trade, canonical_time_us, format_time_us, parse_time_iso
from trades_platform_tests.support.trades import KRAKEN_TRADE_ITEM

SAMPLES = Path(__file__).parent / "samples"
GOOD = KRAKEN_TRADE_ITEM
# Values tried for every field: the types JSON can produce and some that it cannot.
ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**63,
    2**70,
    0.0,
    -0.0,
    -1.5,
    1e-300,
    1.5,
    float("inf"),
    float("nan"),
    "",
    "1.5",
    "buy",
    "sell",
    "market",
    "limit",
    "BUY",
    b"buy",
    [],
    {},
    ["buy"],
]
SYMBOLS = [
    "BTC/USD",
    "SYM001/USD",
    "btc/usd",
    "BTC-USD",
    "BTC/USD\n",
    " BTC/USD",
    "\uff22TC/USD",  # fullwidth B
    "ABCDEFGHIJKLMNOPQ/USD",
    "ABCDEFGHIJKLMNOP/USD",
    "/USD",
    "BTC/",
    b"BTC/USD",
]
TIMESTAMPS = [
    "2024-01-02T00:00:00.000000Z",
    "2023-09-25T07:49:37.708706Z",
    "2024-01-02T00:00:00Z",
    "2024-01-02T00:00:00.000000+00:00",
    "2024-01-02T00:00:00.000000+02:00",
    "2024-01-02 00:00:00.000000Z",
    "2024-01-02t00:00:00.000000Z",
    "2024-01-02T00:00:00.000000z",
    "2024-01-02T00:00:00.0000000Z",
    "2024-01-02T00:00:00.00000Z",
    "2024-01-02T00:00:00.+00000Z",
    "2024-01-02T00:00:00. 00000Z",
    "2024-01-02T00:00:00.0_0000Z",
    "2024-01-02T00:00:00." + "\u0660" * 6 + "Z",  # Arabic-Indic digits
    "2024-01-02T24:00:00.000000Z",
    "2016-12-31T23:59:60.000000Z",
    "2024-02-30T00:00:00.000000Z",
    "0999-01-02T00:00:00.000000Z",
    "yesterday",
    "",
    b"2024-01-02T00:00:00.000000Z",
]


def _variants() -> list[Any]:
    variants: list[Any] = [GOOD, dict(GOOD, extra="ignored"), "not an object", [GOOD], None]
    for key in GOOD:
        variants.append({k: v for k, v in GOOD.items() if k != key})
        variants.extend({**GOOD, key: value} for value in ODD_VALUES)
    variants.extend({**GOOD, "symbol": symbol} for symbol in SYMBOLS)
    variants.extend({**GOOD, "timestamp": text} for text in TIMESTAMPS)
    return variants


def _same(fast: Trade | str, reference: Trade | str) -> bool:
    if isinstance(reference, str) or isinstance(fast, str):
        return fast == reference
    dumped, expected = fast.model_dump(), reference.model_dump()
    return dumped == expected and all(type(dumped[key]) is type(expected[key]) for key in expected)


@pytest.mark.parametrize("item", _variants(), ids=repr)
def test_the_fast_check_accepts_only_what_pydantic_accepts_into_the_same_trade(item: Any) -> None:
    reference = _validated_trade(item, "live", 1_700_000_000_000)
    fast = _well_formed_trade(item, "live", 1_700_000_000_000) if type(item) is dict else None
    if fast is not None:
        assert isinstance(reference, Trade), f"fast path accepted what pydantic rejects: {item!r}"
        assert _same(fast, reference)
    frame = {"channel": "trade", "type": "update", "data": [GOOD, item, {**GOOD, "trade_id": 8}]}
    try:
        raw = json.dumps(frame)
        # What parse_frame sees of the item (orjson reads a 70-bit int as a float, say).
        reparsed = orjson.loads(raw)["data"][1]
    except (TypeError, ValueError):
        return  # not expressible as JSON that Kraken could send: a malformed frame at most
    message = parse_frame(raw)
    assert isinstance(message, TradesMessage)
    # Whatever the middle item's fate, it is exactly what the reference validation decides.
    expected = _validated_trade(reparsed, "live", None)
    if isinstance(expected, Trade):
        assert _same(message.trades[1], expected)
        assert [trade.trade_id for trade in message.trades] == [7, expected.trade_id, 8]
    else:
        assert [rejected.reason for rejected in message.rejected] == [expected]
        assert [trade.trade_id for trade in message.trades] == [7, 8]


def test_real_frames_take_the_fast_path() -> None:
    lines = (SAMPLES / "ws_v2_kraken_async_rs.jsonl").read_text().splitlines()
    items = [
        item
        for line in lines
        if line.strip() and json.loads(line)["kind"].startswith("trade_")
        for item in json.loads(json.loads(line)["raw"]).get("data", [])
    ]
    assert items
    assert all(_well_formed_trade(item, "live", 1_700_000_000_000) is not None for item in items)


@pytest.mark.parametrize("text", TIMESTAMPS[:-1])
def test_canonical_time_matches_the_general_conversion(text: str) -> None:
    time_us = canonical_time_us(text)
    if time_us is not None:
        assert parse_time_iso(text) == time_us
        assert format_time_us(time_us) == text


def test_cached_formatting_matches_datetime_across_seconds_and_the_epoch() -> None:
    from datetime import UTC, datetime, timedelta

    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for time_us in itertools.chain(
        range(-3_000_000, 3_000_000, 499_999), range(1704153599_000_000, 1704153602_000_000, 77_777)
    ):
        expected = (epoch + timedelta(microseconds=time_us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert format_time_us(time_us) == expected
