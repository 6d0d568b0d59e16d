"""The automatic partition of a run: profile the cluster (or reuse the cached profile), plan
for the objective, and explain the plan. The shell around the pure planner."""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from edgesplit.errors import ConfigError
from edgesplit.plan import planner
from edgesplit.plan.profile import (
    Profile,
    ProfileSettings,
    first_hop,
    measure_stages,
    profile_cluster,
    to_problem,
    untimed,
)
from edgesplit.shared.plan import Stage, plan_text

if TYPE_CHECKING:
    from edgesplit.model.graph import UnitGraph
    from edgesplit.runtime.coordinator import Coordinator

log = logging.getLogger(__name__)

MEASURE_ROUNDS = 4
"""How often ``profile_and_plan`` times the chosen plan's stages and plans again at most."""


@dataclass(frozen=True)
class PlanRequest:
    """What ``--partition auto`` optimises, and under which bounds."""

    objective: str = "throughput"
    max_latency_ms: float | None = None
    min_throughput_ips: float | None = None
    devices: tuple[str, ...] | None = None
    precision: str = "fp32"
    """Every stage runs at this precision; the plan uses the profile's unit times for it."""
    window: int | None = None
    """The run's micro-batches in flight when it sets them (None: no bound from the window)."""

    def __post_init__(self) -> None:
        from edgesplit.engines import PRECISIONS

        if self.objective not in planner.OBJECTIVES:
            raise ConfigError(
                f"objective must be one of {', '.join(planner.OBJECTIVES)}, got {self.objective!r}"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )


def plan(profile: Profile, request: PlanRequest) -> planner.Plan:
    """Plan ``profile`` for ``request`` (pure)."""
    return planner.choose_plan(
        to_problem(profile, precision=request.precision, window=request.window),
        request.objective,
        devices=list(request.devices) if request.devices else None,
        max_latency_ms=request.max_latency_ms,
        min_throughput_ips=request.min_throughput_ips,
    )


def profile_and_plan(
    coordinator: Coordinator,
    ug: UnitGraph,
    model: str,
    num_classes: int,
    request: PlanRequest,
    settings: ProfileSettings,
    say: Callable[[str], None],
    prepare_ms: float = 0.0,
) -> tuple[Profile, planner.Plan]:
    """Profile the coordinator's cluster (model loaded) and plan; ``prepare_ms`` is the
    coordinator's measured time to prepare a micro-batch (see :class:`Profile`).

    The planner's stage times come from a model (unit times plus a cost per stage end, fitted
    to the whole model), which is off by up to about 15 % for a given stage. So the stages of
    the chosen plan are then timed on their devices as the run will build them, and the plan
    is made again with those times, until the chosen plan's stages are all timed (at most
    :data:`MEASURE_ROUNDS` rounds; then the last plan is kept and its stages are timed). The
    prediction of the final plan rests on its own stages' timings, not on the model."""
    profile = profile_cluster(coordinator, ug, model, num_classes, settings, say)
    profile = replace(profile, prepare_ms=prepare_ms)
    chosen = plan(profile, request)
    for _ in range(MEASURE_ROUNDS):
        if not untimed(profile, chosen.assignment(), request.precision):
            break
        profile = measure_stages(
            coordinator, profile, chosen.assignment(), settings, request.precision, say,
            first_hop(ug),
        )  # fmt: skip
        chosen = plan(profile, request)
    if untimed(profile, chosen.assignment(), request.precision):
        # The plan still moves as its stages are timed (stage times within their noise of
        # each other): keep the last plan and time its stages too, so its prediction rests on
        # them, although another plan may be as good under all the timings.
        profile = measure_stages(
            coordinator, profile, chosen.assignment(), settings, request.precision, say,
            first_hop(ug),
        )  # fmt: skip
        problem = to_problem(profile, precision=request.precision, window=request.window)
        if request.devices:
            problem = problem.restrict(request.devices)
        note = (
            f"the plan changed in each of {MEASURE_ROUNDS} rounds of timing its stages; "
            "this is the last one, its stages timed too"
        )
        chosen = planner.evaluate(
            problem, chosen.assignment(), chosen.objective, notes=(*chosen.notes, note)
        )
    p = chosen.prediction
    say(
        f"plan ({request.objective}, {request.precision}): {plan_text(chosen.assignment())}; "
        f"predicted {p.throughput_ips:.1f} img/s, {p.latency_ms:.1f} ms per micro-batch"
    )
    return profile, chosen


