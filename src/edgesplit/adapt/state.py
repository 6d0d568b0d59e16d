"""The controller's live view of the cluster (issue #6 item 2): per device a speed factor, per
link a transfer estimate, built by a pure :func:`observe` from what the run sees.

- **Speed factor** of a device: observed stage compute time / the profile's time for the same
  units at the same batch size (the profile's unit times scaled by observed batch / profiled
  batch); the estimate is the median over the last ``window_s`` seconds of observations, so a
  stage caught by a CPU quota's period (a heavy-tailed outlier) does not move it, and a step
  (a CPU hog starts) shows after half a window whatever the result rate. 1.0 = as profiled;
  3.0 = three times slower (a CPU hog, heat, another tenant). The first result of a device in
  each plan epoch is skipped: a freshly installed stage warms up (onnxruntime sessions,
  caches).
- **Link estimate**: the median over the same window of the observed milliseconds per byte
  beyond the profiled latency (``(transfer_ms - latency_ms) / bytes_out``), from each hop's
  send to its arrival at the next hop. It stands for the link's current bandwidth.
  Device-to-device links only: the result return's arrival includes the coordinator's own
  queueing.
- **Sensors** (from heartbeats): temperature, throttling flags and memory use, newest wins.

Devices and links the current plan does not use keep their last estimate (nothing is observed
there); the profile stands in until something is.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass

from edgesplit.plan.profile import Profile, boundary_bytes
from edgesplit.shared.names import COORDINATOR

MIN_EXPECTED_MS = 0.05
"""Stages the profile times below this are too short to tell a speed from noise."""
FACTOR_RANGE = (1.0, 50.0)
"""One observation moves a speed factor at most to these bounds (a glitch is not a fact).

