"""Stage executors: the torch reference, onnxruntime fp32 against it, the cache, and export
failures that name the operation."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from edgesplit.engines import (
    EngineSpec,
    Execution,
    StageKey,
    onnx_engine,
    resolve_engine,
)
from edgesplit.engines.build import build_executor
from edgesplit.errors import ConfigError, ModelError
from edgesplit.model import graph
from tests.conftest import traced

ORT = EngineSpec("onnxruntime", "fp32")
TORCH = EngineSpec("torch", "fp32")


def key(name: str, start: int, end: int) -> StageKey:
    return StageKey(name, "0" * 64, (3, 32, 32), start, end)


def test_specs_refuse_what_cannot_run() -> None:
    with pytest.raises(ConfigError, match="engine must be one of torch, onnxruntime"):
        EngineSpec("tensorrt")
    with pytest.raises(ConfigError, match="int8 needs --engine onnxruntime"):
        EngineSpec("torch", "int8")
    with pytest.raises(ConfigError, match="precision must be one of fp32, int8"):
        EngineSpec("onnxruntime", "fp8")
    with pytest.raises(ConfigError, match="int8 needs calibration images"):
        Execution("onnxruntime", "int8")
    with pytest.raises(ConfigError, match="wire format must be one of"):
        Execution(wire="bf16")
    assert resolve_engine(None) == ("onnxruntime", None)
    assert resolve_engine("torch") == ("torch", None)


def test_torch_executor_is_the_stage_module_bit_for_bit() -> None:
    _, ug = traced("squeezenet1_1", 32)
    x = torch.randn(3, 3, 32, 32)
    executor = build_executor(ug, 0, 4, TORCH)
    with torch.inference_mode():
        assert torch.equal(executor.run(x), ug.stage(0, 4)(x))
    assert executor.describe()["engine"] == "torch"


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "shufflenet_v2_x0_5"])
def test_onnxruntime_stages_match_torch_for_any_batch(name: str, tmp_path: Path) -> None:
    model, ug = traced(name, 32)
    n = ug.num_units
    bounds = [0, n // 3, 2 * n // 3, n]
    stages = [
        build_executor(ug, a, b, ORT, 1, key(name, a, b), cache_dir=tmp_path)
        for a, b in itertools.pairwise(bounds)
    ]
    for batch in (1, 5):
        x = torch.randn(batch, 3, 32, 32)
        h = x
        for stage in stages:
            h = stage.run(h)
        with torch.inference_mode():
            reference = model(x)
        scale = reference.abs().max().item()
        assert h.shape == reference.shape
        assert (h - reference).abs().max().item() <= 1e-4 * scale
        assert torch.equal(h.argmax(1), reference.argmax(1))
    assert len(list(tmp_path.glob("*-fp32-*.onnx"))) == 3


def test_cached_stage_is_reused_not_exported_again(tmp_path: Path) -> None:
    _, ug = traced("squeezenet1_1", 32)
    first = build_executor(ug, 2, 6, ORT, 1, key("squeezenet1_1", 2, 6), cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.onnx")
    assert first.describe()["cached_at"] == str(path)
    # A stale (different) file under the same key is what the next build must load.
    other = onnx_engine.export_stage(ug, 2, 3)
    path.write_bytes(other)
    again = build_executor(ug, 2, 6, ORT, 1, key("squeezenet1_1", 2, 6), cache_dir=tmp_path)
    x = torch.randn(2, *onnx_engine.stage_input_shape(ug, 2))
    assert again.run(x).shape[1:] == torch.Size(ug.units[2].out_shape)


class _Bessel(nn.Module):
    """A conv, then an operation the ONNX exporter lacks (aten::i0), then a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(4, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.special.i0(self.a(x)))


def test_unexportable_stage_names_the_operation_and_torch_still_runs_it() -> None:
    torch.manual_seed(0)
    ug = graph.trace(_Bessel(), (3, 16, 16))
    with pytest.raises(ModelError, match=r"operation aten::i0 is not supported.*--engine torch"):
        build_executor(ug, 0, ug.num_units, ORT)
    out = build_executor(ug, 0, ug.num_units, TORCH).run(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 4, 12, 12)


def test_int8_stage_needs_calibration() -> None:
    _, ug = traced("squeezenet1_1", 32)
    with pytest.raises(ModelError, match="calibration"):
        build_executor(ug, 0, 3, EngineSpec("onnxruntime", "int8"))


def test_int8_stage_calibrates_on_its_own_inputs(tmp_path: Path) -> None:
    model, ug = traced("squeezenet1_1", 32)
    n = ug.num_units
    torch.manual_seed(1)
    calibration = torch.randn(64, 3, 32, 32)
    spec = EngineSpec("onnxruntime", "int8")
    k = key("squeezenet1_1", n // 2, n)
    stage = build_executor(ug, n // 2, n, spec, 1, k, calibration, tmp_path)
    assert stage.describe()["precision"] == "int8"
    x = torch.randn(8, 3, 32, 32)
    with torch.inference_mode():
        h = ug.stage(0, n // 2)(x)
        reference = model(x)
    out = stage.run(h)
    # Quantization error is real but small against the output scale.
    assert (out - reference).abs().max().item() <= 0.2 * reference.abs().max().item()
    assert len(list(tmp_path.glob("*-int8-*.onnx"))) == 1
