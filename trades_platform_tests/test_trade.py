"""The trade record: downstream-compatible fields, canonical timestamps, key and JSON value."""

import json
import os
import time

import pytest
from pydantic import ValidationError

from trades_platform.trade import Trade, format_time_us, parse_time_iso, seconds_to_time_us
from trades_platform_tests.support.trades import sample_trade


def test_value_keeps_the_original_services_fields_and_adds_new_ones() -> None:
    value = json.loads(sample_trade().to_json())
    assert value["pair"] == "BTC/USD"
    assert value["price"] == 67000.1 and isinstance(value["price"], float)
    assert value["volume"] == 0.0123
    assert value["timestamp"] == "2023-09-25T07:49:37.708706Z"
    assert value["timestamp_ms"] == 1695628177708
    assert {"trade_id", "side", "ord_type", "exchange", "source"} <= value.keys()
    assert value["exchange"] == "kraken"


def test_key_uses_a_dash() -> None:
    assert sample_trade(pair="ETH/USD").message_key == "ETH-USD"


def test_a_constructed_record_passes_full_validation() -> None:
    trade = sample_trade()
    assert Trade.model_validate_json(trade.to_json()) == trade


@pytest.mark.parametrize("zone", ["America/New_York", "Asia/Kolkata", "UTC"])
def test_timestamps_do_not_depend_on_the_machine_timezone(zone: str) -> None:
    original = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        trade = sample_trade(time_us=1704153600000000)
        assert trade.timestamp == "2024-01-02T00:00:00.000000Z"
        assert trade.timestamp_ms == 1704153600000
        assert parse_time_iso("2024-01-02T00:00:00Z") == 1704153600000000
    finally:
        if original is None:
            os.environ.pop("TZ")
        else:
            os.environ["TZ"] = original
        time.tzset()


def test_validation_rejects_inconsistent_or_bad_records() -> None:
    good = json.loads(sample_trade().to_json())
    for bad in (
        {**good, "timestamp_ms": good["timestamp_ms"] + 1},
        {**good, "timestamp": "2023-09-25T07:49:37Z"},
        {**good, "price": -1},
        {**good, "source": "replay"},
        {**good, "pair": "BTC-USD"},
        {**good, "surprise": 1},
    ):
        with pytest.raises(ValidationError):
            Trade.model_validate(bad)


def test_time_conversions_round_trip() -> None:
    assert format_time_us(0) == "1970-01-01T00:00:00.000000Z"
    assert parse_time_iso(format_time_us(1716813190826003)) == 1716813190826003
    assert seconds_to_time_us(1688669597.8277369) == 1688669597827737
    assert seconds_to_time_us(1701019780.457774) == 1701019780457774
    assert seconds_to_time_us(1704153600.0) == 1704153600000000
    assert seconds_to_time_us(1704153599.9999996) == 1704153600000000
