"""int8 stages: static post-training quantization with ONNX Runtime's quantization tools.

``torch.ao.quantization`` is deprecated (issue #9), so int8 goes through ONNX Runtime: an fp32
ONNX model (the whole model, which the coordinator quantizes once per CPU kind in the cluster
and ships, :func:`~edgesplit.engines.onnx_engine.compile_int8`; or one stage) is pre-processed
(shape inference, graph optimisation), calibrated with MinMax ranges on its own inputs and
rewritten in QDQ format with per-channel int8 weights. The activation and weight types and
``reduce_range`` follow the CPU kind the model will run on (:mod:`edgesplit.engines.cpu`,
issue #15), each for a measured reason:

- ``x86-vnni``: uint8 activations x int8 weights, full range. VNNI accumulates in int32, and
  this is ONNX Runtime's fastest x86 path.
- ``x86-avx512``, ``x86-avx2``, ``x86``: the same types with ``reduce_range`` (7-bit weights).
  Without VNNI the kernels add pairs of uint8 x int8 products in int16 and saturate; with
  weights in [-64, 64] a pair stays below 2 x 255 x 64 = 32640 < 32767. Measured under
  ``qemu-x86_64-static -cpu Haswell`` (AVX2, no VNNI) on the first 2,000 Fashion-MNIST test
  images, SqueezeNet 1.1 in three int8 stages: full range 0.8695 (fp32 0.9080),
  ``reduce_range`` 0.9115, uint8 weights 0.9090; the same files on a VNNI CPU gave 0.9065,
  0.9115 and 0.9090. ``reduce_range`` keeps the faster uint8 x int8 kernels, so it is chosen.
- ``arm64-*`` and other architectures: int8 activations x int8 weights, full range (ONNX
  Runtime's quantization guide calls S8S8 in QDQ format the default to try first; on the
  Pi's kind it is checked under ``qemu-aarch64-static -cpu cortex-a72`` by ``make check-arm``).

Fully connected layers (``Gemm``) stay fp32: in these CNNs they are the classifier head, a tiny
share of the compute, and quantizing them cost MobileNetV3-Small 1.5 points of Fashion-MNIST
test accuracy (0.9054 -> 0.8907) against 0.3 points with them in fp32 (0.9026), measured here.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from edgesplit.engines import cpu
from edgesplit.errors import ModelError

if TYPE_CHECKING:  # a lean worker quantizes numpy arrays and has no torch
    import torch

log = logging.getLogger(__name__)

FP32_OPS = ("Gemm",)
"""ONNX operation types left unquantized (see the module doc)."""
CALIBRATION_BATCH = 32
"""Calibration images per session run: bounded memory, same ranges as one big batch."""


@dataclass(frozen=True)
class Int8Settings:
    """How a stage is quantized for one CPU kind (see the module doc for why)."""

    activations: Literal["uint8", "int8"]
    reduce_range: bool
    weights: Literal["int8"] = "int8"

    def as_dict(self) -> dict[str, object]:
        """Every setting that changes the quantized bytes (part of the stage cache key)."""
        return {
            "format": "QDQ",
            "calibrate": "MinMax",
            "per_channel": True,
            "weights": self.weights,
            "activations": self.activations,
            "reduce_range": self.reduce_range,
            "fp32_ops": list(FP32_OPS),
        }


_VNNI = Int8Settings(activations="uint8", reduce_range=False)
_X86_NO_VNNI = Int8Settings(activations="uint8", reduce_range=True)
_SYMMETRIC = Int8Settings(activations="int8", reduce_range=False)


def settings(kind: str | None = None) -> Int8Settings:
    """The int8 settings for CPU ``kind`` (default: this machine's, :func:`cpu.cpu_kind`)."""
    kind = kind or cpu.cpu_kind()
    if kind == "x86-vnni":
        return _VNNI
    if kind in cpu.X86_KINDS:
        return _X86_NO_VNNI
    return _SYMMETRIC


class _Reader:
    """Feeds calibration batches to ONNX Runtime's calibrator (its CalibrationDataReader)."""

    def __init__(self, input_name: str, inputs: torch.Tensor | np.ndarray) -> None:
        self._input_name = input_name
        self._inputs = inputs
        self._it: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, int(self._inputs.shape[0]), CALIBRATION_BATCH):
            chunk = self._inputs[i : i + CALIBRATION_BATCH]
            if not isinstance(chunk, np.ndarray):
                chunk = chunk.detach().cpu().numpy()
            dtype = np.uint8 if chunk.dtype == np.uint8 else np.float32  # images stay uint8
            yield {self._input_name: np.ascontiguousarray(chunk, dtype=dtype)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()


def preprocessing_nodes(graph: Any) -> list[str]:
    """Names of the nodes that turn uint8 images into the model's input (everything before
    the first weighted operation of a graph whose input is uint8, see
    :mod:`edgesplit.shared.imagespec`): they stay float, as normalised pixels quantized to 8 bits on
    top of 8-bit images would only lose precision and save nothing."""
    from edgesplit.engines.onnx_units import WEIGHTED_OPS

    uint8 = 2  # onnx.TensorProto.UINT8
    if not any(i.type.tensor_type.elem_type == uint8 for i in graph.input):
        return []
    names = []
    for node in graph.node:
        if node.op_type in WEIGHTED_OPS:
            break
        names.append(node.name)
    return names


def quantize_stage(
    fp32_model: bytes,
    stage_inputs: torch.Tensor | np.ndarray,
    input_name: str,
    kind: str | None = None,
) -> bytes:
    """The int8 (QDQ) version of an fp32 ONNX stage for CPU ``kind`` (default: this
    machine's), calibrated on ``stage_inputs`` (a float32 batch of this stage's inputs).
    Raises :class:`ModelError` when ONNX Runtime cannot quantize it."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    if stage_inputs.shape[0] < 1:
        raise ModelError("int8 calibration needs at least 1 image, got 0")
    chosen = settings(kind)
    activations = QuantType.QInt8 if chosen.activations == "int8" else QuantType.QUInt8
    with tempfile.TemporaryDirectory(prefix="edgesplit-quant-") as tmp:
        raw, prepared, out = Path(tmp, "fp32.onnx"), Path(tmp, "prep.onnx"), Path(tmp, "q.onnx")
        raw.write_bytes(fp32_model)
        try:
            quant_pre_process(str(raw), str(prepared), skip_symbolic_shape=True)
            graph = onnx.load(str(prepared)).graph
            keep = [node.name for node in graph.node if node.op_type in FP32_OPS]
            keep += preprocessing_nodes(graph)
            quantize_static(
                str(prepared),
                str(out),
                _Reader(input_name, stage_inputs),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=chosen.reduce_range,
                activation_type=activations,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=keep,
            )
        except Exception as exc:  # onnx and onnxruntime raise many types here
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ModelError(
                f"onnxruntime cannot quantize this stage to int8: {type(exc).__name__}: {first}; "
                "use --precision fp32"
            ) from exc
        return out.read_bytes()
