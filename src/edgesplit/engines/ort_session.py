"""An ONNX Runtime session for one stage, numpy in and out (no torch: the lean worker's engine).

CPU provider, ``threads`` intra-op threads, no spinning: a pipeline stage often waits for
input, and spinning threads would burn the device's CPU share and energy while it does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def make_session(model: bytes, threads: int) -> Any:
    """An ``onnxruntime.InferenceSession`` of ``model`` with edgesplit's options."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class OrtStage:
    """Runs units ``[start, end)`` from their ONNX graph: a float32 array in, one out."""

    engine = "onnxruntime"

    def __init__(
        self,
        model: bytes,
        start: int,
        end: int,
        precision: str,
        threads: int,
        path: Path | None = None,
    ) -> None:
        self.session = make_session(model, threads)
        self.start, self.end = start, end
        self.precision = precision
        self.threads = threads
        self.path = path
        self._input = self.session.get_inputs()[0].name
        self._output = self.session.get_outputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(x, dtype=np.float32)
        (y,) = self.session.run([self._output], {self._input: array})
        return np.asarray(y)

    def describe(self) -> dict[str, object]:
        import onnxruntime as ort

        return {
            "engine": self.engine,
            "precision": self.precision,
            "units": [self.start, self.end],
            "threads": self.threads,
            "onnxruntime_version": ort.__version__,
            "cached_at": str(self.path) if self.path else None,
        }
