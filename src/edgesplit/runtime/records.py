"""What a run leaves behind, and the pure functions that build it from wire timings.

All times in a :class:`RunRecord` are seconds on the coordinator's clock (``time.time()``);
worker times are converted with the offsets estimated by :func:`best_offset`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from edgesplit.errors import WorkerError
from edgesplit.shared.plan import Stages

if TYPE_CHECKING:  # keeps the run-folder readers (edgesplit report) free of torch
    import torch


class HopTimingLike(Protocol):
    """The fields of a wire ``HopTiming`` (worker clock)."""

    device: str
    stage: int
    received: float
    compute_start: float
    compute_end: float
    serialize_end: float
    send_start: float
    send_end: float
    bytes_out: int
    batch_size: int


@dataclass(frozen=True)
class HopRecord:
    """One stage's handling of one micro-batch.

    ``queue_ms``: received -> compute start; ``compute_ms``: the stage module;
    ``serialize_ms``: encoding the output; ``send_wait_ms``: waiting for the outgoing link;
    ``transfer_ms``: send start -> arrival at the next hop (emulated delay + RPC), measured
    across two clocks, so it carries the clock-offset error. ``start``/``end`` are arrival here
    and arrival at the next hop, on the coordinator clock. The coordinator's input upload is a
    hop with ``stage == -1`` and ``device == "coordinator"``.
    """

    request_id: int
    epoch: int
    stage: int
    device: str
    batch_size: int
    queue_ms: float
    compute_ms: float
    serialize_ms: float
    send_wait_ms: float
    transfer_ms: float
    bytes_out: int
    start: float
    end: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Transition:
    """A device changed health state (see :mod:`edgesplit.runtime.health`); ``t`` on the
    coordinator clock."""

    device: str
    t: float
    before: str
    after: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PlanChange:
    """A plan epoch became current at ``t``; ``stages`` are ``(device, start, end)``."""

    epoch: int
    t: float
    reason: str
    stages: Stages

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "t": self.t,
            "reason": self.reason,
            "stages": [{"device": d, "units": [a, b]} for d, a, b in self.stages],
        }


@dataclass
class DeviceFailure:
    """A device was LOST during a run.

    ``replayed``: unfinished requests sent again because of it. ``recovery_s``: from the loss
    (``t``) to the first result under a plan installed after it; None when no such result
    came (the run ended first, or no request was affected)."""

    device: str
    t: float
    reason: str
    replayed: int = 0
    recovery_s: float | None = None
    recovery_epoch: int | None = None
    """The first epoch installed after the loss; results under it (or later) end recovery."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunRecord:
    """Everything a run measured. ``outputs`` maps request id to the last stage's output."""

    outputs: dict[int, torch.Tensor]
    hops: list[HopRecord]
    """Worker stages, in order of arrival at the coordinator."""
    uploads: list[HopRecord]
    """Coordinator -> first stage transfers (``stage == -1``)."""
    samples: dict[str, list[dict[str, float | int | str | None]]]
    """Per device, :meth:`DeviceSample.to_dict` dicts with ``t`` on the coordinator clock."""
    clock_offsets_ms: dict[str, float]
    """Worker clock minus coordinator clock."""
    rtt_ms: dict[str, float]
    started: float
    finished: float
    epochs: list[int] = field(default_factory=list)
    failures: list[DeviceFailure] = field(default_factory=list)
    """Devices lost during the run."""
    errors: list[str] = field(default_factory=list)
    """Failure reports and unanswered status calls, as messages."""
    replayed: int = 0
    duplicates: int = 0
    plan_changes: list[PlanChange] = field(default_factory=list)
    """Every epoch installed during the run (the one current at the start not included)."""
    transitions: list[Transition] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return self.finished - self.started


def best_offset(probes: Iterable[tuple[float, float, float]]) -> tuple[float, float]:
    """NTP-style clock offset from ``(t_send, t_worker, t_recv)`` round trips.

    offset = t_worker - (t_send + t_recv) / 2, taken from the probe with the smallest round
    trip (least queueing, so the midpoint assumption holds best). Returns
    ``(offset_ms, rtt_ms)``; the offset error is at most rtt / 2.
    """
    best: tuple[float, float] | None = None
    for t_send, t_worker, t_recv in probes:
        rtt = t_recv - t_send
        offset = t_worker - (t_send + t_recv) / 2
        if best is None or rtt < best[1]:
            best = (offset, rtt)
    if best is None:
        raise WorkerError("best_offset needs at least one clock probe, got none")
    return best[0] * 1000.0, best[1] * 1000.0


def hop_records(
    request_id: int,
    epoch: int,
    hops: Sequence[HopTimingLike],
    arrival: float,
    offsets_ms: Mapping[str, float],
) -> list[HopRecord]:
    """Turn the wire timings of one result into records on the coordinator clock.

    ``arrival`` is when the result reached the coordinator (coordinator clock); each hop's
    transfer ends where the next hop's ``received`` begins.
    """

    def local(device: str, t: float) -> float:
        return t - offsets_ms.get(device, 0.0) / 1000.0

    records = []
    for i, hop in enumerate(hops):
        end = local(hops[i + 1].device, hops[i + 1].received) if i + 1 < len(hops) else arrival
        start = local(hop.device, hop.received)
        send_start = local(hop.device, hop.send_start)
        records.append(
            HopRecord(
                request_id=request_id,
                epoch=epoch,
                stage=hop.stage,
                device=hop.device,
                batch_size=hop.batch_size,
                queue_ms=(hop.compute_start - hop.received) * 1000.0,
                compute_ms=(hop.compute_end - hop.compute_start) * 1000.0,
                serialize_ms=(hop.serialize_end - hop.compute_end) * 1000.0,
                send_wait_ms=(hop.send_start - hop.serialize_end) * 1000.0,
                transfer_ms=(end - send_start) * 1000.0,
                bytes_out=hop.bytes_out,
                start=start,
                end=end,
            )
        )
    return records


def upload_record(
    request_id: int,
    epoch: int,
    batch_size: int,
    bytes_out: int,
    send_start: float,
    first: HopTimingLike,
    offsets_ms: Mapping[str, float],
) -> HopRecord:
    """The coordinator -> first stage transfer of one request (coordinator clock)."""
    end = first.received - offsets_ms.get(first.device, 0.0) / 1000.0
    return HopRecord(
        request_id=request_id,
        epoch=epoch,
        stage=-1,
        device="coordinator",
        batch_size=batch_size,
        queue_ms=0.0,
        compute_ms=0.0,
        serialize_ms=0.0,
        send_wait_ms=0.0,
        transfer_ms=(end - send_start) * 1000.0,
        bytes_out=bytes_out,
        start=send_start,
        end=end,
    )
