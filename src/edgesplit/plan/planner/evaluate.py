"""The prediction of a given assignment of unit ranges to devices (the cost model's reference
implementation: plain sums, no vectorisation; the planner's search is checked against it)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from edgesplit.errors import PartitionError, PlanError
from edgesplit.plan.planner.types import MB, OBJECTIVES, Plan, Prediction, Problem, StagePlan
from edgesplit.shared.names import COORDINATOR
from edgesplit.shared.plan import Stage, validate_ranges


def check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise PlanError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")


def _check_assignment(problem: Problem, stages: Sequence[Stage]) -> None:
    try:
        validate_ranges([(a, b) for _, a, b in stages], problem.num_units)
    except PartitionError as e:
        raise PlanError(str(e)) from e
    names = [d for d, _, _ in stages]
    for name in names:
        problem.device(name)
        if names.count(name) > 1:
            raise PlanError(
                f"device {name!r} holds more than one stage; stages need distinct devices"
            )


def throughput_ips(batch_size: int, bottleneck_ms: float) -> float:
    return batch_size * 1000.0 / bottleneck_ms if bottleneck_ms > 0 else math.inf


def evaluate(
    problem: Problem,
    stages: Sequence[Stage],
    objective: str = "throughput",
    *,
    check_memory: bool = True,
    notes: Sequence[str] = (),
) -> Plan:
    """The plan running units ``[start, end)`` on ``device`` for every ``(device, start, end)``
    in ``stages``, with its prediction under the cost model of :mod:`edgesplit.plan.planner`.

    Raises :class:`PlanError` if the stages do not cover the units in order, repeat a device, or
    (with ``check_memory``) a stage does not fit its device's memory budget."""
    check_objective(objective)
    _check_assignment(problem, stages)
    units = problem.units
    computes, latencies, transfers, memories = [], [], [], []
    for k, (name, start, end) in enumerate(stages):
        device = problem.device(name)
        memory = problem.memory_bytes(start, end)
        if check_memory and not device.fits(memory):
            raise PlanError(
                f"stage {k} (units {start}-{end}) needs {memory / MB:.1f} MB but device "
                f"{name!r} has a budget of {device.memory_budget_bytes / MB:.1f} MB"  # type: ignore[operator]
            )
        next_hop = stages[k + 1][0] if k + 1 < len(stages) else COORDINATOR
        # A difference of running sums, the very arithmetic of the planner's tables, so a bound
        # the planner checks compares the same here (an fsum can differ in the last bit).
        computes.append(device.stage_ms(start, end))
        latencies.append(device.stage_latency_ms(start, end))
        transfers.append(problem.link(name, next_hop).transfer_ms(units[end - 1].out_bytes))
        memories.append(memory)
    upload_ms = problem.link(COORDINATOR, stages[0][0]).transfer_ms(problem.input_bytes)
    cores = problem.host_cpus  # None: the devices have hosts of their own
    cpu = _process_cpu_ms(problem, stages) if cores is not None else []
    host_ms = math.fsum(cpu) / _free_cores(problem, len(cpu)) if cores is not None else 0.0
    coordinator = problem.prepare_ms + problem.coordinator_ms
    own = max(upload_ms + coordinator, *computes, *transfers, host_ms)
    contended_ms = _contended_ms(problem, stages, cpu, computes, transfers, upload_ms, own)
    latency_ms = upload_ms + math.fsum(latencies) + math.fsum(transfers)
    window_ms = latency_ms / problem.window if problem.window else 0.0
    bottleneck = max(own, contended_ms, window_ms)
    used = {name for name, _, _ in stages}
    idle_mj = sum(d.idle_w * bottleneck for d in problem.devices if d.name not in used)
    plans = []
    for (name, start, end), compute, latency, transfer, memory in zip(
        stages, computes, latencies, transfers, memories, strict=True
    ):
        device = problem.device(name)
        energy_mj = device.idle_w * bottleneck + device.active_extra_w * compute
        plans.append(
            StagePlan(
                device=name,
                start=start,
                end=end,
                compute_ms=compute,
                transfer_ms=transfer,
                memory_bytes=memory,
                energy_mj=energy_mj,
                first_unit=units[start].name,
                last_unit=units[end - 1].name,
                latency_ms=latency,
            )
        )
    total_mj = idle_mj + sum(s.energy_mj for s in plans)
    prediction = Prediction(
        upload_ms=upload_ms,
        bottleneck_ms=bottleneck,
        throughput_ips=throughput_ips(problem.batch_size, bottleneck),
        latency_ms=latency_ms,
        energy_j_per_image=total_mj / 1000.0 / problem.batch_size,
        idle_devices_mj=idle_mj,
        prepare_ms=problem.prepare_ms,
        host_ms=host_ms,
        contended_ms=contended_ms,
        coordinator_ms=problem.coordinator_ms,
        window_ms=window_ms,
        background_cpus=problem.background_cpus,
    )
    return Plan(objective=objective, stages=tuple(plans), prediction=prediction, notes=tuple(notes))


