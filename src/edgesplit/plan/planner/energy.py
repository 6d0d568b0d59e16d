"""Least energy without a latency bound: branch and bound over the bottleneck.

Energy per micro-batch = I x T + A, where I is the cluster's idle power, T the bottleneck and A
the active energy (power above idle x compute, summed over stages). T is always one of the
pieces' costs (a stage's compute, a hand-off, the upload, the result return), so the search
runs over the sorted distinct piece costs ``values``. One DP gives, for a cap c, the least A over
plans with T <= c and such a plan, of bottleneck T_p <= c. Then:

- every plan with T in [T_p, c] costs at least I x T_p + A(c): none beats that plan;
- every plan with T < T_p has A >= A(c), so plans with T in [lo, T_p) cost at least
  I x lo + A(c).

Intervals of T with such lower bounds are probed at their middle, least bound first, until no
bound beats the best plan found; about log2(len(values)) DPs when idle power dominates.
"""

from __future__ import annotations

import heapq

import numpy as np

from edgesplit.plan.planner import dp
from edgesplit.shared.plan import Stages

TIE_REL = 1e-9


def piece_values(tables: dp.Tables, floor_ms: float, cap_ms: float) -> np.ndarray:
    """Sorted distinct costs any plan's bottleneck can take, within [floor_ms, cap_ms]."""
    parts = [
        tables.compute[tables.fits],
        tables.hop[np.isfinite(tables.hop)],
        tables.period_upload,
        tables.ret,
    ]
    values = np.unique(np.concatenate(parts))
    return values[(values >= floor_ms) & (values <= cap_ms)]


def least_energy_stages(tables: dp.Tables, floor_ms: float, cap_ms: float) -> list[Stages]:
    """The plans probed on the way (each the least active energy under some cap), among which
    the least energy (I x T + A) is; the caller evaluates them and breaks ties."""
    idle_w = float(tables.idle_w.sum())
    values = piece_values(tables, floor_ms, cap_ms)
    found: list[Stages] = []
    best_mj = np.inf
    # (lower bound mJ, lo index, hi index, least active energy known for the interval)
    heap: list[tuple[float, int, int, float]] = [(-np.inf, 0, len(values) - 1, -np.inf)]
    while heap:
        bound, lo, hi, active_lb = heapq.heappop(heap)
        if bound > best_mj + TIE_REL * abs(best_mj):
            break
        mid = hi if active_lb == -np.inf else (lo + hi) // 2  # first: the least A of all
        solved = dp.solve(tables, dp.active_energy_costs(tables, float(values[mid])))
        best = solved.best()
        if best is None:
            if mid < hi:
                heapq.heappush(heap, (bound, mid + 1, hi, active_lb))
            continue
        active, subset, device = best
        stages = solved.stages(subset, device)
        found.append(stages)
        t_p = dp.bottleneck_of(tables, stages)
        best_mj = min(best_mj, idle_w * t_p + active)
        below = min(int(np.searchsorted(values, t_p, side="left")), mid) - 1
        if below >= lo:
            lb = max(active_lb, active)
            heapq.heappush(heap, (idle_w * float(values[lo]) + lb, lo, below, lb))
        if mid < hi:
            heapq.heappush(
                heap, (idle_w * float(values[mid + 1]) + active_lb, mid + 1, hi, active_lb)
            )
    return found
