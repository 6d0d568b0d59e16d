"""Profiles: what each unit costs on each device, and what each link costs.

A :class:`Profile` is plain data (JSON round trip) and holds everything the planner needs:
per unit its output bytes, weight bytes and working memory; per device its median time for
every unit at one micro-batch size (and the interquartile range), its memory budget and power
model; per link its round-trip latency and bandwidth, fitted to timed transfers of several
sizes (time = latency + bytes * 8 / bandwidth, least squares).

Device profiles are cached on disk by (model, input size, batch size, classes, device, its CPU
share and threads, software versions) and reused unless asked to re-profile. Link probes are
cheap (a fraction of a second) and are always measured.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc

from edgesplit.config import ClusterSpec
from edgesplit.errors import ConfigError, WorkerError
from edgesplit.plan import calibrate
from edgesplit.plan.energy import PowerFit
from edgesplit.plan.planner import DeviceCost, LinkCost, Problem, UnitCost
from edgesplit.shared.names import COORDINATOR
from edgesplit.shared.plan import Stage
from edgesplit.shared.timeouts import TIMEOUTS

if TYPE_CHECKING:
    import torch

    from edgesplit.model.graph import UnitGraph
    from edgesplit.runtime.coordinator import Coordinator

log = logging.getLogger(__name__)

FORMAT = "edgesplit-profile/1"
PROBE_SIZES = (1024, 64 * 1024, 512 * 1024, 2 * 1024 * 1024)
FAST_PROBE_SIZE = 8 * 1024 * 1024
"""Probed as well on a link that moved the largest of the sizes in under
:data:`FAST_PROBE_MS` (faster than ~840 Mbit/s at 2 MiB): there 2 MiB is over in a few
milliseconds, where the stream's fixed costs and the kernel's burst are a large share (an
emulated host's HTB class lets 2 ms at the rate pass at once: with the sizes up to 2 MiB that
burst would raise the fitted rate by up to ~10 % at 940 Mbit/s, with 8 MiB by at most ~2 %)."""
FAST_PROBE_MS = 20.0
PROFILE_TIMEOUT_S = TIMEOUTS.profile_s
FLOAT_BYTES = 4
Progress = Callable[[str], None]


@dataclass(frozen=True)
class UnitProfile:
    index: int
    first: str
    last: str
    params: int
    macs: int
    out_bytes: int
    """Bytes handed on per micro-batch when a stage ends after this unit (fp32)."""
    weight_bytes: int
    """Parameter bytes (fp32)."""
    activation_bytes: int
    """Input + output bytes per micro-batch while this unit runs."""


CFS_PERIOD_MS = 100.0
"""The CFS period of an emulated device's quota (see
:data:`edgesplit.cluster.emulate.CFS_PERIOD_US`)."""

QUOTA_WALL_NOTE = """Why a device under a CPU quota sustains CPU time / share, not its timed wall.

