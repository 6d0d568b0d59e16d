"""CPU time as a fluid: threads with a CFS quota, sharing a host's cores.

A :class:`Proc` is one thread (a worker's compute thread, its gRPC receiving thread, its sender
thread; the coordinator's loop, its upload RPC) working through one job at a time; a job is an
amount of full-speed CPU work in ms. While it runs, the thread progresses at ``speed``
(1 = one full core) and, under a quota, spends its process's budget at the same rate:

- **Quota** (an emulated device, Linux CFS): the threads of one process share a :class:`Quota`
  of ``quota_ms`` of CPU per ``period_ms``, refilled at every period boundary
  (``phase_ms + k * period_ms``); when their budget is spent they all stall until the next
  boundary. This gives both of the planner's speeds: a busy device sustains ``work / share``,
  a lone job on an idle device runs at full speed until the budget is spent
  (:meth:`~edgesplit.plan.planner.DeviceCost.under_quota`).
- **Shared host** (``cores`` not None): CFS shares the cores fairly between its runnable
  *entities*: an emulated device's cgroup is one entity however many of its threads run
  (its ``entity``), a thread outside a cgroup (the coordinator's) is one, and so is each of a
  ``background`` of other processes' runnable threads (measured while a run ran: how many
  were runnable, on average, and the cores they used, which caps what each takes: many of
  them are other emulated devices under a quota). An entity with ``k`` runnable threads gets
  up to ``k`` cores; the cores are shared by water-filling (every entity gets the same, unless
  it needs less), and its threads split what it gets. Without a shared host every thread has
  a core.

Only :func:`settle` changes a host's threads; it returns, per thread, when it next needs
attention (its job ends, its budget runs out, or its period refills it). The owner gives a job
(``work_ms``, ``active = True``) and takes its end (``active = False``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

EPS_MS = 1e-9


@dataclass(eq=False)
class Quota:
    """A process's CFS quota: ``quota_ms`` of CPU per ``period_ms``, shared by its threads."""

    quota_ms: float
    period_ms: float = 100.0
    phase_ms: float = 0.0
    budget_ms: float = field(init=False)
    refill_at: float = field(init=False)

    def __post_init__(self) -> None:
        self.budget_ms = self.quota_ms
        self.refill_at = self.phase_ms

    def refill(self, now: float) -> None:
        if now >= self.refill_at - EPS_MS:
            periods = math.floor((now - self.phase_ms) / self.period_ms + 1e-9) + 1
            self.refill_at = self.phase_ms + periods * self.period_ms
            self.budget_ms = self.quota_ms


@dataclass(eq=False)
class Proc:
    name: str
    quota: Quota | None = None
    entity: str | None = None
    """The CFS entity it belongs to on a shared host (a device's cgroup); None: its own."""
    work_ms: float = 0.0
    """Full-speed CPU work left of the current job (0: idle)."""
    speed: float = 0.0
    t: float = 0.0
    """When ``work_ms`` was last brought up to date."""
    cpu_ms: float = 0.0
    """CPU used so far (for utilisation)."""
    version: int = 0
    """Bumped at every settle; an event carrying an older version is stale."""
    host: Host | None = None
    paused: bool = False
    """A paused process (SIGSTOP) makes no progress and holds its job."""
    active: bool = False
    """A job was given and its end not yet taken (the owner clears it)."""

    @property
    def busy(self) -> bool:
        return self.work_ms > EPS_MS

    @property
    def runnable(self) -> bool:
        if not self.busy or self.paused:
            return False
        return self.quota is None or self.quota.budget_ms > EPS_MS

    def advance(self, now: float) -> None:
        """Progress up to ``now`` at the current speed (spending the quota's budget)."""
        if now > self.t and self.speed > 0.0:
            done = min(self.work_ms, self.speed * (now - self.t))
            self.work_ms -= done
            self.cpu_ms += done
            if self.quota is not None:
                self.quota.budget_ms = max(0.0, self.quota.budget_ms - done)
        self.t = max(self.t, now)

    def next_event(self, now: float, drain: float) -> float | None:
        """When this thread next changes on its own (None: idle); ``now`` for a job that
        ended (possibly in another thread's settle) and awaits its owner. ``drain``: how fast
        its quota's budget is being spent (all of the quota's threads together)."""
        if self.active and not self.busy:
            return now
        if not self.busy or self.paused:
            return None
        q = self.quota
        if self.speed <= 0.0:
            return q.refill_at if q is not None else None  # stalled: the quota refills it
        t = now + self.work_ms / self.speed
        if q is not None:
            t = min(t, now + q.budget_ms / drain, q.refill_at)
        return t


