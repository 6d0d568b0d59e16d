"""The profiler: pure pieces, then real workers in this process over gRPC on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from edgesplit.config import parse_cluster
from edgesplit.errors import ConfigError
from edgesplit.model import graph, models
from edgesplit.plan.profile import (
    DeviceProfile,
    Profile,
    ProfileSettings,
    fit_link,
    load_profile,
    measure_stages,
    profile_cluster,
    to_problem,
    unit_profiles,
    untimed,
)
from edgesplit.runtime.coordinator import Coordinator
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.proto import edgesplit_pb2_grpc as pb_grpc
from edgesplit.runtime.transport import open_channel
from edgesplit.runtime.worker import RunningWorker, WorkerConfig, serve

TOKEN = "profiler-test-token"
MODEL = "squeezenet1_1"
SIZE = 32


def test_fit_link_recovers_latency_and_bandwidth() -> None:
    sizes = (1000, 100_000, 1_000_000)
    # 2 ms + bytes * 8 / (100 Mbit/s)
    times = tuple(2.0 + s * 8 / (100 * 1e3) for s in sizes)
    latency, bandwidth = fit_link(sizes, times)
    assert latency == pytest.approx(2.0)
    assert bandwidth == pytest.approx(100.0)


def test_fit_link_without_growth_is_unmeasurable() -> None:
    assert fit_link((10, 1000), (0.5, 0.4)) == (0.4, None)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build(MODEL, num_classes=10)


@pytest.fixture(scope="module")
def unit_graph(model: torch.nn.Module) -> graph.UnitGraph:
    return graph.trace(model, (3, SIZE, SIZE))


def test_unit_profiles_chain_activation_sizes(unit_graph: graph.UnitGraph) -> None:
    units = unit_profiles(unit_graph, batch_size=4)
    assert len(units) == unit_graph.num_units
    first_in = 4 * 4 * 3 * SIZE * SIZE
    assert units[0].activation_bytes == first_in + units[0].out_bytes
    for before, after in itertools.pairwise(units):
        assert after.activation_bytes == before.out_bytes + after.out_bytes
    assert sum(u.weight_bytes for u in units) == 4 * unit_graph.total_params


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RunningWorker]]:
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGESPLIT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    running = [
        serve(WorkerConfig(name=f"w{i}", token=TOKEN, threads=1), "127.0.0.1:0") for i in range(2)
    ]
    yield running
    for w in running:
        w.stop(0.5)
    mp.undo()


@pytest.fixture(scope="module")
def coordinator(workers: list[RunningWorker], model: torch.nn.Module) -> Iterator[Coordinator]:
    devices = [
        {"name": f"w{i}", "address": w.address, "memory_budget_mb": 100 + i}
        for i, w in enumerate(workers)
    ]
    spec = parse_cluster(
        {
            "token": TOKEN,
            "devices": devices,
            "default_link": {"bandwidth_mbps": 200, "latency_ms": 3},
        }
    )
    with Coordinator(spec) as c:
        c.check()
        c.load_model(MODEL, 10, 3, SIZE, model)
        yield c


def test_profile_times_every_unit_and_fits_shaped_links(
    coordinator: Coordinator, unit_graph: graph.UnitGraph, tmp_path: Path
) -> None:
    settings = ProfileSettings(batch_size=2, repeats=3, warmup=1, cache=tmp_path)
    profile = profile_cluster(coordinator, unit_graph, MODEL, 10, settings)
    assert [d.name for d in profile.devices] == ["w0", "w1"]
    for d in profile.devices:
        assert len(d.unit_ms) == unit_graph.num_units
        assert all(t > 0 for t in d.unit_ms)
        assert all(s >= 0 for s in d.unit_spread_ms)
        assert not d.cached
        # The whole model as one stage is timed too (wall and CPU), for the boundary model.
        assert d.model_ms["fp32"] > 0 and d.model_cpu_ms["fp32"] > 0
        assert d.hop_cpu_ms_per_mb > 0  # a loopback hand-off takes CPU
    # The cluster file's memory budget wins over what the device reports.
    assert profile.devices[1].memory_budget_bytes == 101 * 2**20
    # coordinator-w0, coordinator-w1, w0-w1
    assert {(k.a, k.b) for k in profile.links} == {
        ("coordinator", "w0"),
        ("coordinator", "w1"),
        ("w0", "w1"),
    }
    for link in profile.links:
        # The emulated shaping (3 ms, 200 Mbit/s) is a floor under every transfer; the RPC's
        # own cost comes on top (how much depends on the load of this machine).
        for size, ms in zip(link.sizes, link.median_ms, strict=True):
            assert ms >= 3.0 + size * 8 / (200 * 1e3)
        assert link.bandwidth_mbps is not None
        assert link.bandwidth_mbps < 250

    again = profile_cluster(coordinator, unit_graph, MODEL, 10, settings)
    assert all(d.cached for d in again.devices)
    assert again.devices[0].unit_ms == profile.devices[0].unit_ms

    path = profile.save(tmp_path / "profile.json")
    assert load_profile(path) == profile
    problem = to_problem(profile)
    assert len(problem.units) == unit_graph.num_units
    # Devices with hosts of their own: the link costs the wire plus both ends' hand-off CPU.
    link, hop = profile.links[2], [d.hop_cpu_ms_per_mb for d in profile.devices]
    assert link.bandwidth_mbps is not None
    per_byte = 8 / (link.bandwidth_mbps * 1e3) + sum(hop) / 1e6
    assert problem.link("w0", "w1").transfer_ms(2**20) == pytest.approx(
        link.latency_ms + per_byte * 2**20
    )


def test_profile_refuses_bad_requests_and_keeps_serving(workers: list[RunningWorker]) -> None:
    stub = pb_grpc.WorkerStub(open_channel(workers[0].address, TOKEN))
    with pytest.raises(grpc.RpcError) as info:
        stub.Profile(pb.ProfileRequest(batch_size=0, repeats=1), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "batch_size" in (info.value.details() or "")
    with pytest.raises(grpc.RpcError) as info:
        stub.ProbeLink(pb.ProbeLinkRequest(address="nowhere", sizes=[1], repeats=1), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stub.Status(pb.StatusRequest(), timeout=5).name == "w0"


def test_corrupt_profile_gives_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "p.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not JSON"):
        load_profile(bad)
    bad.write_text(json.dumps({"format": "edgesplit-profile/1", "model": "x"}))
    with pytest.raises(ConfigError, match="malformed"):
        load_profile(bad)
    with pytest.raises(ConfigError, match="format"):
        Profile.from_dict({"model": "x"})


def test_emulated_devices_are_planned_at_the_speed_their_quota_sustains() -> None:
    from edgesplit.plan.profile import DeviceProfile

    common = {"unit_spread_ms": (0.0, 0.0), "threads": 1, "cpu_count": 2,
              "memory_budget_bytes": None, "idle_w": 2.7, "busy_w": 6.4}  # fmt: skip
    emulated = DeviceProfile("pi1", unit_ms=(1.0, 4.0), unit_cpu_ms=(1.0, 1.5), cpus=0.5, **common)
    # 1 ms of CPU at half a core takes 2 ms sustained. A median wall above CPU / share is a
    # timing that caught a quota stall (QUOTA_WALL_NOTE), not what a pipeline sustains.
    assert emulated.sustained_ms == (2.0, 3.0)
    real = DeviceProfile("pi2", unit_ms=(1.0, 4.0), unit_cpu_ms=(1.0, 1.5), cpus=None, **common)
    assert real.sustained_ms == (1.0, 4.0)


def test_boundary_model_splits_unit_times_into_stage_insides_and_ends() -> None:
    from edgesplit.plan.profile import boundary_model

    # Three units timed alone: 10, 20, 30 ms; as one stage 44 ms. The inner cuts carry 100 and
    # 200 bytes, so beta = (60 - 44) / 300 ms per byte and a stage end at cut k costs beta/2 * b.
    inner, h = boundary_model((10.0, 20.0, 30.0), 44.0, (50, 100, 200, 10))
    beta = 16.0 / 300
    assert h == pytest.approx(tuple(beta / 2 * b for b in (50, 100, 200, 10)))
    assert sum(inner) + h[0] + h[3] == pytest.approx(44.0)  # the whole model
    # Each unit alone still costs what was measured.
    for i, t in enumerate((10.0, 20.0, 30.0)):
        assert inner[i] + h[i] + h[i + 1] == pytest.approx(t)
    # No whole-model time (an old profile), or units that are not slower alone: no boundary cost.
    assert boundary_model((10.0, 20.0), None, (1, 2, 3)) == ((10.0, 20.0), (0.0, 0.0, 0.0))
    assert boundary_model((10.0, 20.0), 35.0, (1, 2, 3))[1] == (0.0, 0.0, 0.0)
    with pytest.raises(ConfigError, match="boundary sizes"):
        boundary_model((10.0, 20.0), 25.0, (1, 2))


def test_stage_costs_apply_the_quota_to_insides_and_ends() -> None:
    from edgesplit.plan.profile import DeviceProfile

    common = {"unit_spread_ms": (0.0, 0.0), "threads": 1, "cpu_count": 2,
              "memory_budget_bytes": None, "idle_w": 2.7, "busy_w": 6.4}  # fmt: skip
    # Burst timings (wall) are fast; CPU time / share is what the quota sustains.
    d = DeviceProfile(
        "pi1", unit_ms=(10.0, 10.0), unit_cpu_ms=(10.0, 10.0), cpus=0.5,
        model_ms={"fp32": 16.0}, model_cpu_ms={"fp32": 16.0}, **common,
    )  # fmt: skip
    costs = d.stage_costs("fp32", (0, 400, 0))
    # beta = 4/400: 2 ms wall per end, / 0.5
    assert costs.boundary_ms == pytest.approx((0.0, 2.0 / 0.5, 0.0))
    assert costs.unit_ms == pytest.approx((16.0, 16.0))  # (10 - 2) / 0.5
    # A micro-batch finding the device idle runs at full speed until 50 ms of CPU per 100 ms.
    assert costs.burst_unit_ms == pytest.approx((8.0, 8.0))
    assert costs.burst_boundary_ms == pytest.approx((0.0, 2.0, 0.0))
    assert costs.quota_ms == pytest.approx(50.0)
    assert d.stage_ms(0, 2, (0, 400, 0)) == pytest.approx(32.0)  # the whole model, sustained
    assert d.stage_ms(0, 1, (0, 400, 0)) == pytest.approx(20.0)  # one unit alone, sustained
    # Hand-offs of 2 ms of CPU per MB: a 1 MB input costs 2 ms of quota, 4 ms at half a core.
    hops = dataclasses.replace(d, hop_cpu_ms_per_mb=2.0, model_ms={}, model_cpu_ms={})
    costs = hops.stage_costs("fp32", (1_000_000, 400, 0))
    assert costs.boundary_ms[0] == pytest.approx(4.0)
    assert costs.burst_boundary_ms[0] == pytest.approx(0.0)  # in the link's time already


def test_a_link_probe_honours_the_senders_link_change(coordinator: Coordinator) -> None:
    """ProbeLink times what a hand-off would take now: a SetLink (an injected degradation) on
    the sender wins over the shaping the request names (the adaptive controller relies on it)."""
    from edgesplit.runtime.proto import edgesplit_pb2 as pb

    spec = coordinator.cluster
    to = spec.device("w1").address
    size = 64 * 1024

    def probe_ms() -> float:
        request = pb.ProbeLinkRequest(
            address=to, token=spec.token_for("w1"), sizes=[size], repeats=1,
            bandwidth_mbps=200, latency_ms=3,
        )  # fmt: skip
        return float(coordinator.stub("w0").ProbeLink(request, timeout=30).median_ms[0])

    stub = coordinator.stub("w0")
    stub.SetLink(pb.SetLinkRequest(to=to, bandwidth_mbps=5.0), timeout=10)
    try:
        assert probe_ms() >= 3 + size * 8 / (5.0 * 1e3)  # 108 ms at 5 Mbit/s
    finally:
        stub.SetLink(pb.SetLinkRequest(to=to, clear=True), timeout=10)
    assert probe_ms() < 3 + size * 8 / (5.0 * 1e3)


def test_timed_stages_replace_the_model_and_calibrate_the_rest() -> None:
    common = {"unit_spread_ms": (0.0,) * 3, "threads": 1, "cpu_count": 2,
              "memory_budget_bytes": None, "idle_w": 2.7, "busy_w": 6.4}  # fmt: skip
    cuts = (1_000_000, 0, 0, 0)
    # Modelled: 10 ms per unit at full speed, at half a core 20 ms sustained. Stage 0-2 was
    # timed at 30 ms (wall and CPU) against 20 modelled: the others scale by 1.5.
    d = DeviceProfile(
        "pi1", unit_ms=(10.0,) * 3, unit_cpu_ms=(10.0,) * 3, cpus=0.5, hop_cpu_ms_per_mb=2.0,
        stage_timings={"fp32": {"0-2": (30.0, 30.0)}}, **common,
    )  # fmt: skip
    costs = d.stage_costs("fp32", cuts)
    # Sustained: 30 ms CPU / 0.5, plus receiving the 1 MB input (2 ms CPU) / 0.5.
    assert costs.measured == ((0, 2, 64.0, 30.0),)
    assert d.stage_ms(0, 2, cuts) == pytest.approx(64.0)
    assert costs.burst_unit_ms == pytest.approx((15.0,) * 3)
    assert d.stage_ms(2, 3, cuts) == pytest.approx(30.0)  # 10 * 1.5 / 0.5
    device = to_problem_device(d, cuts)
    assert device.measured_stages == ((0, 2, 64.0, 30.0),)
    assert device.stage_latency_ms(0, 2) == 30.0  # within its 50 ms quota: full speed
    # Another precision has no timings: the model alone.
    assert d.stage_costs("fp32", cuts).measured and d.is_timed(0, 2)
    assert not d.is_timed(0, 2, "int8") and not d.is_timed(0, 3)
    # A real device (no quota): its wall time, sustained and at full speed.
    real = dataclasses.replace(d, cpus=None)
    assert real.stage_costs("fp32", cuts).measured == ((0, 2, 30.0, 30.0),)
    # Timed under the quota, a stage's median wall caught stalls (79.3 ms for 32.5 ms of CPU):
    # the quota sustains the CPU over the share, 65 ms, plus its hand-off (QUOTA_WALL_NOTE).
    stalled = dataclasses.replace(d, stage_timings={"fp32": {"0-2": (79.3, 32.5)}})
    assert stalled.stage_costs("fp32", cuts).measured == ((0, 2, 69.0, 32.5),)


def to_problem_device(d: DeviceProfile, cuts: tuple[int, ...]) -> object:
    from edgesplit.plan.planner import DeviceCost

    costs = d.stage_costs("fp32", cuts)
    return DeviceCost(
        d.name, costs.unit_ms, boundary_ms=costs.boundary_ms, burst_unit_ms=costs.burst_unit_ms,
        burst_boundary_ms=costs.burst_boundary_ms, quota_ms=costs.quota_ms,
        measured_stages=costs.measured,
    )  # fmt: skip


def test_a_profile_with_a_bad_stage_span_is_malformed(tmp_path: Path) -> None:
    common = {"unit_spread_ms": (0.0,), "threads": 1, "cpu_count": 2, "cpus": None,
              "memory_budget_bytes": None, "idle_w": 2.7, "busy_w": 6.4}  # fmt: skip
    for span in ("2-1", "x", "1"):
        device = DeviceProfile("pi1", unit_ms=(1.0,), stage_timings={"fp32": {span: (1.0, 1.0)}},
                               **common)  # fmt: skip
        profile = Profile("m", 32, 1, 10, 12, (), (device,), ())
        path = profile.save(tmp_path / "p.json")
        with pytest.raises(ConfigError, match=r"malformed.*stage span"):
            load_profile(path)


def test_chosen_stages_are_timed_as_one_stage_each(
    coordinator: Coordinator, unit_graph: graph.UnitGraph, tmp_path: Path
) -> None:
    settings = ProfileSettings(batch_size=2, repeats=3, warmup=1, cache=tmp_path)
    profile = profile_cluster(coordinator, unit_graph, MODEL, 10, settings)
    n = unit_graph.num_units
    stages = [("w0", 0, 5), ("w1", 5, n)]
    assert untimed(profile, stages) == stages
    says: list[str] = []
    timed = measure_stages(coordinator, profile, stages, settings, progress=says.append)
    assert untimed(timed, stages) == []
    assert says == ["w0: timing stage 0-5 as one stage", f"w1: timing stage 5-{n} as one stage"]
    for name, start, end in stages:
        wall, cpu = timed.device(name).stage_timings["fp32"][f"{start}-{end}"]
        assert wall > 0 and cpu > 0
        problem_device = to_problem(timed).device(name)
        assert problem_device.stage_ms(start, end) == pytest.approx(wall)  # a real device
    # Timed stages are kept in the device's cached profile, so they are not timed again.
    again = profile_cluster(coordinator, unit_graph, MODEL, 10, settings)
    assert untimed(again, stages) == []
    assert measure_stages(coordinator, again, stages, settings, progress=says.append) == again
    assert len(says) == 2


def test_stage_timing_refuses_bad_spans_and_keeps_serving(
    workers: list[RunningWorker], coordinator: Coordinator
) -> None:
    stub = pb_grpc.WorkerStub(open_channel(workers[0].address, TOKEN))
    for start, end in ((3, 3), (0, 999), (-1, 2)):
        request = pb.ProfileRequest(
            batch_size=1, repeats=1, stages=[pb.StageSpan(start=start, end=end)]
        )
        with pytest.raises(grpc.RpcError) as info:
            stub.Profile(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not a unit range of the loaded model" in (info.value.details() or "")
    reply = stub.Profile(
        pb.ProfileRequest(batch_size=1, repeats=1, stages=[pb.StageSpan(start=0, end=2)]),
        timeout=60,
    )
    assert [(t.start, t.end) for t in reply.stage_timings] == [(0, 2)]
    assert not reply.unit_ms  # stage timings only
    assert stub.Status(pb.StatusRequest(), timeout=5).name == "w0"


def test_a_plan_that_keeps_moving_is_kept_with_its_stages_timed(
    coordinator: Coordinator,
    unit_graph: graph.UnitGraph,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edgesplit.plan import autoplan

    # No rounds of re-planning: the first plan is kept, but its stages are still timed and
    # its prediction rests on them.
    monkeypatch.setattr(autoplan, "MEASURE_ROUNDS", 0)
    settings = ProfileSettings(batch_size=2, repeats=3, warmup=1, cache=tmp_path)
    says: list[str] = []
    profile, chosen = autoplan.profile_and_plan(
        coordinator, unit_graph, MODEL, 10, autoplan.PlanRequest(), settings, says.append
    )
    assert untimed(profile, chosen.assignment()) == []
    assert any("as one stage" in s for s in says)
    assert chosen.notes[-1].startswith("the plan changed in each of 0 rounds")
    problem = to_problem(profile)
    for stage in chosen.stages:
        timed = problem.device(stage.device).measured(stage.start, stage.end)
        assert timed is not None and stage.compute_ms == timed[0]
