"""Lean workers (issue #17): the coordinator compiles the model to ONNX, workers cut and run it
without torch; any model the coordinator can export runs distributed (``.py`` and ``.onnx``).

The unit tests cut real exported models; the slow ones start real ``edgesplit worker``
processes and real ``edgesplit run`` subprocesses on loopback and compare with a
single-process torch reference.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgesplit.config import parse_cluster
from edgesplit.engines import onnx_units
from edgesplit.engines.onnx_engine import compile_model
from edgesplit.engines.ort_session import OrtStage
from edgesplit.errors import ModelError
from edgesplit.model import data, graph, models
from edgesplit.runtime.coordinator import Coordinator
from edgesplit.runtime.proto import edgesplit_pb2 as pb

TOKEN = "lean-worker-test-token"
READY_TIMEOUT_S = 120.0
"""A guard against a worker that never starts, not a speed assertion."""

MYCNN = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Residual(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.a = nn.Conv2d(c, c, 3, padding=1)
            self.b = nn.Conv2d(c, c, 3, padding=1)

        def forward(self, x):
            return torch.relu(x + self.b(torch.relu(self.a(x))))


    class MyCNN(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
            self.block = Residual(8)
            self.down = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
            self.head = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes)
            )

        def forward(self, x):
            return self.head(self.down(self.block(self.stem(x))))


    class NoExport(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, num_classes)

        def forward(self, x):
            return self.fc(torch.special.i0(self.conv(x)).mean((2, 3)))
    """
)


@pytest.fixture
def mycnn(tmp_path: Path) -> Path:
    path = tmp_path / "mycnn.py"
    path.write_text(MYCNN)
    return path


def export_onnx(model: torch.nn.Module, path: Path, size: int) -> Path:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
        torch.onnx.export(
            model, (torch.randn(2, 3, size, size),), str(path), input_names=["images"],
            output_names=["logits"], dynamic_axes={"images": {0: "n"}, "logits": {0: "n"}},
            opset_version=17, dynamo=False,
        )  # fmt: skip
    return path


# --- unit tier: cutting exported models ------------------------------------------------------


