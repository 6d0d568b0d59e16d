"""CPU time as a fluid: processes with a CFS quota, sharing a host's cores.

A :class:`Proc` (a device's compute thread, or the coordinator) works through one job at a time;
a job is an amount of full-speed CPU work in ms. While it runs, the process progresses at
``speed`` (1 = one full core) and, under a quota, spends its budget at the same rate:

- **Quota** (an emulated device, Linux CFS): ``quota_ms`` of CPU per ``period_ms``, refilled at
  every period boundary (``phase_ms + k * period_ms``); a process whose budget is spent stalls
  until the next boundary. This gives both of the planner's speeds: a busy device sustains
  ``work / share``, a lone job on an idle device runs at full speed until the budget is spent
  (:meth:`~edgesplit.planner.DeviceCost.under_quota`).
- **Shared host** (``cores`` not None): the runnable processes of a host share its cores
  fairly (processor sharing), each at ``min(1, cores / runnable)``, as CFS shares them between
  its entities: an emulated device is one cgroup, one entity however many of its threads run;
  the coordinator's loop and its upload RPC are threads of their own. A process runs one thread
  at a time (the worker's compute thread, the coordinator's loop); the CPU its other threads
  spend (a worker's gRPC and sender threads) is in its ``rate``, which drains its quota, not
  in its demand for a core. A ``background`` of other processes' runnable threads (measured
  while a run ran: how many were runnable, on average) counts among the runnable, all along.
  Without a shared host each process is alone on its own.

Only :func:`settle` changes a host's processes; it returns, per process, when it next needs
attention (its job ends, its budget runs out, or its period refills it). The owner gives a job
(``work_ms``, ``active = True``) and takes its end (``active = False``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

EPS_MS = 1e-9


@dataclass(eq=False)
class Proc:
    name: str
    quota_ms: float | None = None
    period_ms: float = 100.0
    phase_ms: float = 0.0
    work_ms: float = 0.0
    """Full-speed CPU work left of the current job (0: idle)."""
    rate: float = 1.0
    """CPU (and quota) the process spends per ms of the job's progress: above 1 when other
    threads of the process work alongside (a worker decodes its input and encodes its output
    in gRPC and sender threads, from the same quota)."""
    budget_ms: float = math.inf
    refill_at: float = 0.0
    speed: float = 0.0
    t: float = 0.0
    """When ``work_ms``/``budget_ms`` were last brought up to date."""
    cpu_ms: float = 0.0
    """CPU used so far (for utilisation)."""
    version: int = 0
    """Bumped at every settle; an event carrying an older version is stale."""
    host: Host | None = None
    paused: bool = False
    """A paused process (SIGSTOP) makes no progress and holds its job."""
    active: bool = False
    """A job was given and its end not yet taken (the owner clears it)."""

    def __post_init__(self) -> None:
        if self.quota_ms is not None:
            self.budget_ms = self.quota_ms
            self.refill_at = self.phase_ms

    @property
    def busy(self) -> bool:
        return self.work_ms > EPS_MS

    @property
    def runnable(self) -> bool:
        if not self.busy or self.paused:
            return False
        return self.quota_ms is None or self.budget_ms > EPS_MS

    def advance(self, now: float) -> None:
        if now > self.t and self.speed > 0.0:
            done = min(self.work_ms, self.speed * (now - self.t))
            self.work_ms -= done
            self.cpu_ms += done * self.rate
            if self.quota_ms is not None:
                self.budget_ms = max(0.0, self.budget_ms - done * self.rate)
        self.t = max(self.t, now)
        if self.quota_ms is not None and now >= self.refill_at - EPS_MS:
            periods = math.floor((now - self.phase_ms) / self.period_ms + 1e-9) + 1
            self.refill_at = self.phase_ms + periods * self.period_ms
            self.budget_ms = self.quota_ms

    def next_event(self, now: float) -> float | None:
        """When this process next changes on its own (None: idle); ``now`` for a job that
        ended (possibly in another process's settle) and awaits its owner."""
        if self.active and not self.busy:
            return now
        if not self.busy or self.paused:
            return None
        if self.speed <= 0.0:
            return self.refill_at  # stalled: the quota refills it
        t = now + self.work_ms / self.speed
        if self.quota_ms is not None:
            t = min(t, now + self.budget_ms / (self.speed * self.rate), self.refill_at)
        return t


@dataclass(eq=False)
class Host:
    """Processes sharing ``cores`` (None: every process has a core of its own)."""

    cores: float | None
    procs: list[Proc] = field(default_factory=list)
    background: float = 0.0
    """Other processes' runnable threads, all along (0: none); each asks for a core."""

    def add(self, proc: Proc) -> Proc:
        proc.host = self
        self.procs.append(proc)
        return proc


def settle(proc: Proc, now: float) -> list[tuple[float, Proc]]:
    """Bring ``proc``'s host up to ``now``, share its cores again, and return ``(time, proc)``
    of the next event of every process whose speed may have changed."""
    host = proc.host
    group = [proc] if host is None or host.cores is None else host.procs
    for p in group:
        p.advance(now)
    cores = None if host is None else host.cores
    share = 1.0
    if host is not None and cores is not None:
        demand = host.background + sum(1 for p in group if p.runnable)
        share = 1.0 if demand <= cores else cores / demand
    out = []
    for p in group:
        p.speed = share if p.runnable else 0.0
        p.version += 1
        t = p.next_event(now)
        if t is not None:
            out.append((t, p))
    return out
