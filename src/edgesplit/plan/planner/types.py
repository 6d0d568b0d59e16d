"""The planner's data: a planning problem, a plan and its prediction (frozen, pure data).

The cost model these types carry is defined once, in :mod:`edgesplit.plan.planner`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgesplit.errors import PlanError
from edgesplit.shared.names import COORDINATOR
from edgesplit.shared.plan import Stage, Stages, format_partition, plan_text

OBJECTIVES = ("throughput", "latency", "energy")
MB = 1e6


@dataclass(frozen=True)
class UnitCost:
    """What one unit costs, independent of the device it runs on."""

    out_bytes: int  # handed to the next stage per micro-batch when a stage ends after this unit
    weight_bytes: int  # parameters + buffers
    activation_bytes: int  # peak working memory per micro-batch while this unit runs
    name: str = ""  # e.g. "features.0.0 .. features.0.2", for tables and errors


@dataclass(frozen=True)
class DeviceCost:
    """A device: its time per micro-batch for every unit, its memory budget and power model.

    A stage of units ``[j, e)`` computes for ``sum(unit_ms[j:e]) + boundary_ms[j] +
    boundary_ms[e]``: ``unit_ms`` are the units' times inside a stage, ``boundary_ms[k]`` what
    a stage pays to start or end at cut ``k`` (0..n; an engine that fuses a stage into one
    graph converts the tensor at its ends, a cost that grows with the tensor). Empty
    ``boundary_ms``: no such cost.

    A device with a CPU quota (an emulated device: ``quota_ms`` of CPU per ``period_ms`` at full
    speed) runs at two speeds. Kept busy by a pipeline it runs at ``unit_ms``/``boundary_ms``,
    what its quota sustains, which sets the bottleneck. A single micro-batch passing an idle
    device runs at full speed (``burst_unit_ms``/``burst_boundary_ms``) until the quota is spent,
    then at the quota's rate, which sets the latency: a stage of full-speed time ``b`` takes
    ``b`` if ``b <= quota_ms``, else ``quota_ms + (b - quota_ms) * period_ms / quota_ms``.
    Empty burst times: the same as the sustained ones; no quota: no limit on a burst.

    ``measured_stages`` are stages timed as they run, ``(start, end, sustained_ms, burst_ms)``:
    for units ``[start, end)`` they replace the modelled sustained time and the full-speed time
    (a planner asks for them at the stages it chose, see :mod:`edgesplit.plan.autoplan`).

    Power is linear in utilisation: ``idle_w + (busy_w - idle_w) * busy_fraction`` while the
    device computes, ``idle_w`` otherwise."""

    name: str
    unit_ms: tuple[float, ...]
    memory_budget_bytes: int | None = None  # None: unlimited
    idle_w: float = 2.7
    busy_w: float = 6.4
    busy_fraction: float = 1.0  # utilisation (0..1 of all cores) while this device computes
    boundary_ms: tuple[float, ...] = ()  # one per cut 0..n, or empty (none)
    burst_unit_ms: tuple[float, ...] = ()  # full-speed unit times, or empty (= unit_ms)
    burst_boundary_ms: tuple[float, ...] = ()  # full-speed boundary times, or empty
    quota_ms: float | None = None  # CPU ms per period at full speed; None: no quota
    period_ms: float = 100.0
    hop_cpu_ms_per_mb: float = 0.0  # CPU of one side of a hand-off (see Problem.host_cpus)
    call_cpu_ms: float = 0.0  # fixed CPU per micro-batch besides compute and hand-off bytes
    measured_stages: tuple[tuple[int, int, float, float], ...] = ()

    def measured(self, start: int, end: int) -> tuple[float, float] | None:
        """``(sustained_ms, burst_ms)`` of units ``[start, end)`` if that stage was timed."""
        for s, e, sustained, burst in self.measured_stages:
            if s == start and e == end:
                return sustained, burst
        return None

    def stage_cpu_ms(self, start: int, end: int) -> float:
        """Full-speed CPU of the stage's compute (no quota stalls)."""
        timed = self.measured(start, end)
        if timed is not None:
            return timed[1]
        units = self.burst_unit_ms or self.unit_ms
        bounds = self.burst_boundary_ms or self.boundary_ms
        cpu = math.fsum(units[start:end])
        return cpu + (bounds[start] + bounds[end] if bounds else 0.0)

    def boundary(self, cut: int) -> float:
        return self.boundary_ms[cut] if self.boundary_ms else 0.0

    def stage_ms(self, start: int, end: int) -> float:
        """Sustained compute of units ``[start, end)`` (a running-sum difference, the arithmetic
        of the planner's tables), or its measured time."""
        timed = self.measured(start, end)
        if timed is not None:
            return timed[0]
        prefix = list(itertools.accumulate(self.unit_ms, initial=0.0))
        return prefix[end] - prefix[start] + self.boundary(start) + self.boundary(end)

    def stage_latency_ms(self, start: int, end: int) -> float:
        """The same stage's time for one micro-batch reaching the device idle."""
        timed = self.measured(start, end)
        if timed is not None:
            return self.under_quota(timed[1])
        if not self.burst_unit_ms and not self.burst_boundary_ms and self.quota_ms is None:
            return self.stage_ms(start, end)
        units = self.burst_unit_ms or self.unit_ms
        bounds = self.burst_boundary_ms or self.boundary_ms
        prefix = list(itertools.accumulate(units, initial=0.0))
        burst = prefix[end] - prefix[start]
        if bounds:  # the order of the planner's tables, so both agree to the last bit
            burst = burst + bounds[start] + bounds[end]
        return self.under_quota(burst)

    def under_quota(self, burst_ms: float) -> float:
        """Wall time of ``burst_ms`` of full-speed work started on an idle device."""
        q = self.quota_ms
        if q is None or burst_ms <= q:
            return burst_ms
        return q + (burst_ms - q) * self.period_ms / q

    @property
    def active_extra_w(self) -> float:
        """Power above idle while this device computes."""
        return (self.busy_w - self.idle_w) * self.busy_fraction

    def fits(self, memory_bytes: int) -> bool:
        return self.memory_budget_bytes is None or memory_bytes <= self.memory_budget_bytes