Repeated runs of a stage under a CFS quota alternate: one runs at full speed inside the
period's quota, the next spends the rest of it and stalls to the next period. Their mean wall
is CPU / share, but their median depends on how a run's CPU falls against the quota, and a
stage timed that way came out far slower than any pipeline ran it. Measured here (Intel Xeon
Ice Lake, 2 cores, 3 namespaced devices at 0.5 CPU, MobileNetV2 224 px batch 8, 100 Mbit/s
links): units 0-10 timed at 79.3 ms median wall for 32.5 ms of CPU (65 ms at half a core),
10-28 at 77.7 ms for 28.1 ms; taking the larger of wall and CPU / share predicted 61.7 and
68.2 img/s where the runs measured 90.7 and 76.3, and at 65 ms the planner moved off each
stage it had timed (the plan changed in each of 4 rounds of timing). Work the host does for
others is not in the profile either way: the run's prediction counts it
(``background_cpus``)."""


class StageCosts(NamedTuple):
    """A device's costs for the planner (:class:`~edgesplit.plan.planner.DeviceCost`).

    ``unit_ms``/``boundary_ms`` are what the device sustains while a pipeline keeps it busy.
    An emulated device's CPU share is a CFS quota: it runs at full speed until the quota of the
    period is spent, then stalls, so it sustains CPU time / share (or its measured time, if
    longer). A micro-batch that finds it idle runs at full speed (``burst_*``, the CPU times)
    until ``quota_ms`` is spent. A real device has no quota: one speed, no burst fields.
    On a device with a quota, receiving a stage's input and sending its output also spend the
    quota (``hop_cpu_ms_per_mb``), so they add to the sustained boundary costs. The burst costs
    leave them out: a link's fitted time is the wire's alone (streamed probes, see
    :mod:`edgesplit.runtime.profiling`), so a lone micro-batch's hand-off CPU is not counted."""

    unit_ms: tuple[float, ...]
    boundary_ms: tuple[float, ...]
    burst_unit_ms: tuple[float, ...] = ()
    burst_boundary_ms: tuple[float, ...] = ()
    quota_ms: float | None = None
    measured: tuple[tuple[int, int, float, float], ...] = ()
    """Stages timed as one stage each: ``(start, end, sustained_ms, burst_ms)`` by the same
    rules (see :attr:`DeviceProfile.stage_timings`)."""


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    unit_ms: tuple[float, ...]
    unit_spread_ms: tuple[float, ...]
    threads: int
    cpu_count: int
    cpus: float | None
    """The emulated CPU share, when the device is emulated."""
    memory_budget_bytes: int | None
    idle_w: float
    busy_w: float
    engine: str = "torch"
    """The engine that ran the units; ``unit_ms`` are its fp32 times."""
    unit_cpu_ms: tuple[float, ...] = ()
    """Median process CPU time of each unit (all threads of the worker)."""
    versions: dict[str, str] = field(default_factory=dict)
    cached: bool = False
    precision_unit_ms: dict[str, tuple[float, ...]] = field(default_factory=dict)
    """Unit times at other precisions on the same engine, e.g. ``{"int8": (...)}`` (int8 unit
    times are scaled to the whole quantized model, see :mod:`edgesplit.runtime.profiling`)."""
    precision_unit_cpu_ms: dict[str, tuple[float, ...]] = field(default_factory=dict)
    """The CPU times of the same, like ``unit_cpu_ms``."""
    model_ms: dict[str, float] = field(default_factory=dict)
    """Per precision: median time of the whole model run as one stage (see
    :func:`boundary_model`); empty in profiles from before it was measured."""
    model_cpu_ms: dict[str, float] = field(default_factory=dict)
    """Per precision: the process CPU time of the same."""
    hop_cpu_ms_per_mb: float = 0.0
    """CPU one side of a hand-off costs per MB on this device (sending or receiving a tensor);
    on an emulated device it comes out of the stage's quota. 0: not measured."""
    call_cpu_ms: float = 0.0
    """The worker's fixed CPU per micro-batch besides its stage's compute and the per-MB
    hand-off cost: receiving the call, handing the batch to the compute thread, sending it on,
    its records (measured by a short pilot run, :mod:`edgesplit.app.pilot`; 0: not measured). On
    an emulated device it comes out of the stage's quota."""
    stage_timings: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    """Per precision, stages timed the way a run builds them, ``"start-end"`` -> (median wall
    ms, median CPU ms) (see :func:`measure_stages`). Where one exists the planner uses it in
    place of the modelled stage time, and the device's other modelled stage times are scaled
    by measured / modelled over its timed stages (:func:`_calibrated`)."""
    power_fit: dict[str, Any] = field(default_factory=dict)
    """The power model fitted to the device's meter while it was timed (idle_w, busy_w,
    residual_w, readings, utilisation_min/max, source; see :mod:`edgesplit.plan.calibrate`);
    empty without a meter. Where present, ``idle_w``/``busy_w`` are the fit's."""

    @property
    def sustained_ms(self) -> tuple[float, ...]:
        """fp32 unit times, each timed alone, at the rate the device can keep up (the planner
        uses :meth:`stage_costs`, which adds what a stage of several units pays less or more).

        An emulated device's CPU share is a CFS quota: it runs at full speed until its quota
        for the period is spent, then stalls, so a timing shows the burst speed, a stall, or
        both, depending on where in the period it started. What it sustains is CPU time /
        share, and that is used: the median wall time of repeated runs is not it (see
        :data:`QUOTA_WALL_NOTE`). A real device has no quota: its measured times are what it
        sustains."""
        return self._sustained(self.unit_ms, self.unit_cpu_ms)

    def _sustained(
        self, unit_ms: tuple[float, ...], unit_cpu_ms: tuple[float, ...]
    ) -> tuple[float, ...]:
        if self.cpus is None or len(unit_cpu_ms) != len(unit_ms):
            return unit_ms
        return tuple(cpu / self.cpus for cpu in unit_cpu_ms)

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions this device has unit times for (fp32 always)."""
        return ("fp32", *sorted(p for p in self.precision_unit_ms if p != "fp32"))

    def unit_ms_at(self, precision: str) -> tuple[float, ...]:
        """Sustained unit times (see :attr:`sustained_ms`) at ``precision``; raises
        :class:`ConfigError` if the precision was not profiled."""
        if precision == "fp32":
            return self.sustained_ms
        self._check_precision(precision)
        return self._sustained(
            self.precision_unit_ms[precision], self.precision_unit_cpu_ms.get(precision, ())
        )

    def _check_precision(self, precision: str) -> None:
        if precision != "fp32" and precision not in self.precision_unit_ms:
            raise ConfigError(
                f"the profile of {self.name} has no {precision} unit times (it has "
                f"{', '.join(self.precisions)}); profile with --precision {precision}"
            )

    def stage_costs(self, precision: str, boundary_bytes: Sequence[int]) -> StageCosts:
        """The planner's costs of this device at ``precision`` (see :class:`StageCosts` and
        :func:`boundary_model`; ``boundary_bytes[k]`` is the tensor at cut ``k``, the model
        input at 0)."""
        self._check_precision(precision)
        if precision == "fp32":
            wall, cpu = self.unit_ms, self.unit_cpu_ms
        else:
            wall = self.precision_unit_ms[precision]
            cpu = self.precision_unit_cpu_ms.get(precision, ())
        timed = self._timed(precision)
        inner, edge = _calibrated(
            *boundary_model(wall, self.model_ms.get(precision), boundary_bytes),
            [(s, e, w) for s, e, w, _ in timed],
        )
        if self.cpus is None or len(cpu) != len(wall):
            return StageCosts(inner, edge, measured=tuple((s, e, w, w) for s, e, w, _ in timed))
        inner_cpu, edge_cpu = _calibrated(
            *boundary_model(cpu, self.model_cpu_ms.get(precision), boundary_bytes),
            [(s, e, c) for s, e, _, c in timed],
        )
        share = self.cpus

        def sustained(c: tuple[float, ...]) -> tuple[float, ...]:
            return tuple(b / share for b in c)  # CPU / share, not the wall (QUOTA_WALL_NOTE)

        def burst(w: tuple[float, ...], c: tuple[float, ...]) -> tuple[float, ...]:
            return tuple(min(a, b) for a, b in zip(w, c, strict=True))

        # Receiving a stage's input and sending its output take CPU from the same quota, and so
        # does the fixed cost of a micro-batch (half counted at each end of the stage).
        call = self.call_cpu_ms / 2
        hop = tuple(self.hop_cpu_ms_per_mb * b / 1e6 + call for b in boundary_bytes)
        return StageCosts(
            unit_ms=sustained(inner_cpu),
            boundary_ms=tuple(e + h / share for e, h in zip(sustained(edge_cpu), hop, strict=True)),
            burst_unit_ms=burst(inner, inner_cpu),
            burst_boundary_ms=burst(edge, edge_cpu),
            quota_ms=share * CFS_PERIOD_MS,
            measured=tuple(
                (s, e, c / share + (hop[s] + hop[e]) / share, min(wall, c))
                for s, e, wall, c in timed
            ),
        )

    def _timed(self, precision: str) -> list[tuple[int, int, float, float]]:
        """``(start, end, wall_ms, cpu_ms)`` of the stages timed at ``precision``."""
        out = []
        for span, (wall, cpu) in self.stage_timings.get(precision, {}).items():
            start, _, end = span.partition("-")
            out.append((int(start), int(end), wall, cpu))
        return sorted(out)

    def is_timed(self, start: int, end: int, precision: str = "fp32") -> bool:
        return f"{start}-{end}" in self.stage_timings.get(precision, {})

    def stage_ms(
        self, start: int, end: int, boundary_bytes: Sequence[int], precision: str = "fp32"
    ) -> float:
        """The planner's sustained compute time of units ``[start, end)`` as one stage."""
        costs = self.stage_costs(precision, boundary_bytes)
        for s, e, sustained, _ in costs.measured:
            if (s, e) == (start, end):
                return sustained
        return sum(costs.unit_ms[start:end]) + costs.boundary_ms[start] + costs.boundary_ms[end]

    @property
    def busy_fraction(self) -> float:
        """Share of the device's cores a running stage keeps busy (for the power model).

        An emulated device is a whole (slower) device, so its stage keeps it fully busy."""
        if self.cpus is not None:
            return 1.0
        return min(1.0, self.threads / max(1, self.cpu_count))


