"""CPU per image of a run, every process counted, and its ``cpu_tax`` (issue #19).

Pure reductions, no clock: the coordinator's process CPU time is measured by the job around
the run, each worker's comes from its own samples (``process_cpu_percent`` over the interval
since its previous sample, every 0.2 s by default), integrated over the run's wall time.

``cpu_tax`` is the run's CPU-seconds per image, all processes together, over what one process
running the whole model on the same engine and precision spends per image: the profile's
``model_cpu_ms`` (the whole model timed as one stage on the device, see
:mod:`edgesplit.runtime.profiling`), not a run. 1.0 would be a pipeline whose coordinator and
hand-offs cost nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any


def sampled_cpu_s(
    samples: Sequence[Mapping[str, Any]], started: float, finished: float
) -> tuple[float, float]:
    """``(cpu_s, covered_s)``: a process's CPU seconds inside ``[started, finished]`` from its
    samples, and the seconds of that window the samples cover.

    A sample at ``t`` reports ``process_cpu_percent`` (100 = one core) for ``(t_prev, t]``; the
    part of that interval inside the window counts. The first sample has no ``t_prev`` and
    counts for nothing."""
    ordered = sorted(samples, key=lambda s: float(s["t"]))
    cpu_s = covered_s = 0.0
    for prev, now in itertools.pairwise(ordered):
        a, b = max(float(prev["t"]), started), min(float(now["t"]), finished)
        if b > a:
            cpu_s += float(now["process_cpu_percent"]) / 100.0 * (b - a)
            covered_s += b - a
    return cpu_s, covered_s


def devices_cpu_s(
    samples: Mapping[str, Sequence[Mapping[str, Any]]],
    devices: Sequence[str],
    started: float,
    finished: float,
) -> dict[str, float]:
    """CPU seconds of each device's worker process over the run. Where the samples cover only
    part of the window (a run shorter than a few sample intervals, a lost device), the rate over
    the covered part is taken for the whole window; a device without two samples is left out."""
    wall = finished - started
    out: dict[str, float] = {}
    for name in devices:
        cpu_s, covered_s = sampled_cpu_s(samples.get(name, ()), started, finished)
        if covered_s > 0:
            out[name] = cpu_s * wall / covered_s
    return out


def cpu_tax(
    coordinator_cpu_s: float | None,
    devices_s: Mapping[str, float],
    images: int,
    reference_ms_per_image: float | None,
) -> tuple[float | None, float | None]:
    """``(cpu_ms_per_image, cpu_tax)``: all processes' CPU per image computed by the run, and
    that over the one-process reference; None where a part is unknown."""
    if coordinator_cpu_s is None or images <= 0 or not devices_s:
        return None, None
    per_image = (coordinator_cpu_s + sum(devices_s.values())) * 1000.0 / images
    if not reference_ms_per_image:
        return per_image, None
    return per_image, per_image / reference_ms_per_image
