"""IdRanges: the id set every writer consults, checked against a plain Python set."""

import random

import pytest

from trades_platform.coverage.id_ranges import IdRanges


def test_adding_merges_touching_and_overlapping_ranges() -> None:
    ids = IdRanges()
    ids.add_range(10, 20)
    ids.add_range(30, 40)
    ids.add(21)
    assert list(ids) == [(10, 21), (30, 40)]
    ids.add_range(22, 29)
    assert list(ids) == [(10, 40)]
    ids.add_range(1, 5)
    ids.add_range(3, 12)
    assert list(ids) == [(1, 40)]
    assert len(ids) == 40 and ids.highest == 40


def test_missing_lists_the_holes_of_a_range() -> None:
    ids = IdRanges([(5, 9), (15, 19)])
    assert ids.missing(1, 25) == [(1, 4), (10, 14), (20, 25)]
    assert ids.missing(5, 9) == []
    assert ids.missing(7, 16) == [(10, 14)]
    assert IdRanges().missing(3, 4) == [(3, 4)]


def test_an_empty_range_is_refused() -> None:
    with pytest.raises(ValueError):
        IdRanges().add_range(5, 4)


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_a_set_on_random_input(seed: int) -> None:
    rng = random.Random(seed)
    ids, reference = IdRanges(), set()
    for _ in range(400):
        first = rng.randrange(0, 500)
        last = first + rng.randrange(0, 6)
        ids.add_range(first, last)
        reference.update(range(first, last + 1))
    assert len(ids) == len(reference)
    assert all((value in ids) == (value in reference) for value in range(-5, 520))
    holes = {value for first, last in ids.missing(0, 510) for value in range(first, last + 1)}
    assert holes == set(range(0, 511)) - reference
    starts = [first for first, _ in ids]
    assert starts == sorted(starts)
