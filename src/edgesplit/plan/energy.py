"""Energy per device and per image: measured where a device has a meter, modelled elsewhere.

A metered device's samples carry ``power_w`` (see :mod:`edgesplit.runtime.power`); its joules are
the trapezoid-rule integral of those readings over the run's wall time (first upload to last
result), the power at the window's edges interpolated between the readings around them (held at
the nearest reading where none lies beyond an edge). A device without readings gets the model:
``idle_w + (busy_w - idle_w) * u`` watts at utilisation ``u`` (the fraction of all its cores
busy; linear, see :class:`edgesplit.config.PowerModel`) for the whole run. ``u`` is the worker
process's CPU time over wall time divided by the device's cores: an emulated device's cores are
its CPU share; a real device's are all its cores, and there the system-wide CPU % is used (it
includes everything the device does). Every device of the cluster draws power for the whole
run, also the ones the plan left idle; every device also gets the model's figure, so a metered
run shows how far the model is off.
"""

from __future__ import annotations

import bisect
import collections
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgesplit.config import ClusterSpec
from edgesplit.shared.runsummary import DeviceRow, RunSummary

MODEL = "model"


@dataclass(frozen=True)
class DeviceEnergy:
    name: str
    source: str
    """``hwmon:<chip>``, ``pmic``, ``command`` (measured) or ``model``."""
    utilisation: float
    power_w: float
    """Mean power over the run: measured joules / wall time, or the model's."""
    energy_j: float
    energy_j_per_image: float
    model_power_w: float
    """The power model's watts at ``utilisation`` (equal to ``power_w`` when not metered)."""
    model_energy_j: float
    readings: int = 0
    """Power readings the integral used (0: modelled)."""

    @property
    def metered(self) -> bool:
        return self.source != MODEL


def integrate_j(points: Sequence[tuple[float, float]], start: float, end: float) -> float | None:
    """Joules of the (time s, watts) readings over ``[start, end]`` by the trapezoid rule;
    None without readings. Readings need not be sorted; the edges are interpolated (or held at
    the nearest reading outside the readings' span)."""
    if not points or end <= start:
        return None if not points else 0.0
    ordered = sorted(points)
    times = [t for t, _ in ordered]

    def at(t: float) -> float:
        i = bisect.bisect_left(times, t)
        if i == 0:
            return ordered[0][1]
        if i == len(ordered):
            return ordered[-1][1]
        (t0, w0), (t1, w1) = ordered[i - 1], ordered[i]
        return w0 if t1 == t0 else w0 + (w1 - w0) * (t - t0) / (t1 - t0)

    series = [(start, at(start)), *((t, w) for t, w in ordered if start < t < end), (end, at(end))]
    return sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in itertools.pairwise(series))


def power_readings(samples: Sequence[Mapping[str, Any]]) -> tuple[str, list[tuple[float, float]]]:
    """The meter's name (the most frequent ``power_source`` among readings, else ``model``) and
    its (t, watts) readings."""
    points = [(float(s["t"]), float(s["power_w"])) for s in samples if s.get("power_w") is not None]
    sources = collections.Counter(
        str(s.get("power_source")) for s in samples if s.get("power_w") is not None
    )
    return (sources.most_common(1)[0][0] if sources else MODEL), points


def utilisation(row: DeviceRow | None, cpus: float | None) -> float:
    """Mean utilisation in [0, 1] of a device during the run (0 when it was not sampled)."""
    if row is None:
        return 0.0
    if cpus is not None:
        percent = row.cpu_percent or 0.0
        return min(1.0, max(0.0, percent / 100.0 / cpus))
    percent = row.system_cpu_percent if row.system_cpu_percent is not None else 0.0
    return min(1.0, max(0.0, percent / 100.0))