@dataclass(frozen=True)
class LinkProfile:
    a: str
    b: str
    latency_ms: float
    bandwidth_mbps: float | None
    """None: too fast to measure with the probe sizes (treated as free)."""
    sizes: tuple[int, ...] = ()
    median_ms: tuple[float, ...] = ()


@dataclass(frozen=True)
class Profile:
    model: str
    input_size: int
    batch_size: int
    num_classes: int
    input_bytes: int
    """Upload per micro-batch, coordinator to the first stage (fp32)."""
    units: tuple[UnitProfile, ...]
    devices: tuple[DeviceProfile, ...]
    links: tuple[LinkProfile, ...]
    default_bandwidth_mbps: float | None = None
    """The cluster's default link, for pairs without a probe."""
    default_latency_ms: float = 0.0
    created: float = 0.0
    prepare_ms: float = 0.0
    """The coordinator's time to prepare one micro-batch for upload (load, preprocess, encode),
    measured by the run on its dataset; 0 when unknown (``edgesplit profile`` has no dataset)."""
    host_cpus: float | None = None
    """The cores of the host every device and the coordinator share (an emulated cluster on
    this machine); None for devices of their own."""
    coordinator_ms: float = 0.0
    """The coordinator's CPU per micro-batch besides ``prepare_ms`` (its side of the upload,
    receiving the result, the run's bookkeeping), measured by the pilot run
    (:mod:`edgesplit.app.pilot`); 0 when not measured."""
    background_cpus: float = 0.0
    """Cores of the shared host busy with other work while the pilot ran (see
    :attr:`edgesplit.plan.planner.Problem.background_cpus`); 0 when not measured."""

    def device(self, name: str) -> DeviceProfile:
        for d in self.devices:
            if d.name == name:
                return d
        names = ", ".join(d.name for d in self.devices)
        raise ConfigError(f"the profile has no device {name!r}; it has {names}")

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        if data.get("format") != FORMAT:
            raise ConfigError(f"expected a profile in format {FORMAT}, got {data.get('format')!r}")
        try:
            return cls(
                model=data["model"],
                input_size=int(data["input_size"]),
                batch_size=int(data["batch_size"]),
                num_classes=int(data["num_classes"]),
                input_bytes=int(data["input_bytes"]),
                units=tuple(UnitProfile(**u) for u in data["units"]),
                devices=tuple(_device_from_dict(d) for d in data["devices"]),
                links=tuple(
                    LinkProfile(
                        **{**k, "sizes": tuple(k["sizes"]), "median_ms": tuple(k["median_ms"])}
                    )
                    for k in data["links"]
                ),
                default_bandwidth_mbps=data.get("default_bandwidth_mbps"),
                default_latency_ms=float(data.get("default_latency_ms", 0.0)),
                created=float(data.get("created", 0.0)),
                prepare_ms=float(data.get("prepare_ms", 0.0)),
                host_cpus=data.get("host_cpus"),
                coordinator_ms=float(data.get("coordinator_ms", 0.0)),
                background_cpus=float(data.get("background_cpus", 0.0)),
            )
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ConfigError(f"profile is malformed: {type(exc).__name__}: {exc}") from None

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path


