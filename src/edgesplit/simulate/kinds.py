"""Plans for clusters of many devices of a few kinds (16 Pis and 4 faster boxes, 64 of one kind).

The exact planner (:mod:`edgesplit.plan.planner.dp`) works over subsets of devices, 2^D of
them: fine for 8 devices, impossible for 64. Devices of one *kind* (the same costs; links set
per kind) are interchangeable, so a plan only needs how many of each kind it uses and in what order.
The dynamic program here runs over count vectors ``c`` (devices used per kind):

    F[c][k, e] = least latency covering units [0, e) with c[i] devices of kind i, the last
                 stage on kind k, every piece (stage, hand-off, upload) at most ``cap_ms``

    F[c + 1_k2][k2, e] = min over j, k of F[c][k, j] + hop[k, k2, j] + stage_latency[k2, j, e]

level by level (the number of devices used), with the planner's cost model and pieces
(:func:`edgesplit.plan.planner.dp.build_tables` on one device of each kind). The least bottleneck is
found by bisection over the pieces' costs; at a cap, the first level with a complete plan is
the fewest devices that reach it, and among those plans the least latency is taken.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgesplit.errors import PlanError
from edgesplit.plan.planner import Plan, Problem, dp, evaluate
from edgesplit.plan.planner.energy import piece_values
from edgesplit.shared.plan import Stage, Stages

INF = np.inf
Counts = tuple[int, ...]
TOL = 1e-9


@dataclass(frozen=True)
class Kinds:
    """Device kinds: a name and the member devices (cluster order) of each."""

    names: tuple[str, ...]
    members: tuple[tuple[str, ...], ...]

    def kind_of(self, device: str) -> int:
        for i, m in enumerate(self.members):
            if device in m:
                return i
        raise PlanError(f"device {device!r} is in no kind; kinds: {list(self.names)}")

    def restrict(self, usable: Sequence[str]) -> Kinds:
        keep = set(usable)
        pairs = [
            (n, tuple(d for d in m if d in keep))
            for n, m in zip(self.names, self.members, strict=True)
        ]
        pairs = [(n, m) for n, m in pairs if m]
        return Kinds(tuple(n for n, _ in pairs), tuple(m for _, m in pairs))


def kinds_of(problem: Problem) -> Kinds:
    """Devices grouped by equal costs (everything but the name); a kind is named after its
    first device. Links are taken per kind: the first device's links stand for all."""
    groups: dict[object, list[str]] = {}
    for d in problem.devices:
        groups.setdefault(dataclasses.replace(d, name=""), []).append(d.name)
    members = tuple(tuple(m) for m in groups.values())
    return Kinds(tuple(m[0] for m in members), members)


@dataclass(frozen=True)
class KindTables:
    compute: np.ndarray  # [k, j, e], inf where not a stage or not fitting
    latency: np.ndarray  # [k, j, e]
    hop: np.ndarray  # [k, k2, j]
    upload: np.ndarray  # [k]
    period_upload: np.ndarray  # [k]
    ret: np.ndarray  # [k]

    @property
    def num_units(self) -> int:
        return int(self.compute.shape[1]) - 1


def kind_tables(problem: Problem, kinds: Kinds) -> KindTables:
    reps = [m[0] for m in kinds.members]
    sub = problem.restrict(reps)
    order = [sub.device_names.index(r) for r in reps]
    t = dp.build_tables(sub)
    compute = np.where(t.fits, t.compute, INF)[order]
    latency = np.where(t.fits, t.latency_compute, INF)[order]
    hop = t.hop[np.ix_(order, order)].copy()
    n = problem.num_units
    out_bytes = [u.out_bytes for u in problem.units]
    for k, m in enumerate(kinds.members):
        if len(m) > 1:
            link = problem.link(m[0], m[1])
            hop[k, k, 1:n] = [link.transfer_ms(out_bytes[j - 1]) for j in range(1, n)]
    return KindTables(
        compute=compute,
        latency=latency,
        hop=hop,
        upload=t.upload[order],
        period_upload=t.period_upload[order],
        ret=t.ret[order],
    )


@dataclass
class _Solved:
    levels: list[dict[Counts, np.ndarray]]
    """levels[s][c] = F[c] ([k, e]) for the count vectors with s devices."""
    totals: dict[Counts, tuple[float, int]]
    """Complete plans: count vector -> (least latency, last kind)."""


