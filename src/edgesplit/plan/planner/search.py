"""choose_plan: the best plan for an objective (exact; see :mod:`edgesplit.plan.planner`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from edgesplit.errors import PlanError
from edgesplit.plan.planner import dp
from edgesplit.plan.planner.energy import least_energy_stages, piece_values
from edgesplit.plan.planner.evaluate import check_objective, evaluate, throughput_ips
from edgesplit.plan.planner.pareto import energy_with_latency_bound
from edgesplit.plan.planner.types import MB, Plan, Problem

TIE_REL = 1e-9


def _budgets(problem: Problem) -> str:
    def budget(b: int | None) -> str:
        return "unlimited" if b is None else f"{b / MB:.1f} MB"

    return ", ".join(f"{d.name}: {budget(d.memory_budget_bytes)}" for d in problem.devices)


def check_memory(problem: Problem, tables: dp.Tables) -> None:
    """Raise PlanError naming the first unit that fits on no device alone."""
    for i, unit in enumerate(problem.units):
        if not tables.fits[:, i, i + 1].any():
            need = problem.memory_bytes(i, i + 1)
            raise PlanError(
                f"unit {i} ({unit.name or 'unnamed'}) needs {need / MB:.1f} MB (weights "
                f"{unit.weight_bytes / MB:.1f} MB + activations {unit.activation_bytes / MB:.1f} "
                f"MB) and fits on no device; memory budgets: {_budgets(problem)}"
            )


def _no_assignment(problem: Problem) -> PlanError:
    return PlanError(
        f"every unit fits on some device, but no assignment of all {problem.num_units} units to "
        f"distinct devices fits the memory budgets ({_budgets(problem)})"
    )


def _min_bottleneck(problem: Problem, tables: dp.Tables) -> tuple[float, dp.Solved]:
    solved = dp.solve(tables, dp.bottleneck_costs(tables))
    best = solved.best()
    if best is None:
        raise _no_assignment(problem)
    return best[0], solved


def _plan_throughput(problem: Problem, tables: dp.Tables) -> Plan:
    bottleneck, _ = _min_bottleneck(problem, tables)
    # Among the plans with the least bottleneck, the one with the least latency.
    solved = dp.solve(tables, dp.latency_costs(tables, cap=bottleneck))
    best = solved.best()
    assert best is not None  # the bottleneck-optimal plan itself is under the cap
    return evaluate(problem, solved.stages(best[1], best[2]), "throughput")


def _plan_latency(problem: Problem, tables: dp.Tables) -> Plan:
    solved = dp.solve(tables, dp.latency_costs(tables))
    best = solved.best()
    if best is None:
        raise _no_assignment(problem)
    value, subset, device = best
    notes: list[str] = []
    if bin(subset).count("1") == 1 and len(problem.devices) > 1:
        split = solved.best(min_stages=2)
        if split is None:
            notes.append(
                f"kept on one device ({problem.devices[device].name}): no split over distinct "
                f"devices fits the memory budgets"
            )
        else:
            gain = split[0] - value
            share = f" ({100 * gain / split[0]:.1f} %)" if split[0] > 0 else ""
            than = f"{gain:.2f} ms{share} faster than" if gain > 0 else "as fast as"
            notes.append(
                f"kept on one device ({problem.devices[device].name}): {value:.2f} ms per "
                f"micro-batch, {than} the best split over these links ({split[0]:.2f} ms on "
                f"{bin(split[1]).count('1')} devices)"
            )
    return evaluate(problem, solved.stages(subset, device), "latency", notes=notes)


def pick(plans: Sequence[Plan]) -> Plan:
    """The plan of least energy; among energies equal up to rounding, the fewest stages, then
    the least latency."""
    least = min(p.prediction.energy_j_per_image for p in plans)
    near = [p for p in plans if p.prediction.energy_j_per_image <= least * (1 + TIE_REL)]
    return min(near, key=lambda p: (len(p.stages), p.prediction.latency_ms))


def _bounds_error(
    problem: Problem, tables: dp.Tables, max_latency_ms: float | None, min_tp: float | None
) -> PlanError:
    bottleneck, _ = _min_bottleneck(problem, tables)
    best_latency = dp.solve(tables, dp.latency_costs(tables)).best()
    assert best_latency is not None
    asked = []
    if max_latency_ms is not None:
        asked.append(f"latency <= {max_latency_ms:g} ms")
    if min_tp is not None:
        asked.append(f"throughput >= {min_tp:g} img/s")
    return PlanError(
        f"no plan meets {' and '.join(asked)}: the best achievable latency is "
        f"{best_latency[0]:.2f} ms and the best achievable throughput is "
        f"{throughput_ips(problem.batch_size, bottleneck):.2f} img/s (each on its own)"
    )


def _throughput_cap(problem: Problem, tables: dp.Tables, min_tp: float) -> float:
    """The largest bottleneck a plan may have for throughput >= ``min_tp``, taken among the
    pieces' costs with the very expression of the prediction, so rounding cannot disagree."""
    values = piece_values(tables, 0.0, math.inf)
    with np.errstate(divide="ignore", over="ignore"):
        ok = values[problem.batch_size * 1000.0 / values >= min_tp]
    return float(ok.max()) if ok.size else -math.inf


def _plan_energy(
    problem: Problem, tables: dp.Tables, max_latency_ms: float | None, min_tp: float | None
) -> Plan:
    floor_ms, _ = _min_bottleneck(problem, tables)
    cap = math.inf if min_tp is None else _throughput_cap(problem, tables, min_tp)
    if floor_ms > cap:
        raise _bounds_error(problem, tables, max_latency_ms, min_tp)
    if max_latency_ms is None:
        found = least_energy_stages(tables, floor_ms, cap)
        return pick([evaluate(problem, stages, "energy") for stages in found])
    stages = energy_with_latency_bound(tables, problem.batch_size, max_latency_ms, cap)
    if not stages:
        raise _bounds_error(problem, tables, max_latency_ms, min_tp)
    return pick([evaluate(problem, s, "energy") for s in stages])


def choose_plan(
    problem: Problem,
    objective: str,
    *,
    devices: Sequence[str] | None = None,
    max_latency_ms: float | None = None,
    min_throughput_ips: float | None = None,
) -> Plan:
    """The best plan for ``objective`` on ``problem`` (restricted to ``devices`` if given: the
    others are then not part of the cluster, not even as idle power).

    The bounds apply to the energy objective only. Raises :class:`PlanError` when a unit fits
    on no device, no assignment fits the memory budgets, or no plan meets the bounds."""
    check_objective(objective)
    for name, value in (
        ("max_latency_ms", max_latency_ms),
        ("min_throughput_ips", min_throughput_ips),
    ):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise PlanError(f"{name} must be a finite number > 0, got {value!r}")
    if objective != "energy" and (max_latency_ms is not None or min_throughput_ips is not None):
        raise PlanError(
            f"max_latency_ms and min_throughput_ips bound the energy objective; objective "
            f"{objective!r} takes neither"
        )
    if devices is not None:
        problem = problem.restrict(devices)
    tables = dp.build_tables(problem)
    check_memory(problem, tables)
    if objective == "throughput":
        return _plan_throughput(problem, tables)
    if objective == "latency":
        return _plan_latency(problem, tables)
    return _plan_energy(problem, tables, max_latency_ms, min_throughput_ips)