@pytest.mark.parametrize("name", ["squeezenet1_1", "mobilenet_v3_small"])
def test_compiled_model_cuts_at_graph_units_and_chains_to_the_whole(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESPLIT_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model = models.build(name, num_classes=10)
    ug = graph.trace(model, (3, 32, 32))
    compiled = compile_model(ug, name, models.state_dict_sha256(model))
    again = compile_model(ug, name, models.state_dict_sha256(model))
    assert again.sha256 == compiled.sha256  # the same bytes: nothing travels twice
    assert compiled.num_units == ug.num_units
    assert compiled.units.out_shapes == tuple(tuple(u.out_shape) for u in ug.units)
    proto = onnx_units.parse_model(compiled.data)
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        reference = model(x).numpy()
    n = ug.num_units
    h = x.numpy()
    for a, b in [(0, 3), (3, n // 2), (n // 2, n)]:
        h = OrtStage(onnx_units.cut(proto, compiled.units, a, b), a, b, "fp32", 1).run(h)
    assert np.abs(h - reference).max() <= 1e-4 * max(1.0, float(np.abs(reference).max()))


def test_onnx_file_units_follow_graph_rule_and_no_cut_inside_a_residual(
    mycnn: Path, tmp_path: Path
) -> None:
    model = models.build(f"{mycnn}:MyCNN", num_classes=10)
    ug = graph.trace(model, (3, 32, 32))
    path = export_onnx(model, tmp_path / "m.onnx", 32)
    proto = onnx.load(str(path))
    units = onnx_units.find_units(proto)
    assert units.num_units == ug.num_units == 4
    assert units.out_shapes == tuple(tuple(u.out_shape) for u in ug.units)
    assert units.params == tuple(u.params for u in ug.units)
    # A tensor inside the residual block: the block's input is still live there.
    inner = next(n.output[0] for n in proto.graph.node if n.name.startswith("/block/a/"))
    with pytest.raises(ModelError, match="from outside"):
        onnx_units.cut_between(proto, inner, units.output_name, (8, 32, 32), None)
    onnx_units.write_units(proto, units)
    assert onnx_units.read_units(proto) == units


def test_fixed_batch_onnx_and_bad_metadata_are_refused(mycnn: Path, tmp_path: Path) -> None:
    model = models.build(f"{mycnn}:MyCNN", num_classes=10)
    path = tmp_path / "fixed.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False)
    with pytest.raises(ModelError, match="fixed batch size 1"):
        onnx_units.find_units(onnx.load(str(path)))
    with pytest.raises(ModelError, match="malformed"):
        onnx_units.ModelUnits.from_json('{"input": "x", "output": 3}')
    with pytest.raises(ModelError, match="disagrees"):
        onnx_units.ModelUnits("x", "y", (3,), ("a",), ((1,),), (0,), (0,))
    dynamic = onnx.load(str(export_onnx(model, tmp_path / "dyn.onnx", 32)))
    units = onnx_units.find_units(dynamic)
    onnx_units.write_units(dynamic, units)
    weight = dynamic.graph.initializer[0]
    weight.data_location = onnx.TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../../../etc/passwd"
    with pytest.raises(ModelError, match="external files"):
        onnx_units.read_units(dynamic)


def test_a_model_that_cannot_be_exported_names_the_operation(
    mycnn: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESPLIT_CACHE_DIR", str(tmp_path))
    model = models.build(f"{mycnn}:NoExport", num_classes=10)
    ug = graph.trace(model, (3, 16, 16))
    with pytest.raises(ModelError, match=r"operation aten::i0 has no ONNX export"):
        compile_model(ug, "noexport", models.state_dict_sha256(model))


def test_user_model_spec_errors_say_what_was_expected(mycnn: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        models.build(f"{mycnn.parent / 'nope.py'}:MyCNN")
    with pytest.raises(ModelError, match="no callable 'Missing'"):
        models.build(f"{mycnn}:Missing")
    with pytest.raises(ModelError, match=r"\.onnx file"):
        models.build("nosuchnet")


# --- slow tier: real worker processes -------------------------------------------------------


def start_worker(name: str, tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    ready = tmp_path / f"{name}.ready"
    env = {**os.environ, "EDGESPLIT_TOKEN": TOKEN, "EDGESPLIT_CACHE_DIR": str(tmp_path / name)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgesplit", "worker", "--name", name, "--threads", "1",
         "--listen", "127.0.0.1:0", "--ready-file", str(ready)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"worker {name} did not start (exit code {proc.poll()})")
        time.sleep(0.05)
    return proc, ready.read_text().strip()


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[list[tuple[subprocess.Popen[bytes], str]]]:
    workers = [start_worker(f"w{i}", tmp_path) for i in range(2)]
    yield workers
    for proc, _ in workers:
        proc.terminate()
    for proc, _ in workers:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_a_worker_serving_a_run_has_no_libtorch_mapped(
    two_workers: list[tuple[subprocess.Popen[bytes], str]],
) -> None:
    cluster = parse_cluster(
        {"token": TOKEN, "devices": [{"name": f"w{i}", "address": a} for i, (_, a) in
                                     enumerate(two_workers)]}
    )  # fmt: skip
    torch.manual_seed(0)
    model = models.build("squeezenet1_1", num_classes=10)
    inputs = [(i, torch.randn(4, 3, 32, 32)) for i in range(4)]
    with Coordinator(cluster) as c:
        c.check()
        n = c.load_model("squeezenet1_1", 10, 3, 32, model)
        c.install_plan([("w0", 0, n // 2), ("w1", n // 2, n)])
        record = c.run(inputs, window=2)
        for i, (proc, _) in enumerate(two_workers):  # while they serve: still up, plan held
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
            assert "libtorch" not in maps and "libc10" not in maps
            status = c.stub(f"w{i}").Status(pb.StatusRequest(), timeout=10)
            assert status.torch_version == "" and status.onnxruntime_version
            assert status.model_bytes_received > 0
    with torch.inference_mode():
        for rid, x in inputs:
            reference = model(x)
            assert torch.allclose(record.outputs[rid], reference, rtol=1e-4, atol=1e-5)


def run_cli(tmp_path: Path, *args: str) -> Path:
    out = tmp_path / "run"
    env = {**os.environ, "EDGESPLIT_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "edgesplit", "run", *args, "--out", str(out), "--json"],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


def predictions(out: Path) -> list[int]:
    rows = (out / "predictions.csv").read_text().splitlines()[1:]
    return [int(row.split(",")[1]) for row in rows]


def reference(model: torch.nn.Module, dataset: data.ImageSet, size: int, limit: int) -> list[int]:
    got: list[int] = []
    with torch.inference_mode():
        for _, x, _ in dataset.batches(8, size, 3, limit):
            got.extend(model(x).argmax(1).tolist())
    return got


@pytest.mark.slow
def test_run_a_user_py_model_on_an_image_folder(mycnn: Path, tmp_path: Path) -> None:
    from torchvision.io import write_png

    generator = torch.Generator().manual_seed(1)
    for label in ("cat", "dog"):
        folder = tmp_path / "images" / label
        folder.mkdir(parents=True)
        for i in range(12):
            image = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8, generator=generator)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torchvision.io's deprecation note
                write_png(image, str(folder / f"{i}.png"))
    spec = f"{mycnn}:MyCNN"
    dataset_name = f"imagefolder:{tmp_path / 'images'}"
    out = run_cli(
        tmp_path, "--model", spec, "--dataset", dataset_name, "--devices", "2",
        "--input-size", "32", "--batch-size", "8", "--partition", "0-2,2-",
    )  # fmt: skip
    torch.manual_seed(0)  # what the run does for a model without a checkpoint (seed 0)
    model = models.build(spec, num_classes=2)
    assert predictions(out) == reference(model, data.load(dataset_name), 32, 24)


@pytest.mark.slow
def test_run_an_onnx_file_on_three_devices(mycnn: Path, tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = models.build(f"{mycnn}:MyCNN", num_classes=10)
    path = export_onnx(model, tmp_path / "model.onnx", 32)
    out = run_cli(
        tmp_path, "--model", str(path), "--devices", "3", "--limit", "48",
        "--batch-size", "8", "--partition", "0-1,1-2,2-",
    )  # fmt: skip
    dataset = data.load("fashion-mnist", "test")
    assert predictions(out) == reference(model, dataset, 32, 48)


def test_a_big_micro_batch_runs_in_sub_batches_with_the_whole_batch_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 224 px an image is 602 KB of input, so a stage runs one image per ONNX Runtime call
    (its arena then keeps one image's activations, not eight); the output is the same as one
    call on the whole batch."""
    from edgesplit.engines import ort_session

    monkeypatch.setenv("EDGESPLIT_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model = models.build("squeezenet1_1", num_classes=10)
    ug = graph.trace(model, (3, 224, 224))
    compiled = compile_model(ug, "squeezenet1_1", models.state_dict_sha256(model))
    proto = onnx_units.parse_model(compiled.data)
    stage = OrtStage(onnx_units.cut(proto, compiled.units, 0, 3), 0, 3, "fp32", 1)
    x = np.random.default_rng(0).standard_normal((5, 3, 224, 224)).astype(np.float32)
    assert ort_session.sub_batch(x) == 1
    assert ort_session.sub_batch(x[:, :, :32, :32]) >= 5  # 32 px: the batch in one call
    (whole,) = stage.session.run(None, {stage._input: x})
    got = stage.run(x)
    assert got.shape == whole.shape
    assert np.abs(got - whole).max() <= 1e-5 * max(1.0, float(np.abs(whole).max()))