def device_energy(
    spec: ClusterSpec,
    rows: Sequence[DeviceRow],
    samples: Mapping[str, Sequence[Mapping[str, Any]]],
    started: float,
    finished: float,
    images: int,
) -> list[DeviceEnergy]:
    """Joules of every device of ``spec`` over ``[started, finished]`` (coordinator clock, as
    the samples' ``t``), and per image of the run."""
    by_name = {row.name: row for row in rows}
    wall_s = max(finished - started, 0.0)
    out = []
    for device in spec.devices:
        cpus = device.emulation.cpus if device.emulation is not None else None
        u = utilisation(by_name.get(device.name), cpus)
        model_w = device.power.power_w(u)
        source, points = power_readings(samples.get(device.name, ()))
        measured = integrate_j(points, started, finished)
        energy = measured if measured is not None else model_w * wall_s
        out.append(
            DeviceEnergy(
                name=device.name,
                source=source if measured is not None else MODEL,
                utilisation=u,
                power_w=energy / wall_s if wall_s > 0 else model_w,
                energy_j=energy,
                energy_j_per_image=energy / images if images else 0.0,
                model_power_w=model_w,
                model_energy_j=model_w * wall_s,
                readings=len(points) if measured is not None else 0,
            )
        )
    return out


def energy_summary(
    energies: Sequence[DeviceEnergy], images: int, started: float, finished: float
) -> dict[str, object]:
    """The ``energy`` entry of ``summary.json``: ``energy_j`` is measured where a device has a
    meter and modelled elsewhere; ``model_energy_j`` is the power model's figure for all;
    ``window_t`` the interval integrated over (Unix seconds, coordinator clock)."""
    total = sum(e.energy_j for e in energies)
    model_total = sum(e.model_energy_j for e in energies)
    return {
        "window_t": [started, finished],
        "energy_j": total,
        "energy_j_per_image": total / images if images else 0.0,
        "model_energy_j": model_total,
        "model_energy_j_per_image": model_total / images if images else 0.0,
        "metered": [e.name for e in energies if e.metered],
        "devices": {
            e.name: {
                "source": e.source,
                "utilisation": round(e.utilisation, 4),
                "power_w": e.power_w,
                "energy_j": e.energy_j,
                "energy_j_per_image": e.energy_j_per_image,
                "model_power_w": e.model_power_w,
                "model_energy_j": e.model_energy_j,
                "readings": e.readings,
            }
            for e in energies
        },
    }


# --- calibrating the power model from a meter ------------------------------------------------

MIN_FIT_READINGS = 5
MIN_FIT_SPAN = 0.25
"""The utilisations of the readings must spread this far for a line through them to say
anything about both ends."""


@dataclass(frozen=True)
class PowerFit:
    """A device's linear power model fitted to its meter: watts = idle_w + (busy_w - idle_w) x u.

    ``busy_w`` is the line at u = 1 (all cores busy); ``residual_w`` is the root mean square of
    the readings' distance from the line."""

    idle_w: float
    busy_w: float
    residual_w: float
    readings: int
    utilisation_min: float
    utilisation_max: float
    source: str

    def to_dict(self) -> dict[str, float | int | str]:
        return {
            "idle_w": self.idle_w,
            "busy_w": self.busy_w,
            "residual_w": self.residual_w,
            "readings": self.readings,
            "utilisation_min": self.utilisation_min,
            "utilisation_max": self.utilisation_max,
            "source": self.source,
        }


def fit_power(points: Sequence[tuple[float, float]], source: str) -> PowerFit | str:
    """Least-squares line through (utilisation in [0, 1], watts) readings; or why there is none
    (too few readings, utilisations too close together, a line with a non-positive end)."""
    if len(points) < MIN_FIT_READINGS:
        return f"{len(points)} power readings, need {MIN_FIT_READINGS}"
    us = [u for u, _ in points]
    ws = [w for _, w in points]
    span = max(us) - min(us)
    if span < MIN_FIT_SPAN:
        return f"utilisation spans only {span:.2f} (need {MIN_FIT_SPAN}); idle and busy unclear"
    n = len(points)
    mu, mw = sum(us) / n, sum(ws) / n
    sxx = sum((u - mu) ** 2 for u in us)
    slope = sum((u - mu) * (w - mw) for u, w in points) / sxx
    idle = mw - slope * mu
    busy = idle + slope
    if idle <= 0 or busy <= 0:
        return f"fitted line has idle {idle:.2f} W, busy {busy:.2f} W; expected both > 0"
    residual = (sum((w - idle - slope * u) ** 2 for u, w in points) / n) ** 0.5
    return PowerFit(idle, busy, residual, n, min(us), max(us), source)