def replanner(
    profile: Profile, request: PlanRequest, initial: list[Stage]
) -> Callable[[list[str]], list[Stage]]:
    """The plan when the usable devices change: the initial plan while all its devices are
    usable, else the planner's best plan on the usable devices (same objective, same profile)."""

    def replan(usable: list[str]) -> list[Stage]:
        if all(device in usable for device, _, _ in initial):
            return initial
        if not usable:
            return []
        chosen = plan(profile, replace(request, devices=tuple(usable)))
        return list(chosen.assignment())

    return replan


def prediction_dict(
    chosen: planner.Plan, profile: Profile | None = None, precision: str = "fp32"
) -> dict[str, object]:
    """``summary.json``'s ``predicted`` entry: the plan's prediction and per-stage costs, and
    the engine (from ``profile``) and precision each stage was planned with."""
    p = chosen.prediction

    def engine(device: str) -> str | None:
        return profile.device(device).engine if profile is not None else None

    return {
        "objective": chosen.objective,
        "precision": precision,
        "throughput_ips": p.throughput_ips,
        "latency_ms": p.latency_ms,
        "bottleneck_ms": p.bottleneck_ms,
        "upload_ms": p.upload_ms,
        "prepare_ms": p.prepare_ms,
        "host_ms": p.host_ms,
        "contended_ms": p.contended_ms,
        "coordinator_ms": p.coordinator_ms,
        "window_ms": p.window_ms,
        "background_cpus": p.background_cpus,
        "energy_j_per_image": p.energy_j_per_image,
        "stages": [
            {
                "device": s.device,
                "units": [s.start, s.end],
                "engine": engine(s.device),
                "precision": precision,
                "compute_ms": s.compute_ms,
                "latency_ms": s.latency_ms,
                "transfer_ms": s.transfer_ms,
                "memory_bytes": s.memory_bytes,
                "energy_mj": s.energy_mj,
            }
            for s in chosen.stages
        ],
        "notes": list(chosen.notes),
    }


def profile_and_evaluate(
    coordinator: Coordinator,
    ug: UnitGraph,
    model: str,
    num_classes: int,
    request: PlanRequest,
    settings: ProfileSettings,
    say: Callable[[str], None],
    stages: Sequence[Stage],
    prepare_ms: float = 0.0,
) -> tuple[Profile, planner.Plan]:
    """A given partition's prediction (issue #19): profile the cluster as ``--partition auto``
    does, time the given ``(device, start, end)`` stages as one stage each, and evaluate them
    with the planner's cost model for ``request.objective``. The memory budget is not
    enforced here (the run itself says when a stage does not fit)."""
    profile = profile_cluster(coordinator, ug, model, num_classes, settings, say)
    profile = replace(profile, prepare_ms=prepare_ms)
    profile = measure_stages(coordinator, profile, stages, settings, request.precision, say)
    chosen = planner.evaluate(
        to_problem(profile, precision=request.precision, window=request.window),
        stages,
        request.objective,
        check_memory=False,
    )
    p = chosen.prediction
    say(
        f"the given partition ({request.objective}, {request.precision}): "
        f"{plan_text(chosen.assignment())}; predicted {p.throughput_ips:.1f} img/s, "
        f"{p.latency_ms:.1f} ms per micro-batch"
    )
    return profile, chosen


def reference_cpu(
    profile: Profile, devices: Sequence[str], precision: str
) -> tuple[float | None, str | None]:
    """``(ms, source)``: CPU ms per image of one process running the whole model at
    ``precision`` on the profile's engine, the median over ``devices`` of the whole model's
    timing as one stage (:attr:`DeviceProfile.model_cpu_ms`); None where not profiled."""
    found = {}
    for name in devices:
        ms = profile.device(name).model_cpu_ms.get(precision)
        if ms:
            found[name] = ms / profile.batch_size
    if not found:
        return None, None
    engine = profile.device(next(iter(found))).engine
    where = ", ".join(sorted(found))
    return statistics.median(found.values()), (
        f"profile: the whole model as one stage, {engine} {precision}, batch "
        f"{profile.batch_size}, median over {where}"
    )
