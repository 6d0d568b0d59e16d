"""What a simulation reports: frozen data, a JSON form and a text table."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgesplit.config import PowerModel
from edgesplit.plan.energy import MODEL, DeviceEnergy, energy_summary
from edgesplit.plan.planner import Problem
from edgesplit.shared.plan import Stages, plan_text

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class DeviceStats:
    name: str
    utilisation: float
    """CPU used / (wall time x the device's cores: its CPU share under a quota, else 1), times
    the share of its cores a stage keeps busy (the power model's utilisation)."""
    busy_s: float
    """Wall time with a stage job on the device (queued work excluded)."""
    power_w: float
    energy_j: float


@dataclass(frozen=True)
class PlanChange:
    t_s: float
    epoch: int
    stages: Stages
    reason: str


@dataclass(frozen=True)
class Loss:
    device: str
    t_s: float
    """When the device died (or stopped answering)."""
    detected_s: float | None
    """When the coordinator took it for LOST (None: the run ended first)."""
    replayed: int
    recovery_s: float | None
    """From the loss to the first result under the plan without it (as a run reports it)."""


@dataclass(frozen=True)
class SimResult:
    batch_size: int
    micro_batches: int
    images: int
    window: int
    stages: Stages
    """The initial plan."""
    wall_s: float
    """First upload to last result."""
    throughput_ips: float
    steady_ips: float | None
    """(results - 1) x batch / (last - first result): the pipeline fill excluded (as the
    benchmarks measure a run)."""
    latency_ms: dict[str, float]
    devices: tuple[DeviceStats, ...]
    energy_j: float
    energy_j_per_image: float
    energy: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The ``energy`` entry of a run's ``summary.json``
    (:func:`~edgesplit.plan.energy.energy_summary`): every device of the cluster, used or
    not, over the simulated wall time."""
    plan_changes: tuple[PlanChange, ...] = ()
    losses: tuple[Loss, ...] = ()
    replayed: int = 0
    duplicates: int = 0
    timeline: tuple[tuple[float, float], ...] = ()
    """(second, images/s of the results arriving in that second)."""
    events: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def table(self) -> str:
        lines = [
            f"simulated {self.images} images ({self.micro_batches} micro-batches of "
            f"{self.batch_size}), window {self.window}, {len(self.stages)} stages",
            f"throughput {self.throughput_ips:.2f} img/s (steady {_fmt(self.steady_ips)}), "
            f"wall {self.wall_s:.2f} s",
            "latency ms: "
            + ", ".join(f"{k} {v:.1f}" for k, v in self.latency_ms.items() if k != "count"),
            f"energy {self.energy_j:.1f} J, {self.energy_j_per_image:.4f} J/image",
            f"{'device':<16} {'util':>6} {'busy s':>8} {'W':>6} {'J':>8}",
        ]
        for d in self.devices:
            lines.append(
                f"{d.name:<16} {d.utilisation:>6.1%} {d.busy_s:>8.2f} {d.power_w:>6.2f} "
                f"{d.energy_j:>8.1f}"
            )
        for c in self.plan_changes:
            lines.append(f"t={c.t_s:.2f} s epoch {c.epoch}: {plan_text(c.stages)} ({c.reason})")
        for loss in self.losses:
            lines.append(
                f"lost {loss.device} at {loss.t_s:.2f} s, detected "
                f"{_fmt(loss.detected_s)} s, {loss.replayed} replayed, recovered in "
                f"{_fmt(loss.recovery_s)} s"
            )
        if self.replayed or self.duplicates:
            lines.append(f"replayed {self.replayed}, duplicates dropped {self.duplicates}")
        if self.plan_changes or self.losses:
            lines.append("images/s by second: " + _timeline(self.timeline))
        return "\n".join(lines)


def _timeline(timeline: Sequence[tuple[float, float]], most: int = 60) -> str:
    """``t:ips`` per second; a long run is shown in ``most`` bins of several seconds."""
    if not timeline:
        return "-"
    step = max(1, math.ceil(len(timeline) / most))
    parts = []
    for i in range(0, len(timeline), step):
        chunk = timeline[i : i + step]
        parts.append(f"{chunk[0][0]:.0f}:{sum(v for _, v in chunk) / len(chunk):.0f}")
    return " ".join(parts)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation (numpy's default)."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_stats(latencies_ms: Sequence[float]) -> dict[str, float]:
    values = sorted(latencies_ms)
    out = {f"p{q}": percentile(values, q) for q in PERCENTILES}
    out["mean"] = math.fsum(values) / len(values) if values else math.nan
    out["max"] = values[-1] if values else math.nan
    out["count"] = float(len(values))
    return out


@dataclass(frozen=True)
class DeviceUsage:
    cpu_ms: float
    """CPU the device spent (its compute and, under a quota, its other threads)."""
    busy_ms: float
    """Wall time with a stage job on it."""


@dataclass(frozen=True)
class Records:
    """What a simulation collected: result arrivals (ms), latencies (ms) and device usage."""

    arrivals: Sequence[float]
    latencies: Sequence[float]
    usage: Mapping[str, DeviceUsage]


def summarise(
    problem: Problem,
    window: int,
    stages: Stages,
    records: Records,
    **extra: Any,
) -> SimResult:
    """The result of a simulation from what it collected (pure). Utilisation is the CPU used
    over the wall time and the device's cores (its CPU share under a quota, else 1), times the
    share of its cores a stage keeps busy; power and energy by the device's power model, for
    every device of the cluster over the whole wall time (from the first preparation to the
    last result), as a run's ``summary.json`` counts them."""
    batch = problem.batch_size
    arrivals = sorted(records.arrivals)
    end = arrivals[-1] if arrivals else 0.0
    wall_ms = max(end, 1e-9)
    images = len(arrivals) * batch
    steady = None
    if len(arrivals) >= 2 and arrivals[-1] > arrivals[0]:
        steady = (len(arrivals) - 1) * batch * 1000.0 / (arrivals[-1] - arrivals[0])
    devices, energies = [], []
    for d in problem.devices:
        usage = records.usage[d.name]
        cores = d.quota_ms / d.period_ms if d.quota_ms is not None else 1.0
        u = min(1.0, usage.cpu_ms / (wall_ms * cores)) * d.busy_fraction
        power = PowerModel(idle_w=d.idle_w, busy_w=d.busy_w).power_w(u)
        energy = power * wall_ms / 1000.0
        per_image = energy / max(images, 1)
        energies.append(DeviceEnergy(d.name, MODEL, u, power, energy, per_image, power, energy))
        devices.append(DeviceStats(d.name, u, usage.busy_ms / 1000.0, power, energy))
    total_j = math.fsum(e.energy_j for e in energies)
    bins: dict[int, int] = {}
    for t in arrivals:
        bins[int(t // 1000)] = bins.get(int(t // 1000), 0) + batch
    timeline = tuple((float(s), float(bins.get(s, 0))) for s in range(int(end // 1000) + 1))
    return SimResult(
        batch_size=batch,
        micro_batches=len(arrivals),
        images=images,
        window=window,
        stages=stages,
        wall_s=wall_ms / 1000.0,
        throughput_ips=images * 1000.0 / wall_ms,
        steady_ips=steady,
        latency_ms=latency_stats(records.latencies),
        devices=tuple(devices),
        energy_j=total_j,
        energy_j_per_image=total_j / max(images, 1),
        energy=energy_summary(energies, images, 0.0, wall_ms / 1000.0),
        timeline=timeline,
        **extra,
    )
