"""How a run's stages execute: engine, precision, wire format, and the int8 calibration and
held-out images (``--precision auto``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from edgesplit import autoplan, data, engines, graph, planner
from edgesplit import precision as precision_auto
from edgesplit.profiler import Profile
from edgesplit.runconfig import RunConfig

MAX_CALIBRATION_BYTES = 32 * 1024 * 1024
"""Calibration images travel in each InstallPlan message, below the 64 MiB message limit."""


def calibration_images(
    config: RunConfig, dataset: data.ImageSet, size: int, notes: list[str]
) -> torch.Tensor:
    """Model inputs for int8 calibration: ``config.calibration_images`` images drawn (seeded)
    from the training split, or from the synthetic set itself."""
    wanted = config.calibration_images
    per_image = 4 * 3 * size * size
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
    return data.preprocess(source.images[index], source.info, size, 3)


def execution_for(
    config: RunConfig, dataset: data.ImageSet, size: int, notes: list[str]
) -> engines.Execution:
    """The engine, precision, wire format and calibration set the run's stages use."""
    engine, note = engines.resolve_engine(config.engine)
    if note:
        notes.append(note)
    # auto starts as int8 (profiled, calibrated) until the choice after profiling.
    precision = "int8" if config.precision == "auto" else config.precision
    engines.EngineSpec(engine, precision)  # int8 on torch fails here, before any work
    calibration = None
    if precision == "int8":
        calibration = calibration_images(config, dataset, size, notes)
    return engines.Execution(engine, precision, config.wire, calibration)


def held_out_images(config: RunConfig, size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Training images the int8 calibration does not use (the same seeded permutation, after
    the calibration's share), with labels; None for a dataset without labels."""
    if config.dataset == "synthetic":
        return None
    source = data.load(config.dataset, "train", data_dir=config.data_dir)
    if source.labels is None:
        return None
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(source), generator=generator)
    first = config.calibration_images
    index = order[first : first + precision_auto.HELD_OUT_IMAGES].sort().values
    return data.preprocess(source.images[index], source.info, size, 3), source.labels[index]


def choose_precision(
    config: RunConfig,
    ug: graph.UnitGraph,
    profile: Profile,
    planned: autoplan.PlanRequest,
    execution: engines.Execution,
    size: int,
    phase: Callable[[str], None],
) -> tuple[planner.Plan, precision_auto.PrecisionChoice, engines.Execution]:
    """``--precision auto`` after profiling both precisions: the plan, the choice and the
    execution to install (fp32 drops the calibration set)."""
    assert execution.calibration is not None
    phase("measuring the int8 accuracy drop on held-out training images")
    chosen, choice = precision_auto.auto(
        ug,
        lambda p: autoplan.plan(profile, replace(planned, precision=p)),
        execution.engine or "onnxruntime",
        execution.calibration,
        held_out_images(config, size),
        config.max_accuracy_drop,
    )
    if choice.precision == "fp32":
        execution = replace(execution, precision="fp32", calibration=None)
    return chosen, choice, execution
