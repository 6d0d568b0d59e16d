"""The smallest cluster from a catalogue of devices that meets a throughput target (and a
latency bound), planned by the planner over kinds and checked by the simulator: "how many
Pis, of which kind, for 30 images/s under 200 ms?".

The target sets a cap on every piece of a plan (stage, hand-off, upload):
``batch * 1000 / target_ips``. :func:`~edgesplit.simulate.kinds.candidates_under` gives every
device mix (by kind) that has a plan under the cap, with the least predicted latency, and
those within the latency bound are simulated cheapest first (by device count, or by watts:
the devices' power with all cores busy) with the run's window (2 x stages), then with fewer
micro-batches in flight (stages + 1, stages, stages / 2, 1) when only the latency misses.
The first that the simulator confirms is the answer. When none does (the window, the
coordinator or a link the planner does not see as a bottleneck), the cap is tightened and the
search repeated.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from edgesplit.errors import PlanError
from edgesplit.plan.planner import evaluate
from edgesplit.shared.plan import Stages
from edgesplit.simulate.build import SimCluster
from edgesplit.simulate.engine import simulate
from edgesplit.simulate.kinds import Candidate, candidates_under
from edgesplit.simulate.spec import SimConfig

By = Literal["count", "watts"]
TIGHTEN = (1.0, 0.95, 0.9, 0.8, 0.7)
"""Caps tried, as fractions of the target's period."""
MAX_CHECKS = 40
"""Simulations at most over the whole search."""


@dataclass(frozen=True)
class TargetAnswer:
    target_ips: float
    max_latency_ms: float | None
    by: str
    counts: dict[str, int]
    """Devices per kind of the answer."""
    devices: int
    watts: float
    stages: Stages
    window: int
    predicted_ips: float
    predicted_latency_ms: float
    simulated_ips: float
    simulated_p50_ms: float
    simulated_p99_ms: float
    checked: int
    """Candidates simulated on the way."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        mix = ", ".join(f"{n} x {k}" for k, n in self.counts.items() if n)
        return (
            f"{self.devices} devices ({mix}; {self.watts:.1f} W busy) meet "
            f"{self.target_ips:g} img/s: simulated {self.simulated_ips:.1f} img/s, p50 "
            f"{self.simulated_p50_ms:.0f} ms, p99 {self.simulated_p99_ms:.0f} ms with window "
            f"{self.window} (planner: {self.predicted_ips:.1f} img/s, "
            f"{self.predicted_latency_ms:.0f} ms unloaded); {self.checked} candidates simulated"
        )


def _watts(cluster: SimCluster, counts: tuple[int, ...]) -> float:
    problem = cluster.problem
    return math.fsum(
        n * problem.device(m[0]).busy_w for n, m in zip(counts, cluster.kinds.members, strict=True)
    )


def smallest_cluster(
    catalogue: SimCluster,
    target_ips: float,
    max_latency_ms: float | None = None,
    by: By = "count",
    images: int = 2000,
    seed: int = 0,
) -> TargetAnswer:
    """The cheapest cluster drawn from ``catalogue`` (its devices are what is available) that
    the simulator confirms at ``target_ips`` with p50 latency at most ``max_latency_ms``.
    Raises :class:`PlanError` naming the best simulated candidate when none does."""
    if not (math.isfinite(target_ips) and target_ips > 0):
        raise PlanError(f"target_ips must be a number > 0, got {target_ips!r}")
    if max_latency_ms is not None and not (math.isfinite(max_latency_ms) and max_latency_ms > 0):
        raise PlanError(f"max_latency_ms must be a number > 0, got {max_latency_ms!r}")
    if by not in ("count", "watts"):
        raise PlanError(f"by must be count or watts, got {by!r}")
    problem = catalogue.problem
    period_ms = problem.batch_size * 1000.0 / target_ips
    total = len(problem.devices)
    checked = 0
    best_miss: tuple[float, str] | None = None
    seen: set[Stages] = set()
    for factor in TIGHTEN:
        found = candidates_under(
            problem, catalogue.kinds, period_ms * factor, max_latency_ms, total,
            fewest_only=by == "count",
        )  # fmt: skip

        def cost(c: Candidate) -> tuple[float, float]:
            price = sum(c.counts) if by == "count" else _watts(catalogue, c.counts)
            return price, c.latency_ms

        for candidate in sorted(found, key=cost):
            if candidate.stages in seen:
                continue
            seen.add(candidate.stages)
            if checked >= MAX_CHECKS:
                break
            k = len(candidate.stages)
            for window in dict.fromkeys((2 * k, k + 1, k, max(1, k // 2), 1)):
                checked += 1
                config = SimConfig(images=images, window=window, seed=seed)
                r = simulate(catalogue.spec, candidate.stages, config)
                ips = r.steady_ips or r.throughput_ips
                p50 = r.latency_ms["p50"]
                ok_ips = ips >= target_ips
                ok_latency = max_latency_ms is None or p50 <= max_latency_ms
                if ok_ips and ok_latency:
                    plan = evaluate(problem, candidate.stages, check_memory=False)
                    return TargetAnswer(
                        target_ips=target_ips,
                        max_latency_ms=max_latency_ms,
                        by=by,
                        counts=dict(zip(catalogue.kinds.names, candidate.counts, strict=True)),
                        devices=sum(candidate.counts),
                        watts=_watts(catalogue, candidate.counts),
                        stages=candidate.stages,
                        window=window,
                        predicted_ips=plan.prediction.throughput_ips,
                        predicted_latency_ms=plan.prediction.latency_ms,
                        simulated_ips=ips,
                        simulated_p50_ms=p50,
                        simulated_p99_ms=r.latency_ms["p99"],
                        checked=checked,
                    )
                miss = f"{sum(candidate.counts)} devices: {ips:.1f} img/s, p50 {p50:.0f} ms"
                if best_miss is None or ips > best_miss[0]:
                    best_miss = (ips, miss)
                if not ok_ips:
                    break  # fewer in flight will not raise the throughput
    bound = f" with p50 <= {max_latency_ms:g} ms" if max_latency_ms is not None else ""
    closest = f"; the closest simulated: {best_miss[1]}" if best_miss else (
        "; no device mix has a plan fast enough (a unit alone, a hand-off or the upload is "
        "slower than the target's period, or the latency bound is below the planner's)"
    )  # fmt: skip
    raise PlanError(
        f"no cluster of at most {total} devices from the catalogue reaches {target_ips:g} "
        f"img/s{bound}{closest}"
    )
