"""``--precision auto``: int8 where it is faster and the measured accuracy drop stays inside the
bound, else fp32 (issue #9 item 4).

The planner plans the same profile twice, once with fp32 and once with int8 unit times. If the
int8 plan is not better for the objective, fp32 runs and nothing is measured. Otherwise the int8
plan's stages are built here on the run's engine (each calibrated on its own inputs, as the
workers will) and, chained, classify a held-out slice of the training split (images the
calibration did not use); fp32 classifies the same images. int8 runs only if the accuracy drop
in points stays inside ``--max-accuracy-drop``.

Every stage of a plan runs at one precision: an epoch carries one precision, and the drop is
measured for the quantized stages of the plan actually chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from edgesplit import engines, planner
from edgesplit.graph import UnitGraph

DEFAULT_MAX_ACCURACY_DROP = 1.0
"""Accuracy points int8 may cost (the issue's default)."""
HELD_OUT_IMAGES = 300
"""Training images, not used for calibration, that measure the drop."""

Measure = Callable[[tuple[tuple[int, int], ...]], tuple[float, float]]
"""Unit ranges of a plan -> (fp32 accuracy, int8 accuracy), both in [0, 1]."""


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
    fp32_acc, int8_acc = measure(tuple((s.start, s.end) for s in int8.stages))
    drop = (fp32_acc - int8_acc) * 100.0
    ok = drop <= max_drop_points
    reason = f"int8 costs {drop:.2f} accuracy points (bound {max_drop_points:g})"
    choice = PrecisionChoice(
        "int8" if ok else "fp32", reason if ok else f"{reason}: too many, fp32 runs",
        fp32.objective, fp32_value, int8_value, fp32_acc, int8_acc, drop, max_drop_points,
    )  # fmt: skip
    return (int8 if ok else fp32), choice


def accuracies(
    ug: UnitGraph,
    ranges: tuple[tuple[int, int], ...],
    engine: str,
    calibration: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
) -> tuple[float, float]:
    """Top-1 accuracy of the fp32 model and of ``ranges`` quantized to int8 on ``engine``
    (each stage calibrated on its own inputs), on the same ``images``."""
    spec = engines.EngineSpec(engine, "int8")
    stages = [engines.build_executor(ug, a, b, spec, calibration=calibration) for a, b in ranges]
    whole = ug.stage(0, ug.num_units)
    right_fp32 = right_int8 = 0
    with torch.inference_mode():
        for i in range(0, len(images), 64):
            x = images[i : i + 64]
            y = labels[i : i + 64]
            right_fp32 += int((whole(x).argmax(1) == y).sum())
            h = x
            for stage in stages:
                h = stage.run(h)
            right_int8 += int((h.argmax(1) == y).sum())
    n = max(1, len(images))
    return right_fp32 / n, right_int8 / n


def auto(
    ug: UnitGraph,
    profile_plan: Callable[[str], planner.Plan],
    engine: str,
    calibration: torch.Tensor,
    held_out: tuple[torch.Tensor, torch.Tensor] | None,
    max_drop_points: float,
) -> tuple[planner.Plan, PrecisionChoice]:
    """Plan at fp32 and int8 (``profile_plan(precision)``), measure the int8 plan's accuracy
    drop on ``held_out`` (images, labels) when int8 is faster, and choose (see :func:`choose`)."""
    fp32 = profile_plan("fp32")
    int8 = profile_plan("int8")
    measure: Measure | None = None
    if held_out is not None:
        images, labels = held_out

        def measure(ranges: tuple[tuple[int, int], ...]) -> tuple[float, float]:
            return accuracies(ug, ranges, engine, calibration, images, labels)

    return choose(fp32, int8, measure, max_drop_points)
