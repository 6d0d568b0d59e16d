"""A ``.onnx`` file as the coordinator's unit graph: units found on the ONNX graph itself.

:class:`OnnxUnitGraph` offers what the coordinator reads of a
:class:`~edgesplit.model.graph.UnitGraph` (units with shapes, parameters and MACs; stages for
unit ranges), so ``split``, ``plan``, ``profile`` and ``run`` take a ``.onnx`` file like a zoo
model. Its stages run in ONNX Runtime (fp32), torch tensors in and out; there is no torch module
behind them, so ``--engine torch`` does not apply. Cut points:
:func:`edgesplit.engines.onnx_units.find_units`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgesplit.engines import onnx_units
from edgesplit.engines.onnx_units import CompiledModel
from edgesplit.engines.ort_session import make_session
from edgesplit.errors import ModelError
from edgesplit.model.graph import Unit


def compile_file(path: Path) -> CompiledModel:
    """The ``.onnx`` file at ``path`` with its units found and written into its metadata: the
    bytes the coordinator ships (their sha256 differs from the file's)."""
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read ONNX model {path}: {exc.strerror or exc}") from None
    model: Any = onnx_units.parse_model(data)
    units = onnx_units.find_units(model)
    onnx_units.write_units(model, units)
    compiled = CompiledModel.from_bytes(model.SerializeToString())
    try:  # the file must run here, or it will not run on the workers either
        make_session(compiled.data, 1)
    except Exception as exc:  # onnxruntime's pybind errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"onnxruntime cannot load {path}: {first[:300]}") from None
    return compiled


class OnnxStage:
    """Units ``[start, end)`` of an ONNX model as a callable on torch tensors (fp32, ORT)."""

    def __init__(self, data: bytes) -> None:
        self._session = make_session(data, torch.get_num_threads())
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to(torch.float32).numpy())
        (y,) = self._session.run([self._output], {self._input: array})
        return torch.from_numpy(np.asarray(y))


class OnnxUnitGraph:
    """The units of a compiled ONNX model, read like a :class:`~edgesplit.model.graph.UnitGraph`."""

    def __init__(self, compiled: CompiledModel) -> None:
        self.compiled = compiled
        u = compiled.units
        self.input_shape = u.input_shape
        self.prep = u.prep
        self.input_dtype = torch.uint8 if u.input_dtype == "uint8" else torch.float32
        self.model_input_shape = u.prep.model_shape if u.prep is not None else u.input_shape
        self.units = [
            Unit(
                index=i,
                nodes=(u.tensor_before(i), u.tensor_after(i)),
                params=u.params[i],
                macs=u.macs[i],
                out_shape=u.out_shapes[i],
                out_bytes=4 * int(np.prod(u.out_shapes[i])),
            )
            for i in range(u.num_units)
        ]
        self._proto: Any = None

    @property
    def num_units(self) -> int:
        return len(self.units)

    @property
    def total_params(self) -> int:
        return sum(self.compiled.units.params)

    def params_in(self, start: int, end: int) -> int:
        return sum(u.params for u in self.units[start:end])

    def macs_in(self, start: int, end: int) -> int:
        return sum(u.macs for u in self.units[start:end])

    def stage_bytes(self, start: int, end: int) -> bytes:
        """Units ``[start, end)`` as a standalone fp32 ONNX model."""
        if self._proto is None:
            self._proto = onnx_units.parse_model(self.compiled.data)
        return onnx_units.cut(self._proto, self.compiled.units, start, end)

    def stage(self, start: int, end: int) -> OnnxStage:
        return OnnxStage(self.stage_bytes(start, end))
