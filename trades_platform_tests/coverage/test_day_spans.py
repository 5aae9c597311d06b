"""The index's day spans: which offsets hold a day's records, bounded, never too few."""

from __future__ import annotations

import random

import pytest

from trades_platform.coverage import topic_index
from trades_platform.coverage.topic_index import DaySpans

DAY_MS = 86_400_000


def test_a_day_written_in_order_is_one_range_and_a_late_record_another() -> None:
    spans = DaySpans()
    for offset in range(100):
        spans.add(DAY_MS * 10 + offset * 1000, offset)
    for offset in range(100, 200):
        spans.add(DAY_MS * 11 + offset, offset)
    spans.add(DAY_MS * 10 + 5, 500_000)  # a heal of day 10, much later
    assert spans.offsets_for(DAY_MS * 10, DAY_MS * 11) == [(0, 99), (500_000, 500_000)]
    assert spans.offsets_for(DAY_MS * 11, DAY_MS * 12) == [(100, 199)]
    assert spans.offsets_for(DAY_MS * 10, DAY_MS * 12) == [(0, 199), (500_000, 500_000)]
    assert spans.offsets_for(DAY_MS * 12, DAY_MS * 13) == []


def test_bounded_spans_still_cover_every_record_of_every_day(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(topic_index, "MAX_DAY_SPANS", 8)
    rng = random.Random(7)
    spans = DaySpans()
    where: dict[int, list[int]] = {}
    for offset in range(0, 5_000_000, 997):
        day = rng.randrange(40)
        spans.add(day * DAY_MS + rng.randrange(DAY_MS), offset)
        where.setdefault(day, []).append(offset)
    bounded = DaySpans(tuple(span) for span in spans.bounded())
    assert len(bounded.spans) <= 8
    for day, offsets in where.items():
        ranges = bounded.offsets_for(day * DAY_MS, (day + 1) * DAY_MS)
        assert all(any(first <= o <= last for first, last in ranges) for o in offsets), day
