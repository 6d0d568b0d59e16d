"""Exact dynamic programs over (device subset, last device, units covered), vectorised with
numpy over unit indices (PipeEdge: Hu et al., "PipeEdge: Pipeline Parallelism for Large-Scale
Model Inference on Heterogeneous Edge Devices", DSD 2022, Sec. III).

A plan is a path: upload to the first device, then stages on distinct devices, each followed by
a hop to the next device (or the result return). Its cost combines the costs of these pieces with
``max`` (the bottleneck) or ``+`` (a latency or an energy). ``f[S, d, e]`` is the best combined
cost of covering units ``[0, e)`` with stages on exactly the devices in the bit set ``S``, the
last stage on ``d`` and ending at ``e``, not counting that stage's outgoing hop yet. Because a
stage's cost does not depend on the device before it, the best predecessor is folded first::

    g[d2, j]    = min over d in S of  f[S, d, j] (+|max) hop[d, d2, j]
    f[S+d2, d2, e] = min over j < e of  g[d2, j] (+|max) stage[d2, j, e]

which makes one step O(|S| * D * n + D * n^2) array work per subset, O(2^D * D * n^2) in all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgesplit.plan.planner.types import Problem
from edgesplit.shared.names import COORDINATOR
from edgesplit.shared.plan import Stage, Stages

INF = np.inf
Array = np.ndarray


@dataclass(frozen=True)
class Tables:
    """Every piece's cost for a problem, as arrays (inf where impossible)."""

    names: tuple[str, ...]
    compute: Array  # [d, j, e]: compute ms of units [j, e) on d; inf unless j < e
    latency_compute: Array  # [d, j, e]: the same for one micro-batch reaching d idle
    fits: Array  # [d, j, e]: units [j, e) fit d's memory budget (and j < e)
    hop: Array  # [d, d2, j]: hand-off ms of unit j-1's output from d to d2; inf if not a cut
    upload: Array  # [d]: input upload coordinator -> d
    period_upload: Array  # [d]: the coordinator's share of the period: prepare + upload
    ret: Array  # [d]: result return d -> coordinator
    active_extra_w: Array  # [d]: power above idle while computing
    idle_w: Array  # [d]

    @property
    def num_devices(self) -> int:
        return len(self.names)

    @property
    def num_units(self) -> int:
        return int(self.compute.shape[1]) - 1


def stage_memory(problem: Problem) -> Array:
    """[j, e]: memory bytes of a stage of units [j, e) (weights + largest activation)."""
    n = problem.num_units
    weights = np.array([u.weight_bytes for u in problem.units], dtype=np.float64)
    acts = np.array([u.activation_bytes for u in problem.units], dtype=np.float64)
    wsum = np.concatenate([[0.0], np.cumsum(weights)])
    memory = np.full((n + 1, n + 1), INF)
    for j in range(n):
        memory[j, j + 1 :] = wsum[j + 1 :] - wsum[j] + np.maximum.accumulate(acts[j:])
    return memory


def _latency_spans(problem: Problem) -> Array:
    """[d, j, e]: the compute of units [j, e) on d for one micro-batch reaching d idle (see
    :class:`~edgesplit.plan.planner.DeviceCost`), by the arithmetic of ``stage_latency_ms``."""
    n = problem.num_units
    out = []
    for d in problem.devices:
        units = np.array(d.burst_unit_ms or d.unit_ms, dtype=np.float64)
        prefix = np.concatenate([[0.0], np.cumsum(units)])
        burst = prefix[None, :] - prefix[:, None]
        bounds = d.burst_boundary_ms or d.boundary_ms
        if bounds:
            b = np.array(bounds, dtype=np.float64)
            burst = burst + b[:, None] + b[None, :]
        q = d.quota_ms
        if q is not None:
            burst = np.where(burst <= q, burst, q + (burst - q) * d.period_ms / q)
        out.append(burst)
    return np.array(out).reshape(len(problem.devices), n + 1, n + 1)


