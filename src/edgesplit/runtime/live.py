"""The live view of a run (issue #7): a pure reducer from the events the coordinator sees to a
frozen state, the snapshot consumers read, and its plain-text rendering.

Events (all times on the coordinator's clock, ``time.time()``):

- :class:`ResultSeen`: a result arrived; it carries its end-to-end latency and, per stage, when
  that device passed the micro-batch on (:class:`HopSeen`);
- :class:`StatusSeen`: a Status round trip to a device answered (its newest readings and queue
  depths); :class:`UnreachableSeen`: it did not;
- :class:`FailureSeen`: a worker reported a failed request.

Throughput and latency are over a sliding window of ``window_s`` seconds ending at the
snapshot's time (shorter while the run is younger than the window). Nothing here reads a clock
or takes a lock except :class:`LiveFeed`, the small thread-safe holder the runner feeds.
"""

from __future__ import annotations

import dataclasses
import statistics
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgesplit.errors import ConfigError
from edgesplit.runtime.records import HopRecord
from edgesplit.shared.stats import percentile

DEFAULT_WINDOW_S = 5.0


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HopSeen:
    """One stage's part of a result: ``device`` passed ``images`` on at ``t``."""

    device: str
    stage: int
    images: int
    t: float


@dataclass(frozen=True)
class ResultSeen:
    t: float
    """Arrival at the coordinator."""
    images: int
    latency_s: float
    """Upload start to arrival."""
    hops: tuple[HopSeen, ...] = ()
    records: tuple[HopRecord, ...] = ()
    """The full hop records (compute and transfer times), for observers such as the adaptive
    controller; the reducer reads ``hops`` only."""

    @classmethod
    def from_records(
        cls, arrival: float, send_start: float, images: int, hops: Sequence[HopRecord]
    ) -> ResultSeen:
        """From the runner's view of one result (hop records on the coordinator clock)."""
        return cls(
            t=arrival,
            images=images,
            latency_s=arrival - send_start,
            hops=tuple(HopSeen(h.device, h.stage, h.batch_size, h.end) for h in hops),
            records=tuple(hops),
        )


@dataclass(frozen=True)
class Reading:
    """A device's sensors as of a Status round trip; ``None`` = the device has no such sensor.

    CPU percentages: ``process_cpu_percent`` is the worker process (100 = one core),
    ``cpu_percent`` the whole system (100 = all cores)."""

    process_cpu_percent: float | None = None
    cpu_percent: float | None = None
    cpu_freq_mhz: float | None = None
    memory_percent: float | None = None
    rss_mb: float | None = None
    temperature_c: float | None = None
    throttled: int | None = None
    """Raspberry Pi firmware throttling flags (0 = none)."""

    @classmethod
    def from_samples(cls, samples: Sequence[Mapping[str, Any]]) -> Reading | None:
        """CPU percentages averaged over ``samples`` (each covers ~0.2 s, too jumpy alone); the
        other sensors from the newest sample. ``None`` for no samples."""
        if not samples:
            return None
        newest = max(samples, key=lambda s: float(s.get("t") or 0.0))

        def mean(key: str) -> float | None:
            values = [float(s[key]) for s in samples if s.get(key) is not None]
            return statistics.fmean(values) if values else None

        def latest(key: str) -> float | None:
            value = newest.get(key)
            return None if value is None else float(value)

        return cls(
            process_cpu_percent=mean("process_cpu_percent"),
            cpu_percent=mean("cpu_percent"),
            cpu_freq_mhz=latest("cpu_freq_mhz"),
            memory_percent=latest("memory_percent"),
            rss_mb=latest("rss_mb"),
            temperature_c=latest("temperature_c"),
            throttled=None if newest.get("throttled") is None else int(newest["throttled"]),
        )


@dataclass(frozen=True)
class StatusSeen:
    """A heartbeat (Status call) answered."""

    t: float
    device: str
    reading: Reading | None
    """None: no new sample since the previous round trip (the older reading stays)."""
    queue_depth: int
    """Micro-batches waiting for the device's compute."""
    send_queue_depth: int = 0
    stage: int | None = None
    """The device's stage in the current plan; None = it runs none."""
    health: str | None = None
    """The coordinator's view of the device (``healthy``, ``suspect``, ``lost``, ...)."""


@dataclass(frozen=True)
class UnreachableSeen:
    """A heartbeat went unanswered."""

    t: float
    device: str
    reason: str
    health: str | None = None


@dataclass(frozen=True)
class FailureSeen:
    t: float
    device: str
    message: str


LiveEvent = ResultSeen | StatusSeen | UnreachableSeen | FailureSeen


# --- state and reducer ----------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceLive:
    name: str
    stage: int | None
    images: int = 0
    recent: tuple[tuple[float, int], ...] = ()
    """(time passed on, images) inside the window."""
    reading: Reading = Reading()
    queue_depth: int | None = None
    send_queue_depth: int | None = None
    reachable: bool = True
    health: str | None = None
    failures: int = 0
    order: int = 0
    """First-seen order, the tie-break after the stage."""


