"""Acceptance for the fast engines (issue #9) with the shipped checkpoints on real
Fashion-MNIST: onnxruntime fp32 stages across a 3-device cluster of real worker processes match
torch in one process; int8 stages keep the checkpoint's test accuracy within 1 point; and
`edgesplit run --engine onnxruntime --precision int8` works from an empty cache."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from edgesplit.config import parse_cluster
from edgesplit.engines import EngineSpec, Execution, cpu, quantize
from edgesplit.engines.build import build_executor
from edgesplit.errors import ModelError
from edgesplit.model import checkpoints, data, graph
from edgesplit.runtime.coordinator import Coordinator
from edgesplit.runtime.worker import RunningWorker, WorkerConfig, serve
from tests.cluster.test_runtime_cluster import Proc, cluster_of, start_worker, wait_ready

FMNIST = Path("/usr/share/datasets/fashion-mnist")
MODELS = [
    "mobilenet_v2",
    "mobilenet_v3_small",
    "shufflenet_v2_x0_5",
    "squeezenet1_1",
    "efficientnet_b0",
]
CALIBRATION_IMAGES = 256
MAX_INT8_DROP = 0.01

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FMNIST.exists(), reason="needs Debian's dataset-fashion-mnist"),
]


def shipped(name: str) -> tuple[torch.nn.Module, checkpoints.CheckpointInfo]:
    try:
        path = checkpoints.shipped(name, "fashion-mnist")
    except ModelError:
        pytest.skip(f"no shipped Fashion-MNIST checkpoint for {name} in checkpoints/ yet")
    return checkpoints.load(path, model_name=name, num_classes=10)


def thirds(n: int) -> list[tuple[int, int]]:
    bounds = [round(n * k / 3) for k in range(4)]
    return list(itertools.pairwise(bounds))


@pytest.fixture(scope="module")
def procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Proc]]:
    tmp = tmp_path_factory.mktemp("engine-workers")
    started = []
    try:
        for i in range(3):
            started.append((f"p{i}", *start_worker(f"p{i}", tmp, tmp / "cache")))
        yield [Proc(n, p, wait_ready(p, r, lg), lg) for n, p, r, lg in started]
    finally:
        for _, process, _, _ in started:
            if process.poll() is None:
                process.kill()
            process.wait(10)


@pytest.fixture(scope="module")
def test_set() -> data.ImageSet:
    return data.load("fashion-mnist", "test")


@pytest.mark.parametrize("name", MODELS)
def test_onnxruntime_stages_on_three_processes_match_torch(
    procs: list[Proc], test_set: data.ImageSet, name: str
) -> None:
    model, info = shipped(name)
    size = info.input_size
    x = data.preprocess(test_set.images[:64], test_set.info, size, 3)
    with torch.inference_mode():
        reference = model(x)
    with Coordinator(cluster_of(procs)) as c:
        c.check()
        n = c.load_model(name, 10, 3, size, model)
        plan = [(p.name, a, b) for p, (a, b) in zip(procs, thirds(n), strict=True)]
        c.install_plan(plan, execution=Execution(engine="onnxruntime"))
        record = c.run([(i, x[i * 16 : (i + 1) * 16]) for i in range(4)], window=4)
    out = torch.cat([record.outputs[i] for i in range(4)])
    scale = reference.abs().max().item()
    assert (out - reference).abs().max().item() <= 1e-4 * scale, name
    assert torch.equal(out.argmax(1), reference.argmax(1)), name


@pytest.mark.parametrize("name", MODELS)
def test_int8_stages_keep_checkpoint_accuracy(
    test_set: data.ImageSet, name: str, tmp_path: Path
) -> None:
    model, info = shipped(name)
    assert info.test_accuracy is not None
    size = info.input_size
    train = data.load("fashion-mnist", "train")
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    calibration = data.preprocess(
        train.images[index[:CALIBRATION_IMAGES].sort().values], train.info, size, 3
    )
    ug = graph.trace(model, (3, size, size))
    t0 = time.perf_counter()
    stages = [
        build_executor(ug, a, b, EngineSpec("onnxruntime", "int8"), 1, None, calibration)
        for a, b in thirds(ug.num_units)
    ]
    t1 = time.perf_counter()
    correct = 0
    for _, x, y in test_set.batches(500, size, 3):
        h = x
        for stage in stages:
            h = stage.run(h)
        assert y is not None
        correct += int((h.argmax(1) == y).sum())
    accuracy = correct / len(test_set)
    drop = info.test_accuracy - accuracy
    print(
        f"\n{name} on {cpu.describe()}: int8 accuracy {accuracy:.4f}, checkpoint "
        f"{info.test_accuracy:.4f}, drop {drop * 100:+.2f} points (quantize {t1 - t0:.1f} s, "
        f"test set {time.perf_counter() - t1:.1f} s)"
    )
    assert drop <= MAX_INT8_DROP, (
        f"{name} loses {drop * 100:.2f} points in int8 on {cpu.describe()}, "
        f"quantized with {quantize.settings()}"
    )


def test_run_int8_end_to_end_from_an_empty_cache(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "EDGESPLIT_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "edgesplit", "run", "--devices", "2", "--model", "squeezenet1_1",
         "--engine", "onnxruntime", "--precision", "int8", "--calibration-images", "64",
         "--wire", "fp16", "--limit", "256", "--batch-size", "32", "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=600, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["engine"], summary["precision"], summary["wire"]) == (
        "onnxruntime",
        "int8",
        "fp16",
    )
    assert summary["completed_images"] == 256
    assert summary["accuracy"] > 0.8
    # The coordinator quantized the model for this CPU kind and shipped it next to the fp32
    # one; the workers cut their int8 stages from it and quantized nothing (issue #17).
    assert not list((tmp_path / "cache" / "stages").glob("*-int8-*.onnx"))
    assert len(list((tmp_path / "cache" / "exports").glob("int8-*.onnx"))) == 1
    assert len(list((tmp_path / "cache" / "models").glob("*.onnx"))) == 2


def test_a_second_int8_install_sends_and_quantizes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The int8 model is quantized once by the coordinator (kept in its exports cache) and
    sent once; installing int8 stages again, from a new coordinator too, sends no byte."""
    monkeypatch.setenv("EDGESPLIT_CACHE_DIR", str(tmp_path))
    model, info = shipped("squeezenet1_1")
    running: RunningWorker = serve(WorkerConfig(name="solo", token="t", threads=1), "127.0.0.1:0")
    try:
        spec = {"token": "t", "devices": [{"name": "solo", "address": running.address}]}
        with Coordinator(parse_cluster(spec)) as c:
            n = c.load_model("squeezenet1_1", 10, 3, info.input_size, model)
            size = info.input_size
            calibration = torch.rand(16, 3, size, size, generator=torch.Generator().manual_seed(0))
            int8 = Execution(engine="onnxruntime", precision="int8", calibration=calibration)
            c.install_plan([("solo", 0, n)], execution=int8)
            (quantized,) = (tmp_path / "exports").glob("int8-*.onnx")
            stamp = quantized.stat().st_mtime_ns
            received = received_bytes(running)
            assert received > 0
            c.install_plan([("solo", 0, n)], reason="again")  # a new epoch: a cut
            assert received_bytes(running) == received
        with Coordinator(parse_cluster(spec)) as c:
            c.load_model("squeezenet1_1", 10, 3, info.input_size, model)
            c.install_plan([("solo", 0, n)], execution=int8)
            assert received_bytes(running) == received
        assert quantized.stat().st_mtime_ns == stamp
        assert len(list((tmp_path / "models").glob("*.onnx"))) == 2
        assert not list((tmp_path / "stages").glob("*-int8-*.onnx"))
    finally:
        running.stop(0.5)


def received_bytes(worker: RunningWorker) -> int:
    """Model bytes the worker received since it started (Status)."""
    from edgesplit.runtime.proto import edgesplit_pb2 as pb
    from edgesplit.runtime.proto import edgesplit_pb2_grpc as pb_grpc
    from edgesplit.runtime.transport import open_channel

    stub = pb_grpc.WorkerStub(open_channel(worker.address, "t"))
    return int(stub.Status(pb.StatusRequest(), timeout=30).model_bytes_received)
