"""The adaptive controller's pure core: observe (speed factors, link estimates) and decide
(hysteresis: threshold, hold time, minimum interval)."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from edgesplit.adapt import (
    AdaptPolicy,
    AdaptState,
    Decision,
    DeviceEstimate,
    Hold,
    ResultArrived,
    SensorsSeen,
    StageSeen,
    decide,
    live_problem,
    observe,
    start,
)
from edgesplit.adapt import state as state_mod
from edgesplit.adapt.controller import Controller
from edgesplit.errors import PlanError
from edgesplit.plan import planner
from edgesplit.plan.autoplan import PlanRequest
from edgesplit.plan.profile import DeviceProfile, LinkProfile, Profile, UnitProfile
from edgesplit.runtime.coordinator import Stage
from edgesplit.runtime.live import Reading, ResultSeen, StatusSeen
from edgesplit.runtime.records import HopRecord
from edgesplit.shared.names import COORDINATOR

UNITS = 8
UNIT_MS = 10.0
OUT_BYTES = 100_000
NAMES = ("pi1", "pi2", "pi3")
REQUEST = PlanRequest("throughput")


def profile(links: tuple[LinkProfile, ...] = ()) -> Profile:
    units = tuple(
        UnitProfile(i, f"u{i}", f"u{i}", 10, 10, OUT_BYTES, 40, 2 * OUT_BYTES) for i in range(UNITS)
    )
    devices = tuple(
        DeviceProfile(
            name=n,
            unit_ms=(UNIT_MS,) * UNITS,
            unit_spread_ms=(0.0,) * UNITS,
            threads=1,
            cpu_count=4,
            cpus=0.5,
            memory_budget_bytes=None,
            idle_w=2.7,
            busy_w=6.4,
        )
        for n in NAMES
    )
    return Profile(
        model="m",
        input_size=32,
        batch_size=8,
        num_classes=10,
        input_bytes=OUT_BYTES,
        units=units,
        devices=devices,
        links=links,
        default_bandwidth_mbps=None,
        default_latency_ms=0.2,
    )


PROFILE = profile()
BALANCED = (("pi1", 0, 3), ("pi2", 3, 6), ("pi3", 6, 8))


def seen(
    device: str, compute_ms: float, *, epoch: int = 1, t: float = 0.0, **kw: object
) -> StageSeen:
    start_, end = {"pi1": (0, 3), "pi2": (3, 6), "pi3": (6, 8)}[device]
    fields: dict[str, object] = dict(
        t=t, device=device, epoch=epoch, start=start_, end=end, batch_size=8,
        compute_ms=compute_ms, transfer_ms=0.3, bytes_out=OUT_BYTES, next_device=COORDINATOR,
    )  # fmt: skip
    fields.update(kw)
    return StageSeen(**fields)  # type: ignore[arg-type]


def factors(**f: float) -> AdaptState:
    """A state with settled speed factors (plenty of observations) for every device."""
    return AdaptState(
        devices=tuple(DeviceEstimate(n, ((0.0, f.get(n, 1.0)),), observations=100) for n in NAMES)
    )


# --- observe ---------------------------------------------------------------------------------


def test_speed_factor_skips_warm_up_and_converges_to_observed_ratio() -> None:
    state = start(PROFILE)
    state = observe(state, seen("pi2", 500.0), PROFILE)  # warm-up of epoch 1: ignored
    assert state.device("pi2").speed_factor == 1.0
    assert state.device("pi2").observations == 0
    for i in range(30):  # profiled 30 ms: 4x slower, every 0.5 s
        state = observe(state, seen("pi2", 120.0, t=i * 0.5), PROFILE)
    assert state.device("pi2").speed_factor == pytest.approx(4.0, rel=1e-2)
    assert state.device("pi1").speed_factor == 1.0  # nothing seen there
    # A new epoch's first result is its warm-up again.
    before = state.device("pi2")
    state = observe(state, seen("pi2", 1.0, epoch=2), PROFILE)
    assert state.device("pi2") == before


def test_speed_factor_scales_the_profile_by_batch_size() -> None:
    state = start(PROFILE)
    for i in range(30):  # a partial batch of 4 images in 15 ms = the profile's speed
        state = observe(state, seen("pi1", 15.0, batch_size=4, t=i * 0.5), PROFILE)
    assert state.device("pi1").speed_factor == pytest.approx(1.0)


def test_speed_factor_is_a_window_median_robust_to_outliers_and_quick_on_steps() -> None:
    state = start(PROFILE)
    for i in range(40):  # every 0.1 s: as profiled, with every fifth result a 10x outlier
        state = observe(state, seen("pi2", 300.0 if i % 5 == 0 else 30.0, t=i * 0.1), PROFILE)
    assert state.device("pi2").speed_factor == pytest.approx(1.0)
    for i in range(40, 56):  # a CPU hog from t = 4 s: 4x slower, seen within half the window
        state = observe(state, seen("pi2", 120.0, t=i * 0.1), PROFILE)
    assert state.device("pi2").speed_factor == pytest.approx(4.0)
    assert all(t > 5.5 - 3.0 for t, _ in state.device("pi2").samples)


def test_sensors_keep_the_newest_known_reading() -> None:
    state = observe(start(PROFILE), SensorsSeen(1.0, "pi1", 60.0, 0x4, 50.0), PROFILE)
    state = observe(state, SensorsSeen(2.0, "pi1", None, None, 70.0), PROFILE)
    d = state.device("pi1")
    assert (d.temperature_c, d.throttled, d.memory_percent) == (60.0, 0x4, 70.0)


def test_slow_link_replaces_the_profile_in_the_live_problem() -> None:
    state = start(PROFILE)
    # 100 kB in 16.2 ms with 0.2 ms latency: 50 Mbit/s.
    hops = [seen("pi1", 30.0, transfer_ms=16.2, next_device="pi2") for _ in range(20)]
    for hop in hops:
        state = observe(state, hop, PROFILE)
    problem, changed = live_problem(state, PROFILE)
    assert changed["pi1-pi2"]["bandwidth_mbps"] == pytest.approx(50.0, rel=1e-3)
    assert problem.link("pi2", "pi1").transfer_ms(OUT_BYTES) == pytest.approx(16.2, rel=1e-3)
    # A transfer as fast as the profile (RPC jitter) leaves the profile's link.
    fast = start(PROFILE)
    for _ in range(20):
        fast = observe(fast, seen("pi1", 30.0, transfer_ms=0.9, next_device="pi2"), PROFILE)
    problem, changed = live_problem(fast, PROFILE)
    assert changed == {}
    assert problem.link("pi1", "pi2").transfer_ms(OUT_BYTES) == pytest.approx(0.2)


def test_live_problem_multiplies_unit_times_by_speed_factor() -> None:
    problem, _ = live_problem(factors(pi2=3.0), PROFILE)
    assert problem.device("pi2").unit_ms == (30.0,) * UNITS
    assert problem.device("pi1").unit_ms == (10.0,) * UNITS


# --- decide ----------------------------------------------------------------------------------


def test_no_switch_while_the_current_plan_is_best() -> None:
    d = decide(factors(), PROFILE, BALANCED, REQUEST, AdaptPolicy(), now=0.0)
    assert not d.switch
    assert d.gain == 0.0
    assert "below the threshold" in d.reason


def test_no_judgement_before_enough_observations() -> None:
    d = decide(start(PROFILE), PROFILE, BALANCED, REQUEST, AdaptPolicy(), now=0.0)
    assert not d.switch
    assert d.reason.startswith("observing")


def test_steady_gain_switches_once_after_the_hold_time() -> None:
    policy = AdaptPolicy(hold_s=3.0, min_interval_s=10.0)
    state = factors(pi2=4.0)
    hold, current, switches = Hold(), BALANCED, []
    for tick in range(40):  # 20 s, a decision every 0.5 s
        now = tick * 0.5
        d = decide(state, PROFILE, current, REQUEST, policy, now, hold)
        hold = d.hold
        if d.switch:
            assert d.best is not None
            switches.append((now, d))
            current = d.best
    assert [t for t, _ in switches] == [3.0]
    d = switches[0][1]
    assert d.gain is not None and d.gain >= 0.15
    assert d.best_ips is not None and d.current_ips is not None
    assert d.best_ips > 1.15 * d.current_ips
    assert "pi2 x4.0" in d.reason
    # The new plan gives pi2 less than the old one did.
    assert sum(b - a for n, a, b in current if n == "pi2") < 3


def test_a_gain_shorter_than_the_hold_time_never_switches() -> None:
    policy = AdaptPolicy(hold_s=3.0)
    hold = Hold()
    for tick in range(60):  # 30 s: pi2 slow for 2.5 s, normal for 0.5 s, and again
        now = tick * 0.5
        state = factors(pi2=4.0) if tick % 6 != 5 else factors()
        d = decide(state, PROFILE, BALANCED, REQUEST, policy, now, hold)
        hold = d.hold
        assert not d.switch, d.reason


def test_alternating_noise_does_not_oscillate() -> None:
    """pi2 and pi3 take turns being slow every 4 s (longer than the hold time): the switches
    stay at least the minimum interval apart."""
    policy = AdaptPolicy(hold_s=3.0, min_interval_s=10.0)
    hold, current, switched_at = Hold(), BALANCED, []
    for tick in range(120):  # 60 s
        now = tick * 0.5
        state = factors(pi2=4.0) if (now // 4) % 2 == 0 else factors(pi3=4.0)
        d = decide(state, PROFILE, current, REQUEST, policy, now, hold)
        hold = d.hold
        if d.switch:
            assert d.best is not None
            switched_at.append(now)
            current = d.best
    gaps = [b - a for a, b in itertools.pairwise(switched_at)]
    assert all(gap >= policy.min_interval_s for gap in gaps), switched_at
    assert 1 <= len(switched_at) <= 60 / policy.min_interval_s


def test_minimum_interval_delays_a_second_switch() -> None:
    policy = AdaptPolicy(hold_s=1.0, min_interval_s=10.0)
    hold = Hold(last_switch=0.0, stages=BALANCED)
    state = factors(pi2=4.0)
    d = decide(state, PROFILE, BALANCED, REQUEST, policy, 2.0, hold)
    d = decide(state, PROFILE, BALANCED, REQUEST, policy, 5.0, d.hold)
    assert not d.switch
    assert "last switch was 5.0 s ago" in d.reason
    d = decide(state, PROFILE, BALANCED, REQUEST, policy, 10.0, d.hold)
    assert d.switch


def test_a_plan_changed_under_the_controller_resets_the_hold() -> None:
    policy = AdaptPolicy(hold_s=3.0)
    state = factors(pi2=4.0)
    d = decide(state, PROFILE, BALANCED, REQUEST, policy, 0.0)
    d = decide(state, PROFILE, BALANCED, REQUEST, policy, 2.5, d.hold)
    other = (("pi1", 0, 4), ("pi2", 4, 6), ("pi3", 6, 8))
    d = decide(state, PROFILE, other, REQUEST, policy, 3.5, d.hold)
    assert not d.switch
    assert "held 0.0 s" in d.reason


def test_current_plan_on_a_lost_device_waits_for_the_runner() -> None:
    d = decide(factors(), PROFILE, BALANCED, REQUEST, AdaptPolicy(), 0.0, usable=["pi1", "pi3"])
    assert not d.switch
    assert "pi2" in d.reason and "not usable" in d.reason


def test_decision_to_dict_is_plain_json() -> None:
    import json

    d = decide(factors(pi2=4.0), PROFILE, BALANCED, REQUEST, AdaptPolicy(hold_s=0), 0.0)
    assert d.switch
    data = json.loads(json.dumps(d.to_dict()))
    assert data["current"][1] == {"device": "pi2", "units": [3, 6]}
    assert data["speed_factors"]["pi2"] == 4.0


def test_bad_policy_is_a_clear_error() -> None:
    with pytest.raises(PlanError, match="window_s must be"):
        AdaptPolicy(window_s=0.0)
    with pytest.raises(PlanError, match="hold_s must be"):
        AdaptPolicy(hold_s=-1.0)


def test_links_to_the_coordinator_stay_as_profiled() -> None:
    state = start(PROFILE)
    for _ in range(10):  # the coordinator's own queueing, not the network
        state = observe(state, seen("pi3", 20.0, transfer_ms=50.0), PROFILE)
    assert state.links == ()
    assert state.device("pi3").observations == 9


# --- the loop, against an in-memory coordinator ------------------------------------------------


class FakeCoordinator:
    """The part of Coordinator the controller uses, in memory."""

    def __init__(self, stages: tuple[tuple[str, int, int], ...]) -> None:
        self.epochs = {1: stages}
        self.epoch = 1
        self.switches: list[tuple[list[tuple[str, int, int]], str]] = []

    def current(self) -> tuple[int, tuple[Stage, ...]]:
        return self.epoch, tuple(Stage(*s) for s in self.epochs[self.epoch])

    def installed_epochs(self) -> dict[int, tuple[Stage, ...]]:
        return {e: tuple(Stage(*s) for s in p) for e, p in self.epochs.items()}

    def usable_devices(self) -> list[str]:
        return list(NAMES)

    def switch_plan(self, stages: list[tuple[str, int, int]], reason: str = "switch") -> int:
        self.switches.append((stages, reason))
        self.epoch += 1
        self.epochs[self.epoch] = tuple(stages)
        return self.epoch


def result(t: float, epoch: int, compute_ms: dict[str, float]) -> ResultSeen:
    stages = {"pi1": 0, "pi2": 1, "pi3": 2}
    records = tuple(
        HopRecord(
            request_id=int(t * 10),
            epoch=epoch,
            stage=stages[d],
            device=d,
            batch_size=8,
            queue_ms=0.0,
            compute_ms=ms,
            serialize_ms=0.0,
            send_wait_ms=0.0,
            transfer_ms=0.3,
            bytes_out=OUT_BYTES,
            start=t - 0.1,
            end=t,
        )
        for d, ms in compute_ms.items()
    )
    return ResultSeen.from_records(t, t - 0.2, 8, records)


def test_controller_switches_once_on_a_lasting_slowdown_and_records_why(tmp_path: Path) -> None:
    fake = FakeCoordinator(BALANCED)
    clock = [0.0]
    controller = Controller(
        fake,  # type: ignore[arg-type]
        PROFILE,
        REQUEST,
        AdaptPolicy(hold_s=2.0, min_interval_s=10.0),
        clock=lambda: clock[0],
    )
    switch_plan = fake.switch_plan

    def slow_install(*args: Any, **kwargs: Any) -> Any:
        clock[0] += 1.0  # installing a plan takes time: it is in force 1 s after the decision
        return switch_plan(*args, **kwargs)

    fake.switch_plan = slow_install  # type: ignore[method-assign]
    for tick in range(40):  # 20 s; pi2 is 4x slower from t = 5 s
        now = tick * 0.5
        clock[0] = now
        slow = 4.0 if now >= 5.0 else 1.0
        controller.observe(result(now, 1, {"pi1": 30.0, "pi2": 30.0 * slow, "pi3": 20.0}))
        controller.observe(StatusSeen(now, "pi2", Reading(temperature_c=50.0), 0))
        controller.tick()
    [(stages, reason)] = fake.switches
    assert reason.startswith("adaptive: predicted +")
    assert "pi2 x4.0" in reason
    assert sum(b - a for d, a, b in stages if d == "pi2") < 3
    assert controller.switches == 1 and controller.decisions == 40
    assert controller.state.device("pi2").temperature_c == 50.0
    kinds = [r["reason"].split(" ")[0] for r in controller.records]
    assert kinds[0] == "observing:" and "predicted" in kinds
    assert controller.line() is not None and controller.line().startswith("adaptive: ")
    summary = controller.summary()
    assert summary["switches"] == 1 and summary["speed_factors"]["pi2"] == pytest.approx(4.0)
    path = controller.write_plans(tmp_path, started=0.0)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == len(controller.records)
    assert [line["switch"] for line in lines].count(True) == 1
    assert all("t" not in line and line["time_s"] >= 0 for line in lines)
    [switch] = [line for line in lines if line["switch"]]
    assert switch["installed_s"] == pytest.approx(switch["time_s"] + 1.0)
    # A switch installed after the run's last result is not in the run's record: not counted.
    until = switch["time_s"] + 0.5
    assert controller.summary(until=until)["switches"] == 0
    path = controller.write_plans(tmp_path, started=0.0, until=until)
    assert not any(json.loads(line)["switch"] for line in path.read_text().splitlines())
    # The runner's loss hook plans on the live view, on the usable devices only.
    replanned = controller.replan(["pi1", "pi3"])
    assert {d for d, _, _ in replanned} <= {"pi1", "pi3"}
    assert replanned[0][1] == 0 and replanned[-1][2] == UNITS


def _switch_times(delivering: bool) -> list[float]:
    """pi2 and pi3 take turns being slow every 16 s for 2 minutes; results arrive 20 % slower
    at every turn whatever the plan, or, when switches deliver, at half the rate the current
    plan is predicted on the true state (measured below predicted, as on a busy host)."""
    policy = AdaptPolicy(hold_s=1.0, min_interval_s=10.0)
    hold, current, switched_at = Hold(), BALANCED, []
    results: list[tuple[float, float]] = []
    for tick in range(240):
        now = tick * 0.5
        slow = factors(pi2=4.0) if (now // 16) % 2 == 0 else factors(pi3=4.0)
        true = planner.evaluate(live_problem(slow, PROFILE)[0], current).prediction
        # Not delivering: 20 % slower at every turn whatever the plan (a drop every time).
        rate = true.throughput_ips / 2 if delivering else 80.0 * 0.8 ** (now // 16)
        results = [*results[-200:], *((now - 0.4 + i * 0.1, rate * 0.1) for i in range(5))]
        state = dataclasses.replace(slow, results=tuple(results))
        d = decide(state, PROFILE, current, REQUEST, policy, now, hold)
        hold = d.hold
        if d.switch:
            assert d.best is not None
            switched_at.append(now)
            current = d.best
    return switched_at


def test_switches_that_do_not_deliver_back_off() -> None:
    flat = _switch_times(delivering=False)
    gaps = [b - a for a, b in itertools.pairwise(flat)]
    assert len(gaps) >= 2
    assert gaps[1] >= 2 * 10.0 and gaps[-1] > gaps[0], flat
    delivering = _switch_times(delivering=True)
    assert len(delivering) > len(flat)
    # A delivering switch keeps the base interval for the next; only the streak rule (a
    # third switch within a minute) stretches it.
    gaps = [b - a for a, b in itertools.pairwise(delivering)]
    assert gaps[0] < 20.0 and gaps[-1] < 20.0, delivering


def test_a_third_switch_within_a_minute_waits_four_intervals() -> None:
    policy = AdaptPolicy(hold_s=0.0, min_interval_s=10.0)
    hold = Hold(last_switch=20.0, stages=BALANCED, switches=(5.0, 20.0))
    d = decide(factors(pi2=4.0), PROFILE, BALANCED, REQUEST, policy, 35.0, hold)
    assert not d.switch
    assert "(minimum 40 s after 2 switches in 60 s)" in d.reason
    d = decide(factors(pi2=4.0), PROFILE, BALANCED, REQUEST, policy, 60.0, d.hold)
    assert d.switch and d.hold.switches == (5.0, 20.0, 60.0)
    # Once the first of them is a minute old, one interval again.
    hold = Hold(last_switch=20.0, stages=BALANCED, switches=(5.0, 20.0))
    d = decide(factors(pi2=4.0), PROFILE, BALANCED, REQUEST, policy, 66.0, hold)
    assert d.switch


def test_measured_throughput_counts_results_in_the_interval() -> None:
    state = start(PROFILE)
    for i in range(10):
        state = observe(state, ResultArrived(100.0 + i, 8), PROFILE)
    assert state.measured_ips(104.0, 109.0) == pytest.approx(8.0)
    assert state.measured_ips(200.0, 205.0) is None


def test_a_switch_that_made_things_worse_is_corrected_at_the_base_interval() -> None:
    """After a switch the measured rate falls from 80 to 8 img/s: even with a backoff of 4 the
    next switch comes once the base interval has passed."""
    policy = AdaptPolicy(hold_s=0.0, min_interval_s=10.0)
    hold = Hold(last_switch=0.0, stages=BALANCED, before_ips=80.0, judged=False, backoff=4.0)
    slow = [(t * 0.1, 0.8) for t in range(50, 100)]  # 8 img/s over t = 5..10 s
    state = dataclasses.replace(factors(pi2=4.0), results=tuple(slow))
    d = decide(state, PROFILE, BALANCED, REQUEST, policy, 10.0, hold)
    assert d.verdict is not None and "made it worse" in d.verdict
    assert d.hold.backoff == 1.0
    assert d.switch


def test_a_switch_onto_an_unused_link_probes_it_first() -> None:
    # pi2 slows 4x. On the profile the best plan drops pi2 and hands pi1's output straight to
    # pi3, over a link no result has timed; the probe finds it slow, so the controller keeps
    # the pi1-pi2-pi3 order and gives pi2 less work instead.
    probed: list[tuple[str, str, int]] = []

    def probe(a: str, b: str, nbytes: int) -> float:
        probed.append((a, b, nbytes))
        return 500.0 if {a, b} == {"pi1", "pi3"} else 0.5

    fake = FakeCoordinator(BALANCED)
    clock = [0.0]
    controller = Controller(
        fake,  # type: ignore[arg-type]
        PROFILE,
        REQUEST,
        AdaptPolicy(hold_s=1.0, min_interval_s=5.0),
        clock=lambda: clock[0],
        probe=probe,
    )
    for tick in range(30):
        clock[0] = now = tick * 0.5
        slow = 4.0 if now >= 2.0 else 1.0
        controller.observe(result(now, fake.epoch, {"pi1": 30.0, "pi2": 30.0 * slow, "pi3": 20.0}))
        controller.tick()
    # The tensor the new plan would send there (a cut's 100 kB output).
    assert any({a, b} == {"pi1", "pi3"} and n == OUT_BYTES for a, b, n in probed), probed
    assert controller.summary()["link_probes"] == len(probed) >= 1
    assert fake.switches, controller.records
    for stages, _ in fake.switches:
        hops = {frozenset((x[0], y[0])) for x, y in itertools.pairwise(stages)}
        assert frozenset(("pi1", "pi3")) not in hops, stages
    assert controller.state.link("pi3", "pi1") is not None


def test_a_device_seen_faster_than_profiled_stays_at_its_profile() -> None:
    # An idle-waiting stage runs in bursts, faster than the sustained time it is planned at;
    # the planner must not take that as a faster device.
    state = start(PROFILE)
    for i in range(30):
        state = observe(state, seen("pi1", 15.0, t=i * 0.5), PROFILE)  # profiled 30 ms
    assert state.device("pi1").speed_factor == 1.0


# --- no flapping (issue #20) -----------------------------------------------------------------


def on_stage(device: str, start_: int, end: int, factor: float, t: float, epoch: int) -> StageSeen:
    """``device`` ran units ``[start_, end)`` ``factor`` times slower than profiled."""
    return StageSeen(
        t=t, device=device, epoch=epoch, start=start_, end=end, batch_size=8,
        compute_ms=UNIT_MS * (end - start_) * factor, transfer_ms=0.3, bytes_out=OUT_BYTES,
        next_device=COORDINATOR,
    )  # fmt: skip


def test_a_still_stressed_device_on_a_light_stage_keeps_its_slow_factor() -> None:
    state = start(PROFILE)
    for i in range(12):  # pi2 holds 3 units and is 4x slower (a CPU hog)
        state = observe(state, on_stage("pi2", 3, 6, 4.0, i * 0.5, epoch=1), PROFILE)
    assert state.device("pi2").speed_factor == pytest.approx(4.0)
    for i in range(40):  # given one unit, it bursts at full speed: no evidence it got faster
        state = observe(state, on_stage("pi2", 5, 6, 1.0, 6 + i * 0.5, epoch=2), PROFILE)
    assert state.device("pi2").speed_factor == pytest.approx(4.0)
    # On a comparable stage (2 units >= half of 3) the hog's end shows.
    for i in range(12):
        state = observe(state, on_stage("pi2", 4, 6, 1.0, 30 + i * 0.5, epoch=3), PROFILE)
    assert state.device("pi2").speed_factor == pytest.approx(1.0)
    assert state.device("pi2").slow is None


def test_a_heavier_slowdown_raises_the_slow_evidence() -> None:
    state = start(PROFILE)
    for i in range(12):
        state = observe(state, on_stage("pi2", 3, 6, 2.0, i * 0.5, epoch=1), PROFILE)
    for i in range(12):
        state = observe(state, on_stage("pi2", 3, 6, 5.0, 6 + i * 0.5, epoch=1), PROFILE)
    assert state.device("pi2").speed_factor == pytest.approx(5.0)
    assert state.device("pi2").slow == pytest.approx((5.0, 30.0))


def uneven_profile(units: int, unit_ms: dict[str, float]) -> Profile:
    """PROFILE with ``units`` units and per-device unit times."""
    devices = tuple(
        dataclasses.replace(d, unit_ms=(unit_ms[d.name],) * units, unit_spread_ms=(0.0,) * units)
        for d in PROFILE.devices
    )
    unit = PROFILE.units[0]
    return dataclasses.replace(
        PROFILE,
        units=tuple(dataclasses.replace(unit, index=i) for i in range(units)),
        devices=devices,
    )


def test_a_stressed_device_that_bursts_on_light_stages_does_not_flap() -> None:
    """The documented example's flapping, in the pure core: pi2 (the fast device, profiled
    twice as fast as the others) is 4x slower whenever it holds a heavy stage and looks as
    profiled on a light one (a CPU quota's bursts). Without the slow evidence the controller
    went back and forth every minimum interval; now it switches once."""
    prof = uneven_profile(12, {"pi1": 20.0, "pi2": 10.0, "pi3": 20.0})
    policy = AdaptPolicy(hold_s=3.0, min_interval_s=10.0)
    state, hold, epoch, switches = start(prof), Hold(), 1, []
    current: tuple[tuple[str, int, int], ...] = (("pi1", 0, 3), ("pi2", 3, 9), ("pi3", 9, 12))
    for tick in range(240):  # 120 s, results every 0.5 s, a decision every 0.5 s
        now = tick * 0.5
        for device, a, b in current:
            factor = 4.0 if device == "pi2" and b - a >= 3 else 1.0
            seen_ = StageSeen(
                t=now, device=device, epoch=epoch, start=a, end=b, batch_size=8,
                compute_ms=prof.device(device).unit_ms[0] * (b - a) * factor, transfer_ms=0.3,
                bytes_out=OUT_BYTES, next_device=COORDINATOR,
            )  # fmt: skip
            state = observe(state, seen_, prof)
        d = decide(state, prof, current, REQUEST, policy, now, hold)
        hold = d.hold
        if d.switch:
            assert d.best is not None
            switches.append((now, d.best))
            current, epoch = d.best, epoch + 1
    assert len(switches) == 1, switches
    assert 0 < sum(b - a for n, a, b in current if n == "pi2") < 3  # a light stage, kept
    assert state.device("pi2").speed_factor == pytest.approx(4.0)


def test_a_switch_back_to_the_plan_just_left_holds_longer_and_backs_off() -> None:
    policy = AdaptPolicy(hold_s=1.0, min_interval_s=2.0)
    state = factors(pi2=4.0)
    best = decide(state, PROFILE, BALANCED, REQUEST, policy, 0.0).best
    assert best is not None and best != BALANCED

    def first_switch(left: tuple[tuple[str, int, int], ...]) -> tuple[float, Decision]:
        hold = Hold(last_switch=0.0, stages=BALANCED, left=left)
        for tick in range(40):
            now = 5.0 + tick * 0.5
            d = decide(state, PROFILE, BALANCED, REQUEST, policy, now, hold)
            hold = d.hold
            if d.switch:
                return now, d
        raise AssertionError("no switch")

    now, d = first_switch(left=())
    assert now == 5.0 + policy.hold_s and d.hold.backoff == 1.0
    now, d = first_switch(left=best)  # the last switch left `best`: going back is a reversal
    assert now == 5.0 + 3 * policy.hold_s
    assert "back to the plan left last" in d.reason
    assert d.hold.backoff == 2.0
    assert d.hold.left == BALANCED


def test_the_first_plan_runs_the_minimum_interval_before_it_is_judged() -> None:
    policy = AdaptPolicy(hold_s=1.0, min_interval_s=10.0)
    state = factors(pi2=4.0)
    hold, switched = Hold(started=100.0), []
    for tick in range(40):
        now = 100.0 + tick * 0.5
        d = decide(state, PROFILE, BALANCED, REQUEST, policy, now, hold)
        hold = d.hold
        if now < 110.0:
            assert not d.switch and d.reason.startswith("settling"), d.reason
        if d.switch:
            switched.append(now)
            break
    assert switched == [110.0 + policy.hold_s]
    assert hold.started == 100.0


def _steady(state: AdaptState, ips: float, until: float) -> AdaptState:
    """``state`` with results arriving at ``ips`` for the 10 s up to ``until``."""
    return dataclasses.replace(
        state, results=tuple((until - 10.0 + i * 0.1, ips * 0.1) for i in range(1, 101))
    )


def test_a_switch_must_beat_what_the_current_plan_measures() -> None:
    """pi2 reads 1.5x slow: the current plan is predicted at 177.8 img/s and the best at
    266.7 (+50 %). Measured at 250 img/s under the current plan, the best beats it by 7 %
    only: no switch (issue #20: on a busy host noisy speed factors predicted gains that the
    measurements never showed). Measured at 150 img/s, down from the 250 it measured once it
    had run the minimum interval, the gain is counted from the prediction, the larger."""
    policy = AdaptPolicy(hold_s=0.0)
    hold = Hold(stages=BALANCED, current_since=0.0)
    d = decide(
        _steady(factors(pi2=1.5), 250.0, 20.0), PROFILE, BALANCED, REQUEST, policy, 20.0, hold
    )
    assert not d.switch
    assert d.measured_ips == pytest.approx(250.0)
    assert d.gain == pytest.approx(266.7 / 250.0 - 1, abs=1e-3)
    assert "below the threshold 15%" in d.reason
    d = decide(
        _steady(factors(pi2=1.5), 150.0, 20.0), PROFILE, BALANCED, REQUEST, policy, 20.0,
        dataclasses.replace(hold, reference_ips=250.0),
    )  # fmt: skip
    assert d.switch and d.gain == pytest.approx(0.5)
    assert "(177.8, 150.0 measured -> 266.7 img/s)" in d.reason
    # A plan that has not run MEASURE_S yet is judged on its prediction alone.
    young = Hold(stages=BALANCED, current_since=18.0)
    d = decide(
        _steady(factors(pi2=1.5), 250.0, 20.0), PROFILE, BALANCED, REQUEST, policy, 20.0, young
    )
    assert d.measured_ips is None and d.switch


def test_a_switch_that_fell_short_of_its_promise_raises_the_threshold() -> None:
    """A switch promised +200 % and measured +20 %: it did not deliver, so the backoff doubles
    and the next switch needs twice the threshold (a +25 % gain no longer switches), and
    twice the minimum interval."""
    policy = AdaptPolicy(hold_s=0.0, min_interval_s=10.0)
    hold = Hold(
        last_switch=0.0, stages=BALANCED, before_ips=100.0, judged=False, promised=2.0,
        current_since=0.0,
    )  # fmt: skip
    state = _steady(factors(pi2=1.25), 120.0, 10.0)
    d = decide(state, PROFILE, BALANCED, REQUEST, policy, 10.0, hold)
    assert d.verdict is not None and "did not deliver: 100.0 -> 120.0" in d.verdict
    assert d.hold.backoff == 2.0
    assert not d.switch
    assert "below the threshold 30% (raised after switches that did not deliver)" in d.reason
    # Had it measured +60 % (half its promise, at most +100 %), it delivered.
    state = _steady(factors(pi2=1.25), 160.0, 10.0)
    d = decide(state, PROFILE, BALANCED, REQUEST, policy, 10.0, hold)
    assert d.verdict is not None and "delivered" in d.verdict and d.hold.backoff == 1.0


def test_a_plan_that_still_measures_what_it_did_is_not_left() -> None:
    """The current plan measured 180 img/s once it had run the minimum interval. pi2 now
    reads 1.5x slow (+50 % predicted for another plan): while the plan still measures within
    the threshold of 180, that is noise in the speed factors (issue #20), no switch; measured
    down to 150 (-17 %), it switches."""
    policy = AdaptPolicy(hold_s=0.0)
    hold = Hold(stages=BALANCED, current_since=0.0)
    state = _steady(factors(), 180.0, 10.0)
    d = decide(state, PROFILE, BALANCED, REQUEST, policy, 10.0, hold)
    assert d.hold.reference_ips == pytest.approx(180.0)
    d = decide(
        _steady(factors(pi2=1.5), 170.0, 20.0), PROFILE, BALANCED, REQUEST, policy, 20.0, d.hold
    )
    assert not d.switch
    assert "still measures 170.0 of its 180.0 img/s" in d.reason
    d = decide(
        _steady(factors(pi2=1.5), 150.0, 25.0), PROFILE, BALANCED, REQUEST, policy, 25.0, d.hold
    )
    assert d.switch and d.hold.reference_ips is None


def test_a_plan_slowed_before_it_settled_has_no_reference_and_is_left() -> None:
    """pi2 slowed 4x before the first plan had run the minimum interval: the plan measures the
    same 60 img/s throughout, but it was never found as good as any, so it has no reference
    and the switch comes after the hold time."""
    policy = AdaptPolicy(hold_s=3.0, min_interval_s=10.0)
    hold, switched = Hold(started=0.0), []
    for tick in range(1, 40):
        now = tick * 0.5
        d = decide(
            _steady(factors(pi2=4.0), 60.0, now), PROFILE, BALANCED, REQUEST, policy, now, hold
        )
        hold = d.hold
        assert hold.reference_ips is None or d.switch
        if d.switch:
            switched.append(now)
            break
    assert switched == [13.0]


def test_a_device_slow_seconds_ago_is_not_handed_more_work() -> None:
    """pi1 reads 1.5x slow: moving work from it to pi2 predicts +50 %. Had pi2 read 4x slow
    in the last CAUTION_S (a hog it bursts through on its light stage, a busy host), the new
    plan is planned on that, and nothing beats the current plan."""
    state = factors(pi1=1.5)
    d = decide(state, PROFILE, BALANCED, REQUEST, AdaptPolicy(hold_s=0), 10.0)
    assert d.switch and d.gain == pytest.approx(0.5)
    devices = tuple(
        dataclasses.replace(e, peaks=((0.0, 4.0),)) if e.name == "pi2" else e for e in state.devices
    )
    d = decide(dataclasses.replace(state, devices=devices), PROFILE, BALANCED, REQUEST,
               AdaptPolicy(hold_s=0), 10.0)  # fmt: skip
    assert not d.switch and d.gain == pytest.approx(0.0)


def test_the_cautious_factor_remembers_the_slowest_second() -> None:
    state = start(PROFILE)
    for i in range(20):  # pi3: 4x slow for 5 s, then as profiled
        state = observe(state, seen("pi3", 80.0 if i < 10 else 20.0, t=i * 0.5), PROFILE)
    for i in range(20, 40):
        state = observe(state, seen("pi3", 20.0, t=i * 0.5), PROFILE)
    d = state.device("pi3")
    assert d.speed_factor == pytest.approx(1.0)
    assert d.cautious_factor == pytest.approx(4.0)
    state = observe(state, seen("pi3", 20.0, t=30.0), PROFILE)  # 25 s after the slow spell
    assert state.device("pi3").cautious_factor == pytest.approx(1.0)
    assert len(state.device("pi3").peaks) <= state_mod.CAUTION_S + 1


def test_an_unmistakable_gain_switches_without_a_drop() -> None:
    """pi2 slowed 4x (+200 % predicted) before the plan's reference was taken, while its
    readings did not show it yet: the plan measures its reference, but a gain of four times
    the threshold switches anyway."""
    policy = AdaptPolicy(hold_s=0.0)
    hold = Hold(stages=BALANCED, current_since=0.0, reference_ips=60.0)
    d = decide(
        _steady(factors(pi2=4.0), 60.0, 20.0), PROFILE, BALANCED, REQUEST, policy, 20.0, hold
    )
    assert d.switch and d.gain == pytest.approx(2.0)
