"""The discrete-event simulation of a pipelined run (issue #23): pure, seeded, no processes.

It does what :mod:`edgesplit.runtime.runner` and the workers do, on simulated time (ms):

- **Coordinator**: keeps at most ``window`` micro-batches unfinished; for a new one it prepares
  it (``prepare_ms`` of CPU: load and encode, as :func:`edgesplit.app.job.preparation_ms` times it,
  and ``coordinator_ms``, its fixed CPU per micro-batch that the run's pilot measured)
  and uploads it to the current plan's first stage the way ``Run.send`` does: the request's
  latency starts, the coordinator sleeps the declared link's time (the emulated wire), waits
  for the previous upload's RPC to finish, then starts this one's and takes the next request
  while it runs. The RPC lasts the rest of the link's fitted time (the probes timed wire and
  RPC together) and at least until both sides' CPU is spent (the coordinator's side of the
  hand-off in gRPC's threads, beside its loop; the first stage's in its receiving thread);
  the input reaches the first stage at its end. So the next wire sleep overlaps this RPC, as
  in the runtime. Replays go first and need no preparation.
- **Devices**: three threads each (:mod:`.cpu` for CPU quotas and a shared host): the compute
  thread (a FIFO of jobs), the gRPC thread that receives and decodes an input, the sender
  that encodes and sends an output, one message at a time, while the next job computes. A
  stage's work is, under a CPU quota, its full-speed CPU time (the profile's CPU
  measurement: the quota and the host's sharing are simulated, so a profile taken on a loaded
  host does not count the load twice) and the worker's fixed CPU per micro-batch
  (``call_cpu_ms``, measured by the run's pilot), else the planner's sustained time; times a
  random factor of the device's spread.
- **Links**: a transfer holds its sender's link (or the one shared medium) for the declared
  link's time (the wire: ``latency + bytes * 8 / bandwidth``, what the runtime's sender
  sleeps), then for its RPC: the rest of the link's fitted time (probes time wire and RPC
  together), and at least until both sides' hand-off CPU is spent (``hop_cpu_ms_per_mb`` of the
  sender in its sender thread, of the receiver in its gRPC thread, from their quotas). The
  input reaches the next stage at the RPC's end, as a worker queues a job once decoded.
- **Faults** (``--inject`` specs): ``kill`` drops the device, its queue and what it was
  sending; the coordinator takes it for LOST after the heartbeat deadline or shortly after a
  send to it fails, installs ``replan(usable)`` as a new epoch and replays every unfinished
  request sent under a plan that used it (duplicates are dropped by request id). ``pause``
  stops it (for good, or for +DURATION; a pause past the deadline is a loss). ``stress`` slows
  it by ``stress_factor``; ``link`` changes a link. With an adaptive policy, the policy of
  :mod:`edgesplit.adapt` decides every ``tick_ms`` on what the run observed and may switch
  plans; requests in flight finish on their epoch's plan.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgesplit.cluster.faults import Injection
from edgesplit.errors import ConfigError, RunError
from edgesplit.plan.planner import LinkCost
from edgesplit.shared.names import COORDINATOR
from edgesplit.shared.plan import Stages, as_plan
from edgesplit.simulate.adaptive import AdaptiveLoop
from edgesplit.simulate.cpu import Host, Proc, Quota, settle
from edgesplit.simulate.result import (
    DeviceUsage,
    Loss,
    PlanChange,
    Records,
    SimResult,
    summarise,
)
from edgesplit.simulate.spec import EXACT_MAX_DEVICES, Replan, SimConfig, SimSpec

MEDIUM = "(medium)"
DEFAULT_CONFIG = SimConfig()

# Event kinds, in the heap as (t, seq, kind, payload).
CPU, SENT, FAULT, DETECT, TICK, RPC_TIMER = range(6)


@dataclass(eq=False)
class _Rpc:
    """A message's RPC: done when its ``parts`` (its time, each side's CPU) are."""

    msg: _Message
    link_key: str | None
    """The link it holds (None: an upload, which the coordinator's loop waits for instead)."""
    parts: int = 0


@dataclass
class _Pending:
    first_send: float
    epoch: int = -1
    attempts: int = 0


@dataclass
class _Message:
    request_id: int
    epoch: int
    stage: int
    """The stage that receives it (len(plan): the coordinator, a result)."""
    nbytes: int
    src: str
    dst: str


@dataclass
class _Device:
    name: str
    proc: Proc
    rx: Proc
    """The gRPC thread that receives (parses and decodes) an input."""
    tx: Proc
    """The sender thread (encodes and sends an output)."""
    jobs: deque[_Message] = field(default_factory=deque)
    current: _Message | None = None
    started: float = 0.0
    alive: bool = True
    slow: float = 1.0
    busy_ms: float = 0.0
    sigma: float = 0.0


@dataclass
class _Link:
    """One sender's link out (or the shared medium): a FIFO of messages."""

    queue: deque[_Message] = field(default_factory=deque)
    busy: bool = False


@dataclass
class _LostState:
    device: str
    t: float
    refuses: bool = True
    """A dead process refuses connections, so a failed send soon confirms the loss; a paused
    one holds them open, and only the heartbeat deadline tells."""
    detected: float | None = None
    replayed: int = 0
    recovery_epoch: int | None = None
    recovery: float | None = None


class _Sim:
    """One simulation's mutable state; :func:`simulate` is the pure entry point."""

    def __init__(
        self, spec: SimSpec, config: SimConfig, stages: Stages, replan: Replan | None
    ) -> None:
        self.spec, self.config, self.replan = spec, config, replan
        self.p = spec.problem
        self.batch = self.p.batch_size
        self.total = math.ceil(config.images / self.batch)
        self.window = config.window or 2 * len(stages)
        self.rng = np.random.default_rng(config.seed)
        self._normals = np.empty(0)
        self._normal_i = 0
        self.heap: list[tuple[float, int, int, Any]] = []
        self.seq = 0
        self.now = 0.0
        self.events = 0
        shared = self.p.host_cpus
        host = None
        if shared is not None:
            threads, cores = spec.background_threads, spec.background_cores
            cap = 1.0 if cores is None or threads <= 0 else min(1.0, cores / threads)
            host = Host(shared, background=threads, background_cap=cap)
        self.devices: dict[str, _Device] = {}
        for d in self.p.devices:
            quota = None
            if d.quota_ms is not None:
                phase = float(self.rng.uniform(0.0, d.period_ms))
                quota = Quota(d.quota_ms, d.period_ms, phase)
            own = host or Host(None)  # a device's threads settle together (one quota)
            compute, rx, tx = (
                own.add(Proc(f"{d.name} {t}", quota, d.name)) for t in ("compute", "rx", "tx")
            )
            sigma = spec.spread.get(d.name, 0.0)
            self.devices[d.name] = _Device(d.name, compute, rx, tx, sigma=sigma)
        coordinator = host or Host(None)
        self.coord = coordinator.add(Proc(COORDINATOR))
        self.coord_rpc = coordinator.add(Proc(f"{COORDINATOR} rpc"))
        """The upload RPC's CPU on the coordinator (gRPC's threads, beside the loop)."""
        self.io_jobs: dict[Proc, deque[tuple[float, _Rpc]]] = {}
        self.io_current: dict[Proc, _Rpc] = {}
        self.owner = {t: d for d in self.devices.values() for t in (d.proc, d.rx, d.tx)}
        self.hop_per_byte = {d.name: d.hop_cpu_ms_per_mb / 1e6 for d in self.p.devices}
        self.coord_state = "idle"  # idle | preparing | sleeping (on the wire) | settling
        self.coord_request: int | None = None
        self.rpc: _Rpc | None = None
        """The upload whose RPC runs."""
        self._settling: _Message | None = None
        self.links: dict[str, _Link] = {}
        self.link_override: dict[frozenset[str], LinkCost] = {}
        self._link_cache: dict[tuple[str, str], LinkCost] = {}
        self.plans: list[Stages] = []
        self.changes: list[PlanChange] = []
        self._install(stages, "initial plan")
        self.pending: dict[int, _Pending] = {}
        self.next_new = 0
        self.replays: deque[int] = deque()
        self.done: dict[int, float] = {}
        self.latencies: list[float] = []
        self.arrivals: list[float] = []
        self.duplicates = 0
        self.replayed = 0
        self.lost: dict[str, _LostState] = {}
        self.usable = [d.name for d in self.p.devices]
        self._stage_cost: dict[tuple[str, int, int], float] = {}  # a cache, by stage
        self.adaptive: AdaptiveLoop | None = None
        if config.adaptive is not None:
            if spec.profile is None:
                raise ConfigError("the adaptive policy needs the cluster's profile")
            if len(self.p.devices) > EXACT_MAX_DEVICES:
                raise ConfigError(
                    f"the adaptive policy plans with the exact planner, at most "
                    f"{EXACT_MAX_DEVICES} devices; this cluster has {len(self.p.devices)}"
                )
            self.adaptive = AdaptiveLoop(spec.profile, config.adaptive)
            self._push(config.tick_ms, TICK, None)
        for injection in config.injections:
            self._check_injection(injection)
            self._push(injection.at_s * 1000.0, FAULT, (injection, False))
            if injection.duration_s is not None:
                end = (injection.at_s + injection.duration_s) * 1000.0
                self._push(end, FAULT, (injection, True))

    # --- plumbing --------------------------------------------------------------------------

    def _push(self, t: float, kind: int, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, payload))

    def _settle(self, proc: Proc) -> None:
        for t, p in settle(proc, self.now):
            self._push(t, CPU, (p, p.version))

    def _normal(self) -> float:
        if self._normal_i >= len(self._normals):
            self._normals = self.rng.standard_normal(4096)
            self._normal_i = 0
        z = float(self._normals[self._normal_i])
        self._normal_i += 1
        return z

    def _link(self, a: str, b: str) -> LinkCost:
        override = self.link_override.get(frozenset((a, b)))
        if override is not None:
            return override
        key = (a, b)
        link = self._link_cache.get(key)
        if link is None:
            link = self._link_cache[key] = self.p.link(a, b)
        return link

    def _install(self, stages: Stages, reason: str) -> int:
        stages = as_plan(stages)
        self.plans.append(stages)
        epoch = len(self.plans) - 1
        self.changes.append(PlanChange(self.now / 1000.0, epoch, stages, reason))
        return epoch

    @property
    def epoch(self) -> int:
        return len(self.plans) - 1

    def _work_ms(self, device: str, start: int, end: int) -> float:
        """A stage job's full-speed work: under a quota its CPU time (:meth:`stage_cpu_ms`,
        the hand-offs are the other threads' jobs) and the worker's fixed CPU per micro-batch
        (``call_cpu_ms``, what the run's pilot measured besides compute and hand-offs: taking
        the call, handing it to the compute thread, its records: all of it spends the same
        quota), else the planner's sustained time (a device with cores of its own does that
        work beside its compute, as the planner takes it)."""
        key = (device, start, end)
        got = self._stage_cost.get(key)
        if got is None:
            d = self.p.device(device)
            if d.quota_ms is not None:
                got = d.stage_cpu_ms(start, end) + d.call_cpu_ms
            else:
                got = d.stage_ms(start, end)
            self._stage_cost[key] = got
        return got

    def _hop_cpu_ms(self, endpoint: str, nbytes: int) -> float:
        """One side of a hand-off of ``nbytes`` at ``endpoint`` (a device, or the coordinator,
        whose side of an upload costs what the first stage's does)."""
        if endpoint == COORDINATOR:
            return 0.0
        return self.hop_per_byte[endpoint] * nbytes

    # --- coordinator -----------------------------------------------------------------------

    def _pump(self) -> None:
        if self.coord_state != "idle":
            return
        while self.replays:
            rid = self.replays.popleft()
            if rid in self.pending:
                self._upload(rid)
                return
        if self.next_new < self.total and len(self.pending) < self.window:
            rid = self.next_new
            self.next_new += 1
            self.pending[rid] = _Pending(first_send=math.nan)
            self.coord_state, self.coord_request = "preparing", rid
            # its preparation and its fixed CPU per micro-batch (the pilot's coordinator_ms:
            # the upload call, taking the result, its records)
            self.coord.work_ms = self.p.prepare_ms + self.p.coordinator_ms
            if self.coord.work_ms <= 0:
                self.coord.work_ms = 0.0
                self._upload(rid)
            else:
                self.coord.active = True
                self._settle(self.coord)

    def _upload(self, rid: int) -> None:
        pending = self.pending[rid]
        if math.isnan(pending.first_send):
            pending.first_send = self.now
        pending.epoch = self.epoch
        pending.attempts += 1
        self.coord_state, self.coord_request = "sleeping", rid
        first = self.plans[-1][0][0]
        msg = _Message(rid, self.epoch, 0, self.p.input_bytes, COORDINATOR, first)
        self._send(msg)  # the wire sleep: on the coordinator's link (or the shared medium)

    def _wired(self, msg: _Message) -> None:
        """The upload's wire sleep ended: its RPC starts once the previous one finished."""
        if self.rpc is not None:
            self.coord_state = "settling"
            self._settling = msg
            return
        self._start_rpc(msg)

    def _start_rpc(self, msg: _Message) -> None:
        self.rpc = _Rpc(msg, None)
        self.coord_state, self.coord_request = "idle", None
        self._rpc(self.rpc)
        self._pump()

    def _uploaded(self, rpc: _Rpc) -> None:
        if self.rpc is rpc:
            self.rpc = None
        self._deliver(rpc.msg)
        if self.coord_state == "settling":
            waiting, self._settling = self._settling, None
            if waiting is not None:
                self._start_rpc(waiting)
        self._pump()

    def _wire_ms(self, link: LinkCost, nbytes: int) -> float:
        """What ``Run.send`` sleeps: the declared link's time (at most the fitted one)."""
        return min(link.transfer_ms(nbytes), self.p.default_link.transfer_ms(nbytes))

    def _result(self, msg: _Message) -> None:
        pending = self.pending.pop(msg.request_id, None)
        if pending is None:
            self.duplicates += 1
            return
        self.done[msg.request_id] = self.now
        self.latencies.append(self.now - pending.first_send)
        self.arrivals.append(self.now)
        for lost in self.lost.values():
            ended = lost.recovery_epoch is not None and msg.epoch >= lost.recovery_epoch
            if lost.recovery is None and ended:
                lost.recovery = self.now - lost.t
        if self.adaptive is not None:
            self.adaptive.result_seen(self.now / 1000.0, self.batch)
        self._pump()

    # --- links -----------------------------------------------------------------------------

    def _send(self, msg: _Message) -> None:
        key = MEDIUM if self.spec.shared_medium else msg.src
        link = self.links.get(key)
        if link is None:
            link = self.links[key] = _Link()
        link.queue.append(msg)
        if not link.busy:
            self._next_transfer(key, link)

    def _next_transfer(self, key: str, link: _Link) -> None:
        if not link.queue:
            link.busy = False
            return
        msg = link.queue.popleft()
        link.busy = True
        wire = self._wire_ms(self._link(msg.src, msg.dst), msg.nbytes)
        self._push(self.now + wire, SENT, (key, msg))

    def _sent(self, key: str, msg: _Message) -> None:
        """The wire sleep ended: an upload's RPC waits for the previous one (and the link is
        free again); a device's sender holds its link through the RPC."""
        if msg.src == COORDINATOR:
            self._next_transfer(key, self.links[key])
            self._wired(msg)
            return
        self._rpc(_Rpc(msg, key))

    def _rpc(self, rpc: _Rpc) -> None:
        """Start an RPC: the rest of the link's fitted time, and both sides' CPU."""
        msg = rpc.msg
        link = self._link(msg.src, msg.dst)
        rpc.parts = 1  # until its parts are given
        rpc_ms = link.transfer_ms(msg.nbytes) - self._wire_ms(link, msg.nbytes)
        if rpc_ms > 0:
            rpc.parts += 1
            self._push(self.now + rpc_ms, RPC_TIMER, rpc)
        if msg.src == COORDINATOR:
            sender = self.coord_rpc
            side = self._hop_cpu_ms(msg.dst, msg.nbytes)
        else:
            sender = self.devices[msg.src].tx
            side = self._hop_cpu_ms(msg.src, msg.nbytes)
        self._io(sender, side, rpc)
        if msg.dst != COORDINATOR:
            receiver = self.devices[msg.dst]
            if receiver.alive:
                self._io(receiver.rx, self._hop_cpu_ms(msg.dst, msg.nbytes), rpc)
        self._part_done(rpc)  # all given: done now if none takes time

    def _io(self, proc: Proc, cpu_ms: float, rpc: _Rpc) -> None:
        """A hand-off's CPU as a job of ``proc`` (one at a time, in order)."""
        device = self.owner.get(proc)
        if cpu_ms <= 0 or (device is not None and not device.alive):
            return
        if device is not None:
            cpu_ms *= device.slow
        rpc.parts += 1
        self.io_jobs.setdefault(proc, deque()).append((cpu_ms, rpc))
        if proc not in self.io_current:
            self._next_io(proc)

    def _next_io(self, proc: Proc) -> None:
        queue = self.io_jobs.get(proc)
        if not queue:
            return
        cpu_ms, rpc = queue.popleft()
        self.io_current[proc] = rpc
        proc.work_ms, proc.active = cpu_ms, True
        self._settle(proc)

    def _part_done(self, rpc: _Rpc) -> None:
        rpc.parts -= 1
        if rpc.parts > 0:
            return
        msg = rpc.msg
        if rpc.link_key is None:
            self._uploaded(rpc)
            return
        self._next_transfer(rpc.link_key, self.links[rpc.link_key])
        src = self.devices.get(msg.src)
        if src is not None and not src.alive:
            return  # it died while sending: the message never left
        if msg.dst == COORDINATOR:
            self._result(msg)
        else:
            self._deliver(msg)
        self._pump()

    # --- devices ---------------------------------------------------------------------------

    def _deliver(self, msg: _Message) -> None:
        device = self.devices[msg.dst]
        if not device.alive:
            self._failed_send(msg.dst)
            return
        device.jobs.append(msg)
        if device.current is None:
            self._start_job(device)

    def _start_job(self, device: _Device) -> None:
        if not device.jobs or not device.alive:
            return
        msg = device.jobs.popleft()
        name, start, end = self.plans[msg.epoch][msg.stage]
        work = self._work_ms(name, start, end) * device.slow
        if device.sigma > 0:
            s = device.sigma
            work *= math.exp(s * self._normal() - s * s / 2)
        device.current, device.started = msg, self.now
        device.proc.work_ms = work
        device.proc.active = True
        self._settle(device.proc)

    def _cpu(self, proc: Proc, version: int) -> None:
        if version != proc.version:
            return
        proc.advance(self.now)
        if proc.busy or not proc.active:
            self._settle(proc)
            return
        proc.active = False
        rpc = self.io_current.pop(proc, None)
        if rpc is not None:
            self._settle(proc)
            self._next_io(proc)
            self._part_done(rpc)
            return
        if proc is self.coord:
            self._settle(proc)
            if self.coord_state == "preparing" and self.coord_request is not None:
                self._upload(self.coord_request)
            return
        device = self.owner[proc]
        msg = device.current
        device.current = None
        self._settle(proc)
        if msg is None or not device.alive:
            return
        device.busy_ms += self.now - device.started
        plan = self.plans[msg.epoch]
        name, start, end = plan[msg.stage]
        nxt = plan[msg.stage + 1][0] if msg.stage + 1 < len(plan) else COORDINATOR
        nbytes = self.p.units[end - 1].out_bytes
        if self.adaptive is not None:
            ms = self.now - device.started
            self.adaptive.stage_seen(
                self.now / 1000.0, name, msg.epoch, (start, end), self.batch, ms
            )
        self._send(_Message(msg.request_id, msg.epoch, msg.stage + 1, nbytes, name, nxt))
        self._start_job(device)

    # --- faults and recovery ---------------------------------------------------------------

    def _check_injection(self, injection: Injection) -> None:
        for name in injection.devices:
            if name not in self.devices:
                raise ConfigError(
                    f"--inject {injection.spec!r} names {name!r}; devices: "
                    f"{', '.join(self.devices)}"
                )

    def _fault(self, injection: Injection, ending: bool) -> None:
        if injection.action == "link":
            key = frozenset(injection.devices)
            if ending:
                self.link_override.pop(key, None)
            else:
                a, b = injection.devices
                old = self._link(a, b)
                bandwidth = injection.bandwidth_mbps or old.bandwidth_mbps
                latency = old.latency_ms if injection.latency_ms is None else injection.latency_ms
                self.link_override[key] = LinkCost(bandwidth, latency)
            return
        device = self.devices[injection.devices[0]]
        if not device.alive:
            return
        if injection.action == "kill":
            self._die(device, self.now)
        elif injection.action == "pause":
            for thread in (device.proc, device.rx, device.tx):
                thread.paused = not ending
            self._settle(device.proc)
            long = (
                injection.duration_s is None or injection.duration_s * 1000 >= self.config.detect_ms
            )
            if not ending and long:
                self._die(device, self.now, lost_after=self.config.detect_ms)
        elif injection.action == "stress":
            factor = 1.0 / self.config.stress_factor if ending else self.config.stress_factor
            device.slow *= factor
            self._settle(device.proc)  # brings the device's threads up to now
            for thread in (device.proc, device.rx, device.tx):
                thread.work_ms *= factor
            self._settle(device.proc)

    def _die(self, device: _Device, t: float, lost_after: float | None = None) -> None:
        """The device stops for good at ``t`` (a paused one is declared LOST ``lost_after``
        later and never answers again: probation is not simulated)."""
        device.alive = False
        device.jobs.clear()
        device.current = None
        cut = []  # its hand-offs: an RPC it was part of ends (and fails) without it
        for thread in (device.proc, device.rx, device.tx):
            thread.work_ms = 0.0
            thread.active = False
            cut += [rpc for _, rpc in self.io_jobs.pop(thread, ())]
            current = self.io_current.pop(thread, None)
            if current is not None:
                cut.append(current)
        self._settle(device.proc)
        link = self.links.get(device.name)
        if link is not None:
            link.queue.clear()
        self.lost[device.name] = _LostState(device.name, t, refuses=lost_after is None)
        self._push(t + (lost_after or self.config.detect_ms), DETECT, device.name)
        for rpc in cut:
            self._part_done(rpc)

    def _failed_send(self, name: str) -> None:
        """A send to a dead device failed: the coordinator's probe confirms the loss soon."""
        lost = self.lost.get(name)
        if lost is not None and lost.detected is None and lost.refuses:
            self._push(self.now + self.config.confirm_ms, DETECT, name)

    def _detect(self, name: str) -> None:
        lost = self.lost[name]
        if lost.detected is not None:
            return
        lost.detected = self.now
        self.usable = [d for d in self.usable if d != name]
        if not self.usable:
            raise RunError(
                f"simulated run cannot finish: every device is lost; {len(self.done)} "
                f"micro-batches completed, {len(self.pending)} unfinished"
            )
        current = self.plans[-1]
        if any(d == name for d, _, _ in current):
            if self.replan is None:
                raise RunError(
                    f"{name} holds a stage and is lost, and no replan function was given"
                )
            stages = tuple(self.replan(list(self.usable)))
            outside = sorted({d for d, _, _ in stages} - set(self.usable))
            if outside:
                raise RunError(f"replan gave stages to {outside}, which are not usable")
            epoch = self._install(stages, f"lost {name}")
            for other in self.lost.values():
                if other.recovery_epoch is None:
                    other.recovery_epoch = epoch
        for rid in sorted(self.pending):
            pending = self.pending[rid]
            if pending.epoch < 0:
                continue  # being prepared: it goes to the current plan
            plan = self.plans[pending.epoch]
            if any(not self.devices[d].alive for d, _, _ in plan) and rid not in self.replays:
                self.replays.append(rid)
                self.replayed += 1
                lost.replayed += 1
        self._pump()

    # --- the adaptive policy ---------------------------------------------------------------

    def _tick(self) -> None:
        assert self.adaptive is not None
        decision = self.adaptive.tick(self.now / 1000.0, self.plans[-1], self.usable)
        if decision.switch and decision.best is not None:
            self._install(decision.best, f"adaptive: {decision.reason}")
        if self.next_new < self.total or self.pending:
            self._push(self.now + self.config.tick_ms, TICK, None)

    # --- the loop --------------------------------------------------------------------------

    def run(self) -> SimResult:
        self._pump()
        handlers: dict[int, Callable[[Any], None]] = {
            CPU: lambda p: self._cpu(*p),
            SENT: lambda p: self._sent(*p),
            FAULT: lambda p: self._fault(*p),
            DETECT: self._detect,
            TICK: lambda _: self._tick(),
            RPC_TIMER: self._part_done,
        }
        limit = self.config.max_events
        while self.heap and (self.pending or self.next_new < self.total):
            t, _, kind, payload = heapq.heappop(self.heap)
            self.now = t
            self.events += 1
            if self.events > limit:
                raise RunError(f"the simulation took more than {limit} events; stopped")
            handlers[kind](payload)
        if self.pending or self.next_new < self.total:
            raise RunError(
                f"simulated run cannot finish: {len(self.pending)} micro-batches unfinished "
                f"and nothing left to happen (is every stage's device lost?)"
            )
        return self._result_of()

    def _result_of(self) -> SimResult:
        usage = {
            name: DeviceUsage(d.proc.cpu_ms + d.rx.cpu_ms + d.tx.cpu_ms, d.busy_ms)
            for name, d in self.devices.items()
        }
        losses = tuple(
            Loss(
                x.device,
                x.t / 1000.0,
                None if x.detected is None else x.detected / 1000.0,
                x.replayed,
                None if x.recovery is None else x.recovery / 1000.0,
            )
            for x in self.lost.values()
        )
        return summarise(
            self.p,
            self.window,
            self.plans[0],
            Records(self.arrivals, self.latencies, usage),
            plan_changes=tuple(self.changes[1:]),
            losses=losses,
            replayed=self.replayed,
            duplicates=self.duplicates,
            events=self.events,
        )


def simulate(
    spec: SimSpec,
    stages: Stages,
    config: SimConfig = DEFAULT_CONFIG,
    replan: Replan | None = None,
) -> SimResult:
    """Simulate running ``stages`` (``(device, start, end)``, units half-open) on ``spec``.

    Pure and seeded: the same inputs give the same result. ``replan(usable devices)`` gives the
    plan after a loss (as the run's replan); without it a loss of a stage's device is a
    :class:`RunError`. Raises :class:`~edgesplit.errors.PlanError` for stages that do not cover
    the units or name unknown devices."""
    from edgesplit.plan.planner import evaluate

    evaluate(spec.problem, stages, check_memory=False)  # the same checks as a plan
    return _Sim(spec, config, as_plan(stages), replan).run()