def _grow(
    t: KindTables,
    avail: Counts,
    cap: float,
    max_devices: int,
    stop_at_first: bool,
    max_latency: float = INF,
) -> _Solved:
    """The DP of the module docstring, level by level up to ``max_devices``; with
    ``stop_at_first``, up to the first level with a complete plan of latency <= max_latency."""
    n, nk = t.num_units, len(avail)
    stage_ok = t.compute <= cap
    lat = np.where(stage_ok, t.latency, INF)
    hop = np.where(t.hop <= cap, t.hop, INF)
    zero: Counts = (0,) * nk
    start = np.full((nk, n + 1), INF)
    levels: list[dict[Counts, np.ndarray]] = [{zero: start}]
    totals: dict[Counts, tuple[float, int]] = {}
    first = np.where(t.period_upload <= cap, t.upload, INF)
    ret = np.where(t.ret <= cap, t.ret, INF)
    for s in range(1, min(max_devices, n) + 1):
        level: dict[Counts, np.ndarray] = {}
        for c, f in levels[-1].items():
            if s == 1:
                g = np.full((nk, n + 1), INF)
                g[:, 0] = first
            else:
                g = (f[:, None, :] + hop).min(axis=0)  # [k2, j]
            new = (g[:, :, None] + lat).min(axis=1)  # [k2, e]
            for k2 in range(nk):
                if c[k2] >= avail[k2] or not np.isfinite(new[k2]).any():
                    continue
                nc = (*c[:k2], c[k2] + 1, *c[k2 + 1 :])
                row = level.get(nc)
                if row is None:
                    row = level[nc] = np.full((nk, n + 1), INF)
                np.minimum(row[k2], new[k2], out=row[k2])
        if not level:
            break
        levels.append(level)
        for c, f in level.items():
            done = f[:, n] + ret
            k = int(done.argmin())
            if np.isfinite(done[k]):
                totals[c] = (float(done[k]), k)
        if stop_at_first and any(v <= max_latency for v, _ in totals.values()):
            break
    return _Solved(levels, totals)


def _stages(
    t: KindTables, solved: _Solved, counts: Counts, last: int, cap: float
) -> list[tuple[int, int, int]]:
    """(kind, start, end) per stage of the complete plan ending on ``last`` with ``counts``."""
    n = t.num_units
    lat = np.where(t.compute <= cap, t.latency, INF)
    hop = np.where(t.hop <= cap, t.hop, INF)
    out = []
    c, k2, e = counts, last, n
    while True:
        s = sum(c)
        target = solved.levels[s][c][k2, e]
        prev = (*c[:k2], c[k2] - 1, *c[k2 + 1 :])
        if s == 1:
            out.append((k2, 0, e))
            break
        f = solved.levels[s - 1][prev]
        cand = f + hop[:, k2, :] + lat[k2, :, e][None, :]  # [k, j]
        k, j = np.unravel_index(int(cand.argmin()), cand.shape)
        if not cand[k, j] <= target * (1 + TOL) + TOL:
            raise AssertionError("kinds DP backtrack found no predecessor")
        out.append((k2, int(j), e))
        c, k2, e = prev, int(k), int(j)
    return list(reversed(out))


def _assign(kinds: Kinds, stages: list[tuple[int, int, int]]) -> Stages:
    used = [0] * len(kinds.names)
    out: list[Stage] = []
    for k, a, b in stages:
        out.append(Stage(kinds.members[k][used[k]], a, b))
        used[k] += 1
    return tuple(out)


def plan_by_kinds(
    problem: Problem, kinds: Kinds | None = None, max_devices: int | None = None
) -> Plan:
    """The least-bottleneck plan on ``problem`` treating devices of one kind as
    interchangeable (fewest devices among them, then least latency), evaluated by the planner."""
    kinds = kinds or kinds_of(problem)
    t = kind_tables(problem, kinds)
    avail = tuple(len(m) for m in kinds.members)
    limit = max_devices or sum(avail)
    tables = dp.build_tables(problem.restrict([m[0] for m in kinds.members]))
    values = np.unique(np.concatenate([piece_values(tables, 0.0, INF), t.hop[np.isfinite(t.hop)]]))
    lo, hi = 0, len(values) - 1
    if not _grow(t, avail, float(values[hi]), limit, True).totals:
        raise PlanError(
            f"no assignment of all {problem.num_units} units to at most {limit} devices fits "
            f"the memory budgets"
        )
    while lo < hi:
        mid = (lo + hi) // 2
        if _grow(t, avail, float(values[mid]), limit, True).totals:
            hi = mid
        else:
            lo = mid + 1
    cap = float(values[lo])
    solved = _grow(t, avail, cap, limit, True)
    counts, (_, last) = min(solved.totals.items(), key=lambda item: item[1][0])
    stages = _assign(kinds, _stages(t, solved, counts, last, cap))
    return evaluate(problem, stages, "throughput")


@dataclass(frozen=True)
class Candidate:
    """A cluster (devices per kind) and the least-latency plan on it under the cap."""

    counts: Counts
    latency_ms: float
    stages: Stages


def candidates_under(
    problem: Problem,
    kinds: Kinds,
    cap_ms: float,
    max_latency_ms: float | None,
    max_devices: int,
    fewest_only: bool = False,
) -> list[Candidate]:
    """Every device mix (up to ``max_devices``; with ``fewest_only`` only up to the fewest
    devices that have one) with a plan whose pieces all take at most ``cap_ms`` and whose
    predicted latency is at most ``max_latency_ms``, with that plan."""
    t = kind_tables(problem, kinds)
    avail = tuple(len(m) for m in kinds.members)
    bound = INF if max_latency_ms is None else max_latency_ms
    solved = _grow(t, avail, cap_ms, max_devices, fewest_only, bound)
    out = []
    for counts, (latency, last) in solved.totals.items():
        if max_latency_ms is not None and latency > max_latency_ms:
            continue
        stages = _assign(kinds, _stages(t, solved, counts, last, cap_ms))
        out.append(Candidate(counts, latency, stages))
    return out
