"""The int8 accuracy gate (issue #15) and ``--precision auto`` (issue #9 item 4).

int8 kernels differ by CPU kind (:mod:`edgesplit.engines.cpu`), so the drop is measured where
the model runs: the plan's int8 stages are installed on its devices, each built by its worker
for that worker's CPU kind, and a held-out slice of the training split (images the calibration
did not use) runs through them; the coordinator's fp32 model classifies the same images. The
result is cached per model, weights, unit ranges, the devices' CPU kinds and ONNX Runtime
versions, and the calibration and held-out images (:class:`ClusterGate`).

- ``--precision int8`` stops with :class:`AccuracyError`, naming the drop and the CPU kinds, when
  the drop exceeds ``--max-accuracy-drop``.
- ``--precision auto`` plans the same profile twice, with fp32 and with int8 unit times. If the
  int8 plan is not better for the objective, fp32 runs and nothing is measured; otherwise int8
  runs only if its measured drop stays inside the bound.

Every stage of a plan runs at one precision: an epoch carries one precision, and the drop is
measured for the quantized stages of the plan actually chosen.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from edgesplit import engines
from edgesplit.errors import AccuracyError
from edgesplit.plan import planner
from edgesplit.shared.plan import Stages

if TYPE_CHECKING:
    from edgesplit.runtime.coordinator import Coordinator

DEFAULT_MAX_ACCURACY_DROP = 1.0
"""Accuracy points int8 may cost (the issue's default)."""
HELD_OUT_IMAGES = 300
"""Training images, not used for calibration, that measure the drop."""

Measure = Callable[[Stages], tuple[float, float]]
"""A plan's stages -> (fp32 accuracy, int8 accuracy), both in [0, 1]."""


def describe_drop(points: float) -> str:
    """``"costs 0.42 accuracy points"``, or ``"gains 0.67 ..."`` when int8 scored higher."""
    if points < 0:
        return f"gains {-points:.2f} accuracy points"
    return f"costs {points:.2f} accuracy points"


@dataclass(frozen=True)
class PrecisionChoice:
    """What ``--precision auto`` chose, and the numbers it chose on (``summary.json``)."""

    precision: str
    reason: str
    objective: str
    fp32_value: float
    """The objective's predicted value with fp32 stages (lower is better)."""
    int8_value: float | None
    fp32_accuracy: float | None = None
    int8_accuracy: float | None = None
    drop_points: float | None = None
    max_drop_points: float = DEFAULT_MAX_ACCURACY_DROP

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def choose(
    fp32: planner.Plan, int8: planner.Plan | None, measure: Measure | None, max_drop_points: float
) -> tuple[planner.Plan, PrecisionChoice]:
    """The plan to run and why. ``int8`` is None when it cannot be planned; ``measure`` is
    None when the accuracy cannot be measured (no labels), which keeps fp32."""
    fp32_value = planner.objective_value(fp32)

    def keep_fp32(reason: str, int8_value: float | None) -> tuple[planner.Plan, PrecisionChoice]:
        choice = PrecisionChoice(
            "fp32", reason, fp32.objective, fp32_value, int8_value, max_drop_points=max_drop_points
        )
        return fp32, choice

    if int8 is None:
        return keep_fp32("no int8 plan", None)
    int8_value = planner.objective_value(int8)
    if int8_value >= fp32_value:
        return keep_fp32(
            f"int8 predicts no gain for {fp32.objective} ({int8_value:.4g} >= {fp32_value:.4g})",
            int8_value,
        )
    if measure is None:
        return keep_fp32("the accuracy drop cannot be measured without labels", int8_value)
    fp32_acc, int8_acc = measure(int8.assignment())
    drop = (fp32_acc - int8_acc) * 100.0
    ok = drop <= max_drop_points
    reason = f"int8 {describe_drop(drop)} (bound {max_drop_points:g})"
    choice = PrecisionChoice(
        "int8" if ok else "fp32", reason if ok else f"{reason}: too many, fp32 runs",
        fp32.objective, fp32_value, int8_value, fp32_acc, int8_acc, drop, max_drop_points,
    )  # fmt: skip
    return (int8 if ok else fp32), choice


@dataclass(frozen=True)
class GateResult:
    """The int8 drop measured on a plan's devices (``summary.json``'s ``int8_gate``)."""

    fp32_accuracy: float
    int8_accuracy: float
    images: int
    kinds: tuple[str, ...]
    """The CPU kind of each stage's device, in stage order."""
    cached: bool = False

    @property
    def drop_points(self) -> float:
        return (self.fp32_accuracy - self.int8_accuracy) * 100.0

    def describe(self) -> str:
        kinds = ", ".join(dict.fromkeys(self.kinds))
        return (
            f"int8 {describe_drop(self.drop_points)} on {self.images} held-out training images "
            f"through the stages as built for {kinds}"
            + (" (measured by an earlier run)" if self.cached else "")
        )

    def to_dict(self) -> dict[str, object]:
        return {**dict(self.__dict__), "kinds": list(self.kinds), "drop_points": self.drop_points}


def check_int8(result: GateResult, max_drop_points: float) -> None:
    """:class:`AccuracyError` when ``result`` loses more than ``max_drop_points``."""
    if result.drop_points > max_drop_points:
        kinds = ", ".join(dict.fromkeys(result.kinds))
        raise AccuracyError(
            f"int8 loses {result.drop_points:.2f} accuracy points on {kinds} "
            f"(fp32 {result.fp32_accuracy:.4f}, int8 {result.int8_accuracy:.4f} on "
            f"{result.images} held-out training images); --max-accuracy-drop allows "
            f"{max_drop_points:g}. Use --precision fp32 or auto, or allow a larger drop"
        )


class ClusterGate:
    """Measures the int8 drop of a plan on the devices that will run it (see the module doc).

    ``held_out`` is (images, labels); ``fp32`` the coordinator's whole model (the exact
    reference); ``execution`` the int8 execution the run installs (engine, wire, calibration).
    Installing a plan makes it the coordinator's current one: the caller installs the plan it
    runs afterwards, which the workers serve from their compiled-stage cache."""

    def __init__(
        self,
        coordinator: Coordinator,
        fp32: Callable[[torch.Tensor], torch.Tensor],
        model_id: str,
        execution: engines.Execution,
        held_out: tuple[torch.Tensor, torch.Tensor],
        cache: Path | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.fp32 = fp32
        self.model_id = model_id
        self.execution = dataclasses.replace(execution, precision="int8")
        self.images, self.labels = held_out
        self.cache = cache
        self.last: GateResult | None = None
        """The last measurement (for the run's summary)."""

    def _key(self, stages: Stages) -> str:
        from edgesplit.engines.onnx_engine import calibration_id

        infos = self.coordinator.device_infos
        parts = [
            self.model_id,
            [(infos[d].cpu_kind, infos[d].onnxruntime_version, a, b) for d, a, b in stages],
            calibration_id(self.execution.calibration) if self.execution.calibration is not None
            else None,
            calibration_id(self.images),
            self.execution.wire,
        ]  # fmt: skip
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]

    def measure(self, stages: Stages) -> GateResult:
        kinds = tuple(self.coordinator.device_infos[d].cpu_kind for d, _, _ in stages)
        path = (self.cache or _gate_cache_dir()) / f"{self._key(stages)}.json"
        try:
            known = json.loads(path.read_text())
            self.last = GateResult(known["fp32"], known["int8"], known["images"], kinds, True)
            return self.last
        except (OSError, ValueError, KeyError, TypeError):
            pass
        self.coordinator.install_plan(
            list(stages), reason="int8 accuracy gate", execution=self.execution
        )
        chunks = [(i, self.images[i : i + 32]) for i in range(0, len(self.images), 32)]
        record = self.coordinator.run(chunks, window=2 * len(stages))
        right_int8 = right_fp32 = 0
        with torch.inference_mode():
            for i, x in chunks:
                y = self.labels[i : i + len(x)]
                right_int8 += int((record.outputs[i].argmax(1) == y).sum())
                right_fp32 += int((self.fp32(x).argmax(1) == y).sum())
        n = max(1, len(self.images))
        result = GateResult(right_fp32 / n, right_int8 / n, len(self.images), kinds)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"fp32": result.fp32_accuracy, "int8": result.int8_accuracy,
                                   "images": result.images, "kinds": list(kinds)}))  # fmt: skip
        tmp.replace(path)
        self.last = result
        return result

    def accuracies(self, stages: Stages) -> tuple[float, float]:
        """``measure`` as ``--precision auto``'s :data:`Measure`."""
        result = self.measure(stages)
        return result.fp32_accuracy, result.int8_accuracy


def _gate_cache_dir() -> Path:
    from edgesplit.runtime.weights import cache_dir

    return cache_dir().parent / "int8-gate"
