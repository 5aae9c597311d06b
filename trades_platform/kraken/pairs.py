"""Pair names across Kraken's APIs: WebSocket v2 (`BTC/USD`) <-> REST (`XBTUSD`, `XXBTZUSD`).

The platform names pairs the WebSocket v2 way everywhere; REST wants its own names. The mapping
comes from `/0/public/AssetPairs`, whose `wsname` is still in v1 form (`XBT/USD`, `XDG/USD`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# v1 asset names that WebSocket v2 (and this platform) spell differently.
_V1_TO_V2_ASSETS = {"XBT": "BTC", "XDG": "DOGE"}


class UnknownPairError(ValueError):
    """A pair Kraken does not list: a configuration error, retrying cannot help."""

    def __init__(self, pair: str, known: Iterable[str]) -> None:
        known_sorted = sorted(known)
        super().__init__(
            f"Kraken does not list pair {pair!r} in /0/public/AssetPairs; "
            f"known pairs ({len(known_sorted)}): {', '.join(known_sorted) or 'none'}"
        )
        self.pair = pair
        self.known = known_sorted


@dataclass(frozen=True, slots=True)
class RestPair:
    """One pair under all its names."""

    name: str  # WebSocket v2 name, what the platform uses: BTC/USD
    altname: str  # REST name sent as `pair`: XBTUSD
    key: str  # Kraken's canonical key, which keys REST results: XXBTZUSD


def v2_name(wsname: str) -> str:
    """An AssetPairs `wsname` (v1 form, `XBT/USD`) -> the WebSocket v2 name (`BTC/USD`)."""
    base, _, quote = wsname.partition("/")
    return f"{_V1_TO_V2_ASSETS.get(base, base)}/{_V1_TO_V2_ASSETS.get(quote, quote)}"


class PairDirectory:
    """The pairs Kraken lists, looked up by their WebSocket v2 name."""

    def __init__(self, pairs: Iterable[RestPair]) -> None:
        self._by_name: dict[str, RestPair] = {}
        for pair in pairs:
            # First one wins: Kraken lists each wsname once; a repeat would be a listing bug.
            self._by_name.setdefault(pair.name, pair)

    @classmethod
    def from_asset_pairs(cls, result: Mapping[str, Any]) -> PairDirectory:
        """Build from the `result` object of `/0/public/AssetPairs`."""
        pairs: list[RestPair] = []
        for key, entry in sorted(result.items()):
            if not isinstance(entry, Mapping):
                continue
            wsname, altname = entry.get("wsname"), entry.get("altname")
            # Dark-pool books (`XXBTZUSD.d`) have no wsname: they have no public trades to fetch.
            if not isinstance(wsname, str) or "/" not in wsname or not isinstance(altname, str):
                continue
            pairs.append(RestPair(name=v2_name(wsname), altname=altname, key=key))
        return cls(pairs)

    @property
    def names(self) -> list[str]:
        """Every listed pair's WebSocket v2 name, sorted."""
        return sorted(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, name: str) -> RestPair:
        """The REST names of a v2 pair; `UnknownPairError` naming the known pairs otherwise."""
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownPairError(name, self._by_name) from None
