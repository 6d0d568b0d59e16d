"""The torch engine on a worker: the zoo model rebuilt from its name and verified weights.

Imported only when a plan or profile asks for ``--engine torch`` (it imports torch, about 1 GB
of resident memory); the onnxruntime path never loads it. Only zoo models have a torch
reference here: a worker never receives Python code, so a user's own model runs on onnxruntime.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from edgesplit.engines.torch_engine import TorchExecutor
from edgesplit.errors import EdgesplitError, ModelError
from edgesplit.model import graph, models
from edgesplit.runtime.weights import from_bytes
from edgesplit.shared.imagespec import ImageSpec

FX_LOCK = threading.Lock()
"""torch.fx tracing patches module globals, so two workers in one process (tests, the
in-process emulator) must not trace or build stage modules at the same time."""


def build(name: str, num_classes: int, in_channels: int, input_size: int, sha256: str,
          data: bytes, prep: ImageSpec | None = None) -> graph.UnitGraph:  # fmt: skip
    """Build zoo model ``name``, load safetensors ``data`` (checked against ``sha256``), trace
    (behind the preprocessing ``prep`` that the ONNX model's stage 0 starts with, if any).
    Raises :class:`ModelError` saying what does not fit. Only zoo names: a worker never runs
    a user's Python code."""
    if name not in models.KNOWN_MODELS:
        raise ModelError(
            f"the torch engine on a worker runs zoo models only ({', '.join(models.KNOWN_MODELS)}"
            f"), not {name!r}; use the onnxruntime engine"
        )
    try:
        state = from_bytes(data)
        model = models.build(name, num_classes=num_classes, in_channels=in_channels)
    except EdgesplitError as exc:
        raise ModelError(f"torch reference: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"weights do not fit {name}: {first}") from None
    actual = models.state_dict_sha256(model)
    if actual != sha256:
        raise ModelError(f"weights digest mismatch: expected {sha256}, got {actual}")
    with FX_LOCK:
        return graph.trace(model, (in_channels, input_size, input_size), prep)


class TorchStage:
    """Units ``[start, end)`` run eagerly in torch (the exact reference), numpy in and out."""

    engine = "torch"
    precision = "fp32"

    def __init__(self, ug: graph.UnitGraph, start: int, end: int) -> None:
        with FX_LOCK:
            self._executor = TorchExecutor(ug, start, end)
        self.start, self.end = start, end
        self._uint8 = start == 0 and ug.prep is not None

    def run(self, x: np.ndarray) -> np.ndarray:
        if (x.dtype == np.uint8) != self._uint8:
            wanted = "uint8" if self._uint8 else "float32"
            raise ModelError(
                f"units [{self.start}, {self.end}) take {wanted} input, got {x.dtype}"
                " (uint8 images go to the stage that starts with their preprocessing)"
            )
        # torch wants writable memory; a link frame's input is a read-only view of the frame.
        array = np.ascontiguousarray(x) if x.flags.writeable else np.array(x)
        return self._executor.run(torch.from_numpy(array)).numpy()

    def describe(self) -> dict[str, object]:
        return self._executor.describe()


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