@dataclass(frozen=True)
class LinkCost:
    """A network link. ``bandwidth_mbps=None``: no transfer time beyond ``latency_ms``."""

    bandwidth_mbps: float | None = None
    latency_ms: float = 0.0

    def transfer_ms(self, nbytes: int) -> float:
        if self.bandwidth_mbps is None:
            return self.latency_ms
        return self.latency_ms + nbytes * 8 / (self.bandwidth_mbps * 1e3)


def _check_number(what: str, value: float, *, positive: bool = False) -> None:
    ok = math.isfinite(value) and (value > 0 if positive else value >= 0)
    if not ok:
        kind = "a finite number > 0" if positive else "a finite number >= 0"
        raise PlanError(f"{what} must be {kind}, got {value!r}")


@dataclass(frozen=True)
class Problem:
    """Everything the planner needs: unit costs, devices, links, batch size, input size.

    ``links`` override ``default_link`` between two endpoints (device names or
    :data:`~edgesplit.config.COORDINATOR`), in either order."""

    units: tuple[UnitCost, ...]
    devices: tuple[DeviceCost, ...]
    batch_size: int
    input_bytes: int  # upload per micro-batch, coordinator -> first stage
    default_link: LinkCost = LinkCost()
    links: tuple[tuple[str, str, LinkCost], ...] = ()
    prepare_ms: float = 0.0
    """The coordinator's time to prepare one micro-batch (load, preprocess, encode). It does
    that between uploads, so it adds to the upload's share of the period, not to latency (which
    starts at the upload)."""
    host_cpus: float | None = None
    """When every device and the coordinator share one host of this many cores (an emulated
    cluster), the period is at least all their CPU work per micro-batch / host_cpus. The
    dynamic program does not see this limit (it is a sum over stages, not a max): plans are
    exact for the devices' own costs, and their prediction includes the host's limit."""
    coordinator_ms: float = 0.0
    """The coordinator's CPU per micro-batch besides ``prepare_ms``: its side of the upload,
    receiving the result, the run's bookkeeping (measured by :mod:`edgesplit.app.pilot`). Serial
    with the upload, like ``prepare_ms``."""
    background_cpus: float = 0.0
    """Cores of the shared host (``host_cpus``) kept busy by work that is not the run's,
    measured by the pilot (:mod:`edgesplit.app.pilot`): it shares the cores with the run's
    processes as that many more processes as busy as theirs."""

    window: int | None = None
    """Micro-batches in flight at most, when the run sets it: a period is then at least the
    unloaded latency over the window (Little's law). None: not bounded (the run's default
    window, two per stage, is above the pipeline's depth; the planner's search is exact
    without this bound, which is not a sum or a max over stages)."""

    def _check_host(self) -> None:
        """The input, the coordinator's and the shared host's terms."""
        _check_number("input_bytes", self.input_bytes)
        _check_number("prepare_ms", self.prepare_ms)
        _check_number("coordinator_ms", self.coordinator_ms)
        _check_number("background_cpus", self.background_cpus)
        if self.window is not None and self.window < 1:
            raise PlanError(f"window must be >= 1 micro-batch, got {self.window}")
        if self.host_cpus is not None:
            _check_number("host_cpus", self.host_cpus, positive=True)

    def __post_init__(self) -> None:
        if not self.units:
            raise PlanError("a problem needs at least one unit, got none")
        if not self.devices:
            raise PlanError("a problem needs at least one device, got none")
        if self.batch_size < 1:
            raise PlanError(f"batch_size must be >= 1, got {self.batch_size}")
        self._check_host()
        for i, u in enumerate(self.units):
            for field in ("out_bytes", "weight_bytes", "activation_bytes"):
                _check_number(f"unit {i} ({u.name!r}) {field}", getattr(u, field))
        names = [d.name for d in self.devices]
        for d in self.devices:
            if d.name == COORDINATOR:
                raise PlanError(f"{COORDINATOR!r} is reserved and cannot name a device")
            if names.count(d.name) > 1:
                raise PlanError(f"device names must be unique, {d.name!r} appears twice")
            if len(d.unit_ms) != len(self.units):
                raise PlanError(
                    f"device {d.name!r} has {len(d.unit_ms)} unit times, expected one per unit "
                    f"({len(self.units)})"
                )
            for i, ms in enumerate(d.unit_ms):
                _check_number(f"device {d.name!r} time of unit {i}", ms)
            if d.boundary_ms and len(d.boundary_ms) != len(self.units) + 1:
                raise PlanError(
                    f"device {d.name!r} has {len(d.boundary_ms)} boundary times, expected one "
                    f"per cut ({len(self.units) + 1}) or none"
                )
            for k, ms in enumerate(d.boundary_ms):
                _check_number(f"device {d.name!r} boundary time at cut {k}", ms)
            if d.burst_unit_ms and len(d.burst_unit_ms) != len(self.units):
                raise PlanError(
                    f"device {d.name!r} has {len(d.burst_unit_ms)} burst unit times, expected "
                    f"one per unit ({len(self.units)}) or none"
                )
            if d.burst_boundary_ms and len(d.burst_boundary_ms) != len(self.units) + 1:
                raise PlanError(
                    f"device {d.name!r} has {len(d.burst_boundary_ms)} burst boundary times, "
                    f"expected one per cut ({len(self.units) + 1}) or none"
                )
            for ms in (*d.burst_unit_ms, *d.burst_boundary_ms):
                _check_number(f"device {d.name!r} burst times", ms)
            spans = [(s, e) for s, e, _, _ in d.measured_stages]
            for s, e, sustained, burst in d.measured_stages:
                if not 0 <= s < e <= len(self.units):
                    raise PlanError(
                        f"device {d.name!r} has a measured stage [{s}, {e}); expected "
                        f"0 <= start < end <= {len(self.units)}"
                    )
                if spans.count((s, e)) > 1:
                    raise PlanError(f"device {d.name!r} has stage [{s}, {e}) measured twice")
                for ms in (sustained, burst):
                    _check_number(f"device {d.name!r} measured stage [{s}, {e}) time", ms)
            if d.quota_ms is not None:
                _check_number(f"device {d.name!r} quota_ms", d.quota_ms, positive=True)
            _check_number(f"device {d.name!r} period_ms", d.period_ms, positive=True)
            if d.memory_budget_bytes is not None:
                _check_number(f"device {d.name!r} memory_budget_bytes", d.memory_budget_bytes)
            for field in ("idle_w", "busy_w"):
                _check_number(f"device {d.name!r} {field}", getattr(d, field))
            if not 0.0 <= d.busy_fraction <= 1.0:
                raise PlanError(
                    f"device {d.name!r} busy_fraction must be in [0, 1], got {d.busy_fraction}"
                )
        known = {*names, COORDINATOR}
        for a, b, link in (*((COORDINATOR, COORDINATOR, self.default_link),), *self.links):
            for end in (a, b):
                if end not in known:
                    raise PlanError(
                        f"link {a}-{b}: unknown endpoint {end!r}; known: {sorted(known)}"
                    )
            if link.bandwidth_mbps is not None:
                _check_number(f"link {a}-{b} bandwidth_mbps", link.bandwidth_mbps, positive=True)
            _check_number(f"link {a}-{b} latency_ms", link.latency_ms)

    @property
    def num_units(self) -> int:
        return len(self.units)

    @property
    def device_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.devices)

    def device(self, name: str) -> DeviceCost:
        for d in self.devices:
            if d.name == name:
                return d
        raise PlanError(f"unknown device {name!r}; the problem has {list(self.device_names)}")

    def link(self, a: str, b: str) -> LinkCost:
        """The link between endpoints ``a`` and ``b`` (either order)."""
        for x, y, link in self.links:
            if (x, y) in ((a, b), (b, a)):
                return link
        return self.default_link

    def restrict(self, names: Sequence[str]) -> Problem:
        """The same problem on only the devices ``names`` (in the problem's order)."""
        wanted = set(names)
        for name in wanted:
            self.device(name)
        if not wanted:
            raise PlanError("the device selection is empty; name at least one device")
        devices = tuple(d for d in self.devices if d.name in wanted)
        keep = {*wanted, COORDINATOR}
        links = tuple((a, b, lk) for a, b, lk in self.links if a in keep and b in keep)
        return dataclasses.replace(self, devices=devices, links=links)

    def memory_bytes(self, start: int, end: int) -> int:
        """Memory of a stage holding units ``[start, end)``: their weights plus the largest
        activation among them (units run one after the other)."""
        units = self.units[start:end]
        return sum(u.weight_bytes for u in units) + max(u.activation_bytes for u in units)