Never below 1: a stage that is not the bottleneck waits between micro-batches, and an emulated
device (a CFS quota) runs such short bursts at full speed, below the sustained time the profile
plans with (measured: factors of 0.5 on every unstressed device). Believing those devices twice
as fast made the controller predict +60 % for a switch that lost a third of the throughput. A
device that really got faster than its profile is left as profiled."""
DEFAULT_WINDOW_S = 3.0
SLOW_FACTOR = 1.2
"""A speed factor from this up is remembered as the device's *slow evidence* (see
:attr:`DeviceEstimate.slow`)."""
COMPARABLE_LOAD = 0.5
"""Observations on a stage whose profiled time is at least this share of the one the slow
evidence came from can overrule it (issue #20)."""
CAUTION_S = 20.0
"""How long a device's highest speed factor is remembered for the plans that would give it
work (:attr:`DeviceEstimate.cautious_factor`)."""
MAX_SAMPLES = 64
RESULTS_KEPT_S = 30.0
MAX_RESULTS = 1024
"""Observations kept per device or link (the newest), whatever the window."""

Samples = tuple[tuple[float, float], ...]
"""``(t, value)`` observations inside the window, oldest first."""


def _median(samples: Samples) -> float:
    return statistics.median(v for _, v in samples)


def _push(samples: Samples, t: float, value: float, window_s: float) -> Samples:
    """``samples`` plus ``(t, value)``, without those older than ``window_s`` before ``t``."""
    kept = [s for s in samples if s[0] > t - window_s][-(MAX_SAMPLES - 1) :]
    return (*kept, (t, value))


@dataclass(frozen=True)
class StageSeen:
    """One stage's compute and transfer of one micro-batch: ``device`` ran units ``[start, end)``
    (half-open) of plan epoch ``epoch`` and sent ``bytes_out`` to ``next_device`` (a device name
    or :data:`~edgesplit.config.COORDINATOR`)."""

    t: float
    device: str
    epoch: int
    start: int
    end: int
    batch_size: int
    compute_ms: float
    transfer_ms: float
    bytes_out: int
    next_device: str


@dataclass(frozen=True)
class SensorsSeen:
    """A device's newest sensor readings (None: no such sensor)."""

    t: float
    device: str
    temperature_c: float | None = None
    throttled: int | None = None
    memory_percent: float | None = None


@dataclass(frozen=True)
class ResultArrived:
    """A result of ``images`` reached the coordinator at ``t`` (measured throughput)."""

    t: float
    images: int


@dataclass(frozen=True)
class LinkProbed:
    """A timed transfer of ``nbytes`` from device ``a`` to device ``b`` (a probe of a link the
    plan does not use, so no result tells its speed)."""

    t: float
    a: str
    b: str
    nbytes: int
    transfer_ms: float


Observation = StageSeen | SensorsSeen | ResultArrived | LinkProbed


@dataclass(frozen=True)
class DeviceEstimate:
    name: str
    samples: Samples = ()
    """Observed compute time / profiled time, inside the window."""
    observations: int = 0
    last_t: float | None = None
    temperature_c: float | None = None
    throttled: int | None = None
    memory_percent: float | None = None
    loads: Samples = ()
    """The profiled time (ms per profiled batch) of the stage each sample was measured on,
    parallel to ``samples``."""
    slow: tuple[float, float] | None = None
    """``(speed factor, stage ms)``: the device was measured this slow on a stage of this
    profiled time. A light stage cannot overrule it (issue #20): an emulated device (a CFS
    quota) or any device with idle time runs a light stage in bursts at full speed, so a
    device whose CPU hog never stopped looked as fast as profiled as soon as it was given
    little work, was given much again, was slow again: the controller flapped every 10 s.
    Only observations on a stage at least ``COMPARABLE_LOAD`` times as heavy clear it."""

    peaks: Samples = ()
    """``(second, highest speed factor in that second)`` over the last ``CAUTION_S``."""

    @property
    def cautious_factor(self) -> float:
        """The highest speed factor of the last ``CAUTION_S`` (at least the current one): what
        a plan that hands the device work must assume (issue #20). A device under a CPU hog
        runs a light stage in bursts and reads as fast as profiled between slow spells, and on
        a busy host every device reads 1.5-3x slow now and then; the best of many plans
        planned on the current readings hands the heavy stage to whichever device reads
        fastest at the moment, and that device was slow seconds ago."""
        return max([self.speed_factor, *(v for _, v in self.peaks)])

    @property
    def speed_factor(self) -> float:
        """1.0 until observed (the profile stands); never below the slow evidence unless
        measured on a comparable stage."""
        if self.slow is None:
            return _median(self.samples) if self.samples else 1.0
        comparable = self._comparable(self.slow[1])
        if comparable:
            return _median(comparable)
        return max(_median(self.samples), self.slow[0]) if self.samples else self.slow[0]

    def _comparable(self, load: float) -> Samples:
        """The samples measured on a stage at least ``COMPARABLE_LOAD`` times ``load`` (all
        of them when their loads are unknown)."""
        if len(self.loads) != len(self.samples):
            return self.samples
        return tuple(
            s
            for s, (_, ms) in zip(self.samples, self.loads, strict=True)
            if ms >= load * COMPARABLE_LOAD
        )


@dataclass(frozen=True)
class LinkEstimate:
    """Endpoints ``a``/``b`` in sorted order (links are symmetric in the planner)."""

    a: str
    b: str
    samples: Samples
    """(observed transfer - profiled latency) / bytes, inside the window."""
    latency_ms: float
    """The profile's latency of this link (not re-estimated: one tensor size cannot tell it
    apart from bandwidth)."""
    last_bytes: int
    observations: int = 0
    last_t: float | None = None

    @property
    def ms_per_byte(self) -> float:
        return _median(self.samples)

    @property
    def bandwidth_mbps(self) -> float | None:
        """None: no measurable time beyond the latency."""
        return 8.0 / (self.ms_per_byte * 1e3) if self.ms_per_byte > 0 else None

    def transfer_ms(self, nbytes: int) -> float:
        return self.latency_ms + self.ms_per_byte * nbytes


@dataclass(frozen=True)
class AdaptState:
    devices: tuple[DeviceEstimate, ...] = ()
    links: tuple[LinkEstimate, ...] = ()
    warm: frozenset[tuple[str, int]] = frozenset()
    """(device, epoch) pairs whose first (warm-up) result was seen."""
    results: Samples = ()
    """(arrival, images) of the last ``RESULTS_KEPT_S`` seconds of results."""

    def device(self, name: str) -> DeviceEstimate:
        for d in self.devices:
            if d.name == name:
                return d
        return DeviceEstimate(name)

    def link(self, a: str, b: str) -> LinkEstimate | None:
        a, b = sorted((a, b))
        for k in self.links:
            if (k.a, k.b) == (a, b):
                return k
        return None

    def speed_factors(self) -> dict[str, float]:
        return {d.name: d.speed_factor for d in self.devices}

    def measured_ips(self, start: float, end: float) -> float | None:
        """Images per second that arrived in ``(start, end]``; None without a result there."""
        images = sum(n for t, n in self.results if start < t <= end)
        return images / (end - start) if images and end > start else None


def start(profile: Profile) -> AdaptState:
    """Every device as profiled (speed factor 1, no link observed)."""
    return AdaptState(devices=tuple(DeviceEstimate(d.name) for d in profile.devices))


def profiled_link(profile: Profile, a: str, b: str) -> tuple[float, float | None]:
    """``(latency_ms, bandwidth_mbps)`` of the profile's link between ``a`` and ``b``."""
    for k in profile.links:
        if {k.a, k.b} == {a, b}:
            return k.latency_ms, k.bandwidth_mbps
    return profile.default_latency_ms, profile.default_bandwidth_mbps


def expected_ms(profile: Profile, device: str, start: int, end: int, batch_size: int) -> float:
    """The planner's compute time of units ``[start, end)`` as one stage on ``device`` for
    ``batch_size`` images (times scale linearly with the batch, an approximation for partial
    batches), so a device that runs as planned has speed factor 1."""
    ms = profile.device(device).stage_ms(start, end, boundary_bytes(profile))
    return ms * batch_size / profile.batch_size


def _replace_device(state: AdaptState, new: DeviceEstimate) -> AdaptState:
    others = tuple(d for d in state.devices if d.name != new.name)
    if len(others) == len(state.devices):
        return dataclasses.replace(state, devices=(*state.devices, new))
    return dataclasses.replace(
        state, devices=tuple(new if d.name == new.name else d for d in state.devices)
    )


def _observe_stage(
    state: AdaptState, seen: StageSeen, profile: Profile, window_s: float
) -> AdaptState:
    key = (seen.device, seen.epoch)
    if key not in state.warm:
        return dataclasses.replace(state, warm=state.warm | {key})
    expected = expected_ms(profile, seen.device, seen.start, seen.end, seen.batch_size)
    if expected >= MIN_EXPECTED_MS and seen.compute_ms > 0:
        low, high = FACTOR_RANGE
        ratio = min(max(seen.compute_ms / expected, low), high)
        d = state.device(seen.device)
        load = expected * profile.batch_size / seen.batch_size
        d = dataclasses.replace(
            d,
            samples=_push(d.samples, seen.t, ratio, window_s),
            loads=_push(d.loads, seen.t, load, window_s),
            observations=d.observations + 1,
            last_t=seen.t,
        )
        d = dataclasses.replace(d, slow=_slow_evidence(d))
        state = _replace_device(state, dataclasses.replace(d, peaks=_peak(d, seen.t)))
    # Links to the coordinator stay as profiled: their arrival time includes the coordinator's
    # own queueing (one busy Python process), which is not the network.
    if seen.bytes_out > 0 and seen.transfer_ms >= 0 and seen.next_device != COORDINATOR:
        link = LinkProbed(seen.t, seen.device, seen.next_device, seen.bytes_out, seen.transfer_ms)
        state = _observe_link(state, link, profile, window_s)
    return state


def _peak(d: DeviceEstimate, t: float) -> Samples:
    """``d.peaks`` with its current speed factor at ``t`` (one entry per second, its highest),
    without those older than ``CAUTION_S``."""
    second = float(int(t))
    kept = [p for p in d.peaks if p[0] > t - CAUTION_S]
    if kept and kept[-1][0] == second:
        return (*kept[:-1], (second, max(kept[-1][1], d.speed_factor)))
    return (*kept, (second, d.speed_factor))


def _slow_evidence(d: DeviceEstimate) -> tuple[float, float] | None:
    """The device's slow evidence after its newest observation: set (or raised) when the
    median factor of its window is at least ``SLOW_FACTOR``; replaced or cleared only by the
    samples of its window measured on a stage comparable to the evidence's."""
    floor = d.slow[1] * COMPARABLE_LOAD if d.slow is not None else 0.0
    pairs = [(f, ms) for (_, f), (_, ms) in zip(d.samples, d.loads, strict=True) if ms >= floor]
    if not pairs:
        return d.slow
    factor = statistics.median(f for f, _ in pairs)
    if factor < SLOW_FACTOR:
        return None
    load = statistics.median(ms for _, ms in pairs)
    return factor, max(load, d.slow[1]) if d.slow is not None else load


def _observe_link(
    state: AdaptState, seen: LinkProbed, profile: Profile, window_s: float
) -> AdaptState:
    latency_ms, _ = profiled_link(profile, seen.a, seen.b)
    per_byte = max(seen.transfer_ms - latency_ms, 0.0) / seen.nbytes
    old = state.link(seen.a, seen.b)
    a, b = sorted((seen.a, seen.b))
    new = LinkEstimate(
        a=a,
        b=b,
        samples=_push(old.samples if old else (), seen.t, per_byte, window_s),
        latency_ms=latency_ms,
        last_bytes=seen.nbytes,
        observations=(old.observations if old else 0) + 1,
        last_t=seen.t,
    )
    links = tuple(k for k in state.links if (k.a, k.b) != (a, b))
    return dataclasses.replace(state, links=(*links, new))


def observe(
    state: AdaptState,
    seen: Observation,
    profile: Profile,
    window_s: float = DEFAULT_WINDOW_S,
) -> AdaptState:
    """The state after one observation (pure); estimates are medians over the last
    ``window_s`` seconds of a device's (or link's) observations."""
    if isinstance(seen, ResultArrived):
        kept = [r for r in state.results if r[0] > seen.t - RESULTS_KEPT_S][-(MAX_RESULTS - 1) :]
        return dataclasses.replace(state, results=(*kept, (seen.t, float(seen.images))))
    if isinstance(seen, StageSeen):
        if seen.device == COORDINATOR:
            return state
        return _observe_stage(state, seen, profile, window_s)
    if isinstance(seen, LinkProbed):
        if seen.nbytes <= 0 or seen.transfer_ms < 0 or COORDINATOR in (seen.a, seen.b):
            return state
        return _observe_link(state, seen, profile, window_s)
    d = state.device(seen.device)
    return _replace_device(
        state,
        dataclasses.replace(
            d,
            temperature_c=seen.temperature_c if seen.temperature_c is not None else d.temperature_c,
            throttled=seen.throttled if seen.throttled is not None else d.throttled,
            memory_percent=seen.memory_percent
            if seen.memory_percent is not None
            else d.memory_percent,
        ),
    )