def _device_from_dict(d: dict[str, Any]) -> DeviceProfile:
    return DeviceProfile(
        **{
            **d,
            "unit_ms": tuple(d["unit_ms"]),
            "unit_spread_ms": tuple(d["unit_spread_ms"]),
            "unit_cpu_ms": tuple(d.get("unit_cpu_ms", ())),
            "precision_unit_ms": {
                str(k): tuple(v) for k, v in d.get("precision_unit_ms", {}).items()
            },
            "precision_unit_cpu_ms": {
                str(k): tuple(v) for k, v in d.get("precision_unit_cpu_ms", {}).items()
            },
            "model_ms": {str(k): float(v) for k, v in d.get("model_ms", {}).items()},
            "model_cpu_ms": {str(k): float(v) for k, v in d.get("model_cpu_ms", {}).items()},
            "stage_timings": {
                str(p): {_span(span): (float(w), float(c)) for span, (w, c) in spans.items()}
                for p, spans in d.get("stage_timings", {}).items()
            },
        }
    )


def _span(text: str) -> str:
    """A stage span key ``"start-end"``, checked (ConfigError if it is not one)."""
    start, sep, end = str(text).partition("-")
    if not sep or not 0 <= int(start) < int(end):
        raise ConfigError(f"stage span {text!r} is not START-END with START < END")
    return f"{int(start)}-{int(end)}"