@dataclass(frozen=True)
class StagePlan:
    """One stage: units ``[start, end)`` (half-open) on ``device``, and its predicted costs."""

    device: str
    start: int
    end: int
    compute_ms: float  # sustained: what the stage takes while the pipeline keeps it busy
    transfer_ms: float  # output to the next hop (last stage: result return to the coordinator)
    memory_bytes: int  # weights of its units + the largest activation_bytes among them
    energy_mj: float  # per micro-batch: this device's idle power over the period + active extra
    first_unit: str = ""
    last_unit: str = ""
    latency_ms: float | None = None  # its compute for a micro-batch reaching it idle (None: =)


@dataclass(frozen=True)
class Prediction:
    upload_ms: float  # the input's transfer to the first stage
    bottleneck_ms: float
    throughput_ips: float
    latency_ms: float
    energy_j_per_image: float
    idle_devices_mj: float = 0.0  # per micro-batch, drawn by cluster devices no stage uses
    prepare_ms: float = 0.0  # the coordinator's preparation, serial with the upload
    host_ms: float = 0.0  # the shared host's limit on the period (0: no shared host)
    contended_ms: float = 0.0  # the period with the host's CPU contention (0: no shared host)
    coordinator_ms: float = 0.0  # the coordinator's CPU per micro-batch besides its preparation
    window_ms: float = 0.0  # the unloaded latency over the window: a floor under the period
    background_cpus: float = 0.0  # cores of the shared host busy with other work (measured)


