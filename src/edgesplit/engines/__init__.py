"""Stage executors: what runs a unit range ``[start, end)`` of a traced model on one device.

Two engines sit behind one small interface (build, run a batch, describe):

* ``torch`` — the stage's ``torch.fx`` module run eagerly: the exact reference.
* ``onnxruntime`` — the same stage module exported to ONNX (dynamic batch dimension) and run
  by an ONNX Runtime session whose intra-op threads match the device's CPU share; ``fp32``, or
  ``int8`` after static post-training quantization (QDQ, per-channel weights) calibrated on the
  stage's own inputs.

The engine matters more than the split (issue #9: MobileNetV2 at 224, one thread, eager torch
32.5 img/s, ONNX Runtime fp32 139 img/s, int8 327 img/s), so edgesplit's stages run on the fast
engine by default. :func:`edgesplit.engines.build.build_executor` is also what the profiler
uses to time units per engine and precision.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from edgesplit.errors import ConfigError
from edgesplit.shared.names import check_wire

if TYPE_CHECKING:
    import torch

ENGINES = ("torch", "onnxruntime")
PRECISIONS = ("fp32", "int8")
DEFAULT_CALIBRATION_IMAGES = 256
"""Training images the int8 calibration runs through each stage (the issue's suggestion)."""


class Executor(Protocol):
    """Runs one stage: a float32 batch ``[N, *in_shape]`` in, a float32 batch out."""

    engine: str
    precision: str

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """The stage's output for ``x``; thread-safe, no autograd."""
        ...

    def describe(self) -> dict[str, object]:
        """Engine, precision, threads, versions and where the compiled stage lives."""
        ...


@dataclass(frozen=True)
class EngineSpec:
    """Which engine and numeric precision run a stage. int8 needs the onnxruntime engine."""

    engine: str = "onnxruntime"
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}"
            )
        if self.engine == "torch" and self.precision != "fp32":
            raise ConfigError(
                f"the torch engine runs fp32 only, got precision {self.precision!r}; "
                "int8 needs --engine onnxruntime"
            )


@dataclass(frozen=True)
class Execution:
    """How the stages of a plan epoch execute, sent with every InstallPlan.

    ``engine=None`` lets each worker use its default. ``wire`` is the activation format between
    stages (a link's own ``wire`` in the cluster file wins). ``calibration`` holds model inputs
    for int8 (every stage runs its torch prefix on them to calibrate on its own inputs)."""

    engine: str | None = None
    precision: str = "fp32"
    wire: str = "fp32"
    calibration: torch.Tensor | None = None

    def __post_init__(self) -> None:
        EngineSpec(self.engine or "onnxruntime", self.precision)
        check_wire(self.wire)
        if self.precision == "int8" and self.calibration is None:
            raise ConfigError("precision int8 needs calibration images")


@dataclass(frozen=True)
class StageKey:
    """What a compiled stage depends on, so it can be cached on disk (issue #9: model,
    checkpoint sha256, unit range, calibration set, engine version)."""

    model: str
    weights_sha256: str
    input_shape: tuple[int, ...]
    """Per-sample model input shape (channels, height, width)."""
    start: int
    end: int

    def digest(self, *extra: str) -> str:
        """A short hex digest of this key plus ``extra`` parts (precision, versions, ...)."""
        text = json.dumps([self.model, self.weights_sha256, list(self.input_shape),
                           self.start, self.end, *extra])  # fmt: skip
        return hashlib.sha256(text.encode()).hexdigest()[:24]


@functools.cache
def onnxruntime_available() -> bool:
    """Whether the onnxruntime (and onnx) packages can be imported here."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def default_engine() -> tuple[str, str | None]:
    """``("onnxruntime", None)`` when it is installed, else ``("torch", note)`` with a note for
    the user saying why the slower engine runs."""
    if onnxruntime_available():
        return "onnxruntime", None
    return "torch", (
        "onnxruntime is not installed, so stages run on eager torch (several times slower); "
        "`pip install onnxruntime onnx` to get the fast engine"
    )


def resolve_engine(engine: str | None) -> tuple[str, str | None]:
    """``engine`` checked against what is installed, or the default with its note."""
    if engine is None:
        return default_engine()
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "onnxruntime" and not onnxruntime_available():
        raise ConfigError(
            "engine onnxruntime is not installed here; `pip install onnxruntime onnx` "
            "or use --engine torch"
        )
    return engine, None


__all__ = [
    "DEFAULT_CALIBRATION_IMAGES",
    "ENGINES",
    "PRECISIONS",
    "EngineSpec",
    "Execution",
    "Executor",
    "StageKey",
    "default_engine",
    "onnxruntime_available",
    "resolve_engine",
]
