"""The ``torch`` engine: a stage's ``torch.fx`` module run eagerly (the exact reference)."""

from __future__ import annotations

import torch

from edgesplit.model.graph import UnitGraph


class TorchExecutor:
    """Runs units ``[start, end)`` of ``ug`` as the stage module built from the traced graph.

    Torch's intra-op threads are a per-process setting, so the worker (not this class) sets
    them."""

    engine = "torch"
    precision = "fp32"

    def __init__(self, ug: UnitGraph, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.module = ug.stage(start, end)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.module(x)

    def describe(self) -> dict[str, object]:
        return {
            "engine": self.engine,
            "precision": self.precision,
            "units": [self.start, self.end],
            "threads": torch.get_num_threads(),
            "torch_version": torch.__version__,
        }
