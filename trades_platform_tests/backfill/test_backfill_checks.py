"""The partition checks: they pass on a complete day and fail on what the topic really holds."""

from typing import Any

from confluent_kafka import Producer
from dagster import AssetCheckSeverity, Definitions, ExecuteInProcessResult, instance_for_test

from trades_platform.backfill.asset import kraken_trades_history
from trades_platform.backfill.checks import (
    IDS_CHECK,
    RECORDS_CHECK,
    id_sequence_report,
    kraken_trades_history_checks,
)
from trades_platform.backfill.job import backfill_trades_job
from trades_platform.backfill.partitions import PartitionWindow
from trades_platform.producer import TradeProducer
from trades_platform.resources import KrakenResource, RedpandaResource
from trades_platform.settings import KafkaSettings
from trades_platform.simulator.market import SimulatedMarket
from trades_platform.testing import simulated_trades, unique_topic
from trades_platform.trade import Trade
from trades_platform_tests.backfill.conftest import expected_ids

KEY = "2024-03-01|BTC/USD"


def _write(broker: str, topic: str, trades: list[Trade]) -> None:
    producer = TradeProducer(KafkaSettings(broker_address=broker, topic=topic))
    producer.send(trades)
    producer.flush()


def _run_checks_only(broker: str, topic: str, key: str = KEY) -> dict[str, Any]:
    """Run just the checks of a partition, as the UI's "execute checks" does (no asset run)."""
    defs = Definitions(
        assets=[kraken_trades_history],
        asset_checks=[kraken_trades_history_checks],
        jobs=[backfill_trades_job],
        resources={
            "kraken": KrakenResource(pairs=["BTC/USD", "ETH/USD"]),
            "redpanda": RedpandaResource(broker_address=broker, topic=topic),
        },
    )
    job = defs.resolve_job_def("backfill_trades_job").get_subset(
        asset_selection=set(), asset_check_selection=set(kraken_trades_history_checks.check_keys)
    )
    with instance_for_test() as instance:
        result: ExecuteInProcessResult = job.execute_in_process(
            partition_key=key, instance=instance
        )
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_checks_pass_on_a_complete_day_among_other_pairs_and_days(
    broker: str, market: SimulatedMarket
) -> None:
    topic = unique_topic()
    ids = expected_ids(market, KEY)
    # Neighbours in the topic: the same day of another pair, the next day of this pair.
    for key in ("2024-03-01|ETH/USD", KEY, "2024-03-02|BTC/USD"):
        pair = PartitionWindow.from_key(key).pair
        _write(broker, topic, simulated_trades(market, pair, expected_ids(market, key)))

    checks = _run_checks_only(broker, topic)

    assert checks[IDS_CHECK].passed, checks[IDS_CHECK].metadata
    assert checks[IDS_CHECK].metadata["records"].value == len(ids)
    assert checks[IDS_CHECK].metadata["first_id"].value == ids[0]
    assert checks[IDS_CHECK].metadata["last_id"].value == ids[-1]
    assert checks[RECORDS_CHECK].passed


def test_ids_check_fails_when_the_topic_misses_trades(broker: str, market: SimulatedMarket) -> None:
    topic = unique_topic()
    ids = expected_ids(market, KEY)
    lost = {ids[100], ids[101], ids[5000]}
    _write(broker, topic, simulated_trades(market, "BTC/USD", [i for i in ids if i not in lost]))

    checks = _run_checks_only(broker, topic)

    ids_check = checks[IDS_CHECK]
    assert not ids_check.passed
    assert ids_check.severity == AssetCheckSeverity.ERROR
    assert ids_check.metadata["holes"].value == 3
    assert ids_check.metadata["problems"].value["holes"] == [
        f"after {ids[99]} comes {ids[102]}",
        f"after {ids[4999]} comes {ids[5001]}",
    ]
    assert checks[RECORDS_CHECK].passed  # what is there is valid


def test_records_check_fails_on_records_that_are_not_trades(
    broker: str, market: SimulatedMarket
) -> None:
    topic = unique_topic()
    ids = expected_ids(market, KEY)[:50]
    _write(broker, topic, simulated_trades(market, "BTC/USD", ids))
    window = PartitionWindow.from_key(KEY)
    raw = Producer({"bootstrap.servers": broker})
    good = simulated_trades(market, "BTC/USD", [ids[-1] + 1])[0].model_dump()
    for value in (
        b"{not json",
        Trade.model_construct(**(good | {"price": -1.0})).to_json(),
        Trade.model_construct(**(good | {"pair": "ETH/USD"})).to_json(),
    ):
        raw.produce(topic, value=value, key=b"BTC-USD", timestamp=window.start_ms + 60_000)
    assert raw.flush(10) == 0

    checks = _run_checks_only(broker, topic)

    records_check = checks[RECORDS_CHECK]
    assert not records_check.passed
    assert records_check.metadata["invalid"].value == 3
    assert records_check.metadata["reasons"].value == {
        "value is not JSON": 1,
        "price: Input should be greater than 0": 1,
        "pair 'ETH/USD' under the key of 'BTC/USD'": 1,
    }


def test_a_day_that_reads_back_nothing_is_not_passed_as_without_holes(broker: str) -> None:
    """No trade of the day in the topic and no materialization saying there were none: the ids
    check cannot vouch for the day (a warning, not a pass)."""
    checks = _run_checks_only(broker, unique_topic(), "2024-01-05|ETH/USD")
    ids = checks[IDS_CHECK]
    assert not ids.passed and ids.severity == AssetCheckSeverity.WARN
    assert ids.metadata["records"].value == 0
    assert ids.metadata["found_by_asset"].value == "unknown"
    assert ids.metadata["problems"].value["unproven"], ids.metadata
    # Nothing read back is nothing invalid.
    assert checks[RECORDS_CHECK].passed


def test_id_report_tells_lost_trades_from_duplicates() -> None:
    clean = id_sequence_report({0: [5, 6, 7]})
    assert clean.passed and not clean.lost_trades

    twice = id_sequence_report({0: [5, 6, 7, 5, 6, 7]})
    assert (twice.duplicates, twice.not_increasing, twice.holes) == (3, 1, 0)
    assert not twice.passed and not twice.lost_trades

    holed = id_sequence_report({0: [5, 6, 9]})
    assert holed.holes == 2 and holed.lost_trades
    assert holed.hole_examples == ["after 6 comes 9"]

    edges = id_sequence_report({0: [6, 7]}, expected_first=5, expected_last=8)
    assert edges.lost_trades
    assert edges.missing_edges == [
        "first trade 5 written by the asset is missing",
        "last trade 8 written by the asset is missing",
    ]

    nothing = id_sequence_report({}, expected_first=5, expected_last=8)
    assert nothing.lost_trades and nothing.count == 0

    # Fewer distinct ids read back than the asset found: missing, even without a hole.
    short = id_sequence_report({0: [5, 6, 6]}, expected_first=5, expected_last=6, expected_count=3)
    assert short.lost_trades
    assert short.missing_edges == ["3 trades found by the asset, 2 read back"]
    assert id_sequence_report({0: [5, 6, 7]}, 5, 7, expected_count=3).passed
