"""Build the executor for a unit range on an engine (kept out of the package ``__init__`` so
that the engines, which import its types, and this factory, which imports the engines, form no
cycle)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgesplit.engines import EngineSpec, Executor, StageKey

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from edgesplit.model.graph import UnitGraph


def build_executor(
    ug: UnitGraph,
    start: int,
    end: int,
    spec: EngineSpec,
    threads: int = 1,
    key: StageKey | None = None,
    calibration: torch.Tensor | None = None,
    cache_dir: Path | None = None,
    stage_calibration: torch.Tensor | None = None,
) -> Executor:
    """An executor for units ``[start, end)`` (half-open) of ``ug`` on ``spec``'s engine.

    ``threads`` is the intra-op thread count (onnxruntime; torch threads are per process and
    set by the worker). ``key`` lets onnxruntime reuse an exported or quantized stage from
    ``cache_dir`` (default: the user cache); without it nothing is written to disk.
    ``calibration`` is a batch of *model inputs* for int8: the executor runs the torch prefix
    ``[0, start)`` on it to get this stage's inputs; ``stage_calibration`` instead gives those
    inputs directly (the profiler computes them unit by unit). Raises :class:`ModelError` naming the
    operation when a stage cannot be exported or loaded.
    """
    if spec.engine == "torch":
        from edgesplit.engines.torch_engine import TorchExecutor

        return TorchExecutor(ug, start, end)
    from edgesplit.engines.onnx_engine import build_onnx_executor

    return build_onnx_executor(
        ug, start, end, spec, threads, key, calibration, cache_dir, stage_calibration
    )