def build_tables(problem: Problem) -> Tables:
    n, names = problem.num_units, problem.device_names
    times = np.array([d.unit_ms for d in problem.devices], dtype=np.float64)
    prefix = np.concatenate([np.zeros((len(names), 1)), np.cumsum(times, axis=1)], axis=1)
    upper = np.triu(np.ones((n + 1, n + 1), dtype=bool), k=1)
    bounds = np.array(
        [d.boundary_ms or (0.0,) * (n + 1) for d in problem.devices], dtype=np.float64
    )
    # A difference of running sums plus the two boundary terms, the arithmetic of evaluate().
    span = prefix[:, None, :] - prefix[:, :, None]
    compute = np.where(upper, span + bounds[:, :, None] + bounds[:, None, :], INF)
    latency_compute = np.where(upper, _latency_spans(problem), INF)
    for i, d in enumerate(problem.devices):
        for start, end, sustained, burst in d.measured_stages:
            compute[i, start, end] = sustained
            latency_compute[i, start, end] = d.under_quota(burst)
    memory = stage_memory(problem)
    budgets = np.array(
        [INF if d.memory_budget_bytes is None else d.memory_budget_bytes for d in problem.devices]
    )
    fits = upper & (memory[None, :, :] <= budgets[:, None, None])
    out_bytes = [u.out_bytes for u in problem.units]
    hop = np.full((len(names), len(names), n + 1), INF)
    for a, da in enumerate(names):
        for b, db in enumerate(names):
            if a != b:
                link = problem.link(da, db)
                hop[a, b, 1:n] = [link.transfer_ms(out_bytes[j - 1]) for j in range(1, n)]
    upload = np.array(
        [problem.link(COORDINATOR, d).transfer_ms(problem.input_bytes) for d in names]
    )
    ret = np.array([problem.link(d, COORDINATOR).transfer_ms(out_bytes[-1]) for d in names])
    return Tables(
        names=names,
        compute=compute,
        latency_compute=latency_compute,
        fits=fits,
        hop=hop,
        upload=upload,
        period_upload=upload + problem.prepare_ms + problem.coordinator_ms,
        ret=ret,
        active_extra_w=np.array([d.active_extra_w for d in problem.devices]),
        idle_w=np.array([d.idle_w for d in problem.devices]),
    )


@dataclass(frozen=True)
class Costs:
    """One objective's cost of every piece of a path (inf: the piece may not be used)."""

    stage: Array  # [d, j, e]
    hop: Array  # [d, d2, j]
    first: Array  # [d]: the upload, paid by the first stage's device
    last: Array  # [d]: the result return, paid by the last stage's device
    combine: str  # "max" or "sum"


def _op(costs: Costs) -> Callable[[Array, Array], Array]:
    return np.maximum if costs.combine == "max" else np.add


def _members(subset: int, num_d: int) -> Array:
    return np.array([d for d in range(num_d) if subset >> d & 1], dtype=np.int64)


@dataclass(frozen=True)
class Solved:
    """The filled DP: ``f[S, d, e]`` as in the module docstring, and ``total[S, d]``, the best
    cost of a complete plan on exactly the device set ``S`` ending on ``d`` (inf if none).
    Arg-mins are not stored: :meth:`stages` recomputes the few it needs on the way back."""

    f: Array
    total: Array
    costs: Costs
    names: tuple[str, ...]

    def best(self, min_stages: int = 1) -> tuple[float, int, int] | None:
        """(cost, S, d) of the best plan with at least ``min_stages`` stages; among costs equal
        up to rounding, the one with the fewest stages. None if there is none."""
        sizes = np.array([bin(s).count("1") for s in range(self.total.shape[0])])
        total = np.where((sizes >= min_stages)[:, None], self.total, INF)
        value = float(total.min())
        if not np.isfinite(value):
            return None
        candidates = np.argwhere(total <= value + 1e-9 * abs(value)).tolist()
        s, d = min(candidates, key=lambda sd: (sizes[sd[0]], total[sd[0], sd[1]]))
        return float(self.total[s, d]), int(s), int(d)

    def _fold(self, subset: int, device: int) -> tuple[Array, Array]:
        """(value, predecessor) over j of the best way to start a stage on ``device`` at unit j
        after the devices ``subset`` (the ``g`` of the module docstring, for one device)."""
        num_d, width = self.f.shape[1], self.f.shape[2]
        if subset == 0:
            g = np.full(width, INF)
            g[0] = self.costs.first[device]
            return g, np.full(width, -1, dtype=np.int64)
        members = _members(subset, num_d)
        h = _op(self.costs)(self.f[subset, members], self.costs.hop[members, device])
        pick = h.argmin(axis=0)
        return h[pick, np.arange(width)], members[pick]

    def stages(self, subset: int, device: int) -> Stages:
        """The plan ending on ``device`` with device set ``subset``, as (device, start, end)."""
        out: list[Stage] = []
        end = self.f.shape[2] - 1
        while device >= 0:
            subset &= ~(1 << device)
            g, pred = self._fold(subset, device)
            start = int(_op(self.costs)(g, self.costs.stage[device, :, end]).argmin())
            out.append(Stage(self.names[device], start, end))
            device, end = int(pred[start]), start
        return tuple(reversed(out))


