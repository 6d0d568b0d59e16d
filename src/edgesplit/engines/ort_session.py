"""An ONNX Runtime session for one stage, numpy in and out (no torch: the lean worker's engine).

CPU provider, ``threads`` intra-op threads, no spinning: a pipeline stage often waits for
input, and spinning threads would burn the device's CPU share and energy while it does.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgesplit.errors import ModelError

log = logging.getLogger(__name__)


def read_cached(path: Path) -> bytes | None:
    """A cached compiled file's bytes, or None when it is missing or unreadable (the caller
    builds it again)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read cached stage %s: %s", path, exc)
        return None


def write_cached(path: Path, data: bytes) -> None:
    """Atomically, so two workers on one host never see half a file; failure only costs time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".onnx")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot cache a compiled stage in %s: %s", path.parent, exc)


def make_session(model: bytes, threads: int) -> Any:
    """An ``onnxruntime.InferenceSession`` of ``model`` with edgesplit's options."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # ORT's CPU arena keeps a stage's peak activations between runs (MobileNetV2 units [0, 12)
    # at 224 px, batch 8: about 90 MB), but without it every run pays fresh pages: 1.5x the
    # time, measured here. The memory pattern (one block planned per run) cost 15 MB more than
    # the arena's own reuse at the same speed, so it is off.
    options.enable_mem_pattern = False
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


SUB_BATCH_INPUT_BYTES = 1 << 20
"""A stage runs its micro-batch in sub-batches of at most this much input (at least one
image). Inside a stage the activations are several times its input (MobileNetV2 expands its
channels 6x), and ONNX Runtime's arena keeps the peak of a run for the next one. Measured on an
AMD EPYC (Zen 4), 1 thread, MobileNetV2 units [0, 10) at 224 px, batch 8: RSS after a run
148 MB whole, 89 MB one image at a time, at an equal or lower time per batch (86-93 ms against
89-151 ms under a shared load); the whole model: 172 -> 115 MB, 221-235 against 243-254 ms.
At 32 px an image is 12 KB of input, so such a micro-batch still runs in one call. A stage 0
that takes uint8 images counts the float image its preprocessing makes (a 784-byte 28 x 28
image becomes 602 KB at 224 px): counting the uint8 bytes ran a batch of 8 at 224 px in one
call and kept its peak, 194 against 144 MB RSS for the first of two workers."""


def sub_batch(x: np.ndarray, image_bytes: int = 0) -> int:
    """Images per ONNX Runtime call for the batch ``x`` (see :data:`SUB_BATCH_INPUT_BYTES`);
    ``image_bytes``: what one image becomes inside the stage, when more than its input."""
    per_image = max(x[0].nbytes if len(x) else 1, image_bytes)
    return max(1, SUB_BATCH_INPUT_BYTES // max(1, per_image))


class OrtStage:
    """Runs units ``[start, end)`` from their ONNX graph: a float32 array in (uint8 images
    for a stage 0 that starts with its preprocessing, see :mod:`edgesplit.shared.imagespec`),
    a float32 array out."""

    engine = "onnxruntime"

    def __init__(
        self,
        model: bytes,
        start: int,
        end: int,
        precision: str,
        threads: int,
        path: Path | None = None,
        image_bytes: int = 0,
    ) -> None:
        self.session = make_session(model, threads)
        self.image_bytes = image_bytes
        """Bytes of one image after the stage's preprocessing (0: none; see :func:`sub_batch`)."""
        self.start, self.end = start, end
        self.precision = precision
        self.threads = threads
        self.path = path
        self._input = self.session.get_inputs()[0].name
        self._output = self.session.get_outputs()[0].name
        self.input_dtype = np.dtype(
            np.uint8 if self.session.get_inputs()[0].type == "tensor(uint8)" else np.float32
        )

    def run(self, x: np.ndarray) -> np.ndarray:
        if (x.dtype == np.uint8) != (self.input_dtype == np.uint8):
            raise ModelError(
                f"units [{self.start}, {self.end}) take {self.input_dtype} input, got {x.dtype}"
                " (uint8 images go to the stage that starts with their preprocessing)"
            )
        array = np.ascontiguousarray(x, dtype=self.input_dtype)
        step = sub_batch(array, self.image_bytes)
        if len(array) <= step:
            (y,) = self.session.run([self._output], {self._input: array})
            return np.asarray(y)
        parts = []
        for i in range(0, len(array), step):
            (y,) = self.session.run([self._output], {self._input: array[i : i + step]})
            if y.ndim == 0 or y.shape[0] != min(step, len(array) - i):
                # not batch-major (a custom model that folds its batch): run it whole
                (y,) = self.session.run([self._output], {self._input: array})
                return np.asarray(y)
            parts.append(y)
        return np.concatenate(parts)

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


@functools.cache
def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): nothing to trim
        return None


def release_memory() -> None:
    """Give freed heap back to the OS (glibc ``malloc_trim``): a worker builds and drops ONNX
    models and sessions (profiling builds one per unit), and glibc keeps freed pages otherwise,
    so the worker's RSS would stay at its peak."""
    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def lean_allocator(mmap_threshold_bytes: int = 1 << 20) -> None:
    """Make glibc hand big buffers back to the OS when they are freed: buffers of at least
    ``mmap_threshold_bytes`` are mmapped (glibc would otherwise raise that threshold to 32 MB
    after the first big free and keep activations in its heap), the heap is trimmed above 4 MB
    free, and at most 2 malloc arenas serve the worker's threads. A worker's activations are
    big and short-lived, so its RSS then follows what it holds, not its peak. Call once,
    before threads start; a no-op where libc is not glibc."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return
    libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold_bytes)
    libc.mallopt(M_TRIM_THRESHOLD, 4 << 20)
    libc.mallopt(M_ARENA_MAX, 2)