@dataclass(frozen=True)
class Plan:
    objective: str  # "throughput" | "latency" | "energy"
    stages: tuple[StagePlan, ...]
    prediction: Prediction
    notes: tuple[str, ...] = ()

    def partition(self) -> str:
        """The stages' partition string (:func:`edgesplit.model.partition.format_partition`)."""
        return format_partition([(s.start, s.end) for s in self.stages])

    def assignment(self) -> Stages:
        """``(device, start, end)`` per stage, the form :func:`evaluate` takes."""
        return tuple(Stage(s.device, s.start, s.end) for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        """Inverse of :meth:`to_dict` (e.g. after a JSON round trip); unknown or missing keys
        are a :class:`PlanError` naming them."""
        try:
            _check_keys("plan", d, cls)
            stages = []
            for i, s in enumerate(d["stages"]):
                _check_keys(f"plan stage {i}", s, StagePlan)
                stages.append(StagePlan(**s))
            _check_keys("plan prediction", d["prediction"], Prediction)
            return cls(
                objective=str(d["objective"]),
                stages=tuple(stages),
                prediction=Prediction(**d["prediction"]),
                notes=tuple(d.get("notes", ())),
            )
        except (TypeError, AttributeError) as e:
            raise PlanError(f"malformed plan: {e}") from e

    def table(self) -> str:
        """The plan as a plain-text table (:func:`plan_table`)."""
        return plan_table(self)


def _check_keys(what: str, d: Mapping[str, Any], cls: type) -> None:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    required = {
        n
        for n, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    missing = sorted(required - set(d))
    if unknown or missing:
        raise PlanError(f"{what}: unknown keys {unknown}, missing keys {missing}")


# A plan as a plain-text table (its printable form).


def _fmt(v: object) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def plan_table(plan: Plan) -> str:
    """Stage, device, unit range, first/last unit, compute, transfer, memory, energy; then the
    totals and the prediction, then the notes."""
    header = ["stage", "device", "units", "first unit", "last unit", "compute ms", "transfer ms",
              "memory MB", "energy mJ"]  # fmt: skip
    rows = [
        [i, s.device, f"{s.start}-{s.end}", s.first_unit or "-", s.last_unit or "-",
         s.compute_ms, s.transfer_ms, s.memory_bytes / MB, s.energy_mj]
        for i, s in enumerate(plan.stages)
    ]  # fmt: skip
    p = plan.prediction
    rows.append(
        ["total", "", "", "", "", sum(s.compute_ms for s in plan.stages),
         sum(s.transfer_ms for s in plan.stages), sum(s.memory_bytes for s in plan.stages) / MB,
         sum(s.energy_mj for s in plan.stages) + p.idle_devices_mj]
    )  # fmt: skip
    text = [header, *[[_fmt(v) for v in r] for r in rows]]
    widths = [max(len(r[i]) for r in text) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in text]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, lines[1])
    lines.append(
        f"objective {plan.objective}: plan {plan_text(plan.assignment())}, "
        f"upload {p.upload_ms:.2f} ms, "
        f"bottleneck {p.bottleneck_ms:.2f} ms, throughput {p.throughput_ips:.2f} img/s, "
        f"latency {p.latency_ms:.2f} ms, energy {p.energy_j_per_image:.4f} J/image"
    )
    if p.prepare_ms:
        lines.append(
            f"the coordinator prepares each micro-batch in {p.prepare_ms:.2f} ms before its "
            "upload (in the bottleneck)"
        )
    if p.coordinator_ms:
        lines.append(
            f"the coordinator spends {p.coordinator_ms:.2f} ms of CPU per micro-batch besides "
            "its preparation (uploading, taking the result; measured by the pilot)"
        )
    if p.background_cpus:
        lines.append(f"other work keeps {p.background_cpus:.2f} cores of this host busy")
    if p.window_ms >= p.bottleneck_ms > 0:
        lines.append(
            f"the window bounds the period: {p.window_ms:.2f} ms per micro-batch (the unloaded "
            "latency over the micro-batches in flight)"
        )
    if p.host_ms:
        bound = " (the bottleneck)" if p.host_ms >= p.bottleneck_ms else ""
        lines.append(
            f"the devices share this host: all their CPU work takes {p.host_ms:.2f} ms of its "
            f"cores per micro-batch{bound}"
        )
    if p.contended_ms > p.host_ms and p.contended_ms >= p.bottleneck_ms:
        lines.append(
            f"the processes sharing this host slow each other down: {p.contended_ms:.2f} ms per "
            "micro-batch (the bottleneck; a mean-field estimate of fair CPU sharing)"
        )
    bursts = [s for s in plan.stages if s.latency_ms is not None and s.latency_ms != s.compute_ms]
    if bursts:
        alone = ", ".join(f"{s.device} {s.latency_ms:.2f} ms" for s in bursts)
        lines.append(
            f"compute is what a busy pipeline sustains; a micro-batch alone runs faster under a "
            f"CPU quota ({alone}), which the latency counts"
        )
    if p.idle_devices_mj:
        lines.append(
            f"devices left idle draw {p.idle_devices_mj:.2f} mJ per micro-batch (in the total)"
        )
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)
