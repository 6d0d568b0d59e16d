"""Issue #19: every process's CPU per image and ``cpu_tax``, the run against its prediction for
every objective, and the cost model's measured per-call, coordinator, window and background
terms. Pure functions: no process, no socket."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from edgesplit.app.pilot import Overheads, _Feed, background_cpus, with_overheads
from edgesplit.metrics import cpu, versus
from edgesplit.metrics.summary import summarise
from edgesplit.metrics.table import footer
from edgesplit.plan.planner import DeviceCost, LinkCost, Problem, UnitCost, evaluate
from edgesplit.plan.profile import DeviceProfile, LinkProfile, Profile, UnitProfile, to_problem
from edgesplit.runtime.records import RunRecord
from edgesplit.shared.runsummary import Predicted
from tests.unit.test_runsummary import T0, a_record, facts


def sample(t: float, process: float, host: float = 50.0) -> dict[str, Any]:
    return {"t": t, "process_cpu_percent": process, "cpu_percent": host}


# --- CPU per image -----------------------------------------------------------------------------


def test_a_processs_cpu_is_integrated_over_the_run_window_only() -> None:
    # 50 % of a core over (0, 1], 100 % over (1, 2], 10 % over (2, 3]; the run is [0.5, 2.5].
    samples = [sample(0.0, 99.0), sample(1.0, 50.0), sample(2.0, 100.0), sample(3.0, 10.0)]
    cpu_s, covered_s = cpu.sampled_cpu_s(samples, 0.5, 2.5)
    assert covered_s == pytest.approx(2.0)
    assert cpu_s == pytest.approx(0.5 * 0.5 + 1.0 * 1.0 + 0.1 * 0.5)


def test_a_partly_covered_run_takes_the_covered_rate_and_a_device_without_samples_is_left_out() -> (
    None
):
    samples = {"pi1": [sample(0.0, 0.0), sample(1.0, 40.0)], "pi2": [sample(0.5, 80.0)]}
    got = cpu.devices_cpu_s(samples, ["pi1", "pi2", "pi3"], 0.0, 4.0)
    assert got == {"pi1": pytest.approx(0.4 * 4.0)}


def test_cpu_tax_is_every_process_per_image_over_the_one_process_reference() -> None:
    per_image, tax = cpu.cpu_tax(0.5, {"pi1": 1.0, "pi2": 0.5}, 100, 10.0)
    assert per_image == pytest.approx(20.0) and tax == pytest.approx(2.0)
    assert cpu.cpu_tax(0.5, {"pi1": 1.0}, 100, None) == (pytest.approx(15.0), None)
    assert cpu.cpu_tax(None, {"pi1": 1.0}, 100, 10.0) == (None, None)


def test_the_summary_carries_the_cpu_and_the_footer_prints_the_tax() -> None:
    # a_record: pi1 and pi2 at 25 % of a core over the 1 s run; the coordinator 0.3 s; 32 images
    s = summarise(
        facts(coordinator_cpu_s=0.3, reference_cpu_ms_per_image=4.0, reference_cpu="profile")
    )
    assert s.cpu is not None
    assert s.cpu.devices_s == {"pi1": pytest.approx(0.25), "pi2": pytest.approx(0.25)}
    assert s.cpu.cpu_ms_per_image == pytest.approx(800.0 / 32)
    assert s.cpu_tax == s.cpu.cpu_tax == pytest.approx(800.0 / 32 / 4.0)
    line = footer(s)
    assert line is not None and "cpu_tax 6.25" in line and "coordinator 9.38" in line
    assert summarise(facts()).cpu is None and footer(summarise(facts())) is None


# --- the run against its prediction -------------------------------------------------------------


def test_unloaded_latency_takes_the_micro_batches_alone_in_flight() -> None:
    alone = {i: (10.0 * i, 10.0 * i + 0.002 * (i + 1)) for i in range(4)}  # 2, 4, 6, 8 ms
    latency, how = versus.unloaded_latency_ms(alone)
    assert latency == pytest.approx(5.0) and "4 micro-batches alone" in how


def test_without_one_alone_unloaded_latency_is_the_p50_of_those_before_the_first_result() -> None:
    # a window of 3: 0, 1, 2 start together; 3 starts when 0's result is in
    spans = {0: (0.0, 0.010), 1: (0.0, 0.020), 2: (0.0, 0.030), 3: (0.010, 0.040)}
    latency, how = versus.unloaded_latency_ms(spans)
    assert latency == pytest.approx(20.0) and "first 3 micro-batches" in how
    assert versus.unloaded_latency_ms({}) == (None, "no micro-batch completed")


def predicted(objective: str) -> Predicted:
    return Predicted(
        objective=objective,
        throughput_ips=100.0,
        latency_ms=10.0,
        bottleneck_ms=80.0,
        energy_j_per_image=0.01,
        stages=[],
    )


def test_every_objective_is_compared_and_the_planned_one_is_printed_first() -> None:
    spans = {i: (float(i), i + 0.012) for i in range(3)}
    got = versus.versus_plan(predicted("latency"), 90.0, spans, 0.02)
    assert got.throughput_ips.error == pytest.approx(-0.1)
    assert got.latency_ms.measured == pytest.approx(12.0)
    assert got.latency_ms.error == pytest.approx(0.2)
    assert got.energy_j_per_image.error == pytest.approx(1.0)
    lines = versus.lines(got)
    assert lines[0].startswith("unloaded latency: measured 12.0 ms (+20% against the prediction)")
    assert lines[1].startswith("throughput: measured 90.0 img/s (-10% against the prediction)")
    assert lines[2].startswith("energy: measured 0.0200 J/image (+100%")
    unmeasured = versus.versus_plan(predicted("energy"), None, {}, None)
    assert versus.lines(unmeasured)[0] == (
        "energy: predicted 0.0100 J/image, not measured (all devices, the whole run)"
    )


def test_a_summary_with_a_prediction_compares_the_run_with_it() -> None:
    s = summarise(facts(predicted=predicted("throughput").model_dump()))
    assert s.versus_plan is not None and s.versus_plan.objective == "throughput"
    assert s.versus_plan.throughput_ips.measured == pytest.approx(32.0)
    # a_record: micro-batches 250 ms apart, each done in 100 ms: all alone in flight
    assert s.versus_plan.latency_ms.measured == pytest.approx(100.0)
    assert summarise(facts()).versus_plan is None


# --- the cost model's measured terms -------------------------------------------------------------


def two_stages(**overrides: Any) -> Problem:
    units = tuple(UnitCost(out_bytes=1000, weight_bytes=0, activation_bytes=0) for _ in range(2))
    fields: dict[str, Any] = {
        "units": units,
        "devices": (DeviceCost("a", (4.0, 4.0)), DeviceCost("b", (4.0, 4.0))),
        "batch_size": 10,
        "input_bytes": 1000,
        "default_link": LinkCost(latency_ms=0.5),
    }
    return Problem(**{**fields, **overrides})


STAGES = [("a", 0, 1), ("b", 1, 2)]


def test_the_coordinators_cost_per_micro_batch_adds_to_its_share_of_the_period() -> None:
    base = evaluate(two_stages(), STAGES).prediction
    assert base.bottleneck_ms == pytest.approx(4.0)
    slow = evaluate(two_stages(prepare_ms=1.0, coordinator_ms=3.0), STAGES).prediction
    assert slow.bottleneck_ms == pytest.approx(0.5 + 1.0 + 3.0)
    assert slow.coordinator_ms == 3.0 and slow.latency_ms == base.latency_ms


def test_per_call_cpu_counts_on_a_shared_host() -> None:
    calls = tuple(dataclasses.replace(d, call_cpu_ms=2.0) for d in two_stages().devices)
    shared = two_stages(host_cpus=1.0, coordinator_ms=1.0)
    without = evaluate(shared, STAGES).prediction
    assert without.host_ms == pytest.approx(1.0 + 4.0 + 4.0)
    withcalls = evaluate(dataclasses.replace(shared, devices=calls), STAGES).prediction
    assert withcalls.host_ms == pytest.approx(1.0 + 6.0 + 6.0)
    assert withcalls.bottleneck_ms > without.bottleneck_ms


def test_the_window_puts_a_floor_under_the_period() -> None:
    # unloaded latency: upload 0.5 + 4 + 0.5 + 4 + 0.5 = 9.5 ms
    one = evaluate(two_stages(window=1), STAGES).prediction
    assert one.latency_ms == pytest.approx(9.5) and one.window_ms == pytest.approx(9.5)
    assert one.bottleneck_ms == pytest.approx(9.5)
    assert evaluate(two_stages(window=4), STAGES).prediction.bottleneck_ms == 4.0
    unset = evaluate(two_stages(), STAGES).prediction
    assert unset.window_ms == 0.0 and unset.bottleneck_ms == 4.0


def test_other_work_on_the_host_slows_the_run() -> None:
    shared = two_stages(host_cpus=2.0, coordinator_ms=2.0)
    quiet = evaluate(shared, STAGES).prediction
    busy = evaluate(dataclasses.replace(shared, background_cpus=1.5), STAGES).prediction
    assert busy.bottleneck_ms > quiet.bottleneck_ms and busy.background_cpus == 1.5
    # the coordinator and two stages share the 2 cores with 1.5 more processes
    assert busy.host_ms == pytest.approx(quiet.host_ms * (3 + 1.5) / 3)


def test_the_pilots_background_is_the_hosts_busy_cores_less_the_runs() -> None:
    record: RunRecord = a_record()
    samples = {"pi1": [sample(T0 + 0.5, 0.0, host=80.0)], "pi2": [sample(T0 + 0.6, 0.0, host=60.0)]}
    # median of 80 % and 60 % of 2 cores = 1.4 busy, the run's own 0.9
    window = record.started, record.finished
    assert background_cpus(samples, 2.0, 0.9, *window) == pytest.approx(0.5)
    assert background_cpus(samples, None, 0.9, *window) == 0.0
    assert background_cpus(samples, 2.0, 3.0, *window) == 0.0


def a_profile(cpus: float | None = None) -> Profile:
    units = tuple(UnitProfile(i, f"u{i}", f"u{i}", 10, 10, 1000, 40, 2000) for i in range(2))
    devices = tuple(
        DeviceProfile(
            name=name, unit_ms=(2.0, 2.0), unit_spread_ms=(0.0, 0.0), unit_cpu_ms=(2.0, 2.0),
            threads=1, cpu_count=2, cpus=cpus, memory_budget_bytes=None, idle_w=2.7, busy_w=6.4,
        )
        for name in ("pi1", "pi2", "pi3")
    )  # fmt: skip
    return Profile("m", 32, 8, 10, 1000, units, devices, ())


def test_a_device_the_pilot_did_not_use_gets_the_typical_per_call_cost() -> None:
    measured = Overheads(1.5, {"pi1": 2.0, "pi2": 3.0}, 10, 1.0, background_cpus=0.25)
    got = with_overheads(a_profile(), measured)
    assert [d.call_cpu_ms for d in got.devices] == [2.0, 3.0, 2.5]
    assert (got.coordinator_ms, got.background_cpus) == (1.5, 0.25)
    assert Profile.from_dict(got.to_dict()) == got
    problem = to_problem(got)
    assert (problem.coordinator_ms, problem.background_cpus) == (1.5, 0.25)
    assert problem.device("pi3").call_cpu_ms == 2.5


def test_per_call_cpu_comes_out_of_an_emulated_devices_quota() -> None:
    quiet = a_profile(cpus=0.5)
    calls = with_overheads(quiet, Overheads(0.0, {"pi1": 1.0}, 10, 1.0))
    before = to_problem(quiet).device("pi1").stage_ms(0, 2)
    after = to_problem(calls).device("pi1").stage_ms(0, 2)
    assert after == pytest.approx(before + 1.0 / 0.5)
    # a device without a quota: its calls run beside its compute, the stage time stays
    free = with_overheads(a_profile(), Overheads(0.0, {"pi1": 1.0}, 10, 1.0))
    assert to_problem(free).device("pi1").stage_ms(0, 2) == to_problem(a_profile()).device(
        "pi1"
    ).stage_ms(0, 2)


def test_a_real_devices_hand_off_cpu_lengthens_its_links_and_an_emulated_ones_its_quota() -> None:
    # Links are fitted to the wire alone (streamed probes); the hand-offs' CPU is counted once.
    hop = dataclasses.replace(a_profile(), links=(LinkProfile("pi1", "pi2", 0.5, 100.0),))
    hop = dataclasses.replace(
        hop, devices=tuple(dataclasses.replace(d, hop_cpu_ms_per_mb=2.0) for d in hop.devices)
    )
    mb = 1_000_000
    wire = 0.5 + mb * 8 / 100e3
    # devices with hosts of their own: sender and receiver each 2 ms per MB on the link
    assert to_problem(hop).link("pi1", "pi2").transfer_ms(mb) == pytest.approx(wire + 4.0)
    assert to_problem(hop).device("pi1").stage_ms(0, 2) == to_problem(a_profile()).device(
        "pi1"
    ).stage_ms(0, 2)
    # emulated devices on one host: the link is the wire, the CPU comes out of the quotas
    shared = dataclasses.replace(hop, host_cpus=2.0)
    assert to_problem(shared).link("pi1", "pi2").transfer_ms(mb) == pytest.approx(wire)


def test_the_pilot_measures_from_a_full_window_to_its_last_micro_batch() -> None:
    """The pilot's steady part starts when the window is full (the first micro-batch handed
    over for a result) and ends with the last one: the filling and draining pipeline, with
    fewer in flight, costs more per micro-batch and is left out."""
    feed = _Feed(iter(()), window=2)
    # (coordinator clock, coordinator CPU) at each micro-batch handed over
    feed.marks = [(0.0, 0.0), (0.01, 0.1), (0.3, 0.2), (0.5, 0.25), (0.7, 0.3), (1.1, 0.4)]
    start, end, cpu_s, batches = feed.steady() or (0.0, 0.0, 0.0, 0)
    assert (start, end, batches) == (0.3, 1.1, 3) and cpu_s == pytest.approx(0.2)
    feed.marks = feed.marks[:4]  # 0.2 s of steady part: too short to sample
    assert feed.steady() is None
    assert _Feed(iter(()), window=6, marks=[(0.0, 0.0)] * 6).steady() is None