def solve(tables: Tables, costs: Costs) -> Solved:
    """Fill the DP of the module docstring for ``costs``."""
    num_d, n = tables.num_devices, tables.num_units
    op = _op(costs)
    full = 1 << num_d
    f = np.full((full, num_d, n + 1), INF)
    first = np.full((num_d, n + 1), INF)
    first[:, 0] = costs.first
    for s in range(full - 1):
        outs = _members((full - 1) ^ s, num_d)
        if s == 0:
            g = first
        else:
            members = _members(s, num_d)
            fs = f[s, members]
            if not np.isfinite(fs).any():
                continue
            g = op(fs[:, None, :], costs.hop[members]).min(axis=0)  # [d2, j]
        f[s | (1 << outs), outs] = op(g[outs][:, :, None], costs.stage[outs]).min(axis=1)
    total = op(f[:, :, n], costs.last[None, :])
    return Solved(f=f, total=total, costs=costs, names=tables.names)


def _capped(values: Array, cap: float, strict: bool) -> Array:
    ok = values < cap if strict else values <= cap
    return np.where(ok, values, INF)


def bottleneck_costs(tables: Tables) -> Costs:
    return Costs(
        stage=np.where(tables.fits, tables.compute, INF),
        hop=tables.hop,
        first=tables.period_upload,
        last=tables.ret,
        combine="max",
    )


def latency_costs(tables: Tables, cap: float = INF, strict: bool = False) -> Costs:
    """End-to-end latency; pieces slower than ``cap`` (the bottleneck bound) excluded."""
    ok = np.isfinite(_capped(np.where(tables.fits, tables.compute, INF), cap, strict))
    return Costs(
        stage=np.where(ok, tables.latency_compute, INF),
        hop=_capped(tables.hop, cap, strict),
        first=np.where(np.isfinite(_capped(tables.period_upload, cap, strict)), tables.upload, INF),
        last=_capped(tables.ret, cap, strict),
        combine="sum",
    )


def active_energy_costs(tables: Tables, cap: float = INF, strict: bool = False) -> Costs:
    """Energy above idle (W x ms = mJ per micro-batch); pieces slower than ``cap`` excluded."""
    compute = _capped(np.where(tables.fits, tables.compute, INF), cap, strict)
    stage = np.where(
        np.isfinite(compute),
        tables.active_extra_w[:, None, None] * np.where(np.isfinite(compute), compute, 0.0),
        INF,
    )

    def zero_if_ok(values: Array) -> Array:
        return np.where(np.isfinite(_capped(values, cap, strict)), 0.0, INF)

    return Costs(
        stage=stage,
        hop=zero_if_ok(tables.hop),
        first=zero_if_ok(tables.period_upload),
        last=zero_if_ok(tables.ret),
        combine="sum",
    )


def bottleneck_of(tables: Tables, stages: Stages) -> float:
    """The bottleneck of ``stages`` from the tables' own numbers (so a cap derived from it
    compares exactly with the DP's pieces; a sum in another order may differ in the last bit)."""
    index = [tables.names.index(name) for name, _, _ in stages]
    pieces = [float(tables.period_upload[index[0]]), float(tables.ret[index[-1]])]
    for k, (_, start, end) in enumerate(stages):
        pieces.append(float(tables.compute[index[k], start, end]))
        if k + 1 < len(stages):
            pieces.append(float(tables.hop[index[k], index[k + 1], end]))
    return max(pieces)
