"""The planner against an independent brute force over every partition and device order."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edgesplit.errors import PlanError
from edgesplit.plan.planner import (
    DeviceCost,
    LinkCost,
    Plan,
    Problem,
    UnitCost,
    choose_plan,
    evaluate,
    objective_value,
)
from edgesplit.shared.names import COORDINATOR
from edgesplit.shared.plan import plan_text

MB = 1_000_000


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def compositions(n: int, k: int) -> Iterator[tuple[tuple[int, int], ...]]:
    for cuts in itertools.combinations(range(1, n), k - 1):
        bounds = (0, *cuts, n)
        yield tuple(itertools.pairwise(bounds))


def all_plans(problem: Problem, objective: str) -> list[Plan]:
    """Every memory-feasible plan: each composition of the units into k contiguous ranges times
    each ordered choice of k distinct devices."""
    names = [d.name for d in problem.devices]
    plans = []
    for k in range(1, min(len(names), problem.num_units) + 1):
        for ranges in compositions(problem.num_units, k):
            for order in itertools.permutations(names, k):
                stages = [(d, a, b) for d, (a, b) in zip(order, ranges, strict=True)]
                fits = all(
                    problem.device(d).memory_budget_bytes is None
                    or problem.memory_bytes(a, b) <= problem.device(d).memory_budget_bytes  # type: ignore[operator]
                    for d, a, b in stages
                )
                if fits:
                    plans.append(evaluate(problem, stages, objective, check_memory=False))
    return plans


def link_strategy() -> st.SearchStrategy[LinkCost]:
    return st.builds(
        LinkCost,
        bandwidth_mbps=st.one_of(st.none(), st.floats(1.0, 1000.0)),
        latency_ms=st.floats(0.0, 5.0),
    )


@st.composite
def problems(draw: st.DrawFn, max_units: int = 10, max_devices: int = 4) -> Problem:
    n = draw(st.integers(1, max_units))
    num_d = draw(st.integers(1, max_devices))
    units = tuple(
        UnitCost(
            out_bytes=draw(st.integers(0, 2 * MB)),
            weight_bytes=draw(st.integers(0, 3 * MB)),
            activation_bytes=draw(st.integers(0, 2 * MB)),
            name=f"u{i}",
        )
        for i in range(n)
    )
    devices = []
    for i in range(num_d):
        idle = draw(st.floats(0.5, 5.0))
        devices.append(
            DeviceCost(
                name=f"d{i}",
                unit_ms=tuple(draw(st.floats(0.0, 50.0)) for _ in range(n)),
                memory_budget_bytes=draw(st.one_of(st.none(), st.integers(1 * MB, 12 * MB))),
                idle_w=idle,
                busy_w=draw(st.floats(idle, 12.0)),
                busy_fraction=draw(st.floats(0.0, 1.0)),
                boundary_ms=draw(
                    st.one_of(st.just(()), st.tuples(*(st.floats(0.0, 20.0) for _ in range(n + 1))))
                ),
                # An emulated device: bursts at full speed under a CPU quota.
                burst_unit_ms=draw(
                    st.one_of(st.just(()), st.tuples(*(st.floats(0.0, 50.0) for _ in range(n))))
                ),
                burst_boundary_ms=draw(
                    st.one_of(st.just(()), st.tuples(*(st.floats(0.0, 20.0) for _ in range(n + 1))))
                ),
                quota_ms=draw(st.one_of(st.none(), st.floats(1.0, 100.0))),
                # Stages timed as they run replace the model's time for their unit range.
                measured_stages=tuple(
                    draw(
                        st.lists(
                            st.tuples(
                                st.integers(0, n - 1),
                                st.integers(1, n),
                                st.floats(0.0, 80.0),
                                st.floats(0.0, 80.0),
                            ).filter(lambda t: t[0] < t[1]),
                            unique_by=lambda t: (t[0], t[1]),
                            max_size=4,
                        )
                    )
                ),
            )
        )
    ends = [COORDINATOR, *(d.name for d in devices)]
    pairs = list(itertools.combinations(ends, 2))
    chosen = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=len(pairs)))
    links = tuple((a, b, draw(link_strategy())) for a, b in chosen)
    return Problem(
        units=units,
        devices=tuple(devices),
        batch_size=draw(st.integers(1, 16)),
        input_bytes=draw(st.integers(0, 2 * MB)),
        default_link=draw(link_strategy()),
        links=links,
        prepare_ms=draw(st.one_of(st.just(0.0), st.floats(0.0, 60.0))),
    )


def assert_self_consistent(problem: Problem, plan: Plan) -> None:
    again = evaluate(problem, plan.assignment(), plan.objective)
    assert again.prediction == plan.prediction
    assert again.stages == plan.stages


FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(problems())
def test_each_objective_matches_brute_force(problem: Problem) -> None:
    brute = all_plans(problem, "throughput")
    event("memory feasible" if brute else "memory infeasible")
    if not brute:
        with pytest.raises(PlanError, match=r"fits on no device|no assignment"):
            choose_plan(problem, "throughput")
        return
    for objective in ("throughput", "latency", "energy"):
        plan = choose_plan(problem, objective)
        best = min(objective_value(evaluate(problem, p.assignment(), objective)) for p in brute)
        assert close(objective_value(plan), best), (objective, plan.table())
        assert_self_consistent(problem, plan)
        if objective == "latency" and len(problem.devices) > 1 and len(plan.stages) == 1:
            assert plan.notes[0].startswith("kept on one device")


@FAST
@given(problems(max_units=8), st.floats(0.7, 1.6), st.floats(0.4, 1.2), st.sampled_from("LTB"))
def test_energy_under_bounds_matches_brute_force(
    problem: Problem, latency_factor: float, throughput_factor: float, which: str
) -> None:
    brute = all_plans(problem, "energy")
    if not brute:
        event("no feasible plan")
        return
    # Bounds around the achievable range, so some are infeasible and some bind.
    best_latency = min(p.prediction.latency_ms for p in brute)
    best_tp = max(p.prediction.throughput_ips for p in brute)
    max_latency = best_latency * latency_factor + 1e-6 if which in "LB" else None
    min_tp = best_tp * throughput_factor if which in "TB" and math.isfinite(best_tp) else None
    ok = [
        p
        for p in brute
        if (max_latency is None or p.prediction.latency_ms <= max_latency)
        and (min_tp is None or p.prediction.throughput_ips >= min_tp)
    ]
    event(f"bounds {which}: {'feasible' if ok else 'infeasible'}")
    if not ok:
        with pytest.raises(PlanError, match="best achievable latency"):
            choose_plan(problem, "energy", max_latency_ms=max_latency, min_throughput_ips=min_tp)
        return
    plan = choose_plan(problem, "energy", max_latency_ms=max_latency, min_throughput_ips=min_tp)
    best = min(p.prediction.energy_j_per_image for p in ok)
    assert close(plan.prediction.energy_j_per_image, best), plan.table()
    assert max_latency is None or plan.prediction.latency_ms <= max_latency
    assert min_tp is None or plan.prediction.throughput_ips >= min_tp
    assert_self_consistent(problem, plan)


@settings(max_examples=40, deadline=None)
@given(problems(max_units=6), st.data())
def test_device_selection_leaves_the_others_out(problem: Problem, data: st.DataObject) -> None:
    names = [d.name for d in problem.devices]
    chosen = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True))
    sub = problem.restrict(chosen)
    brute = all_plans(sub, "energy")
    if not brute:
        return
    plan = choose_plan(problem, "energy", devices=chosen)
    assert {s.device for s in plan.stages} <= set(chosen)
    assert close(plan.prediction.energy_j_per_image, min(objective_value(p) for p in brute))


def simple_problem(**overrides: object) -> Problem:
    units = tuple(
        UnitCost(out_bytes=1000, weight_bytes=MB, activation_bytes=MB, name=f"u{i}")
        for i in range(4)
    )
    fields: dict[str, object] = {
        "units": units,
        "devices": (
            DeviceCost("a", (10.0, 10.0, 10.0, 10.0)),
            DeviceCost("b", (10.0, 10.0, 10.0, 10.0)),
        ),
        "batch_size": 4,
        "input_bytes": 2000,
        "default_link": LinkCost(bandwidth_mbps=8.0, latency_ms=1.0),
    }
    fields.update(overrides)
    return Problem(**fields)  # type: ignore[arg-type]


def test_evaluate_by_hand() -> None:
    problem = simple_problem(
        devices=(
            DeviceCost("a", (10.0, 10.0, 10.0, 10.0), idle_w=2.0, busy_w=6.0, busy_fraction=0.5),
            DeviceCost("b", (5.0, 5.0, 5.0, 5.0), idle_w=3.0, busy_w=5.0),
            DeviceCost("c", (1.0, 1.0, 1.0, 1.0), idle_w=1.0),
        )
    )
    plan = evaluate(problem, [("b", 0, 1), ("a", 1, 4)])
    # 8 Mbit/s = 1 byte per microsecond: 1000 bytes take 1 ms, plus 1 ms latency.
    p = plan.prediction
    assert p.upload_ms == pytest.approx(3.0)
    assert [s.compute_ms for s in plan.stages] == pytest.approx([5.0, 30.0])
    assert [s.transfer_ms for s in plan.stages] == pytest.approx([2.0, 2.0])
    assert p.bottleneck_ms == pytest.approx(30.0)
    assert p.throughput_ips == pytest.approx(4 * 1000 / 30.0)
    assert p.latency_ms == pytest.approx(3 + 5 + 2 + 30 + 2)
    assert [s.memory_bytes for s in plan.stages] == [2 * MB, 4 * MB]
    # b: 3 W idle over 30 ms + 2 W extra for 5 ms; a: 2 W x 30 + 4 W x 0.5 x 30; c idle 1 W x 30.
    assert [s.energy_mj for s in plan.stages] == pytest.approx([100.0, 120.0])
    assert p.idle_devices_mj == pytest.approx(30.0)
    assert p.energy_j_per_image == pytest.approx(250.0 / 1000 / 4)
    assert plan.partition() == "0-1,1-4"
    assert plan.stages[1].first_unit == "u1" and plan.stages[1].last_unit == "u3"


def test_boundary_costs_are_paid_at_each_stage_end() -> None:
    # Cut 2 costs 6 ms per stage end: two stages of 20 ms + 6 ms beat one of 40 ms only when
    # splitting saves more than the boundary adds.
    a = DeviceCost("a", (10.0,) * 4, boundary_ms=(1.0, 0.0, 6.0, 0.0, 2.0))
    plan = evaluate(simple_problem(devices=(a, DeviceCost("b", (10.0,) * 4))), [("a", 0, 4)])
    assert plan.stages[0].compute_ms == pytest.approx(1.0 + 40.0 + 2.0)
    split = evaluate(
        simple_problem(devices=(a, dataclasses.replace(a, name="b"))), [("a", 0, 2), ("b", 2, 4)]
    )
    assert [s.compute_ms for s in split.stages] == pytest.approx([1 + 20 + 6, 6 + 20 + 2])
    with pytest.raises(PlanError, match="expected one per cut"):
        simple_problem(devices=(DeviceCost("a", (1.0,) * 4, boundary_ms=(1.0,)),))


def test_the_coordinators_preparation_adds_to_the_period_not_to_latency() -> None:
    # Upload 3 ms (see test_evaluate_by_hand); preparing 40 ms more makes the coordinator the
    # bottleneck (43 ms > the 30 ms stage) but a micro-batch's latency starts at its upload.
    plan = evaluate(simple_problem(prepare_ms=40.0), [("b", 0, 1), ("a", 1, 4)])
    unprepared = evaluate(simple_problem(), [("b", 0, 1), ("a", 1, 4)])
    assert plan.prediction.bottleneck_ms == pytest.approx(43.0)
    assert plan.prediction.prepare_ms == 40.0
    assert plan.prediction.latency_ms == unprepared.prediction.latency_ms


def test_links_override_in_either_order() -> None:
    fast = LinkCost(bandwidth_mbps=None, latency_ms=0.5)
    problem = simple_problem(links=(("b", COORDINATOR, fast), (COORDINATOR, "a", fast)))
    assert problem.link(COORDINATOR, "b") == fast and problem.link("a", COORDINATOR) == fast
    assert problem.link("a", "b") == problem.default_link
    plan = evaluate(problem, [("a", 0, 2), ("b", 2, 4)])
    assert plan.prediction.upload_ms == 0.5
    assert [s.transfer_ms for s in plan.stages] == pytest.approx([2.0, 0.5])


def test_plan_round_trips_through_json_and_prints() -> None:
    plan = choose_plan(simple_problem(), "throughput")
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
    text = plan.table()
    assert "compute ms" in text and "u0" in text and plan_text(plan.assignment()) in text
    with pytest.raises(PlanError, match="unknown keys \\['extra'\\]"):
        Plan.from_dict({**plan.to_dict(), "extra": 1})


def test_throughput_splits_evenly_on_fast_links() -> None:
    problem = simple_problem(default_link=LinkCost())
    plan = choose_plan(problem, "throughput")
    assert plan.assignment() in ((("a", 0, 2), ("b", 2, 4)), (("b", 0, 2), ("a", 2, 4)))
    assert plan.prediction.bottleneck_ms == pytest.approx(20.0)


def test_slow_links_keep_the_latency_plan_on_one_device() -> None:
    slow = LinkCost(bandwidth_mbps=10.0, latency_ms=1.0)
    units = tuple(
        UnitCost(out_bytes=200_000, weight_bytes=MB, activation_bytes=MB) for _ in range(6)
    )
    problem = Problem(
        units=units,
        devices=tuple(DeviceCost(f"pi{i}", (4.0,) * 6) for i in range(4)),
        batch_size=8,
        input_bytes=24_576,
        default_link=slow,
    )
    plan = choose_plan(problem, "latency")
    assert len(plan.stages) == 1
    (note,) = plan.notes
    assert note.startswith(f"kept on one device ({plan.stages[0].device})")
    # The best split pays one more 200 kB hand-off: 1 ms + 160 ms over 10 Mbit/s.
    assert "161.00 ms" in note and "faster than the best split" in note
    # The throughput plan still splits: 4 stages of 6 ms beat one of 24 ms? No: 161 ms hops.
    assert len(choose_plan(problem, "throughput").stages) == 1


def test_fast_links_let_the_latency_plan_split() -> None:
    problem = simple_problem(
        devices=(DeviceCost("a", (1.0, 1.0, 50.0, 50.0)), DeviceCost("b", (50.0, 50.0, 1.0, 1.0))),
        default_link=LinkCost(latency_ms=0.1),
    )
    plan = choose_plan(problem, "latency")
    assert plan.assignment() == (("a", 0, 2), ("b", 2, 4)) and plan.notes == ()


def test_unit_that_fits_nowhere_is_named() -> None:
    units = (
        UnitCost(out_bytes=1, weight_bytes=MB, activation_bytes=0, name="features.0"),
        UnitCost(out_bytes=1, weight_bytes=9 * MB, activation_bytes=MB, name="features.1"),
    )
    devices = tuple(DeviceCost(n, (1.0, 1.0), memory_budget_bytes=5 * MB) for n in "ab")
    problem = Problem(units=units, devices=devices, batch_size=1, input_bytes=1)
    with pytest.raises(
        PlanError, match=r"unit 1 \(features.1\) needs 10.0 MB .* fits on no device"
    ):
        choose_plan(problem, "latency")


def test_no_full_assignment_fits() -> None:
    units = tuple(UnitCost(out_bytes=1, weight_bytes=4 * MB, activation_bytes=0) for _ in range(3))
    devices = tuple(DeviceCost(n, (1.0,) * 3, memory_budget_bytes=5 * MB) for n in "ab")
    problem = Problem(units=units, devices=devices, batch_size=1, input_bytes=1)
    with pytest.raises(PlanError, match=r"no assignment of all 3 units .*\(a: 5.0 MB, b: 5.0 MB\)"):
        choose_plan(problem, "throughput")


def test_impossible_bounds_say_what_is_achievable() -> None:
    with pytest.raises(PlanError, match=r"latency <= 1 ms.*best achievable latency is 45.00 ms"):
        choose_plan(simple_problem(), "energy", max_latency_ms=1.0)
    with pytest.raises(PlanError, match=r"throughput >= 1000 img/s.*throughput is 200.00 img/s"):
        choose_plan(simple_problem(default_link=LinkCost()), "energy", min_throughput_ips=1000.0)


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(PlanError, match="unknown objective 'fast'"):
        choose_plan(simple_problem(), "fast")
    with pytest.raises(PlanError, match="has 3 unit times, expected one per unit \\(4\\)"):
        simple_problem(devices=(DeviceCost("a", (1.0, 1.0, 1.0)),))
    with pytest.raises(PlanError, match="unknown device 'z'"):
        choose_plan(simple_problem(), "latency", devices=["z"])
    with pytest.raises(PlanError, match="bound the energy objective"):
        choose_plan(simple_problem(), "latency", max_latency_ms=5.0)
    with pytest.raises(PlanError, match="distinct devices"):
        evaluate(simple_problem(), [("a", 0, 2), ("a", 2, 4)])
    with pytest.raises(PlanError, match="stage 1 starts at unit 3"):
        evaluate(simple_problem(), [("a", 0, 2), ("b", 3, 4)])


def test_throughput_bound_met_exactly_is_feasible() -> None:
    # 1000 / (1000 / 15) is 14.999999999999998: the bound must compare as the prediction does.
    unit = UnitCost(out_bytes=0, weight_bytes=0, activation_bytes=0)
    problem = Problem(
        units=(unit,), devices=(DeviceCost("a", (15.0,)),), batch_size=1, input_bytes=0
    )
    best = evaluate(problem, [("a", 0, 1)]).prediction.throughput_ips
    plan = choose_plan(problem, "energy", min_throughput_ips=best)
    assert plan.prediction.throughput_ips == best


def test_energy_under_a_latency_bound_looks_past_an_expensive_cut() -> None:
    # Ending a stage at cut 1 costs 50 ms, so the one-unit stage (60 ms) breaks the bound while
    # the two-unit stage (20 ms) meets it: a longer stage can be the cheaper one.
    units = tuple(UnitCost(out_bytes=0, weight_bytes=0, activation_bytes=0) for _ in range(2))
    device = DeviceCost("a", (10.0, 10.0), boundary_ms=(0.0, 50.0, 0.0))
    problem = Problem(units=units, devices=(device,), batch_size=1, input_bytes=0)
    plan = choose_plan(problem, "energy", max_latency_ms=40.0)
    assert plan.assignment() == (("a", 0, 2),)
    assert plan.prediction.latency_ms == pytest.approx(20.0)


def test_an_idle_device_under_a_quota_bursts_at_full_speed() -> None:
    # Sustained 40 ms per unit (a quarter of a core); at full speed 10 ms per unit, with a
    # 25 ms quota per 100 ms period: one unit (10 ms) runs at full speed, two units (20 ms)
    # still fit the quota, four units (40 ms) run 25 ms, then 15 ms more at a quarter speed.
    device = DeviceCost("a", (40.0,) * 4, burst_unit_ms=(10.0,) * 4, quota_ms=25.0)
    assert device.stage_latency_ms(0, 1) == pytest.approx(10.0)
    assert device.stage_latency_ms(0, 2) == pytest.approx(20.0)
    assert device.stage_latency_ms(0, 4) == pytest.approx(25.0 + 15.0 * 4)
    plan = evaluate(simple_problem(devices=(device, DeviceCost("b", (40.0,) * 4))), [("a", 0, 4)])
    assert plan.stages[0].compute_ms == pytest.approx(160.0)  # what a busy pipeline sees
    assert plan.stages[0].latency_ms == pytest.approx(85.0)
    assert plan.prediction.bottleneck_ms == pytest.approx(160.0)
    assert plan.prediction.latency_ms == pytest.approx(3.0 + 85.0 + 2.0)


def test_devices_sharing_a_host_are_limited_by_its_cores() -> None:
    # Two stages of 30 ms each on devices of their own: 30 ms bottleneck. On one host of one
    # core, all the work (prepare 5 + compute 60 + five sides of hand-offs of 1 MB at 2 ms/MB)
    # is 75 ms.
    units = tuple(
        UnitCost(out_bytes=1_000_000, weight_bytes=0, activation_bytes=0) for _ in range(2)
    )
    devices = (
        DeviceCost("a", (30.0, 30.0), hop_cpu_ms_per_mb=2.0),
        DeviceCost("b", (30.0, 30.0), hop_cpu_ms_per_mb=2.0),
    )
    free = Problem(units=units, devices=devices, batch_size=1, input_bytes=1_000_000)
    stages = [("a", 0, 1), ("b", 1, 2)]
    assert evaluate(free, stages).prediction.bottleneck_ms == pytest.approx(30.0)
    shared = dataclasses.replace(free, prepare_ms=5.0, host_cpus=1.0)
    # upload received by a + sent by the coordinator, a -> b both sides, b's 1 MB result sent
    plan = evaluate(shared, stages)
    assert plan.prediction.host_ms == pytest.approx(5.0 + 60.0 + 2.0 * 5)
    assert plan.prediction.bottleneck_ms == pytest.approx(75.0)
    assert evaluate(dataclasses.replace(shared, host_cpus=4.0), stages).prediction.host_ms == (
        pytest.approx(75.0 / 4)
    )


def test_a_measured_stage_replaces_the_modelled_one() -> None:
    # Modelled: units 0-1 on "a" cost 2 x 30 ms, so a split over a and b wins (30 ms bottleneck)
    # against 60 ms on one device. Timed as one stage they take 25 ms sustained (20 ms at full
    # speed), so the one-stage plan wins, and its prediction is the measured time.
    units = tuple(UnitCost(out_bytes=0, weight_bytes=0, activation_bytes=0) for _ in range(2))
    modelled = DeviceCost("a", (30.0, 30.0), burst_unit_ms=(20.0, 20.0), quota_ms=50.0)
    b = DeviceCost("b", (30.0, 30.0))
    problem = Problem(units=units, devices=(modelled, b), batch_size=1, input_bytes=0)
    assert len(choose_plan(problem, "throughput").stages) == 2
    timed = dataclasses.replace(modelled, measured_stages=((0, 2, 25.0, 20.0),))
    problem = dataclasses.replace(problem, devices=(timed, b))
    plan = choose_plan(problem, "throughput")
    assert plan.assignment() == (("a", 0, 2),)
    assert plan.stages[0].compute_ms == 25.0
    assert plan.stages[0].latency_ms == 20.0  # within the quota: full speed
    assert timed.stage_cpu_ms(0, 2) == 20.0
    assert timed.stage_ms(0, 1) == 30.0  # other ranges keep the model
    over = dataclasses.replace(modelled, measured_stages=((0, 2, 25.0, 80.0),))
    assert over.stage_latency_ms(0, 2) == pytest.approx(50.0 + 30.0 * 100.0 / 50.0)


@pytest.mark.parametrize(
    ("stages", "match"),
    [
        (((1, 1, 1.0, 1.0),), r"measured stage \[1, 1\); expected 0 <= start < end <= 2"),
        (((0, 3, 1.0, 1.0),), r"measured stage \[0, 3\)"),
        (((0, 1, 1.0, 1.0), (0, 1, 2.0, 2.0)), "measured twice"),
        (((0, 1, -1.0, 1.0),), r"measured stage \[0, 1\) time must be a finite number >= 0"),
        (((0, 1, 1.0, math.nan),), "finite number"),
    ],
)
def test_bad_measured_stages_are_refused(
    stages: tuple[tuple[int, int, float, float], ...], match: str
) -> None:
    units = tuple(UnitCost(out_bytes=0, weight_bytes=0, activation_bytes=0) for _ in range(2))
    device = DeviceCost("a", (1.0, 1.0), measured_stages=stages)
    with pytest.raises(PlanError, match=match):
        Problem(units=units, devices=(device,), batch_size=1, input_bytes=0)


def test_a_process_gets_a_fair_share_of_the_busy_cores() -> None:
    from edgesplit.plan.planner.evaluate import _core_share

    assert _core_share(2.0, []) == 1.0
    assert _core_share(2.0, [1.0]) == 1.0  # one other process: a core each
    assert _core_share(2.0, [1.0, 1.0]) == pytest.approx(2 / 3)
    # Two others each running half the time: none (1/4), one (1/2) or both (1/4) run.
    assert _core_share(2.0, [0.5, 0.5]) == pytest.approx(0.25 + 0.5 + 0.25 * 2 / 3)
    assert _core_share(1.0, [0.5]) == pytest.approx(0.5 + 0.5 * 0.5)


def test_processes_sharing_a_host_stretch_the_period() -> None:
    # On a host of 2 cores: device a (a whole core, 60 ms of CPU per micro-batch), device b
    # (half a core, 10 ms of CPU: 20 ms sustained) and a coordinator preparing for 30 ms. The
    # devices' own bottleneck is a's 60 ms; all CPU over the cores is 50 ms. But a waits while
    # b and the coordinator both run, so the period is the fixed point of
    # T = 60 / (a's share of a core at T), with b running 10/T and the coordinator 30/T of
    # the time: a's share is 1 - (10/T)(30/T)(1 - 2/3).
    units = tuple(UnitCost(out_bytes=0, weight_bytes=0, activation_bytes=0) for _ in range(2))
    a = DeviceCost("a", (60.0, 60.0), quota_ms=100.0)
    b = DeviceCost("b", (20.0, 20.0), burst_unit_ms=(10.0, 10.0), quota_ms=50.0)
    problem = Problem(
        units=units, devices=(a, b), batch_size=1, input_bytes=0, prepare_ms=30.0,
        host_cpus=2.0,
    )  # fmt: skip
    stages = [("a", 0, 1), ("b", 1, 2)]
    p = evaluate(problem, stages).prediction
    assert p.host_ms == pytest.approx((30.0 + 60.0 + 10.0) / 2)
    t = p.contended_ms
    assert t == pytest.approx(60.0 / (1 - (10 / t) * (30 / t) / 3), rel=1e-6)
    assert p.bottleneck_ms == t > 60.0
    # With cores to spare nobody waits: the own bottleneck again.
    roomy = evaluate(dataclasses.replace(problem, host_cpus=16.0), stages).prediction
    assert roomy.contended_ms == pytest.approx(60.0) and roomy.bottleneck_ms == 60.0
    # Devices of their own (no shared host): no such term.
    alone = evaluate(dataclasses.replace(problem, host_cpus=None), stages).prediction
    assert alone.contended_ms == 0.0 and alone.bottleneck_ms == 60.0
