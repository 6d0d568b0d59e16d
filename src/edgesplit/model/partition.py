"""Partition strings: a model's units cut into stages.

``"0-7,7-15,15-"`` means three stages with the half-open unit ranges ``[0, 7)``, ``[7, 15)`` and
``[15, n)``: the last end may be left open and then means "to the last unit". The one parser of
partitions and plans is :mod:`edgesplit.shared.plan` (re-exported here); this module adds the
balanced split of a model's units.
"""

from __future__ import annotations

from collections.abc import Sequence

from edgesplit.errors import PartitionError
from edgesplit.shared.plan import (
    Ranges,
    format_partition,
    parse_partition,
    split_devices,
    validate_ranges,
)

__all__ = [
    "Ranges",
    "balanced_ranges",
    "format_partition",
    "parse_partition",
    "split_devices",
    "validate_ranges",
]


def balanced_ranges(
    costs: Sequence[float], stages: int, cut_costs: Sequence[float] | None = None
) -> Ranges:
    """Split units with the given costs into ``stages`` contiguous ranges minimising the largest
    stage cost (exact dynamic program, O(stages * units^2); fine for hundreds of units).

    ``cut_costs[i]``, when given, is added to a stage that ends after unit ``i`` and hands its
    output on (the transfer of that tensor); the last stage pays none."""
    n = len(costs)
    if not 1 <= stages <= n:
        raise PartitionError(f"cannot cut {n} units into {stages} non-empty stages")
    cut = list(cut_costs) if cut_costs is not None else [0.0] * n
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # best[k][j]: smallest bottleneck splitting units [0, j) into k stages; last[k][j]: the start
    # of the k-th stage in that split.
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    last = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for k in range(1, stages + 1):
        for j in range(k, n + 1):
            handoff = cut[j - 1] if j < n else 0.0
            for i in range(k - 1, j):
                value = max(best[k - 1][i], prefix[j] - prefix[i] + handoff)
                if value < best[k][j]:
                    best[k][j], last[k][j] = value, i
    ranges: list[tuple[int, int]] = []
    end = n
    for k in range(stages, 0, -1):
        start = last[k][end]
        ranges.append((start, end))
        end = start
    return tuple(reversed(ranges))
