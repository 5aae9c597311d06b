"""One pair's trade ids against the run of ids they should form: what is lost, what is repeated.

Kraken's trade ids are sequential per pair, so the ids read back from the topic show every lost
trade (a hole in the run) and every duplicate. The backfill's asset check, the tests, the soak
and CI all count them here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise


@dataclass(frozen=True)
class IdCount:
    """How one pair's ids cover the range from `first_id` to `last_id` (both included)."""

    first_id: int | None  # None: no id read and no range asked for
    last_id: int | None
    expected: int  # ids in the range
    in_topic: int  # ids read, repeats included
    distinct: int
    lost: int  # ids of the range that were not read
    duplicated: int  # reads beyond the first of the same id
    holes: tuple[tuple[int, int], ...]  # the lost ids, as (first, last) runs in increasing order
    repeated: tuple[int, ...]  # ids read more than once, in increasing order


def count_ids(
    ids: Iterable[int], first_id: int | None = None, last_id: int | None = None
) -> IdCount:
    """Count `ids` against the range from `first_id` to `last_id`, widened to every id read."""
    counts = Counter(ids)
    present = sorted(counts)
    lows = [*present[:1], *([] if first_id is None else [first_id])]
    highs = [*present[-1:], *([] if last_id is None else [last_id])]
    in_topic = counts.total()
    if not lows or not highs:  # nothing read and no whole range asked for
        return IdCount(None, None, 0, in_topic, 0, 0, 0, (), ())
    low, high = min(lows), max(highs)
    bounds = [low - 1, *present, high + 1]
    expected = high - low + 1
    return IdCount(
        first_id=low,
        last_id=high,
        expected=expected,
        in_topic=in_topic,
        distinct=len(present),
        lost=expected - len(present),
        duplicated=in_topic - len(present),
        holes=tuple((a + 1, b - 1) for a, b in pairwise(bounds) if b > a + 1),
        repeated=tuple(trade_id for trade_id in present if counts[trade_id] > 1),
    )
