"""A short pilot run that measures what a micro-batch costs each process besides its compute
(issue #19): the cost model's per-call and coordinator terms, measured, not fitted.

At 32 px a stage computes for 1 to 2 ms, and a micro-batch costs each worker about as much CPU
again in receiving the call, handing the batch to its compute thread, sending it on and its
records, and the coordinator 2 to 3 ms in uploading it and taking its result (measured here:
AMD EPYC, 3 devices at 0.5 CPU, MobileNetV2 32 px batch 16). The profile's unit and stage
timings do not see any of it, so the default run came out 45 to 60 % under its prediction.

The pilot streams micro-batches of the run's own data through the installed plan with as many
in flight as the run will have, for :data:`PILOT_S` seconds, and reads every process's CPU time
over its steady part, from the first micro-batch handed over for a result to the last (CPU
time, not wall: waiting in a queue costs none): the coordinator's own process time and each
worker's from its samples (:mod:`edgesplit.metrics.cpu`), over the micro-batches each finished
in that time. Per micro-batch, what the
profile already models (the stage's compute, the hand-offs' per-MB CPU, the coordinator's
preparation) is subtracted; the rest is ``call_cpu_ms`` of each worker and ``coordinator_ms``
(:class:`~edgesplit.plan.profile.DeviceProfile`, :class:`~edgesplit.plan.profile.Profile`).

Why the run's window and not one micro-batch in flight: a micro-batch that finds a worker idle
costs it more than one that arrives while the worker is busy (its threads wake for it alone,
its messages are not coalesced). Measured here (Intel Xeon Ice Lake, 2 cores, 3 namespaced
devices at 0.5 CPU, 100 Mbit/s, the default job), the first worker's CPU per micro-batch from
its process times: one in flight 5.45 ms, six in flight 4.76-4.79 ms, the run that followed
4.66 ms. The pilot at one in flight put the prediction 13-16 % under four such runs.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from edgesplit.metrics.cpu import devices_cpu_s
from edgesplit.plan.profile import Profile, boundary_bytes, to_problem
from edgesplit.shared.plan import Stage

if TYPE_CHECKING:
    import torch

    from edgesplit.runtime.coordinator import Coordinator

log = logging.getLogger(__name__)

PILOT_S = 1.5
"""How long the pilot streams micro-batches (the workers sample their CPU every 0.2 s)."""
MIN_BATCHES = 8
"""Micro-batches the pilot sends at least after its window is full, however long they take."""
STEADY_MIN_S = 0.6
"""The shortest steady part measured on its own (the workers sample their CPU every 0.2 s)."""


@dataclass(frozen=True)
class Overheads:
    """What the pilot measured: the coordinator's and each worker's CPU per micro-batch beyond
    the modelled costs, over ``batches`` micro-batches in ``wall_s`` seconds."""

    coordinator_ms: float
    call_cpu_ms: dict[str, float]
    batches: int
    wall_s: float
    background_cpus: float = 0.0
    """Cores of the shared host busy with other work during the pilot (0: no shared host)."""
    window: int = 1
    """Micro-batches the pilot kept in flight (the run's window)."""

    def describe(self) -> str:
        calls = ", ".join(f"{d} {ms:.2f}" for d, ms in sorted(self.call_cpu_ms.items()))
        return (
            f"pilot ({self.batches} micro-batches, {self.window} in flight, {self.wall_s:.1f} s): "
            f"CPU per micro-batch beyond the profiled compute and hand-offs: coordinator "
            f"{self.coordinator_ms:.2f} ms, workers {calls} ms; other work on the host "
            f"{self.background_cpus:.2f} cores"
        )


@dataclass
class _Feed:
    """The pilot's micro-batches, ``window`` in flight: for at least :data:`PILOT_S` seconds
    and ``window`` + :data:`MIN_BATCHES` micro-batches, marking when each one was handed to the
    coordinator (its clock, ``time.time()``) and the coordinator's process CPU time then."""

    source: Iterator[torch.Tensor]
    window: int
    marks: list[tuple[float, float]] = field(default_factory=list)

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        t0 = time.perf_counter()
        for i, x in enumerate(self.source):
            if i >= self.window + MIN_BATCHES and time.perf_counter() - t0 >= PILOT_S:
                return
            self.marks.append((time.time(), time.process_time()))
            yield i, x

    def steady(self) -> tuple[float, float, float, int] | None:
        """``(start, end, coordinator_cpu_s, batches)`` of the steady part: from the first
        micro-batch handed over for a result (the window full) to the last one, when
        ``batches`` results came back; None when that part is too short to sample."""
        if len(self.marks) <= self.window + 1:
            return None
        (t0, c0), (t1, c1) = self.marks[self.window], self.marks[-1]
        if t1 - t0 < STEADY_MIN_S:
            return None
        return t0, t1, c1 - c0, len(self.marks) - 1 - self.window


def measure(
    coordinator: Coordinator,
    stages: list[Stage],
    source: Iterator[torch.Tensor],
    profile: Profile,
    precision: str = "fp32",
    window: int = 1,
) -> Overheads:
    """Run the pilot through the installed plan ``stages`` (``(device, start, end)``) with
    micro-batches from ``source`` (prepared as the run prepares them), ``window`` of them in
    flight (the run's), and subtract what ``profile`` already models from each process's CPU
    per micro-batch in the pilot's steady part (:meth:`_Feed.steady`; the filling and the
    draining pipeline has fewer in flight), or over the whole pilot when that is too short.
    Raises what :meth:`Coordinator.run` raises."""
    feed = _Feed(source, window)
    cpu0 = time.process_time()
    record = coordinator.run(iter(feed), window=window)
    cpu1 = time.process_time()
    if not record.hops:
        return Overheads(0.0, {}, 0, record.wall_s, window=window)
    names = [d for d, _, _ in stages]
    steady = feed.steady()
    if steady is None:
        start, end = record.started, record.finished
        coordinator_s, done = cpu1 - cpu0, len({h.request_id for h in record.hops})
    else:
        start, end, coordinator_s, done = steady
    worker_s = devices_cpu_s(record.samples, names, start, end)
    problem = to_problem(profile, precision=precision)
    cuts = boundary_bytes(profile)
    calls = {}
    for k, (name, a, b) in enumerate(stages):
        # the micro-batches this stage finished inside the measured part
        finished = sum(1 for h in record.hops if h.stage == k and start < h.end <= end)
        if name not in worker_s or not finished:
            continue
        d = problem.device(name)
        modelled = d.stage_cpu_ms(a, b) + d.hop_cpu_ms_per_mb / 1e6 * (cuts[a] + cuts[b])
        calls[name] = max(0.0, worker_s[name] * 1000.0 / finished - modelled)
    first = problem.device(stages[0][0])
    upload_cpu = first.hop_cpu_ms_per_mb / 1e6 * cuts[0]
    coordinator_ms = coordinator_s * 1000.0 / done - profile.prepare_ms - upload_cpu
    ours = (coordinator_s + sum(worker_s.values())) / max(end - start, 1e-9)
    background = background_cpus(record.samples, profile.host_cpus, ours, start, end)
    return Overheads(max(0.0, coordinator_ms), calls, done, end - start, background, window)


def background_cpus(
    samples: Mapping[str, Sequence[Mapping[str, Any]]],
    host_cpus: float | None,
    ours_cpus: float,
    started: float,
    finished: float,
) -> float:
    """Cores of a shared host busy with work that is not the run's: the host's busy cores
    (each worker samples the whole host's ``cpu_percent``; the median over workers of their
    mean over the pilot) less the run's own processes' cores. 0 without a shared host."""
    if host_cpus is None:
        return 0.0
    means = []
    for got in samples.values():
        inside = [float(s["cpu_percent"]) for s in got if started < float(s["t"]) <= finished]
        if inside:
            means.append(statistics.fmean(inside))
    if not means:
        return 0.0
    busy = statistics.median(means) / 100.0 * host_cpus
    return max(0.0, busy - ours_cpus)


def with_overheads(profile: Profile, overheads: Overheads) -> Profile:
    """``profile`` with the pilot's measurements; a device the pilot did not use gets the
    median of the ones it measured (the same worker code; on a shared host, the same CPU)."""
    if not overheads.call_cpu_ms:
        return profile
    typical = statistics.median(overheads.call_cpu_ms.values())
    devices = tuple(
        replace(d, call_cpu_ms=overheads.call_cpu_ms.get(d.name, typical)) for d in profile.devices
    )
    return replace(
        profile,
        devices=devices,
        coordinator_ms=overheads.coordinator_ms,
        background_cpus=overheads.background_cpus,
    )