@dataclass(frozen=True)
class LiveState:
    started: float
    window_s: float = DEFAULT_WINDOW_S
    devices: tuple[DeviceLive, ...] = ()
    """In first-seen order (the initial plan's first); snapshots sort them by stage."""
    images: int = 0
    recent: tuple[tuple[float, int, float], ...] = ()
    """(arrival, images, latency_s) of results inside the window."""
    failures: int = 0
    last_failure: str | None = None


def start(started: float, stages: Sequence[str], window_s: float = DEFAULT_WINDOW_S) -> LiveState:
    """The state of a run that started at ``started`` with devices ``stages`` (stage order)."""
    if window_s <= 0:
        raise ConfigError(f"window_s must be > 0, got {window_s}")
    devices = tuple(DeviceLive(name, index, order=index) for index, name in enumerate(stages))
    return LiveState(started=started, window_s=window_s, devices=devices)


def _device(state: LiveState, name: str) -> DeviceLive:
    for device in state.devices:
        if device.name == name:
            return device
    return DeviceLive(name, None, order=len(state.devices))


def _replace_device(state: LiveState, new: DeviceLive) -> LiveState:
    devices = [new if d.name == new.name else d for d in state.devices]
    if all(d.name != new.name for d in state.devices):
        devices.append(new)
    return dataclasses.replace(state, devices=tuple(devices))


def _inside(t: float, now: float, window_s: float) -> bool:
    # No upper bound: a hop time converted from a worker clock may lie a little after ``now``.
    return t > now - window_s


def reduce(state: LiveState, event: LiveEvent) -> LiveState:
    """The state after ``event``; windows are pruned to ``window_s`` before ``event.t``."""
    w = state.window_s
    if isinstance(event, ResultSeen):
        recent = (*state.recent, (event.t, event.images, event.latency_s))
        state = dataclasses.replace(
            state,
            images=state.images + event.images,
            recent=tuple(r for r in recent if r[0] > event.t - w),
        )
        for hop in event.hops:
            device = _device(state, hop.device)
            hops = (*device.recent, (hop.t, hop.images))
            state = _replace_device(
                state,
                dataclasses.replace(
                    device,
                    images=device.images + hop.images,
                    recent=tuple(h for h in hops if h[0] > event.t - w),
                ),
            )
        return state
    device = _device(state, event.device)
    if isinstance(event, StatusSeen):
        device = dataclasses.replace(
            device,
            reading=event.reading or device.reading,
            queue_depth=event.queue_depth,
            send_queue_depth=event.send_queue_depth,
            stage=event.stage,
            reachable=True,
            health=event.health or device.health,
        )
        return _replace_device(state, device)
    if isinstance(event, UnreachableSeen):
        health = event.health or device.health
        return _replace_device(state, dataclasses.replace(device, reachable=False, health=health))
    state = dataclasses.replace(
        state, failures=state.failures + 1, last_failure=f"{event.device}: {event.message}"
    )
    return _replace_device(state, dataclasses.replace(device, failures=device.failures + 1))


def reduce_all(state: LiveState, events: Iterable[LiveEvent]) -> LiveState:
    for event in events:
        state = reduce(state, event)
    return state


# --- snapshot ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceSnapshot:
    """One device as the dashboard and the Prometheus gauges show it."""

    name: str
    stage: int | None
    reachable: bool
    """It answered its last heartbeat."""
    health: str | None
    """The coordinator's state of it (``healthy``, ``suspect``, ``lost``, ``probation``)."""
    images: int
    throughput_ips: float
    """Images this device passed on per second over the window."""
    process_cpu_percent: float | None
    cpu_percent: float | None
    cpu_freq_mhz: float | None
    memory_percent: float | None
    rss_mb: float | None
    temperature_c: float | None
    queue_depth: int | None
    send_queue_depth: int | None
    failures: int


@dataclass(frozen=True)
class LiveSnapshot:
    t: float
    elapsed_s: float
    window_s: float
    """The span throughput and latency cover: the window, or the run so far if shorter."""
    images: int
    throughput_ips: float
    latency_p50_s: float | None
    latency_p95_s: float | None
    failures: int
    last_failure: str | None
    devices: tuple[DeviceSnapshot, ...]
    """By stage; devices without a stage last."""
    adaptive: str | None = None
    """The adaptive controller's last decision (``edgesplit run --adaptive``)."""


def _by_stage(d: DeviceLive) -> tuple[bool, int, int]:
    return (d.stage is None, d.stage if d.stage is not None else 0, d.order)


