"""Profiles per precision: int8 unit times from the worker, the planner's problem per precision,
and plans that say which engine and precision their stages use."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from edgesplit import engines
from edgesplit.config import parse_cluster
from edgesplit.errors import ConfigError
from edgesplit.model import graph, models
from edgesplit.plan import autoplan, planner
from edgesplit.plan.profile import (
    DeviceProfile,
    Profile,
    ProfileSettings,
    UnitProfile,
    load_profile,
    profile_cluster,
    to_problem,
)
from edgesplit.runtime import codec
from edgesplit.runtime.coordinator import Coordinator
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.proto import edgesplit_pb2_grpc as pb_grpc
from edgesplit.runtime.transport import open_channel
from edgesplit.runtime.worker import RunningWorker, WorkerConfig, serve

TOKEN = "precision-test-token"
MODEL = "squeezenet1_1"
SIZE = 32

needs_onnxruntime = pytest.mark.skipif(
    not engines.onnxruntime_available(), reason="onnxruntime is not installed"
)


def _profile(int8: tuple[float, ...] | None) -> Profile:
    """Two units, two devices; pi1 is 4x faster at int8 than at fp32 (pure data)."""
    units = tuple(
        UnitProfile(index=i, first=f"u{i}", last=f"u{i}", params=10, macs=100, out_bytes=1000,
                    weight_bytes=40, activation_bytes=2000)
        for i in range(2)
    )  # fmt: skip
    extra = {"int8": int8} if int8 is not None else {}
    devices = tuple(
        DeviceProfile(name=name, unit_ms=(40.0, 40.0), unit_spread_ms=(0.0, 0.0), threads=1,
                      cpu_count=4, cpus=None, memory_budget_bytes=None, idle_w=2.0, busy_w=5.0,
                      engine="onnxruntime", precision_unit_ms=extra)
        for name in ("pi1", "pi2")
    )  # fmt: skip
    return Profile(model=MODEL, input_size=SIZE, batch_size=8, num_classes=10, input_bytes=1000,
                   units=units, devices=devices, links=())  # fmt: skip


def test_problem_and_plan_use_the_precision_asked_for() -> None:
    profile = _profile(int8=(10.0, 10.0))
    assert profile.devices[0].precisions == ("fp32", "int8")
    assert to_problem(profile).devices[0].unit_ms == (40.0, 40.0)
    assert to_problem(profile, precision="int8").devices[0].unit_ms == (10.0, 10.0)

    fp32 = autoplan.plan(profile, autoplan.PlanRequest())
    int8 = autoplan.plan(profile, autoplan.PlanRequest(precision="int8"))
    assert int8.prediction.bottleneck_ms < fp32.prediction.bottleneck_ms

    predicted = autoplan.prediction_dict(int8, profile, "int8")
    assert predicted["precision"] == "int8"
    stages = predicted["stages"]
    assert isinstance(stages, list) and stages
    assert all(s["engine"] == "onnxruntime" and s["precision"] == "int8" for s in stages)


def test_int8_times_of_a_capped_device_are_its_sustained_times() -> None:
    from dataclasses import replace

    device = replace(_profile(int8=(10.0, 10.0)).devices[0], cpus=0.5,
                     precision_unit_cpu_ms={"int8": (8.0, 2.0)})  # fmt: skip
    # CPU time / share: a longer wall (10 ms for 2 ms of CPU) is a quota stall the timing
    # caught, not what the device sustains (QUOTA_WALL_NOTE).
    assert device.unit_ms_at("int8") == (16.0, 4.0)


def test_missing_precision_is_a_clear_error() -> None:
    profile = _profile(int8=None)
    with pytest.raises(ConfigError, match=r"pi1 has no int8 unit times .*--precision int8"):
        to_problem(profile, precision="int8")
    with pytest.raises(ConfigError, match="precision must be one of"):
        autoplan.PlanRequest(precision="int4")
    with pytest.raises(ConfigError, match="precision must be one of"):
        ProfileSettings(precisions=("fp16",))
    with pytest.raises(ConfigError, match="int8 unit times needs calibration"):
        ProfileSettings(precisions=("fp32", "int8"))


def test_precision_times_survive_a_json_round_trip(tmp_path: Path) -> None:
    profile = _profile(int8=(10.0, 12.0))
    again = load_profile(profile.save(tmp_path / "p.json"))
    assert again == profile
    assert again.devices[1].unit_ms_at("int8") == (10.0, 12.0)
    # A profile written before precisions existed still loads, with fp32 only.
    data = profile.to_dict()
    for d in data["devices"]:
        del d["precision_unit_ms"]
    old = Profile.from_dict(json.loads(json.dumps(data)))
    assert old.devices[0].precisions == ("fp32",)


# --- int8 unit times from real workers (in-process gRPC) ---------------------------------------


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build(MODEL, num_classes=10)


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningWorker]:
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGESPLIT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    running = serve(WorkerConfig(name="w0", token=TOKEN, threads=1), "127.0.0.1:0")
    yield running
    running.stop(0.5)
    mp.undo()


@pytest.fixture(scope="module")
def coordinator(worker: RunningWorker, model: torch.nn.Module) -> Iterator[Coordinator]:
    spec = parse_cluster({"token": TOKEN, "devices": [{"name": "w0", "address": worker.address}]})
    with Coordinator(spec) as c:
        c.check()
        c.load_model(MODEL, 10, 3, SIZE, model)
        yield c


@needs_onnxruntime
def test_worker_times_int8_units_scaled_to_the_quantized_model(
    coordinator: Coordinator, model: torch.nn.Module, tmp_path: Path
) -> None:
    ug = graph.trace(model, (3, SIZE, SIZE))
    calibration = torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    settings = ProfileSettings(batch_size=2, repeats=3, warmup=1, cache=tmp_path,
                               engine="onnxruntime", precisions=("fp32", "int8"),
                               calibration=calibration)  # fmt: skip
    profile = profile_cluster(coordinator, ug, MODEL, 10, settings)
    device = profile.devices[0]
    assert device.engine == "onnxruntime"
    assert device.precisions == ("fp32", "int8")
    int8 = device.unit_ms_at("int8")
    assert len(int8) == ug.num_units and all(t > 0 for t in int8)
    assert int8 != device.unit_ms

    # The scale: int8 unit times sum to the whole model quantized as one stage.
    stub = pb_grpc.WorkerStub(open_channel(coordinator.cluster.device("w0").address, TOKEN))
    request = pb.ProfileRequest(batch_size=2, repeats=3, warmup=1, engine="onnxruntime",
                                precision="int8")  # fmt: skip
    codec.encode(calibration, out=request.calibration)
    reply = stub.Profile(request, timeout=300)
    assert reply.precision == "int8" and reply.model_ms > 0
    assert sum(reply.unit_ms) == pytest.approx(reply.model_ms, rel=1e-6)

    # Cached with its int8 times; an fp32-only profile is a different cache entry.
    again = profile_cluster(coordinator, ug, MODEL, 10, settings)
    assert again.devices[0].cached
    assert again.devices[0].unit_ms_at("int8") == int8
    plain = ProfileSettings(batch_size=2, repeats=3, warmup=1, cache=tmp_path,
                            engine="onnxruntime")  # fmt: skip
    assert not profile_cluster(coordinator, ug, MODEL, 10, plain).devices[0].cached


def test_worker_refuses_int8_without_calibration_or_on_torch(coordinator: Coordinator) -> None:
    stub = pb_grpc.WorkerStub(open_channel(coordinator.cluster.device("w0").address, TOKEN))
    with pytest.raises(grpc.RpcError) as info:
        stub.Profile(pb.ProfileRequest(batch_size=1, repeats=1, precision="int8"), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "calibration" in (info.value.details() or "")
    request = pb.ProfileRequest(batch_size=1, repeats=1, engine="torch", precision="int8")
    codec.encode(torch.zeros(2, 3, SIZE, SIZE), out=request.calibration)
    with pytest.raises(grpc.RpcError) as info:
        stub.Profile(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "int8 needs --engine onnxruntime" in (info.value.details() or "")


def test_plan_cli_plans_at_the_precision_asked_for(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgesplit.cli import main

    runner = CliRunner()
    with_int8 = _profile(int8=(10.0, 10.0)).save(tmp_path / "int8.json")
    got = runner.invoke(main, ["plan", "--profile", str(with_int8), "--precision", "int8",
                               "--json"])  # fmt: skip
    assert got.exit_code == 0, got.output
    assert json.loads(got.output)["prediction"]["bottleneck_ms"] == pytest.approx(10.0, abs=1.0)
    fp32_only = _profile(int8=None).save(tmp_path / "fp32.json")
    got = runner.invoke(main, ["plan", "--profile", str(fp32_only), "--precision", "int8"])
    assert got.exit_code != 0
    assert "no int8 unit times" in got.output


@pytest.mark.slow
@needs_onnxruntime
def test_int8_run_with_auto_partition_plans_with_int8_unit_times(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    args = ["run", "--devices", "2", "--model", "squeezenet1_1", "--limit", "64",
            "--engine", "onnxruntime", "--precision", "int8", "--calibration-images", "16",
            "--out", str(out), "--json"]  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "edgesplit", *args], capture_output=True,
                            text=True, timeout=600, env=env, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "timing 18 units at int8" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["precision"] == "int8"
    predicted = summary["predicted"]
    assert predicted["precision"] == "int8"
    assert {(s["engine"], s["precision"]) for s in predicted["stages"]} == {("onnxruntime", "int8")}
    profile = load_profile(out / "profile.json")
    # The run's plan evaluated on the saved profile (with the pilot's measured per-call costs,
    # issue #19) at int8 gives the recorded prediction.
    stages = [(s["device"], *s["units"]) for s in predicted["stages"]]
    int8 = planner.evaluate(
        to_problem(profile, precision="int8"), stages, "throughput", check_memory=False
    )
    assert predicted["bottleneck_ms"] == pytest.approx(int8.prediction.bottleneck_ms)
    assert all(len(d.unit_ms_at("int8")) == 18 for d in profile.devices)
