"""A set of trade ids kept as sorted, disjoint, inclusive ranges (Kraken ids are sequential)."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator


class IdRanges:
    """Which ids of one pair are present; memory grows with holes, not with trades."""

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for first, last in ranges:
            self.add_range(first, last)

    def __contains__(self, trade_id: int) -> bool:
        index = bisect.bisect_right(self._starts, trade_id) - 1
        return index >= 0 and trade_id <= self._ends[index]

    def __len__(self) -> int:
        return sum(end - start + 1 for start, end in zip(self._starts, self._ends, strict=True))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends, strict=True))

    def __repr__(self) -> str:
        return f"IdRanges({list(self)!r})"

    @property
    def range_count(self) -> int:
        """How many disjoint ranges (one more than the holes between them)."""
        return len(self._starts)

    @property
    def highest(self) -> int | None:
        """The largest id present, or None when empty."""
        return self._ends[-1] if self._ends else None

    @property
    def lowest(self) -> int | None:
        """The smallest id present, or None when empty."""
        return self._starts[0] if self._starts else None

    def add(self, trade_id: int) -> None:
        """Mark one id present."""
        self.add_range(trade_id, trade_id)

    def add_range(self, first: int, last: int) -> None:
        """Mark every id in [first, last] present, merging touching ranges."""
        if last < first:
            raise ValueError(f"empty range [{first}, {last}]")
        # Fast path: the common case is appending right after the highest range.
        if self._ends and self._starts[-1] <= first <= self._ends[-1] + 1:
            self._ends[-1] = max(self._ends[-1], last)
            return
        low = bisect.bisect_left(self._ends, first - 1)
        high = bisect.bisect_right(self._starts, last + 1)
        if low < high:
            first = min(first, self._starts[low])
            last = max(last, self._ends[high - 1])
        self._starts[low:high] = [first]
        self._ends[low:high] = [last]

    def remove(self, trade_id: int) -> None:
        """Mark one id absent."""
        self.remove_range(trade_id, trade_id)

    def remove_range(self, first: int, last: int) -> None:
        """Mark every id in [first, last] absent, splitting ranges that straddle it."""
        low = bisect.bisect_left(self._ends, first)
        high = bisect.bisect_right(self._starts, last)
        if low >= high:
            return
        starts: list[int] = []
        ends: list[int] = []
        if self._starts[low] < first:
            starts.append(self._starts[low])
            ends.append(first - 1)
        if self._ends[high - 1] > last:
            starts.append(last + 1)
            ends.append(self._ends[high - 1])
        self._starts[low:high] = starts
        self._ends[low:high] = ends

    def within(self, first: int, last: int) -> list[tuple[int, int]]:
        """The present sub-ranges of [first, last]."""
        low = bisect.bisect_left(self._ends, first)
        high = bisect.bisect_right(self._starts, last)
        return [
            (max(first, start), min(last, end))
            for start, end in zip(self._starts[low:high], self._ends[low:high], strict=True)
        ]

    def missing(self, first: int, last: int) -> list[tuple[int, int]]:
        """The sub-ranges of [first, last] that are not present."""
        gaps: list[tuple[int, int]] = []
        cursor = first
        index = max(bisect.bisect_right(self._starts, first) - 1, 0)
        while cursor <= last and index < len(self._starts):
            start, end = self._starts[index], self._ends[index]
            if end < cursor:
                index += 1
                continue
            if start > last:
                break
            if start > cursor:
                gaps.append((cursor, start - 1))
            cursor = max(cursor, end + 1)
            index += 1
        if cursor <= last:
            gaps.append((cursor, last))
        return gaps