@dataclass(eq=False)
class Host:
    """Threads sharing ``cores`` (None: every thread has a core of its own)."""

    cores: float | None
    procs: list[Proc] = field(default_factory=list)
    background: float = 0.0
    """Other processes' runnable threads, all along (0: none); each is an entity."""
    background_cap: float = 1.0
    """The cores each of them takes at most."""

    def add(self, proc: Proc) -> Proc:
        proc.host = self
        self.procs.append(proc)
        return proc


def water_level(
    demands: Sequence[int], background: float, cores: float, background_cap: float = 1.0
) -> float:
    """The level ``L`` with ``sum(min(d, L)) + background * min(cap, L) == cores``: what
    each entity gets when entities of ``demands`` threads (and ``background`` ones that take
    at most ``background_cap``) share ``cores`` fairly; ``inf`` when every demand fits."""
    cap = background_cap
    if sum(demands) + background * cap <= cores:
        return math.inf

    def given(level: float) -> float:
        return sum(min(d, level) for d in demands) + background * min(cap, level)

    lo = 0.0
    for hi in sorted({*demands, cap}):
        at_hi = given(hi)
        if at_hi >= cores:  # given() is linear between breakpoints
            at_lo = given(lo)
            return lo + (cores - at_lo) * (hi - lo) / (at_hi - at_lo)
        lo = hi
    return math.inf


def _settle_alone(group: Sequence[Proc], now: float) -> list[tuple[float, Proc]]:
    """:func:`settle` of threads that each have a core (the threads of one device)."""
    drain = 0.0
    for p in group:
        if p.quota is not None:
            p.quota.refill(now)
        p.speed = 1.0 if p.runnable else 0.0
        drain += p.speed
    out = []
    for p in group:
        p.version += 1
        t = p.next_event(now, drain)
        if t is not None:
            out.append((t, p))
    return out


def settle(proc: Proc, now: float) -> list[tuple[float, Proc]]:
    """Bring ``proc``'s host up to ``now``, share its cores again, and return ``(time, proc)``
    of the next event of every thread whose speed may have changed."""
    host = proc.host
    group = [proc] if host is None else host.procs
    for p in group:
        p.advance(now)
    if host is None or host.cores is None:  # each thread has a core; one quota at most
        return _settle_alone(group, now)
    for q in {id(p.quota): p.quota for p in group if p.quota is not None}.values():
        q.refill(now)
    runnable: dict[str, int] = {}
    for p in group:
        if p.runnable:
            key = p.entity or p.name
            runnable[key] = runnable.get(key, 0) + 1
    level = water_level(list(runnable.values()), host.background, host.cores, host.background_cap)
    drain: dict[int, float] = {}
    for p in group:
        if p.runnable:
            k = runnable[p.entity or p.name]
            p.speed = 1.0 if math.isinf(level) else min(1.0, min(k, level) / k)
        else:
            p.speed = 0.0
        if p.quota is not None:
            drain[id(p.quota)] = drain.get(id(p.quota), 0.0) + p.speed
    out = []
    for p in group:
        p.version += 1
        t = p.next_event(now, drain.get(id(p.quota), 0.0))
        if t is not None:
            out.append((t, p))
    return out
