"""What a run needs from the coordinator (:class:`RunPort`), and the events it waits on.

:class:`~edgesplit.runtime.runner.Run` and :class:`~edgesplit.runtime.heartbeat.Heartbeats`
see the coordinator only through this protocol, so the import graph runs one way:
``coordinator -> runner -> heartbeat -> ports``. :class:`~edgesplit.runtime.coordinator.
Coordinator` implements it.
"""

from __future__ import annotations

import queue
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import grpc
import torch

from edgesplit.config import ClusterSpec, LinkSpec
from edgesplit.errors import WorkerError
from edgesplit.runtime import health as hl
from edgesplit.runtime.links import LinkStream
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.records import PlanChange, Transition
from edgesplit.shared.plan import Stage, Stages


@dataclass(frozen=True)
class ResultEvent:
    batch: pb.MicroBatch
    """The result without its tensor (decoded into ``tensor`` by the service thread)."""
    tensor: torch.Tensor
    arrival: float


@dataclass(frozen=True)
class FailureEvent:
    report: pb.FailureReport
    arrival: float


@dataclass(frozen=True)
class HealthEvent:
    device: str
    before: hl.DeviceHealth
    after: hl.DeviceHealth


@dataclass(frozen=True)
class Wake:
    """A feed has input ready (or its batching wait ran out): look at it now."""


Event = ResultEvent | FailureEvent | HealthEvent | Wake


class RunPort(Protocol):
    """The coordinator as a run and its heartbeats use it."""

    @property
    def cluster(self) -> ClusterSpec: ...

    @property
    def events(self) -> queue.Queue[Event]:
        """Results, failure reports, health changes and wake-ups, in arrival order."""
        ...

    @property
    def health_policy(self) -> hl.HealthPolicy: ...

    # plans and epochs
    def current(self) -> tuple[int, Stages]: ...

    def installed_epochs(self) -> dict[int, Stages]: ...

    def install_plan(self, stages: list[Stage], reason: str, timeout_s: float | None) -> int: ...

    def drop_epoch_later(self, epoch: int, devices: Iterable[str] | None = None) -> None: ...

    # devices
    def health(self) -> dict[str, hl.DeviceHealth]: ...

    def usable_devices(self) -> list[str]: ...

    def observe(
        self, name: str, obs: hl.Observation
    ) -> tuple[hl.DeviceHealth, hl.DeviceHealth]: ...

    def probe(
        self, name: str, since_t: float, timeout_s: float
    ) -> tuple[pb.StatusReply, float, float]: ...

    def link(self, name: str) -> LinkStream:
        """The upload stream to device ``name``, reopened if it broke."""
        ...

    @property
    def rpc_timeout_s(self) -> float:
        """How long an upload waits for its acknowledgement."""
        ...

    def upload_link(self, name: str) -> LinkSpec:
        """The link from the coordinator to device ``name``."""
        ...

    def device_at(self, address: str) -> str | None: ...

    def where(self, name: str) -> str: ...

    def worker_error(self, name: str, what: str, exc: grpc.RpcError) -> WorkerError: ...

    # clocks and history
    def clocks(self) -> tuple[dict[str, float], dict[str, float]]:
        """Copies of (clock offset, round trip) in ms, by device."""
        ...

    def update_clock(self, name: str, offset_ms: float, rtt_ms: float) -> None: ...

    def history(self, transitions_from: int, changes_from: int) -> History:
        """Health transitions and plan changes recorded from those indexes on."""
        ...


@dataclass(frozen=True)
class History:
    transitions: list[Transition]
    plan_changes: list[PlanChange]
    transitions_end: int
    """The index after the last transition (where the next call starts)."""
    plan_changes_end: int
