"""Least energy under a latency bound: a label-setting DP over the same states as
:mod:`edgesplit.plan.planner.dp`, keeping at every state the Pareto front of (active energy,
latency, bottleneck) of the partial plans reaching it.

Energy = (sum of idle W) x bottleneck + active energy, and the latency bound is a second sum, so
one scalar per state is not enough; a partial plan is only dropped when another one reaching the
same state is no worse in all three, which keeps the search exact. Slower than the scalar DPs
(pure Python, fronts grow with the instance), used only when a latency bound is given.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from edgesplit.plan.planner.dp import INF, Tables
from edgesplit.shared.plan import Stage, Stages


class Label(NamedTuple):
    energy_mj: float  # active energy so far
    latency_ms: float  # upload + stages + hand-offs so far (not the last stage's hop)
    bottleneck_ms: float
    parent: Label | None
    device: int
    start: int
    end: int


def _insert(front: list[Label], label: Label) -> None:
    e, lat, t = label.energy_mj, label.latency_ms, label.bottleneck_ms
    for o in front:
        if o.energy_mj <= e and o.latency_ms <= lat and o.bottleneck_ms <= t:
            return
    front[:] = [
        o for o in front if not (e <= o.energy_mj and lat <= o.latency_ms and t <= o.bottleneck_ms)
    ]
    front.append(label)


def _stages(label: Label, names: tuple[str, ...]) -> Stages:
    out: list[Stage] = []
    node: Label | None = label
    while node is not None:
        out.append(Stage(names[node.device], node.start, node.end))
        node = node.parent
    return tuple(reversed(out))


def energy_with_latency_bound(
    tables: Tables, batch_size: int, max_latency_ms: float, cap_ms: float
) -> list[Stages]:
    """Plans with latency <= ``max_latency_ms`` and bottleneck <= ``cap_ms`` whose energy is
    the least (all of those equal up to rounding, for the caller's tie-break); [] if none."""
    num_d, n = tables.num_devices, tables.num_units
    ok = tables.fits & (tables.compute <= cap_ms)
    stage = np.where(ok, tables.compute, INF).tolist()
    lat_stage = np.where(ok, tables.latency_compute, INF).tolist()
    fits = tables.fits.tolist()
    hop = tables.hop.tolist()
    extra = tables.active_extra_w.tolist()
    idle_w = float(tables.idle_w.sum())
    fronts: dict[tuple[int, int, int], list[Label]] = {}

    def extend(
        parent: Label | None, base: tuple[float, float, float], subset: int, d2: int, j: int
    ) -> None:
        energy, latency, bottleneck = base
        row, lat_row = stage[d2][j], lat_stage[d2][j]
        for e in range(j + 1, n + 1):
            if not fits[d2][j][e]:
                break  # memory only grows with e
            c, lc = row[e], lat_row[e]
            if c == INF or latency + lc > max_latency_ms:
                continue  # a boundary cost can make a longer stage cheaper
            label = Label(
                energy + extra[d2] * c, latency + lc, max(bottleneck, c), parent, d2, j, e
            )
            _insert(fronts.setdefault((subset, d2, e), []), label)

    for d in range(num_d):
        up, period = float(tables.upload[d]), float(tables.period_upload[d])
        if period <= cap_ms:
            extend(None, (0.0, up, period), 1 << d, d, 0)
    for s in range(1, 1 << num_d):
        members = [d for d in range(num_d) if s >> d & 1]
        outs = [d for d in range(num_d) if not s >> d & 1]
        for d in members:
            for j in range(1, n):
                for label in fronts.get((s, d, j), ()):
                    for d2 in outs:
                        h = hop[d][d2][j]
                        if h <= cap_ms and label.latency_ms + h <= max_latency_ms:
                            base = (
                                label.energy_mj,
                                label.latency_ms + h,
                                max(label.bottleneck_ms, h),
                            )
                            extend(label, base, s | 1 << d2, d2, j)
    finals: list[tuple[float, Label]] = []
    for (_, d, e), front in fronts.items():
        if e != n:
            continue
        r = float(tables.ret[d])
        for label in front:
            t = max(label.bottleneck_ms, r)
            if label.latency_ms + r <= max_latency_ms and t <= cap_ms:
                finals.append((idle_w * t + label.energy_mj, label))
    if not finals:
        return []
    least = min(v for v, _ in finals)
    return [_stages(lb, tables.names) for v, lb in finals if v <= least + 1e-9 * abs(least)]
