"""How a run's units become stages when the planner does not choose them: a partition given
by hand or by name (``equal``, ``balanced``), the balanced re-plan after a device loss, and the
stage descriptions the per-device table shows."""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable

import torch

from edgesplit.errors import ConfigError
from edgesplit.metrics.summary import StageInfo
from edgesplit.model import graph
from edgesplit.model.partition import Ranges, balanced_ranges, parse_partition, split_devices
from edgesplit.runconfig import ASSUMED_BANDWIDTH_MBPS, RunConfig
from edgesplit.shared.plan import Stage


def unit_times_ms(ug: graph.UnitGraph, batch: torch.Tensor, repeats: int = 3) -> list[float]:
    """Median time of each unit on this machine for ``batch`` (used to balance stages)."""
    times = []
    x = batch
    with torch.inference_mode():
        for unit in ug.units:
            stage = ug.stage(unit.index, unit.index + 1)
            samples = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                y = stage(x)
                samples.append((time.perf_counter() - t0) * 1000.0)
            times.append(statistics.median(samples))
            x = y
    return times


def unit_costs(config: RunConfig, ug: graph.UnitGraph) -> tuple[list[float], list[float]]:
    """Per unit: compute ms measured here, and ms to hand its output over a link."""
    dtype = getattr(ug, "input_dtype", torch.float32)  # uint8 images for a graph that
    batch = torch.zeros(config.batch_size, *ug.input_shape, dtype=dtype)  # preprocesses them
    # A hand-off costs its transfer time over the link (gigabit when the link is unshaped), so
    # the balance avoids cutting where the tensor is large.
    mbps = config.bandwidth_mbps or ASSUMED_BANDWIDTH_MBPS
    transfer_ms = [u.out_bytes * config.batch_size * 8 / (mbps * 1e3) for u in ug.units]
    return unit_times_ms(ug, batch), transfer_ms


Costs = tuple[list[float], list[float]]
"""Per unit: compute ms, and ms to hand its output on (see :func:`unit_costs`)."""


def equal_ranges(num_units: int, stages: int) -> Ranges:
    """``stages`` contiguous ranges whose sizes differ by at most one unit."""
    bounds = [round(i * num_units / stages) for i in range(stages + 1)]
    return tuple((a, b) for a, b in itertools.pairwise(bounds))


def choose_ranges(
    config: RunConfig, ug: graph.UnitGraph, devices: int, costs: Costs | None = None
) -> Ranges | None:
    """The partition's unit ranges, or None when the planner chooses them (``auto``)."""
    name = config.partition_method
    if name == "auto":
        return None
    stages = min(devices, ug.num_units)
    if name == "equal":
        return equal_ranges(ug.num_units, stages)
    if name != "balanced":
        ranges = parse_partition(split_devices(name)[0], ug.num_units)
        if len(ranges) > devices:
            raise ConfigError(
                f"partition {config.partition!r} has {len(ranges)} stages but the cluster has "
                f"{devices} devices; expected at most {devices} stages"
            )
        return ranges
    times, cuts = costs or unit_costs(config, ug)
    return balanced_ranges(times, stages, cuts)


def replanner(initial: list[Stage], costs: Costs) -> Callable[[list[str]], list[Stage]]:
    """The plan when the usable devices change: the initial plan while all its devices are
    usable, else the same number of stages (at most one per usable device) balanced by
    ``costs`` (measured before the run, so a re-plan takes no time)."""
    times, cuts = costs

    def replan(usable: list[str]) -> list[Stage]:
        if all(device in usable for device, _, _ in initial):
            return initial
        stages = min(len(initial), len(usable), len(times))
        ranges = balanced_ranges(times, stages, cuts)
        return [Stage(device, a, b) for device, (a, b) in zip(usable, ranges, strict=False)]

    return replan


def stage_infos(ug: graph.UnitGraph, ranges: Ranges, names: list[str]) -> list[StageInfo]:
    return [
        StageInfo(
            device=name,
            start=a,
            end=b,
            first_layer=ug.units[a].first,
            last_layer=ug.units[b - 1].last,
            params=ug.params_in(a, b),
        )
        for name, (a, b) in zip(names, ranges, strict=False)
    ]