def load_profile(path: Path) -> Profile:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read profile {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"profile {path} is not JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"profile {path}: expected a JSON object")
    return Profile.from_dict(data)


# --- pure pieces -------------------------------------------------------------------------------


def input_bytes(ug: UnitGraph, batch_size: int) -> int:
    """Bytes of one micro-batch on the first hop: float32 model inputs, or uint8 images when
    the graph starts with their preprocessing (issue #19)."""
    itemsize = 1 if getattr(ug, "prep", None) is not None else FLOAT_BYTES
    return batch_size * itemsize * _numel(ug.input_shape)


def first_hop(ug: UnitGraph) -> str | None:
    """What stage 0 receives when it is not the float model input: ``uint8 1x28x28``."""
    if getattr(ug, "prep", None) is None:
        return None
    return "uint8 " + "x".join(str(d) for d in ug.input_shape)


def unit_profiles(ug: UnitGraph, batch_size: int) -> tuple[UnitProfile, ...]:
    """Per-unit sizes for micro-batches of ``batch_size`` (fp32 tensors and weights; unit 0
    reads the model's input, uint8 images when its graph starts with their preprocessing)."""
    out = []
    in_bytes = input_bytes(ug, batch_size)
    for u in ug.units:
        out_bytes = batch_size * u.out_bytes
        out.append(
            UnitProfile(
                index=u.index,
                first=u.first,
                last=u.last,
                params=u.params,
                macs=u.macs,
                out_bytes=out_bytes,
                weight_bytes=u.params * FLOAT_BYTES,
                activation_bytes=in_bytes + out_bytes,
            )
        )
        in_bytes = out_bytes
    return tuple(out)


def boundary_model(
    unit_ms: Sequence[float], model_ms: float | None, boundary_bytes: Sequence[int]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Split units timed one by one into their time inside a stage and a cost per stage end.

    A unit timed alone is a one-unit stage: it pays the conversion of its input and its output
    that an engine fusing a stage into one graph pays only at the stage's two ends (ONNX
    Runtime reorders a stage's tensors into its blocked layout and back). That cost is taken
    as proportional to the tensor: ``h[k] = beta / 2 * boundary_bytes[k]`` at cut ``k``. The
    whole model as one stage pays it only at cuts 0 and n, so ``sum(unit_ms) - model_ms`` is
    ``beta`` times the bytes of the inner cuts, which gives beta (>= 0). Returns
    ``(inner, h)``: ``inner[i] = unit_ms[i] - h[i] - h[i + 1]`` (at least 0), and ``h`` with
    n + 1 entries, so that a stage of units [j, e) costs ``sum(inner[j:e]) + h[j] + h[e]`` and
    the whole model ``model_ms``. Without ``model_ms`` (or no inner cut): beta = 0."""
    n = len(unit_ms)
    if len(boundary_bytes) != n + 1:
        raise ConfigError(f"need {n + 1} boundary sizes for {n} units, got {len(boundary_bytes)}")
    inner_bytes = sum(boundary_bytes[1:n])
    beta = 0.0
    if model_ms and inner_bytes > 0:
        beta = max(0.0, (math.fsum(unit_ms) - model_ms) / inner_bytes)
    h = tuple(beta / 2 * b for b in boundary_bytes)
    inner = tuple(max(0.0, t - h[i] - h[i + 1]) for i, t in enumerate(unit_ms))
    return inner, h


def _calibrated(
    inner: tuple[float, ...], edge: tuple[float, ...], timed: Sequence[tuple[int, int, float]]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The modelled stage costs ``(inner, edge)`` (see :func:`boundary_model`) scaled so that
    the stages ``timed`` as ``(start, end, ms)`` cost in sum what they measured.

    The model of one device errs in the same direction for its neighbouring stages (its unit
    timings and the boundary fit are what they are); without this, a planner that sees a timed
    stage slower than modelled would move the cut to a neighbour whose modelled time is as
    optimistic, and chase the model's error instead of converging."""
    modelled = math.fsum(math.fsum(inner[s:e]) + edge[s] + edge[e] for s, e, _ in timed)
    measured = math.fsum(ms for _, _, ms in timed)
    if not timed or modelled <= 0 or measured <= 0:
        return inner, edge
    k = measured / modelled
    return tuple(t * k for t in inner), tuple(t * k for t in edge)


def boundary_bytes(profile: Profile) -> tuple[int, ...]:
    """The tensor at every cut of ``profile``'s model: its input, then each unit's output."""
    return (profile.input_bytes, *(u.out_bytes for u in profile.units))


def _numel(shape: tuple[int, ...] | list[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def fit_link(sizes: tuple[int, ...], median_ms: tuple[float, ...]) -> tuple[float, float | None]:
    """Least-squares fit of ``time_ms = latency_ms + bytes * 8 / (bandwidth_mbps * 1e3)``.

    Returns ``(latency_ms, bandwidth_mbps)``; bandwidth is None when time does not grow with
    size (a link faster than the probes can tell)."""
    if len(sizes) != len(median_ms) or not sizes:
        raise ConfigError(f"need one median per size, got {len(median_ms)} for {len(sizes)} sizes")
    if len(sizes) == 1:
        return max(0.0, median_ms[0]), None
    mx = statistics.fmean(sizes)
    my = statistics.fmean(median_ms)
    sxx = sum((x - mx) ** 2 for x in sizes)
    sxy = sum((x - mx) * (y - my) for x, y in zip(sizes, median_ms, strict=True))
    slope = sxy / sxx if sxx > 0 else 0.0  # ms per byte
    if slope <= 0:
        return max(0.0, min(median_ms)), None
    latency = max(0.0, my - slope * mx)
    return latency, 8.0 / (slope * 1e3)


def to_problem(
    profile: Profile,
    cluster: ClusterSpec | None = None,
    precision: str = "fp32",
    window: int | None = None,
) -> Problem:
    """The planner's view of ``profile`` with every stage at ``precision``; ``cluster`` (if
    given) overrides memory budgets and power models with the ones in the cluster file;
    ``window``: the run's micro-batches in flight when it sets them (None: no bound).
    Raises :class:`ConfigError` when a device has no unit times at ``precision``."""
    devices = []
    cuts = boundary_bytes(profile)
    for d in profile.devices:
        budget, idle_w, busy_w = d.memory_budget_bytes, d.idle_w, d.busy_w
        if cluster is not None:
            spec = cluster.device(d.name)
            if spec.memory_budget_mb is not None:
                budget = int(spec.memory_budget_mb * 2**20)
            if not d.power_fit:  # a fit to the device's meter beats the file's model
                idle_w, busy_w = spec.power.idle_w, spec.power.busy_w
        costs = d.stage_costs(precision, cuts)
        devices.append(
            DeviceCost(
                name=d.name,
                unit_ms=costs.unit_ms,
                boundary_ms=costs.boundary_ms,
                burst_unit_ms=costs.burst_unit_ms,
                burst_boundary_ms=costs.burst_boundary_ms,
                quota_ms=costs.quota_ms,
                period_ms=CFS_PERIOD_MS,
                hop_cpu_ms_per_mb=d.hop_cpu_ms_per_mb,
                call_cpu_ms=d.call_cpu_ms,
                measured_stages=costs.measured,
                memory_budget_bytes=budget,
                idle_w=idle_w,
                busy_w=busy_w,
                busy_fraction=d.busy_fraction,
            )
        )
    units = tuple(
        UnitCost(
            out_bytes=u.out_bytes,
            weight_bytes=u.weight_bytes,
            activation_bytes=u.activation_bytes,
            name=u.first if u.first == u.last else f"{u.first} .. {u.last}",
        )
        for u in profile.units
    )
    links = tuple((k.a, k.b, _link_cost(profile, k)) for k in profile.links)
    return Problem(
        units=units,
        devices=tuple(devices),
        batch_size=profile.batch_size,
        input_bytes=profile.input_bytes,
        default_link=LinkCost(
            bandwidth_mbps=profile.default_bandwidth_mbps, latency_ms=profile.default_latency_ms
        ),
        links=links,
        prepare_ms=profile.prepare_ms,
        host_cpus=profile.host_cpus,
        coordinator_ms=profile.coordinator_ms,
        background_cpus=profile.background_cpus,
        window=window,
    )


def _link_cost(profile: Profile, link: LinkProfile) -> LinkCost:
    """The planner's cost of a profiled link. Its fitted time is the wire's alone (streamed
    probes, :mod:`edgesplit.runtime.profiling`). On a shared host (emulated devices) the
    hand-offs' CPU is counted where it is spent, in the quotas and the host's cores. Devices with
    hosts of their own (Pis) run a hand-off beside their compute, so its CPU, the sender's and
    the receiver's ``hop_cpu_ms_per_mb`` (the coordinator's side costs what its device's does),
    lengthens the link's time per byte, as it would lengthen a transfer timed end to end."""
    if profile.host_cpus is not None:
        return LinkCost(bandwidth_mbps=link.bandwidth_mbps, latency_ms=link.latency_ms)
    hops = {d.name: d.hop_cpu_ms_per_mb for d in profile.devices}
    a = hops.get(link.a, hops.get(link.b, 0.0))
    b = hops.get(link.b, a)
    cpu_ms_per_byte = (a + b) / 1e6
    wire_ms_per_byte = 8 / (link.bandwidth_mbps * 1e3) if link.bandwidth_mbps else 0.0
    per_byte = wire_ms_per_byte + cpu_ms_per_byte
    return LinkCost(
        bandwidth_mbps=8 / (per_byte * 1e3) if per_byte > 0 else None, latency_ms=link.latency_ms
    )


# --- measuring ---------------------------------------------------------------------------------


def cache_dir() -> Path:
    """``<cache root>/profiles``: ``~/.cache/edgesplit/profiles`` as documented (it was below
    ``datasets/`` by mistake; issue #20), ``$EDGESPLIT_CACHE_DIR/profiles`` when that is set."""
    from edgesplit.shared.cache import cache_root

    return cache_root() / "profiles"


def cache_key(
    model: str, input_size: int, batch_size: int, num_classes: int, device: dict[str, Any]
) -> str:
    text = json.dumps([model, input_size, batch_size, num_classes, device], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class ProfileSettings:
    batch_size: int = 16
    warmup: int = 2
    repeats: int = 7
    probe_sizes: tuple[int, ...] = PROBE_SIZES
    probe_repeats: int = 3
    fast_probe_size: int | None = FAST_PROBE_SIZE
    """Probed too on a link whose largest probe took under :data:`FAST_PROBE_MS` (None:
    never)."""
    reprofile: bool = False
    engine: str | None = None
    """Engine to time the units on; None: each worker's default."""
    cache: Path | None = None
    """Where device profiles are cached; None: the user cache folder."""
    precisions: tuple[str, ...] = ("fp32",)
    """Precisions to time the units at (fp32 is always timed)."""
    calibration: torch.Tensor | None = None
    """Model inputs that calibrate int8 units (needed when ``precisions`` has int8)."""

    def __post_init__(self) -> None:
        from edgesplit.engines import PRECISIONS

        for precision in self.precisions:
            if precision not in PRECISIONS:
                raise ConfigError(
                    f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
                )
        if "int8" in self.precisions and self.calibration is None:
            raise ConfigError("profiling int8 unit times needs calibration images")

    @property
    def extra_precisions(self) -> tuple[str, ...]:
        return tuple(p for p in dict.fromkeys(self.precisions) if p != "fp32")


def profile_cluster(
    coordinator: Coordinator,
    ug: UnitGraph,
    model: str,
    num_classes: int,
    settings: ProfileSettings = ProfileSettings(),
    progress: Progress | None = None,
) -> Profile:
    """Profile every device of the coordinator's cluster (the model must be loaded on them)
    one at a time (emulated devices share a host), then probe the links."""

    say = progress or (lambda text: log.info("%s", text))
    spec = coordinator.cluster
    units = unit_profiles(ug, settings.batch_size)
    devices = []
    for d in spec.devices:
        identity, path = _identity(
            coordinator, d.name, model, int(ug.model_input_shape[-1]), num_classes, settings,
            first_hop(ug),
        )  # fmt: skip
        cached = None if settings.reprofile else _read_cached(path, len(units))
        if cached is not None:
            say(f"{d.name}: cached profile {path.name}")
            devices.append(replace(cached, name=d.name, cached=True, **_budget(d, cached)))
            continue
        say(f"{d.name}: timing {len(units)} units (batch {settings.batch_size})")
        window = calibrate.open_window(coordinator, d.name)
        answer = _profile_one(coordinator, d.name, settings, "fp32", len(units))
        extra, extra_cpu = {}, {}
        model_ms, model_cpu_ms = {"fp32": answer.model_ms}, {"fp32": answer.model_cpu_ms}
        for precision in settings.extra_precisions:
            say(f"{d.name}: timing {len(units)} units at {precision}")
            got = _profile_one(coordinator, d.name, settings, precision, len(units))
            extra[precision] = tuple(got.unit_ms)
            extra_cpu[precision] = tuple(got.unit_cpu_ms)
            model_ms[precision], model_cpu_ms[precision] = got.model_ms, got.model_cpu_ms
        available = int(answer.available_memory_mb * 2**20)
        device = DeviceProfile(
            name=d.name,
            unit_ms=tuple(answer.unit_ms),
            unit_spread_ms=tuple(answer.unit_spread_ms),
            unit_cpu_ms=tuple(answer.unit_cpu_ms),
            threads=answer.threads,
            cpu_count=answer.cpu_count,
            cpus=d.emulation.cpus if d.emulation else None,
            memory_budget_bytes=available,
            idle_w=d.power.idle_w,
            busy_w=d.power.busy_w,
            engine=answer.engine or "torch",
            versions={k: str(v) for k, v in identity.items() if k not in ("device", "host")},
            precision_unit_ms=extra,
            precision_unit_cpu_ms=extra_cpu,
            model_ms=model_ms,
            model_cpu_ms=model_cpu_ms,
            hop_cpu_ms_per_mb=answer.hop_cpu_ms_per_mb,
        )
        if window is not None:
            fit = calibrate.close_window(coordinator, window, device.cpus)
            device = _with_fit(device, fit, say)
        device = replace(device, **_budget(d, device))
        _write_cached(path, device)
        devices.append(device)
    links = probe_links(coordinator, settings, say)
    return Profile(
        model=model,
        input_size=int(ug.model_input_shape[-1]),
        batch_size=settings.batch_size,
        num_classes=num_classes,
        input_bytes=input_bytes(ug, settings.batch_size),
        units=units,
        devices=tuple(devices),
        links=links,
        default_bandwidth_mbps=spec.default_link.bandwidth_mbps,
        default_latency_ms=spec.default_link.latency_ms,
        created=time.time(),
        host_cpus=_shared_host_cpus(spec),
    )


def _identity(
    coordinator: Coordinator,
    name: str,
    model: str,
    input_size: int,
    num_classes: int,
    settings: ProfileSettings,
    hop: str | None = None,
) -> tuple[dict[str, Any], Path]:
    """What a device's cached profile is valid for, and its cache file (``hop``: what stage 0
    receives when it is not the float model input, see :func:`first_hop`)."""
    d = coordinator.cluster.device(name)
    reply, _, _ = coordinator.probe(name)
    identity = {
        "device": name,
        # The host, not the port: an emulated device gets a new port every start.
        "host": d.address.rpartition(":")[0],
        "engine": settings.engine or "default",
        "cpus": d.emulation.cpus if d.emulation else None,
        "threads": reply.threads,
        "edgesplit": reply.edgesplit_version,
        "torch": reply.torch_version,
        "python": reply.python_version,
        "cpu_kind": reply.cpu_kind or "unknown",  # int8 kernels (and their speed) follow it
        "cost_model": 3,  # unit times, the whole model (boundary_model), hop CPU
    }
    if hop is not None:  # unit 0 then also times the preprocessing
        identity["first_hop"] = hop
    if settings.extra_precisions:  # fp32-only identities stay as they were
        identity["precisions"] = ",".join(("fp32", *settings.extra_precisions))
    key = cache_key(model, input_size, settings.batch_size, num_classes, identity)
    return identity, (settings.cache or cache_dir()) / f"{key}.json"


def untimed(profile: Profile, stages: Sequence[Stage], precision: str = "fp32") -> list[Stage]:
    """The ``(device, start, end)`` stages that ``profile`` has no stage timing for."""
    return [Stage(n, a, b) for n, a, b in stages if not profile.device(n).is_timed(a, b, precision)]


def measure_stages(
    coordinator: Coordinator,
    profile: Profile,
    stages: Sequence[Stage],
    settings: ProfileSettings,
    precision: str = "fp32",
    progress: Progress | None = None,
    hop: str | None = None,
) -> Profile:
    """``profile`` with every one of ``stages`` (``(device, start, end)``) timed on its device
    as one stage, the way a run builds it (:func:`edgesplit.runtime.profiling.profile_stages`);
    stages timed before are not timed again. The timings go into the devices' cached profiles
    too, so a later run with the same plan does not time them again (``hop``: the graph's
    :func:`first_hop`, part of those profiles' identity)."""
    say = progress or (lambda text: log.info("%s", text))
    wanted: dict[str, list[tuple[int, int]]] = {}
    for name, start, end in untimed(profile, stages, precision):
        wanted.setdefault(name, []).append((start, end))
    if not wanted:
        return profile
    devices = []
    for d in profile.devices:
        spans = wanted.get(d.name)
        if spans:
            text = ", ".join(f"{a}-{b}" for a, b in spans)
            say(f"{d.name}: timing stage{'s' if len(spans) > 1 else ''} {text} as one stage")
            answer = _ask_profile(coordinator, d.name, settings, precision, spans)
            got = {(t.start, t.end): (t.wall_ms, t.cpu_ms) for t in answer.stage_timings}
            if set(got) != set(spans):
                raise WorkerError(
                    f"{coordinator.where(d.name)} timed stages {sorted(got)}, asked for "
                    f"{sorted(spans)}; check that edgesplit versions match"
                )
            timings = {**d.stage_timings.get(precision, {})}
            timings.update({f"{a}-{b}": got[(a, b)] for a, b in spans})
            d = replace(d, stage_timings={**d.stage_timings, precision: timings})
            _, path = _identity(
                coordinator, d.name, profile.model, profile.input_size, profile.num_classes,
                settings, hop,
            )  # fmt: skip
            if path.exists():  # only a device whose profile is cached (a fresh one is)
                _write_cached(path, replace(d, cached=False))
        devices.append(d)
    return replace(profile, devices=tuple(devices))


def _shared_host_cpus(spec: ClusterSpec) -> float | None:
    """This machine's cores when every device is emulated on it, else None."""
    if not spec.devices or any(d.emulation is None for d in spec.devices):
        return None
    try:
        return float(len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (not Linux)
        return float(os.cpu_count() or 1)


def _ask_profile(
    coordinator: Coordinator,
    name: str,
    settings: ProfileSettings,
    precision: str,
    stages: Sequence[tuple[int, int]] = (),
) -> Any:
    """One device's ProfileReply at ``precision``: its unit times, or with ``stages`` the
    timings of those unit ranges each as one stage."""
    from edgesplit.runtime.proto import edgesplit_pb2 as pb

    request = pb.ProfileRequest(
        batch_size=settings.batch_size,
        warmup=settings.warmup,
        repeats=settings.repeats,
        engine=settings.engine or "",
        precision=precision,
        stages=[pb.StageSpan(start=a, end=b) for a, b in stages],
    )
    if precision == "int8" and settings.calibration is not None:
        # the coordinator quantizes for the device's CPU kind; the device cuts its units from it
        request.int8_model_sha256 = coordinator.int8_model_for(name, settings.calibration)
    if settings.engine == "torch":  # workers load torch only when asked (issue #17)
        coordinator.ensure_torch_reference()
    what = f"timing stages at {precision}" if stages else f"profiling at {precision}"
    try:
        return coordinator.stub(name).Profile(request, timeout=PROFILE_TIMEOUT_S)
    except grpc.RpcError as exc:
        raise coordinator.worker_error(name, what, exc) from None


def _profile_one(
    coordinator: Coordinator, name: str, settings: ProfileSettings, precision: str, units: int
) -> Any:
    """One device's ProfileReply at ``precision``, checked for the unit count."""
    answer = _ask_profile(coordinator, name, settings, precision)
    if len(answer.unit_ms) != units:
        raise WorkerError(
            f"{coordinator.where(name)} timed {len(answer.unit_ms)} units, expected "
            f"{units}; check that edgesplit and torch versions match"
        )
    return answer


def _with_fit(device: DeviceProfile, fit: PowerFit | str, say: Progress) -> DeviceProfile:
    if isinstance(fit, str):
        say(f"{device.name}: power model not fitted: {fit}")
        return device
    say(
        f"{device.name}: power fit from {fit.source}: idle {fit.idle_w:.2f} W, busy "
        f"{fit.busy_w:.2f} W (residual {fit.residual_w:.3f} W, {fit.readings} readings)"
    )
    return replace(device, idle_w=fit.idle_w, busy_w=fit.busy_w, power_fit=fit.to_dict())


def _budget(spec_device: Any, device: DeviceProfile) -> dict[str, Any]:
    """The cluster file's memory budget and power model win over the measured/cached ones,
    except a power model fitted to the device's meter (measured beats entered)."""
    out: dict[str, Any] = {"idle_w": spec_device.power.idle_w, "busy_w": spec_device.power.busy_w}
    if device.power_fit:
        out = {"idle_w": device.idle_w, "busy_w": device.busy_w}
    if spec_device.memory_budget_mb is not None:
        out["memory_budget_bytes"] = int(spec_device.memory_budget_mb * 2**20)
    return out


def _read_cached(path: Path, num_units: int) -> DeviceProfile | None:
    try:
        device = _device_from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError, AttributeError, ConfigError):
        return None  # no cache, or a damaged one: measure again
    lengths = {len(device.unit_ms), *(len(v) for v in device.precision_unit_ms.values())}
    return device if lengths == {num_units} else None


def _write_cached(path: Path, device: DeviceProfile) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(device)))
        tmp.replace(path)
    except OSError as exc:
        log.warning("cannot cache the profile in %s: %s", path, exc.strerror)


def probe_links(
    coordinator: Coordinator, settings: ProfileSettings, say: Progress
) -> tuple[LinkProfile, ...]:
    """Probe the coordinator's link to every device and every device-to-device link: timed
    probe streams of ``settings.probe_sizes`` (see :mod:`edgesplit.runtime.profiling`), and of
    ``settings.fast_probe_size`` on a link that moved the largest size in under
    :data:`FAST_PROBE_MS`."""
    spec = coordinator.cluster
    names = [d.name for d in spec.devices]
    out = []
    say(f"probing {len(names) * (len(names) + 1) // 2} links")
    for name in names:
        try:
            probe = functools.partial(_probe_from_coordinator, coordinator, name, settings)
            sizes, medians = with_fast_probe(settings, probe)
        except grpc.RpcError as exc:
            raise coordinator.worker_error(name, "probing the link", exc) from None
        out.append(_link(COORDINATOR, name, sizes, medians))
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            try:
                probe = functools.partial(_probe_from_device, coordinator, a, b, settings)
                sizes, medians = with_fast_probe(settings, probe)
            except grpc.RpcError as exc:
                raise coordinator.worker_error(a, f"probing the link to {b}", exc) from None
            out.append(_link(a, b, sizes, medians))
    return tuple(out)


Probe = Callable[[tuple[int, ...]], tuple[float, ...]]
"""Median ms per probe size of one link."""


def with_fast_probe(
    settings: ProfileSettings, probe: Probe
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The sizes and medians of ``settings.probe_sizes``, and of ``settings.fast_probe_size``
    too when the link is fast (see :data:`FAST_PROBE_SIZE`)."""
    sizes = tuple(settings.probe_sizes)
    medians = probe(sizes)
    extra = settings.fast_probe_size
    largest = max(range(len(sizes)), key=lambda i: sizes[i])
    if extra is not None and extra > sizes[largest] and medians[largest] < FAST_PROBE_MS:
        return (*sizes, extra), (*medians, *probe((extra,)))
    return sizes, medians


def _probe_from_coordinator(
    coordinator: Coordinator, name: str, settings: ProfileSettings, sizes: tuple[int, ...]
) -> tuple[float, ...]:
    """The coordinator probes its link to device ``name``; the medians it timed."""
    from edgesplit.runtime.links import LinkShape
    from edgesplit.runtime.profiling import time_transfers

    link = coordinator.cluster.sender_link(COORDINATOR, name)
    shape = LinkShape(link.bandwidth_mbps, link.latency_ms)
    stub = coordinator.stub(name)
    return tuple(time_transfers(stub, sizes, settings.probe_repeats, shape))


def _probe_from_device(
    coordinator: Coordinator, a: str, b: str, settings: ProfileSettings, sizes: tuple[int, ...]
) -> tuple[float, ...]:
    """Device ``a`` probes its link to ``b`` (a ProbeLink call); the medians it timed."""
    from edgesplit.runtime.proto import edgesplit_pb2 as pb

    spec = coordinator.cluster
    link = spec.sender_link(a, b)
    request = pb.ProbeLinkRequest(
        address=spec.device(b).address,
        token=spec.token_for(b),
        sizes=list(sizes),
        repeats=settings.probe_repeats,
        latency_ms=link.latency_ms,
    )
    if link.bandwidth_mbps is not None:
        request.bandwidth_mbps = link.bandwidth_mbps
    reply = coordinator.stub(a).ProbeLink(request, timeout=TIMEOUTS.probe_link_s)
    return tuple(reply.median_ms)


def _link(a: str, b: str, sizes: tuple[int, ...], medians: tuple[float, ...]) -> LinkProfile:
    latency, bandwidth = fit_link(sizes, medians)
    return LinkProfile(a, b, latency, bandwidth, sizes, medians)
