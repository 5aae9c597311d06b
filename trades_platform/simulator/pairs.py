"""The simulator's pair catalogue, with Kraken's three naming schemes per pair."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PairInfo:
    """One tradable pair as Kraken names it on each API."""

    name: str  # WebSocket v2 symbol, e.g. "BTC/USD"
    key: str  # REST canonical key, e.g. "XXBTZUSD"
    altname: str  # REST alternative name, e.g. "XBTUSD"
    wsname: str | None  # WebSocket v1 name, e.g. "XBT/USD"; None for dark-pool pairs
    base: str  # REST asset code of the base, e.g. "XXBT"
    quote: str  # REST asset code of the quote, e.g. "ZUSD"
    price_decimals: int
    base_price: float  # typical price, in the quote currency
    typical_qty: float  # typical trade size, in the base currency
    synthetic: bool = False


CATALOGUE: tuple[PairInfo, ...] = (
    PairInfo("BTC/USD", "XXBTZUSD", "XBTUSD", "XBT/USD", "XXBT", "ZUSD", 1, 67000.0, 0.01),
    PairInfo("ETH/USD", "XETHZUSD", "ETHUSD", "ETH/USD", "XETH", "ZUSD", 2, 3000.0, 0.2),
    PairInfo("SOL/USD", "SOLUSD", "SOLUSD", "SOL/USD", "SOL", "ZUSD", 2, 150.0, 5.0),
    PairInfo("XRP/USD", "XXRPZUSD", "XRPUSD", "XRP/USD", "XXRP", "ZUSD", 5, 0.55, 1000.0),
    PairInfo("DOGE/USD", "XDGUSD", "XDGUSD", "XDG/USD", "XXDG", "ZUSD", 7, 0.15, 5000.0),
    PairInfo("ADA/USD", "ADAUSD", "ADAUSD", "ADA/USD", "ADA", "ZUSD", 6, 0.45, 1000.0),
    PairInfo("LTC/USD", "XLTCZUSD", "LTCUSD", "LTC/USD", "XLTC", "ZUSD", 2, 80.0, 5.0),
    PairInfo("ETH/BTC", "XETHXXBT", "ETHXBT", "ETH/XBT", "XETH", "XXBT", 5, 0.045, 0.2),
)

# Real AssetPairs lists dark-pool books without a wsname; clients must cope with that.
DARK_POOL: PairInfo = PairInfo("", "XXBTZUSD.d", "XBTUSD.d", None, "XXBT", "ZUSD", 1, 67000.0, 0.01)

DEFAULT_PAIRS: tuple[str, ...] = tuple(p.name for p in CATALOGUE)

_BY_NAME = {p.name: p for p in CATALOGUE}
_SYNTHETIC_RE = re.compile(r"[A-Z0-9]{2,10}/USD")
SYNTHETIC_DECIMALS = 4


def catalogue_pair(name: str) -> PairInfo | None:
    """Return the catalogue entry for a v2 symbol, or None if it is not catalogued."""
    return _BY_NAME.get(name)


def synthetic_pair(name: str) -> PairInfo:
    """Build a deterministic synthetic pair for a name like "SYM001/USD"."""
    if not _SYNTHETIC_RE.fullmatch(name):
        raise ValueError(f"not a valid synthetic pair name (want [A-Z0-9]{{2,10}}/USD): {name!r}")
    base = name.split("/", 1)[0]
    digest = hashlib.blake2b(f"synthetic:{name}".encode(), digest_size=8).digest()
    # Spread prices over 0.5..500 so decimals and magnitudes vary across a benchmark's pairs.
    fraction = int.from_bytes(digest, "big") / 2**64
    base_price = round(0.5 * 1000.0**fraction, SYNTHETIC_DECIMALS)
    return PairInfo(
        name=name,
        key=f"{base}USD",
        altname=f"{base}USD",
        wsname=name,
        base=base,
        quote="ZUSD",
        price_decimals=SYNTHETIC_DECIMALS,
        base_price=base_price,
        typical_qty=round(100.0 / base_price, 8),
        synthetic=True,
    )


def resolve_pair(name: str) -> PairInfo:
    """Return the catalogue entry for a v2 symbol, or a synthetic one; ValueError if invalid."""
    return catalogue_pair(name) or synthetic_pair(name)


def resolve_pairs(names: Iterable[str]) -> tuple[PairInfo, ...]:
    """Resolve v2 symbols in order, dropping duplicates; ValueError on an invalid name."""
    seen: dict[str, PairInfo] = {}
    for raw in names:
        name = raw.strip()
        if name and name not in seen:
            seen[name] = resolve_pair(name)
    if not seen:
        raise ValueError("at least one pair is required")
    return tuple(seen.values())


def synthetic_names(count: int) -> list[str]:
    """Return count synthetic pair names: SYM001/USD, SYM002/USD, ..."""
    width = max(3, len(str(count)))
    return [f"SYM{i:0{width}d}/USD" for i in range(1, count + 1)]
