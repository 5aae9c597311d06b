"""Pair names: AssetPairs `wsname` (v1) -> WebSocket v2, on real samples and the simulator."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from trades_platform.kraken.pairs import PairDirectory, RestPair, UnknownPairError, v2_name
from trades_platform.kraken.rest import KrakenRestClient, RestSettings
from trades_platform.testing import SimulatorProcess

SAMPLES = Path(__file__).parent / "samples"


def _sample_directory(file_name: str) -> PairDirectory:
    return PairDirectory.from_asset_pairs(json.loads((SAMPLES / file_name).read_text())["result"])


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(
        "--pairs", "BTC/USD,DOGE/USD,ETH/BTC", "--trades-per-second", "0.1"
    ) as sim:
        yield sim


def test_v1_asset_names_become_v2_names() -> None:
    assert v2_name("XBT/USD") == "BTC/USD"
    assert v2_name("XDG/USD") == "DOGE/USD"
    assert v2_name("ETH/XBT") == "ETH/BTC"
    assert v2_name("XBT/USDT") == "BTC/USDT"
    assert v2_name("DOT/USD") == "DOT/USD"


def test_real_asset_pairs_map_v2_names_to_rest_names() -> None:
    directory = _sample_directory("rest_assetpairs_subset_cryptofeed_2021-04-17.json")

    assert directory.get("BTC/USD") == RestPair("BTC/USD", altname="XBTUSD", key="XXBTZUSD")
    assert directory.get("DOGE/USD") == RestPair("DOGE/USD", altname="XDGUSD", key="XDGUSD")
    assert directory.get("ETH/BTC") == RestPair("ETH/BTC", altname="ETHXBT", key="XETHXXBT")
    assert "XBT/USD" not in directory
    assert directory.names == ["BTC/USD", "BTC/USDT", "DOGE/USD", "DOT/USD", "ETH/BTC", "ETH/USD"]


def test_dark_pool_entries_without_wsname_are_skipped() -> None:
    result = json.loads((SAMPLES / "rest_assetpairs_kraken_async_rs.json").read_text())["result"]
    result["XXBTZUSD.d"] = {"altname": "XBTUSD.d", "base": "XXBT", "quote": "ZUSD"}

    directory = PairDirectory.from_asset_pairs(result)

    assert directory.names == ["BTC/USD", "ETH/BTC", "USDC/USD"]
    assert directory.get("BTC/USD").key == "XXBTZUSD"


def test_unknown_pair_error_names_the_pair_and_the_known_ones() -> None:
    directory = _sample_directory("rest_assetpairs_kraken_async_rs.json")

    with pytest.raises(UnknownPairError) as raised:
        directory.get("XYZ/USD")

    message = str(raised.value)
    assert "'XYZ/USD'" in message
    assert "BTC/USD, ETH/BTC, USDC/USD" in message
    assert raised.value.known == ["BTC/USD", "ETH/BTC", "USDC/USD"]


def test_client_maps_the_simulators_pairs_once_per_client(simulator: SimulatorProcess) -> None:
    settings = RestSettings(url=simulator.rest_url, requests_per_second=50)
    before = simulator.stats()["rest_requests"]
    with KrakenRestClient(settings) as client:
        btc = client.rest_pair("BTC/USD")
        doge = client.rest_pair("DOGE/USD")
        eth_btc = client.rest_pair("ETH/BTC")
        names = client.pair_directory().names
        with pytest.raises(UnknownPairError, match=r"'ETH/USD'.*BTC/USD, DOGE/USD, ETH/BTC"):
            client.rest_pair("ETH/USD")
    assert simulator.stats()["rest_requests"] - before == 1  # AssetPairs, cached after that

    assert (btc.altname, btc.key) == ("XBTUSD", "XXBTZUSD")
    assert (doge.altname, doge.key) == ("XDGUSD", "XDGUSD")
    assert (eth_btc.altname, eth_btc.key) == ("ETHXBT", "XETHXXBT")
    # The simulator also lists a dark-pool book, without wsname, as Kraken does.
    assert names == ["BTC/USD", "DOGE/USD", "ETH/BTC"]
