"""A run against its plan's prediction, for every objective (issue #19): pure functions of the
measured figures.

The planner predicts the *unloaded* latency of a micro-batch (nothing else in flight), while a
run keeps a window of micro-batches in flight, so its p50 counts queueing. The measured
unloaded latency is the median over micro-batches that were alone in flight (no other
upload-to-result interval overlaps theirs) when there are at least :data:`MIN_ALONE`, else the
p50 of the first micro-batches: the ones uploaded before the first result arrived, which
queue behind at most the window's others at the start.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping

from edgesplit.shared.runsummary import Predicted, Versus, VersusPlan

MIN_ALONE = 3
"""Micro-batches alone in flight needed to take their median as the unloaded latency."""


def unloaded_latency_ms(intervals: Mapping[int, tuple[float, float]]) -> tuple[float | None, str]:
    """``(latency_ms, how)`` from each request's ``(upload start, result arrival)`` in seconds."""
    spans = sorted(intervals.values())
    if not spans:
        return None, "no micro-batch completed"
    alone = []
    reach = float("-inf")  # the latest result arrival of the requests started before this one
    for i, (start, end) in enumerate(spans):
        starts_after = i + 1 == len(spans) or spans[i + 1][0] > end
        if reach < start and starts_after:
            alone.append((end - start) * 1000.0)
        reach = max(reach, end)
    if len(alone) >= MIN_ALONE:
        return statistics.median(alone), f"median of {len(alone)} micro-batches alone in flight"
    first_result = min(end for _, end in spans)
    first = [(end - start) * 1000.0 for start, end in spans if start < first_result]
    return statistics.median(first), (
        f"p50 of the first {len(first)} micro-batches (uploaded before the first result; "
        f"never one alone in flight)"
    )


def _versus(predicted: float, measured: float | None, how: str) -> Versus:
    error = (measured - predicted) / predicted if measured is not None and predicted else None
    return Versus(predicted=predicted, measured=measured, error=error, how=how)


def versus_plan(
    predicted: Predicted,
    throughput_ips: float | None,
    intervals: Mapping[int, tuple[float, float]],
    energy_j_per_image: float | None,
) -> VersusPlan:
    """The measured throughput, unloaded latency and J/image against ``predicted``."""
    latency, how = unloaded_latency_ms(intervals)
    return VersusPlan(
        objective=predicted.objective,
        throughput_ips=_versus(
            predicted.throughput_ips, throughput_ips, "images over the wall time"
        ),
        latency_ms=_versus(predicted.latency_ms, latency, how),
        energy_j_per_image=_versus(
            predicted.energy_j_per_image, energy_j_per_image, "all devices, the whole run"
        ),
    )


def lines(versus: VersusPlan) -> list[str]:
    """The comparison as the CLI prints it, the planned objective first."""
    text = {
        "throughput": _line("throughput", versus.throughput_ips, "img/s", ".1f"),
        "latency": _line("unloaded latency", versus.latency_ms, "ms", ".1f"),
        "energy": _line("energy", versus.energy_j_per_image, "J/image", ".4f"),
    }
    order = [versus.objective, *(k for k in text if k != versus.objective)]
    return [text[k] for k in order if k in text]


def _line(what: str, v: Versus, unit: str, fmt: str) -> str:
    predicted = f"predicted {v.predicted:{fmt}} {unit}"
    if v.measured is None:
        return f"{what}: {predicted}, not measured ({v.how})"
    error = f" ({v.error:+.0%} against the prediction)" if v.error is not None else ""
    how = f"; {v.how}" if what == "unloaded latency" else ""
    return f"{what}: measured {v.measured:{fmt}} {unit}{error}, {predicted}{how}"