def fit_readings(
    samples: Sequence[Mapping[str, Any]], cpus: float | None
) -> tuple[str, list[tuple[float, float]]]:
    """(source, [(utilisation, watts)]) from a device's samples, one point per interval between
    two consecutive readings: a sample's CPU % covers the time since the previous sample, and
    the mean power over that time is, as in :func:`integrate_j`, the mean of the readings at its
    ends. Utilisation as in :func:`utilisation` (process CPU over the CPU share on an emulated
    device, system CPU on a real one)."""
    ordered = sorted(samples, key=lambda s: float(s["t"]))
    points = []
    sources: collections.Counter[str] = collections.Counter()
    for before, after in itertools.pairwise(ordered):
        if before.get("power_w") is None or after.get("power_w") is None:
            continue
        if cpus is not None:
            u = float(after["process_cpu_percent"]) / 100.0 / cpus
        else:
            u = float(after["cpu_percent"]) / 100.0
        watts = (float(before["power_w"]) + float(after["power_w"])) / 2
        points.append((min(1.0, max(0.0, u)), watts))
        sources[str(after.get("power_source"))] += 1
    return (sources.most_common(1)[0][0] if sources else MODEL), points


# --- predicted vs measured --------------------------------------------------------------------


@dataclass(frozen=True)
class EnergyComparison:
    """A metered run's J/image next to what was predicted for it, each with the error of the
    measurement against it ((measured - predicted) / predicted)."""

    measured_j_per_image: float
    sources: dict[str, str]
    """Device -> source, every device of the cluster (``model`` where not metered)."""
    model_j_per_image: float
    planned_j_per_image: float | None

    @staticmethod
    def error(measured: float, predicted: float | None) -> float | None:
        return (measured - predicted) / predicted if predicted else None

    def lines(self) -> list[str]:
        metered = [f"{n} {s}" for n, s in self.sources.items() if s != MODEL]
        modelled = [n for n, s in self.sources.items() if s == MODEL]
        where = ", ".join(metered) + (f"; {', '.join(modelled)} modelled" if modelled else "")
        out = [f"energy measured {self.measured_j_per_image:.4g} J/image ({where})"]
        predictions = [("power model at the measured CPU use", self.model_j_per_image)]
        if self.planned_j_per_image is not None:
            predictions.insert(0, ("plan's prediction", self.planned_j_per_image))
        for what, value in predictions:
            error = self.error(self.measured_j_per_image, value)
            against = f" ({error:+.1%} against it)" if error is not None else ""
            out.append(f"  {what}: {value:.4g} J/image{against}")
        return out


def comparison(summary: RunSummary) -> EnergyComparison | None:
    """The comparison for a run's ``summary.json``; None when no device was metered (then
    "measured" would be the model again)."""
    spent = summary.energy
    if spent is None or not spent.metered:
        return None
    planned = summary.predicted.energy_j_per_image if summary.predicted is not None else None
    return EnergyComparison(
        measured_j_per_image=spent.energy_j_per_image,
        sources={n: d.source for n, d in spent.devices.items()},
        model_j_per_image=spent.model_energy_j_per_image,
        planned_j_per_image=planned,
    )


def device_rows(summary: RunSummary) -> list[dict[str, Any]]:
    """Per device of a run's ``summary.json``: source, measured and modelled joules, error."""
    if summary.energy is None:
        return []
    rows = []
    for name, d in summary.energy.devices.items():
        measured = d.source != MODEL
        rows.append(
            {
                "device": name,
                "source": d.source,
                "power_w": d.power_w,
                "energy_j": d.energy_j,
                "model_energy_j": d.model_energy_j,
                "error": EnergyComparison.error(d.energy_j, d.model_energy_j) if measured else None,
            }
        )
    return rows