def _process_cpu_ms(problem: Problem, stages: Sequence[Stage]) -> list[float]:
    """CPU ms per micro-batch of each process on a shared host: the coordinator (its
    preparation, its side of the upload, which costs what the first device's side does, and
    its fixed cost per micro-batch), then each stage's device (its full-speed compute, both of
    its hand-offs and its fixed cost per micro-batch)."""
    cuts = [problem.input_bytes, *(u.out_bytes for u in problem.units)]
    first = problem.device(stages[0][0])
    coordinator = problem.prepare_ms + problem.coordinator_ms
    out = [coordinator + first.hop_cpu_ms_per_mb / 1e6 * cuts[0]]
    for name, start, end in stages:
        d = problem.device(name)
        per_byte = d.hop_cpu_ms_per_mb / 1e6
        hops = per_byte * (cuts[start] + cuts[end])
        out.append(d.stage_cpu_ms(start, end) + hops + d.call_cpu_ms)
    return out


def _free_cores(problem: Problem, processes: int) -> float:
    """The shared host's cores the run's ``processes`` (the coordinator and one per stage) get
    when all of them are busy: fair sharing with the work that is not the run's, counted as
    ``background_cpus`` processes as greedy as the run's (what the pilot measured them to keep
    busy while the run took little), so ``cores * P / (P + background)``.

    Measured here under other engineers' load (AMD EPYC, 2 cores, load average 12-16; the
    default run, 3 devices at 0.5 CPU, 32 px): with 1.17-1.45 background cores the prediction
    was +3 %, -26 % and -22 % off; taking the background cores as lost to the run was
    +35..+142 % off (that work gives cores up to a busy run), ignoring it -25..-45 %."""
    assert problem.host_cpus is not None
    return problem.host_cpus * processes / (processes + problem.background_cpus)


def _core_share(cores: float, others: Sequence[float]) -> float:
    """The expected share of a core one process gets on a host of ``cores`` when each other
    process is running, independently, with probability ``others[i]``: all of one while
    fewer than ``cores`` others run, ``cores / (1 + k)`` (fair sharing) while ``k`` do."""
    p = [1.0]  # p[k]: probability that k others run (a Poisson binomial, built one by one)
    for u in others:
        p = [a * (1 - u) + b * u for a, b in zip([*p, 0.0], [0.0, *p], strict=True)]
    return math.fsum(pk * min(1.0, cores / (1 + k)) for k, pk in enumerate(p))


def _contended_ms(
    problem: Problem,
    stages: Sequence[Stage],
    cpu: Sequence[float],
    computes: Sequence[float],
    transfers: Sequence[float],
    upload_ms: float,
    own_ms: float,
) -> float:
    """The period when the processes sharing a host slow each other down (0 without a shared
    host): a mean-field estimate of fair CPU sharing, from the same costs, no fitted constant.

    At period ``T`` each process (the coordinator, each stage's device) is running a fraction
    ``u = cpu / T`` of the time (``cpu`` from :func:`_process_cpu_ms`). Taking the others as
    independent, a process gets ``s`` of a core on average (:func:`_core_share`). Its
    CPU-bound piece of the period then stretches: the coordinator's preparation by ``1 / s``;
    a stage under a CPU quota of ``q`` cores by ``q / s`` when ``s < q`` (above its quota it
    waits anyway). The period is the fixed point ``T = max(own, stretched pieces at T)``,
    found by bisection (the stretched pieces shrink as ``T`` grows, so there is one). It is
    the bottleneck when it exceeds the devices' own bottleneck ``own_ms``; measured on 2
    cores, a pipeline of 1 + 0.5 + 0.25 CPU devices and its coordinator ran at 89 % of the
    host's capacity while
    the plain sum of CPU work over the cores predicted 100 %.

    Work on the host that is not the run's (``background_cpus`` cores busy on average) takes
    part as ``ceil(background)`` more processes, each running ``background / ceil`` of the
    time."""
    if problem.host_cpus is None:
        return 0.0
    cores = problem.host_cpus
    n = math.ceil(problem.background_cpus)
    background = [min(1.0, problem.background_cpus / n)] * n if n else []
    quotas = []
    for name, _, _ in stages:
        d = problem.device(name)
        quotas.append(None if d.quota_ms is None else d.quota_ms / d.period_ms)

    def stretched(period: float) -> float:
        u = [min(1.0, c / period) for c in cpu]
        share = [_core_share(cores, u[:i] + u[i + 1 :] + background) for i in range(len(u))]
        coordinator = problem.prepare_ms + problem.coordinator_ms
        pieces = [coordinator / max(share[0], 1e-9) + upload_ms, *transfers]
        for compute, q, s in zip(computes, quotas, share[1:], strict=True):
            factor = 1.0 / max(s, 1e-9) if q is None else max(1.0, q / max(s, 1e-9))
            pieces.append(compute * factor)
        return max(own_ms, *pieces)

    lo, hi = own_ms, stretched(own_ms)
    if not (math.isfinite(hi) and hi > lo > 0):
        return hi if math.isfinite(hi) else own_ms
    for _ in range(60):
        mid = (lo + hi) / 2
        if stretched(mid) > mid:
            lo = mid
        else:
            hi = mid
    return hi


def objective_value(plan: Plan) -> float:
    """The number the plan's objective minimises (bottleneck ms, latency ms, J per image)."""
    p = plan.prediction
    return {
        "throughput": p.bottleneck_ms,
        "latency": p.latency_ms,
        "energy": p.energy_j_per_image,
    }[plan.objective]
