"""Heartbeats during a run: one thread per device calls Status every ``interval_s``.

A reply is a heartbeat (and brings the device's samples and a clock probe); a call that fails
or outlasts the time left until the device's deadline is a missed heartbeat. Each observation
goes through the coordinator's state machine (:mod:`edgesplit.runtime.health`); a change of
state wakes the run loop with a :class:`HealthEvent`, which is where plans change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from edgesplit.runtime import health as hl
from edgesplit.runtime import samples as sample_codec
from edgesplit.runtime.live import LiveFeed, Reading, StatusSeen, UnreachableSeen
from edgesplit.runtime.ports import HealthEvent, RunPort
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.records import best_offset
from edgesplit.runtime.transport import describe_rpc_error
from edgesplit.shared.timeouts import TIMEOUTS

__all__ = ["Collected", "HealthEvent", "Heartbeats"]

log = logging.getLogger(__name__)

MIN_PROBE_TIMEOUT_S = TIMEOUTS.min_heartbeat_s
"""A heartbeat call always gets at least this long, even right at the deadline."""


@dataclass
class Collected:
    """What the heartbeats gathered: samples per device (worker clock) and error messages."""

    samples: dict[str, list[dict[str, float | int | str | None]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    limit: int | None = None
    """Keep only the newest ``limit`` samples per device (a long-lived serving session)."""


class Heartbeats:
    """The heartbeat threads of one run; :meth:`stop` ends them."""

    def __init__(
        self,
        coordinator: RunPort,
        tell: Callable[[HealthEvent], None],
        interval_s: float,
        since: dict[str, float],
        live: LiveFeed | None = None,
    ) -> None:
        self.c = coordinator
        self.live = live
        self.tell = tell
        self.interval_s = interval_s
        self.since = since
        self.collected = Collected()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._loop, args=(d.name,), name=f"beat-{d.name}", daemon=True)
            for d in coordinator.cluster.devices
        ]

    def start(self) -> Heartbeats:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.c.health_policy.deadline_s + 1.0)

    def _loop(self, name: str) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat(name)

    def beat(self, name: str, timeout_s: float | None = None) -> bool:
        """One Status call to ``name``; True if it answered. Feeds the state machine."""
        policy = self.c.health_policy
        if timeout_s is None:
            # Time out exactly at the deadline, so a frozen device is LOST on time.
            left = self.c.health()[name].last_ok + policy.deadline_s - time.time()
            timeout_s = max(left, MIN_PROBE_TIMEOUT_S)
        try:
            reply, t_send, t_recv = self.c.probe(name, self.since.get(name, 0.0), timeout_s)
        except grpc.RpcError as exc:
            why = describe_rpc_error(exc)
            before, after = self.c.observe(name, hl.HeartbeatMissed(time.time(), why))
            if after.state is not before.state:
                with self._lock:
                    self.collected.errors.append(f"status of {self.c.where(name)}: {why}")
            self._tell(name, before, after)
            if self.live is not None:
                self.live.push(UnreachableSeen(time.time(), name, why, after.state.value))
            return False
        before, after = self.c.observe(name, hl.HeartbeatOk(t_recv))
        self._tell(name, before, after)
        offset_ms, rtt_ms = best_offset([(t_send, reply.clock, t_recv)])
        self.c.update_clock(name, offset_ms, rtt_ms)
        got = [sample_codec.to_dict(s) for s in reply.samples]
        if got:
            self.since[name] = max(float(s["t"] or 0.0) for s in got)
            with self._lock:
                kept = self.collected.samples.setdefault(name, [])
                kept.extend(got)
                if self.collected.limit is not None:
                    del kept[: -self.collected.limit]
        if self.live is not None:
            self.live.push(self._status_seen(name, reply, got, t_recv, after.state.value))
        self._drop_stale(name, reply)
        return True

    def _status_seen(
        self, name: str, reply: pb.StatusReply, got: list[dict[str, Any]], t: float, health: str
    ) -> StatusSeen:
        stages = [s.device for s in self.c.current()[1]]
        stage = stages.index(name) if name in stages else None
        return StatusSeen(
            t, name, Reading.from_samples(got), reply.queue_depth, reply.send_queue_depth,
            stage, health,
        )  # fmt: skip

    def _tell(self, name: str, before: hl.DeviceHealth, after: hl.DeviceHealth) -> None:
        if after.state is not before.state:
            self.tell(HealthEvent(name, before, after))

    def _drop_stale(self, name: str, reply: pb.StatusReply) -> None:
        """A device that was away when an epoch was dropped still holds it: drop it now."""
        current, _ = self.c.current()
        installed = self.c.installed_epochs()
        for info in reply.epochs:
            if info.epoch < current and info.epoch not in installed:
                log.info("[%s] dropping stale epoch %d", name, info.epoch)
                self.c.drop_epoch_later(info.epoch, [name])
