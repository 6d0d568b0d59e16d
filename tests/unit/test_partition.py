import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgesplit.errors import PartitionError
from edgesplit.model.partition import (
    balanced_ranges,
    format_partition,
    parse_partition,
    validate_ranges,
)


def test_parse_open_last_end() -> None:
    assert parse_partition("0-7,7-15,15-", 33) == ((0, 7), (7, 15), (15, 33))


def test_parse_closed_and_spaces() -> None:
    assert parse_partition(" 0-3 , 3-10 ", 10) == ((0, 3), (3, 10))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0-7,8-15,15-", "stage 1 starts at unit 8 but the previous stage ended at 7 (a gap)"),
        ("0-7,6-15,15-", "stage 1 starts at unit 6 but the previous stage ended at 7 (an overlap)"),
        ("0-7,7-40", "stage 1 ends at unit 40, past the model's 33 units"),
        ("2-7,7-", "the first stage starts at unit 2; it must start at 0"),
        ("0-7,7-7,7-", "stage 1 is 7-7, which is empty"),
        ("0-7,7-15", "the last stage ends at unit 15 but the model has 33 units"),
        ("0-,5-", "only the last stage may leave its end open"),
        ("abc", "not START-END"),
        ("0-x,x-", "'x' is not a non-negative unit index"),
        ("", "empty partition"),
        ("0--3,3-", "is not a non-negative unit index"),
    ],
)
def test_bad_partitions_say_what_was_expected(text: str, message: str) -> None:
    with pytest.raises(PartitionError) as info:
        parse_partition(text, 33)
    assert message in str(info.value)


@given(st.lists(st.integers(1, 10), min_size=1, max_size=8))
def test_format_parse_round_trip(sizes: list[int]) -> None:
    bounds = [0]
    for s in sizes:
        bounds.append(bounds[-1] + s)
    ranges = tuple(itertools.pairwise(bounds))
    assert parse_partition(format_partition(ranges), bounds[-1]) == ranges


def _brute_best(costs: list[float], stages: int) -> float:
    import itertools

    n = len(costs)
    best = float("inf")
    for cuts in itertools.combinations(range(1, n), stages - 1):
        bounds = [0, *cuts, n]
        best = min(best, max(sum(costs[a:b]) for a, b in itertools.pairwise(bounds)))
    return best


@given(st.lists(st.floats(0.0, 100.0), min_size=1, max_size=9), st.integers(1, 4))
def test_balanced_ranges_is_optimal(costs: list[float], stages: int) -> None:
    if stages > len(costs):
        with pytest.raises(PartitionError):
            balanced_ranges(costs, stages)
        return
    ranges = balanced_ranges(costs, stages)
    validate_ranges(ranges, len(costs))
    assert len(ranges) == stages
    got = max(sum(costs[a:b]) for a, b in ranges)
    assert got == pytest.approx(_brute_best(costs, stages))


def _brute_best_with_cuts(costs: list[float], cut_costs: list[float], stages: int) -> float:
    n = len(costs)
    best = float("inf")
    for cuts in itertools.combinations(range(1, n), stages - 1):
        bounds = [0, *cuts, n]
        value = max(
            sum(costs[a:b]) + (cut_costs[b - 1] if b < n else 0.0)
            for a, b in itertools.pairwise(bounds)
        )
        best = min(best, value)
    return best


@given(
    st.lists(st.tuples(st.floats(0.0, 100.0), st.floats(0.0, 100.0)), min_size=1, max_size=8),
    st.integers(1, 4),
)
def test_balanced_ranges_with_cut_costs_is_optimal(
    pairs: list[tuple[float, float]], stages: int
) -> None:
    costs = [p[0] for p in pairs]
    cut_costs = [p[1] for p in pairs]
    if stages > len(costs):
        return
    ranges = balanced_ranges(costs, stages, cut_costs)
    validate_ranges(ranges, len(costs))
    n = len(costs)
    got = max(sum(costs[a:b]) + (cut_costs[b - 1] if b < n else 0.0) for a, b in ranges)
    assert got == pytest.approx(_brute_best_with_cuts(costs, cut_costs, stages))
