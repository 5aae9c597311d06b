"""The fast ways a Trade is built and serialized give what pydantic's own ways give."""

import math
import random

import orjson

from trades_platform.kraken.protocol import parse_rest_row
from trades_platform.trade import Trade, seconds_to_time_us
from trades_platform_tests.support.trades import sample_trade


def test_from_parts_equals_model_construct_and_full_validation() -> None:
    trade = sample_trade()
    constructed = Trade.model_construct(**trade.model_dump())
    validated = Trade.model_validate(trade.model_dump())
    for other in (constructed, validated):
        assert trade == other
        assert trade.model_fields_set == other.model_fields_set
        assert list(trade.__dict__) == list(other.__dict__)
    assert trade.__pydantic_extra__ is None and trade.__pydantic_private__ is None


def test_a_given_timestamp_is_used_as_is() -> None:
    trade = sample_trade(timestamp="2023-09-25T07:49:37.708706Z")
    assert trade == sample_trade()


def test_to_json_is_the_bytes_of_model_dump() -> None:
    for trade in (sample_trade(), Trade.model_validate(sample_trade().model_dump() | {"price": 5})):
        assert trade.to_json() == orjson.dumps(trade.model_dump())


def test_fields_set_is_not_shared_between_records() -> None:
    first, second = sample_trade(), sample_trade(trade_id=2)
    assert first.model_fields_set is not second.model_fields_set


def _seconds_to_time_us_reference(seconds: float) -> int:
    """The original implementation, kept here to pin the faster one to it."""
    whole, _, fraction = repr(float(seconds)).partition(".")
    if "e" in whole or "e" in fraction:
        return round(seconds * 1_000_000)
    micros = (fraction + "0000000")[:7]
    value = int(whole) * 1_000_000 + int(micros[:6])
    return value + (1 if int(micros[6]) >= 5 else 0)


def test_seconds_to_time_us_matches_the_original_digit_for_digit() -> None:
    generator = random.Random(7)
    values = [1688669597.8277369, 1701019780.457774, 1704153599.9999996, 1.5, 5.0, 1e-7, 1e16]
    values += [generator.uniform(1e8, 5e9) for _ in range(20_000)]
    values += [
        round(generator.uniform(1e9, 2e9), digits) for digits in range(8) for _ in range(1_000)
    ]
    # Kraken's 7-decimal times and the doubles right beside them.
    for _ in range(5_000):
        value = float(f"{generator.randrange(2**29, 2**32)}.{generator.randrange(10**7):07d}")
        values += [value, math.nextafter(value, 0), math.nextafter(value, math.inf)]
    # Doubles exactly halfway between two 7-decimal steps.
    values += [base + q / 256 for base in (2**29, 1704153600, 2**32 - 1) for q in range(1, 256, 2)]
    values += [float(2**29), math.nextafter(2**29, 0), float(2**32), math.nextafter(2**32, 0)]
    for value in values:
        assert seconds_to_time_us(value) == _seconds_to_time_us_reference(value), value


def test_rest_row_with_an_unhashable_side_is_rejected_not_raised() -> None:
    assert isinstance(parse_rest_row(["1.0", "1.0", 1.5, ["b"], "m", "", 5]), str)
    assert isinstance(parse_rest_row(["1.0", "1.0", 1.5, "b", {}, "", 5]), str)
