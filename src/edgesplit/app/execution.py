"""How a run's stages execute: engine, precision, wire format, and the int8 calibration and
held-out images (``--precision auto``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from edgesplit import engines
from edgesplit.model import data, graph
from edgesplit.plan import autoplan, planner
from edgesplit.plan import precision as precision_auto
from edgesplit.plan.profile import Profile
from edgesplit.runconfig import RunConfig
from edgesplit.shared.plan import Stages

if TYPE_CHECKING:
    from edgesplit.runtime.coordinator import Coordinator

MAX_CALIBRATION_BYTES = 32 * 1024 * 1024
"""Calibration images travel in each InstallPlan message, below the 64 MiB message limit."""


def calibration_images(
    config: RunConfig, dataset: data.ImageSet, size: int, notes: list[str], raw: bool = False
) -> torch.Tensor:
    """Model inputs for int8 calibration: ``config.calibration_images`` images drawn (seeded)
    from the training split, or from the synthetic set itself (uint8 as they are when
    ``raw``, for a graph that starts with their preprocessing)."""
    wanted = config.calibration_images
    per_image = dataset.images[0].numel() if raw and len(dataset) else 4 * 3 * size * size
    if wanted * per_image > MAX_CALIBRATION_BYTES:
        wanted = max(1, MAX_CALIBRATION_BYTES // per_image)
        notes.append(
            f"int8 calibration uses {wanted} images: {config.calibration_images} at {size} px "
            f"would exceed the {MAX_CALIBRATION_BYTES >> 20} MiB message budget"
        )
    if dataset.name == "synthetic":
        source = dataset
        notes.append("synthetic dataset: int8 calibration uses the synthetic images")
    else:
        source = data.load(config.dataset, "train", data_dir=config.data_dir)
    generator = torch.Generator().manual_seed(config.seed)
    count = min(wanted, len(source))
    index = torch.randperm(len(source), generator=generator)[:count].sort().values
    return source.model_inputs(index, size, raw)


def execution_for(
    config: RunConfig, dataset: data.ImageSet, size: int, notes: list[str], raw: bool = False
) -> engines.Execution:
    """The engine, precision, wire format and calibration set the run's stages use (``raw``:
    the model takes uint8 images, see :func:`calibration_images`)."""
    engine, note = engines.resolve_engine(config.engine)
    if note:
        notes.append(note)
    # auto starts as int8 (profiled, calibrated) until the choice after profiling.
    precision = "int8" if config.precision == "auto" else config.precision
    engines.EngineSpec(engine, precision)  # int8 on torch fails here, before any work
    calibration = None
    if precision == "int8":
        calibration = calibration_images(config, dataset, size, notes, raw)
    return engines.Execution(engine, precision, config.wire, calibration)


def held_out_images(
    config: RunConfig, size: int, raw: bool = False
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Training images the int8 calibration does not use (the same seeded permutation, after
    the calibration's share), with labels (uint8 images when ``raw``); None for a dataset
    without labels."""
    if config.dataset == "synthetic":
        return None
    source = data.load(config.dataset, "train", data_dir=config.data_dir)
    if source.labels is None:
        return None
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(source), generator=generator)
    first = config.calibration_images
    index = order[first : first + precision_auto.HELD_OUT_IMAGES].sort().values
    return source.model_inputs(index, size, raw), source.labels[index]


def int8_gate(
    config: RunConfig,
    coordinator: Coordinator,
    ug: graph.UnitGraph,
    model_id: str,
    execution: engines.Execution,
    size: int,
    notes: list[str],
    raw: bool = False,
) -> precision_auto.ClusterGate | None:
    """The int8 accuracy gate of an int8 (or auto) run; None for fp32, or with a note when the
    dataset has no labels to measure with (``raw``: the model takes uint8 images)."""
    if execution.precision != "int8":
        return None
    held_out = held_out_images(config, size, raw)
    if held_out is None:
        notes.append("int8 accuracy not checked: the dataset has no labels")
        return None
    whole = ug.stage(0, ug.num_units)
    return precision_auto.ClusterGate(coordinator, whole, model_id, execution, held_out)


def choose_precision(
    config: RunConfig,
    profile: Profile,
    planned: autoplan.PlanRequest,
    execution: engines.Execution,
    gate: precision_auto.ClusterGate | None,
    phase: Callable[[str], None],
) -> tuple[planner.Plan, precision_auto.PrecisionChoice, engines.Execution]:
    """``--precision auto`` after profiling both precisions: the plan, the choice and the
    execution to install (fp32 drops the calibration set). The int8 plan's drop is measured on
    its devices by ``gate`` (None: no labels, fp32 runs)."""
    assert execution.calibration is not None
    fp32 = autoplan.plan(profile, replace(planned, precision="fp32"))
    int8 = autoplan.plan(profile, replace(planned, precision="int8"))
    measure: precision_auto.Measure | None = None
    if gate is not None:

        def measure(stages: Stages) -> tuple[float, float]:
            phase("measuring the int8 accuracy drop on the plan's devices")
            return gate.accuracies(stages)

    chosen, choice = precision_auto.choose(fp32, int8, measure, config.max_accuracy_drop)
    if choice.precision == "fp32":
        execution = replace(execution, precision="fp32", calibration=None)
    return chosen, choice, execution
