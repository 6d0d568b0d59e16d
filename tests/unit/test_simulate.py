"""The simulator (issue #23): pure and seeded, no processes, no sockets."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random

import pytest
from click.testing import CliRunner

from edgesplit.adapt.policy import AdaptPolicy
from edgesplit.cli import main
from edgesplit.cluster.faults import parse_injection
from edgesplit.config import LinkSpec, PairLink
from edgesplit.errors import ConfigError, PlanError, RunError
from edgesplit.plan.planner import DeviceCost, LinkCost, Problem, UnitCost, choose_plan, evaluate
from edgesplit.plan.profile import DeviceProfile, LinkProfile, Profile, UnitProfile
from edgesplit.simulate import (
    Kinds,
    SimConfig,
    SimSpec,
    cluster_from,
    fixed_stages,
    plan_by_kinds,
    plan_for,
    replanner,
    simulate,
)
from edgesplit.simulate.synthetic import parse_devices
from edgesplit.simulate.target import smallest_cluster

FREE = LinkCost(None, 0.0)


def problem(
    unit_ms: list[list[float]],
    out_bytes: int = 0,
    link: LinkCost = FREE,
    input_bytes: int = 0,
    batch_size: int = 4,
    **extra: object,
) -> Problem:
    n = len(unit_ms[0])
    return Problem(
        units=tuple(UnitCost(out_bytes, 0, 0, f"u{i}") for i in range(n)),
        devices=tuple(DeviceCost(f"d{i}", tuple(ms)) for i, ms in enumerate(unit_ms)),
        batch_size=batch_size,
        input_bytes=input_bytes,
        default_link=link,
        **extra,  # type: ignore[arg-type]
    )


# --- the event engine -------------------------------------------------------------------------


def test_single_stage_with_fixed_times_gives_the_analytic_throughput() -> None:
    p = problem([[10.0, 15.0], [1.0, 1.0]])
    r = simulate(SimSpec(p), (("d0", 0, 2),), SimConfig(images=400, window=4))
    assert r.micro_batches == 100
    assert r.steady_ips == pytest.approx(4 * 1000.0 / 25.0, rel=1e-9)
    busy, idle = r.devices
    assert busy.utilisation == pytest.approx(1.0, rel=1e-3) and idle.utilisation == 0.0
    # the power model of a run: idle power plus the busy share of the rest, every device
    assert busy.power_w == pytest.approx(6.4, rel=1e-3) and idle.power_w == pytest.approx(2.7)
    assert r.energy_j == pytest.approx((6.4 + 2.7) * r.wall_s, rel=1e-3)
    assert r.energy["energy_j_per_image"] == pytest.approx(r.energy_j_per_image)
    assert set(r.energy["devices"]) == {"d0", "d1"}


def test_window_one_latency_is_the_sum_of_stage_and_transfer_times() -> None:
    link = LinkCost(bandwidth_mbps=80.0, latency_ms=1.0)  # 10 kB per ms
    p = problem([[10.0, 5.0], [7.0, 20.0]], out_bytes=20_000, link=link, input_bytes=50_000)
    stages = (("d0", 0, 1), ("d1", 1, 2))
    r = simulate(SimSpec(p), stages, SimConfig(images=40, window=1))
    upload, hop, ret = 1.0 + 5.0, 1.0 + 2.0, 1.0 + 2.0
    expected = upload + 10.0 + hop + 20.0 + ret
    assert r.latency_ms["p50"] == pytest.approx(expected, rel=1e-9)
    assert r.latency_ms["max"] == pytest.approx(expected, rel=1e-9)
    assert r.latency_ms["p50"] == pytest.approx(evaluate(p, stages).prediction.latency_ms)
    # one micro-batch at a time: each takes the whole path, one after the other
    assert r.steady_ips == pytest.approx(4 * 1000.0 / expected, rel=1e-9)


def test_a_deep_window_reaches_the_bottleneck_and_little_s_law_holds() -> None:
    p = problem([[10.0, 5.0], [7.0, 20.0]], out_bytes=20_000, link=LinkCost(80.0, 1.0))
    stages = (("d0", 0, 1), ("d1", 1, 2))
    r = simulate(SimSpec(p), stages, SimConfig(images=2000, window=6))
    assert r.steady_ips == pytest.approx(4 * 1000.0 / 20.0, rel=1e-6)
    # 6 in flight at 50 micro-batches/s: each spends about 6 periods in the pipeline
    assert r.latency_ms["p50"] == pytest.approx(6 * 20.0, rel=0.02)


def test_the_coordinator_preparation_can_be_the_bottleneck() -> None:
    p = problem([[10.0]], prepare_ms=30.0, link=LinkCost(80.0, 0.0), input_bytes=20_000)
    r = simulate(SimSpec(p), (("d0", 0, 1),), SimConfig(images=400, window=4))
    assert r.steady_ips == pytest.approx(4 * 1000.0 / 32.0, rel=1e-6)


def test_per_call_cpu_spends_the_quota_and_the_coordinators_cost_adds_to_its_preparation() -> None:
    """What the run's pilot measures besides compute and hand-offs costs CPU in the
    simulation too: a worker's ``call_cpu_ms`` out of its quota, the coordinator's
    ``coordinator_ms`` beside its preparation."""
    quota = DeviceCost("q", (40.0,), burst_unit_ms=(10.0,), quota_ms=25.0, call_cpu_ms=5.0)
    p = dataclasses.replace(problem([[40.0]]), devices=(quota,))
    r = simulate(SimSpec(p), (("q", 0, 1),), SimConfig(images=800, window=4))
    assert r.steady_ips == pytest.approx(4 * 1000.0 / 60.0, rel=0.02)  # 15 ms of CPU at 1/4
    p = problem([[10.0]], prepare_ms=20.0, coordinator_ms=10.0)
    r = simulate(SimSpec(p), (("d0", 0, 1),), SimConfig(images=400, window=4))
    assert r.steady_ips == pytest.approx(4 * 1000.0 / 30.0, rel=1e-6)


def test_a_cpu_quota_sustains_its_share_and_a_shared_host_divides_its_cores() -> None:
    quota = DeviceCost("q", (40.0,), burst_unit_ms=(10.0,), quota_ms=25.0)
    p = dataclasses.replace(problem([[40.0]]), devices=(quota,))
    r = simulate(SimSpec(p), (("q", 0, 1),), SimConfig(images=800, window=4))
    assert r.steady_ips == pytest.approx(4 * 1000.0 / 40.0, rel=0.02)  # period granularity
    # two stages of 10 ms of CPU each on a host of one core: they take turns
    shared = problem([[10.0, 0.0], [0.0, 10.0]], host_cpus=1.0)
    stages = (("d0", 0, 1), ("d1", 1, 2))
    r = simulate(SimSpec(shared), stages, SimConfig(images=800, window=4))
    assert r.steady_ips == pytest.approx(4 * 1000.0 / 20.0, rel=0.01)
    alone = simulate(SimSpec(dataclasses.replace(shared, host_cpus=None)), stages,
                     SimConfig(images=800, window=4))  # fmt: skip
    assert alone.steady_ips == pytest.approx(4 * 1000.0 / 10.0, rel=0.01)


def test_a_shared_medium_carries_one_transfer_at_a_time() -> None:
    link = LinkCost(80.0, 0.0)  # 20 kB: 2 ms
    p = problem([[1.0, 1.0, 1.0]], out_bytes=20_000, link=link, input_bytes=20_000)
    p = dataclasses.replace(p, devices=tuple(
        DeviceCost(f"d{i}", (1.0, 1.0, 1.0)) for i in range(3)))  # fmt: skip
    stages = (("d0", 0, 1), ("d1", 1, 2), ("d2", 2, 3))
    switched = simulate(SimSpec(p), stages, SimConfig(images=800, window=8))
    medium = simulate(SimSpec(p, shared_medium=True), stages, SimConfig(images=800, window=8))
    assert switched.steady_ips == pytest.approx(4 * 1000.0 / 2.0, rel=0.01)
    # upload + two hand-offs + the result: four transfers of 2 ms on one medium
    assert medium.steady_ips == pytest.approx(4 * 1000.0 / 8.0, rel=0.01)


def test_the_simulation_is_seeded() -> None:
    p = problem([[10.0, 5.0], [7.0, 12.0]])
    spec = SimSpec(p, {"d0": 0.2, "d1": 0.2})
    stages = (("d0", 0, 1), ("d1", 1, 2))
    a = simulate(spec, stages, SimConfig(images=400, seed=1))
    b = simulate(spec, stages, SimConfig(images=400, seed=1))
    c = simulate(spec, stages, SimConfig(images=400, seed=2))
    assert a == b
    assert a.latency_ms != c.latency_ms


def test_a_loss_triggers_replay_and_recovery_on_the_remaining_devices() -> None:
    p = problem([[10.0] * 6] * 3)
    spec = SimSpec(p)
    cluster_stages = choose_plan(p, "throughput").assignment()
    assert len(cluster_stages) == 3
    victim = cluster_stages[1][0]

    def replan(usable: object) -> tuple[tuple[str, int, int], ...]:
        return choose_plan(p, "throughput", devices=list(usable)).assignment()  # type: ignore[call-overload]

    kill = parse_injection(f"{victim}:kill@1s")
    r = simulate(spec, cluster_stages, SimConfig(images=2000, injections=(kill,)), replan)
    assert r.images == 2000  # nothing lost: every micro-batch completed
    (loss,) = r.losses
    assert loss.device == victim and loss.t_s == pytest.approx(1.0)
    assert loss.detected_s is not None and loss.detected_s > 1.0
    assert loss.replayed > 0 and r.replayed == loss.replayed
    assert loss.recovery_s is not None and loss.recovery_s > 0
    (change,) = r.plan_changes
    assert victim not in [d for d, _, _ in change.stages]
    with pytest.raises(RunError, match="no replan"):
        simulate(spec, cluster_stages, SimConfig(images=2000, injections=(kill,)))


def test_a_short_pause_delays_and_a_stress_slows_without_a_loss() -> None:
    p = problem([[10.0, 10.0], [10.0, 10.0]])
    stages = (("d0", 0, 1), ("d1", 1, 2))
    base = simulate(SimSpec(p), stages, SimConfig(images=800))
    pause = parse_injection("d1:pause@1s+500ms")
    paused = simulate(SimSpec(p), stages, SimConfig(images=800, injections=(pause,)))
    assert not paused.losses and paused.wall_s == pytest.approx(base.wall_s + 0.5, abs=0.02)
    stress = parse_injection("d1:stress@0s")
    slow = simulate(SimSpec(p), stages, SimConfig(images=800, injections=(stress,)))
    assert slow.steady_ips == pytest.approx(base.steady_ips / 4, rel=0.01)  # type: ignore[operator]


def test_a_long_pause_is_a_loss_and_a_slow_link_slows_the_pipeline() -> None:
    p = problem([[10.0, 10.0]] * 3, out_bytes=10_000, link=LinkCost(800.0, 0.0))
    stages = (("d0", 0, 1), ("d1", 1, 2))

    def replan(usable: object) -> tuple[tuple[str, int, int], ...]:
        return choose_plan(p, "throughput", devices=list(usable)).assignment()  # type: ignore[call-overload]

    pause = parse_injection("d1:pause@1s+5s")  # past the 2 s heartbeat deadline
    r = simulate(SimSpec(p), stages, SimConfig(images=1600, injections=(pause,)), replan)
    (loss,) = r.losses
    assert loss.device == "d1" and loss.detected_s == pytest.approx(3.0)
    assert all(d != "d1" for d, _, _ in r.plan_changes[0].stages)
    base = simulate(SimSpec(p), stages, SimConfig(images=800))
    slow = parse_injection("link:d0-d1:bandwidth=2mbps@0s")  # 10 kB: 40 ms
    r = simulate(SimSpec(p), stages, SimConfig(images=800, injections=(slow,)))
    assert base.steady_ips == pytest.approx(4 * 1000.0 / 10.0, rel=0.01)
    assert r.steady_ips == pytest.approx(4 * 1000.0 / 40.0, rel=0.01)


def test_the_adaptive_policy_moves_work_off_a_stressed_device() -> None:
    profile = toy_profile(["a", "b", "c"], [5.0] * 12)
    cluster = cluster_from(profile)
    stages = plan_for(cluster).assignment()
    victim = stages[0][0]
    config = SimConfig(
        images=4000,
        injections=(parse_injection(f"{victim}:stress@2s"),),
        adaptive=AdaptPolicy(),
    )
    r = simulate(cluster.spec, stages, config, replanner(cluster, stages))
    assert r.plan_changes, "the policy should have switched"
    assert "adaptive" in r.plan_changes[0].reason
    new = dict((d, b - a) for d, a, b in r.plan_changes[0].stages)
    old = dict((d, b - a) for d, a, b in stages)
    assert new.get(victim, 0) < old[victim]


def test_bad_input_is_a_clear_error() -> None:
    p = problem([[10.0, 10.0]])
    with pytest.raises(PlanError, match="the model has 2 units"):
        simulate(SimSpec(p), (("d0", 0, 1),))
    with pytest.raises(ConfigError, match="names 'zz'"):
        simulate(
            SimSpec(p), (("d0", 0, 2),), SimConfig(injections=(parse_injection("zz:kill@1s"),))
        )
    with pytest.raises(ConfigError, match="images"):
        SimConfig(images=0)
    with pytest.raises(ConfigError, match="unknown device"):
        SimSpec(p, {"x": 0.1})


# --- planning large clusters ------------------------------------------------------------------


def test_the_kinds_planner_finds_the_exact_planners_bottleneck() -> None:
    rng = random.Random(7)
    for _ in range(12):
        n = rng.randint(3, 9)
        kinds_ms = [[rng.uniform(1, 20) for _ in range(n)] for _ in range(2)]
        counts = [rng.randint(1, 3), rng.randint(1, 2)]
        devices = []
        members = []
        for k, (ms, c) in enumerate(zip(kinds_ms, counts, strict=True)):
            names = tuple(f"k{k}_{i}" for i in range(c))
            members.append(names)
            devices += [DeviceCost(name, tuple(ms)) for name in names]
        p = Problem(
            units=tuple(UnitCost(rng.choice((0, 40_000, 200_000)), 0, 0) for _ in range(n)),
            devices=tuple(devices),
            batch_size=4,
            input_bytes=100_000,
            default_link=LinkCost(100.0, 0.5),
        )
        exact = choose_plan(p, "throughput")
        by_kinds = plan_by_kinds(p, Kinds(("k0", "k1"), tuple(members)))
        assert by_kinds.prediction.bottleneck_ms == pytest.approx(exact.prediction.bottleneck_ms)


def test_the_kinds_planner_keeps_memory_budgets() -> None:
    units = tuple(UnitCost(1000, 50_000_000, 0) for _ in range(6))  # 50 MB of weights each
    small = tuple(
        DeviceCost(f"s{i}", (1.0,) * 6, memory_budget_bytes=120_000_000) for i in range(4)
    )
    p = Problem(units=units, devices=small, batch_size=1, input_bytes=1000)
    plan = plan_by_kinds(p)
    assert len(plan.stages) == 3  # two units fit a device; the fastest plan would use one
    assert all(s.memory_bytes <= 120_000_000 for s in plan.stages)
    with pytest.raises(PlanError, match="memory"):
        plan_by_kinds(p, max_devices=2)


def test_synthetic_clusters_copy_the_profiled_kinds() -> None:
    assert parse_devices("16xpi, 4xfast,solo") == [(16, "pi"), (4, "fast"), (1, "solo")]
    for bad in ("0xpi", "pi,pi", "x pi", "3xp i", ""):
        with pytest.raises(ConfigError):
            parse_devices(bad)
    profile = toy_profile(["pi", "fast"], [4.0] * 10, speeds={"fast": 0.25})
    link = PairLink(between=("pi", "fast"), bandwidth_mbps=10.0, latency_ms=3.0)
    cluster = cluster_from(profile, [(16, "pi"), (4, "fast")], LinkSpec(bandwidth_mbps=940.0),
                           [link])  # fmt: skip
    names = cluster.problem.device_names
    assert len(names) == 20 and names[0] == "pi_1" and names[-1] == "fast_4"
    assert cluster.problem.link("pi_3", "fast_2") == LinkCost(10.0, 3.0)
    assert cluster.problem.link("pi_3", "pi_4").bandwidth_mbps == 940.0
    plan = plan_for(cluster)
    r = simulate(cluster.spec, plan.assignment(), SimConfig(images=800))
    assert r.steady_ips == pytest.approx(plan.prediction.throughput_ips, rel=0.02)
    with pytest.raises(ConfigError, match="no device 'slow'"):
        cluster_from(profile, [(2, "slow")])


def test_the_smallest_cluster_for_a_target_is_the_fewest_devices_that_reach_it() -> None:
    profile = toy_profile(["pi"], [4.0] * 12)  # 48 ms per micro-batch of 4 on one device
    catalogue = cluster_from(profile, [(8, "pi")], LinkSpec(bandwidth_mbps=None))
    answer = smallest_cluster(catalogue, target_ips=4 * 1000.0 / 17.0)
    assert answer.devices == 3  # 16 ms stages; two devices give 24 ms
    assert answer.simulated_ips >= answer.target_ips
    smaller = plan_for(catalogue, devices=["pi_1", "pi_2"])
    assert smaller.prediction.throughput_ips < answer.target_ips
    with pytest.raises(PlanError, match="no cluster"):
        smallest_cluster(catalogue, target_ips=10_000.0)
    # 2 x 3 micro-batches in flight wait about 6 periods of 16 ms; 4 in flight meet 70 ms
    bounded = smallest_cluster(catalogue, target_ips=4 * 1000.0 / 17.0, max_latency_ms=70.0)
    assert bounded.devices == 3 and bounded.window == 4
    assert bounded.simulated_p50_ms <= 70.0 < answer.simulated_p50_ms


def test_by_watts_a_few_big_devices_can_lose_to_more_small_ones() -> None:
    profile = toy_profile(["pi", "big"], [4.0] * 16, speeds={"big": 0.25}, busy_w={"big": 30.0})
    catalogue = cluster_from(profile, [(8, "pi"), (2, "big")], LinkSpec(bandwidth_mbps=None))
    target = 4 * 1000.0 / 17.0  # 64 ms of work per micro-batch on a pi: 4 of them, or 1 big
    by_count = smallest_cluster(catalogue, target_ips=target)
    assert by_count.counts == {"pi": 0, "big": 1} and by_count.watts == 30.0
    by_watts = smallest_cluster(catalogue, target_ips=target, by="watts")
    assert by_watts.counts == {"pi": 4, "big": 0} and by_watts.watts == pytest.approx(25.6)


# --- the command ------------------------------------------------------------------------------


def test_the_simulate_command_prints_and_writes_the_result(tmp_path: object) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    path = toy_profile(["a", "b"], [5.0] * 8).save(folder / "profile.json")
    out = folder / "sim.json"
    runner = CliRunner()
    got = runner.invoke(main, ["simulate", "--profile", str(path), "--devices", "6xa",
                               "--images", "400", "--inject", "a_1:kill@500ms",
                               "--out", str(out)])  # fmt: skip
    assert got.exit_code == 0, got.output
    assert "throughput" in got.output and "lost a_1" in got.output
    assert json.loads(out.read_text())["images"] == 400
    bad = runner.invoke(main, ["simulate", "--profile", str(path), "--devices", "2xq"])
    assert bad.exit_code == 2 and "no device 'q'" in bad.output
    links = folder / "links.yaml"
    links.write_text("links:\n  - {between: [a, c], bandwidth_mbps: 10}\n")
    bad_link = runner.invoke(main, ["simulate", "--profile", str(path), "--devices", "2xa",
                                    "--links", str(links)])  # fmt: skip
    assert bad_link.exit_code == 2 and "names 'c'" in bad_link.output
    links.write_text("links:\n  - {between: [a, b], bandwidth_mbps: 10}\n")
    as_json = runner.invoke(main, ["simulate", "--profile", str(path), "--devices", "2xa,2xb",
                                   "--links", str(links), "--json", "--images", "80"])  # fmt: skip
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)["micro_batches"] == 20
    target = runner.invoke(main, ["plan", "--profile", str(path), "--target-ips", "500",
                                  "--catalogue", "8xa"])  # fmt: skip
    assert target.exit_code == 0, target.output
    assert "meet 500 img/s" in target.output


def toy_profile(
    names: list[str],
    unit_ms: list[float],
    speeds: dict[str, float] | None = None,
    busy_w: dict[str, float] | None = None,
) -> Profile:
    """A small profile of real devices (no CPU share), 1 MB hand-offs, Gigabit links."""
    n = len(unit_ms)
    units = tuple(UnitProfile(i, f"u{i}", f"u{i}", 0, 0, 100_000, 4_000, 200_000) for i in range(n))
    devices = tuple(
        DeviceProfile(
            name=name,
            unit_ms=tuple(t * (speeds or {}).get(name, 1.0) for t in unit_ms),
            unit_spread_ms=(0.0,) * n,
            threads=4,
            cpu_count=4,
            cpus=None,
            memory_budget_bytes=None,
            idle_w=2.7,
            busy_w=(busy_w or {}).get(name, 6.4),
        )
        for name in names
    )
    links = tuple(LinkProfile(a, b, 0.2, 940.0) for a, b in itertools.combinations(names, 2))
    return Profile(
        model="toy", input_size=32, batch_size=4, num_classes=10, input_bytes=50_000,
        units=units, devices=devices, links=links, default_bandwidth_mbps=940.0,
        default_latency_ms=0.2,
    )  # fmt: skip


def test_a_printed_plan_is_given_back_verbatim(tmp_path: object) -> None:
    """Issue #16: the plan ``simulate`` and ``plan`` print is what ``--partition`` takes, and
    the same plan comes back; the unnamed form runs on the first devices."""
    from pathlib import Path

    folder = Path(str(tmp_path))
    profile = toy_profile(["a", "b", "c"], [5.0] * 12, speeds={"a": 4.0})
    path = profile.save(folder / "profile.json")
    runner = CliRunner()

    def printed(args: list[str], prefix: str) -> str:
        got = runner.invoke(main, [*args, "--profile", str(path)])
        assert got.exit_code == 0, got.output
        (line,) = [x for x in got.output.splitlines() if x.startswith(prefix)]
        return line.removeprefix(prefix).split()[0]

    planned = printed(["plan"], "partition: ")
    simulated = printed(["simulate", "--images", "80"], "plan: ")
    # a is slow: the plan starts elsewhere, which the unnamed form ("0-6,6-" on a, b) would lose
    assert planned == simulated and not planned.startswith("a:"), planned
    again = printed(["simulate", "--images", "80", "--partition", simulated], "plan: ")
    assert again == simulated
    cluster = cluster_from(profile)
    assert fixed_stages(cluster, simulated) == plan_for(cluster).assignment()
    assert fixed_stages(cluster, "0-4,4-") == (("a", 0, 4), ("b", 4, 12))
    with pytest.raises(ConfigError, match="names z; the devices are a, b, c"):
        fixed_stages(cluster, "z:0-4,a:4-")