def snapshot(state: LiveState, now: float) -> LiveSnapshot:
    """What the run looks like at ``now`` (throughput and latency over the window)."""
    elapsed = max(now - state.started, 0.0)
    span = max(min(state.window_s, elapsed), 1e-9)
    results = [r for r in state.recent if _inside(r[0], now, state.window_s)]
    latencies = [r[2] for r in results]
    devices = tuple(
        DeviceSnapshot(
            name=d.name,
            stage=d.stage,
            reachable=d.reachable,
            health=d.health,
            images=d.images,
            throughput_ips=sum(n for t, n in d.recent if _inside(t, now, state.window_s)) / span,
            process_cpu_percent=d.reading.process_cpu_percent,
            cpu_percent=d.reading.cpu_percent,
            cpu_freq_mhz=d.reading.cpu_freq_mhz,
            memory_percent=d.reading.memory_percent,
            rss_mb=d.reading.rss_mb,
            temperature_c=d.reading.temperature_c,
            queue_depth=d.queue_depth,
            send_queue_depth=d.send_queue_depth,
            failures=d.failures,
        )
        for d in sorted(state.devices, key=_by_stage)
    )
    return LiveSnapshot(
        t=now,
        elapsed_s=elapsed,
        window_s=min(state.window_s, elapsed),
        images=state.images,
        throughput_ips=sum(r[1] for r in results) / span,
        latency_p50_s=percentile(latencies, 50),
        latency_p95_s=percentile(latencies, 95),
        failures=state.failures,
        last_failure=state.last_failure,
        devices=devices,
    )


# --- plain text -------------------------------------------------------------------------------


def _num(value: float | None, fmt: str, unit: str) -> str:
    return f"-{unit}" if value is None else f"{value:{fmt}}{unit}"


def state_of(d: DeviceSnapshot) -> str:
    """The coordinator's health state if known, else whether the last heartbeat answered."""
    return d.health or ("ok" if d.reachable else "unreachable")


def device_line(d: DeviceSnapshot) -> str:
    """``pi1 stage 0: cpu 48% 1500 MHz 52°C mem 40% q 1 | 41.0 img/s`` (``-`` = no sensor)."""
    stage = "-" if d.stage is None else str(d.stage)
    state = f" {state_of(d).upper()}" if state_of(d) not in ("ok", "healthy") else ""
    queue = "-" if d.queue_depth is None else str(d.queue_depth)
    return (
        f"{d.name} stage {stage}{state}: cpu {_num(d.process_cpu_percent, '.0f', '%')} "
        f"{_num(d.cpu_freq_mhz, '.0f', ' MHz')} {_num(d.temperature_c, '.0f', '°C')} "
        f"mem {_num(d.memory_percent, '.0f', '%')} q {queue} | {d.throughput_ips:.1f} img/s"
    )


def pipeline_line(s: LiveSnapshot, total: int | None = None) -> str:
    """``96/256 images | 41.0 img/s p50 220 ms p95 300 ms (last 5 s)``."""
    done = f"{s.images}/{total}" if total is not None else str(s.images)
    p50 = None if s.latency_p50_s is None else s.latency_p50_s * 1000.0
    p95 = None if s.latency_p95_s is None else s.latency_p95_s * 1000.0
    failures = f", {s.failures} failures" if s.failures else ""
    return (
        f"{done} images | {s.throughput_ips:.1f} img/s p50 {_num(p50, '.0f', ' ms')} "
        f"p95 {_num(p95, '.0f', ' ms')} (last {s.window_s:.0f} s){failures}"
    )


def plain_lines(s: LiveSnapshot, total: int | None = None) -> list[str]:
    """The non-terminal dashboard: the pipeline line, one line per device, then the adaptive
    controller's last decision (if it runs)."""
    adaptive = [s.adaptive] if s.adaptive else []
    return [pipeline_line(s, total), *(device_line(d) for d in s.devices), *adaptive]


# --- the thread-safe feed ---------------------------------------------------------------------


LiveCallback = Callable[[LiveSnapshot], None]
LiveObserver = Callable[[LiveEvent], None]


class LiveFeed:
    """Applies events from the run's threads (results on the caller's, Status on the poller's)
    and calls ``on_live`` with the new snapshot after each, and ``observer`` with the event
    itself. Calls are serialised by a lock, so neither needs locking of its own but both must
    be quick (they delay the run); throttle any rendering there."""

    def __init__(
        self,
        on_live: LiveCallback | None,
        started: float,
        stages: Sequence[str],
        window_s: float = DEFAULT_WINDOW_S,
        observer: LiveObserver | None = None,
    ) -> None:
        self._on_live = on_live
        self._observer = observer
        self._state = start(started, stages, window_s)
        self._lock = threading.Lock()

    def push(self, event: LiveEvent) -> None:
        with self._lock:
            self._state = reduce(self._state, event)
            if self._on_live is not None:
                self._on_live(snapshot(self._state, event.t))
            if self._observer is not None:
                self._observer(event)

    @property
    def state(self) -> LiveState:
        with self._lock:
            return self._state
