"""One run: feed micro-batches with backpressure, collect results, poll device status.

Invariants: a request is done only when its result reached the coordinator; until then its
input is kept, so it can be replayed (after a failure report, or when nothing arrives for
``stall_timeout_s`` although every device answers). Results are de-duplicated by request id.
User callbacks run on the caller's thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
import torch

from edgesplit.config import COORDINATOR
from edgesplit.errors import RunError
from edgesplit.runtime import MAX_MESSAGE_BYTES, codec
from edgesplit.runtime import samples as sample_codec
from edgesplit.runtime.links import LinkShape, link_delay_s
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.records import RunRecord, best_offset, hop_records, upload_record
from edgesplit.runtime.transport import describe_rpc_error

if TYPE_CHECKING:
    from edgesplit.runtime.coordinator import Coordinator

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""Sends of one request (first try + replays) before the run gives up."""
MAX_STALLS = 2
BUSY_RETRY_S = 0.05
SAMPLE_LOOKBACK_S = 1.0


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


Event = ResultEvent | FailureEvent


@dataclass
class Pending:
    x: torch.Tensor
    attempts: int = 0
    epoch: int = 0
    send_start: float = 0.0
    bytes_out: int = 0


@dataclass
class _Raw:
    """A result kept raw until the end, so the final (best) clock offsets convert it."""

    request_id: int
    epoch: int
    hops: list[pb.HopTiming]
    arrival: float
    send_start: float
    bytes_out: int
    batch_size: int


@dataclass
class _Collected:
    samples: dict[str, list[dict[str, float | int | None]]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


class Run:
    """The state of one :meth:`Coordinator.run` call."""

    def __init__(
        self,
        coordinator: Coordinator,
        window: int,
        on_result: Callable[[int, torch.Tensor], None] | None,
        stall_timeout_s: float,
        status_interval_s: float,
    ) -> None:
        if window < 1:
            raise RunError(f"window must be >= 1, got {window}")
        if not coordinator.plan:
            raise RunError("no plan installed; call install_plan before run")
        self.c = coordinator
        self.window = window
        self.on_result = on_result
        self.stall_timeout_s = stall_timeout_s
        self.status_interval_s = status_interval_s
        self.pending: dict[int, Pending] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.raw: list[_Raw] = []
        self.failures: list[str] = []
        self.replayed = 0
        self.duplicates = 0
        self.epochs: set[int] = set()
        self.collected = _Collected()
        self._stop_polling = threading.Event()
        self._since: dict[str, float] = {}
        self._unreachable: set[str] = set()

    # --- sending -------------------------------------------------------------------------------

    def send(self, request_id: int) -> None:
        """Upload one pending request to the first stage of the current plan."""
        pending = self.pending[request_id]
        epoch, plan = self.c.current()
        first = plan[0].device
        link = self.c.cluster.link(COORDINATOR, first)
        batch = pb.MicroBatch(request_id=request_id, plan_epoch=epoch)
        codec.encode(pending.x, out=batch.tensor)
        if batch.ByteSize() > MAX_MESSAGE_BYTES:
            raise RunError(
                f"request {request_id} is {batch.ByteSize()} bytes on the wire; the limit is "
                f"{MAX_MESSAGE_BYTES}: use smaller micro-batches"
            )
        pending.attempts += 1
        pending.epoch = epoch
        pending.bytes_out = len(batch.tensor.data)
        self.epochs.add(epoch)
        pending.send_start = time.time()
        delay = link_delay_s(LinkShape(link.bandwidth_mbps, link.latency_ms), pending.bytes_out)
        if delay > 0:
            time.sleep(delay)
        stub = self.c.stub(first)
        while True:
            try:
                stub.Forward(batch, timeout=self.c.rpc_timeout_s)
                return
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    time.sleep(BUSY_RETRY_S)  # the first stage's queue is full: wait our turn
                    continue
                raise RunError(
                    f"cannot send request {request_id} to stage 0: "
                    f"{self.c.worker_error(first, 'upload', exc)}"
                ) from None

    def replay(self, request_id: int, why: str, suspect: str | None = None) -> None:
        """Send a pending request again under the current epoch; give up after MAX_ATTEMPTS,
        naming ``suspect`` (the address a worker could not reach) if it is really down."""
        pending = self.pending[request_id]
        if pending.attempts >= MAX_ATTEMPTS:
            lost = self._unreachable_at(suspect) if suspect else None
            if lost is not None:
                raise RunError(
                    f"run cannot finish ({len(self.pending)} requests unfinished): {lost}"
                )
            raise RunError(f"request {request_id} failed {pending.attempts} times; last: {why}")
        log.info("replaying request %d (%s)", request_id, why)
        self.replayed += 1
        self.send(request_id)

    # --- receiving -----------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        if isinstance(event, FailureEvent):
            report = event.report
            self.failures.append(report.message)
            if report.request_id in self.pending:
                self.replay(report.request_id, report.message, report.next_hop)
            return
        batch, tensor, arrival = event.batch, event.tensor, event.arrival
        pending = self.pending.pop(batch.request_id, None)
        if pending is None:
            self.duplicates += 1
            return
        self.outputs[batch.request_id] = tensor
        self.raw.append(
            _Raw(
                request_id=batch.request_id,
                epoch=batch.plan_epoch,
                hops=list(batch.hops),
                arrival=arrival,
                send_start=pending.send_start,
                bytes_out=pending.bytes_out,
                batch_size=int(pending.x.shape[0]) if pending.x.dim() else 1,
            )
        )
        if self.on_result is not None:
            self.on_result(batch.request_id, tensor)

    def _unreachable_at(self, address: str) -> str | None:
        """A one-line WorkerError text if the device at ``address`` does not answer."""
        for device in self.c.cluster.devices:
            if device.address == address:
                try:
                    self.c.probe(device.name, since_t=time.time(), timeout_s=3.0)
                except grpc.RpcError as exc:
                    return str(self.c.worker_error(device.name, "status", exc))
        return None

    def stalled(self) -> None:
        """Nothing arrived for ``stall_timeout_s``: a lost device ends the run, else replay."""
        for stage in self.c.plan:
            try:
                self.c.probe(stage.device, since_t=time.time(), timeout_s=3.0)
            except grpc.RpcError as exc:
                raise RunError(
                    f"run cannot finish ({len(self.pending)} requests unfinished): "
                    f"{self.c.worker_error(stage.device, 'status', exc)}"
                ) from None
        for request_id in sorted(self.pending):
            self.replay(request_id, f"no result after {self.stall_timeout_s:.0f} s")

    # --- status polling ------------------------------------------------------------------------

    def _poll(self) -> None:
        while not self._stop_polling.wait(self.status_interval_s):
            self.poll_once(self._since)

    def poll_once(self, since: dict[str, float]) -> None:
        """One Status round to every stage's device: samples since ``since`` and clocks."""
        for stage in self.c.plan:
            name = stage.device
            try:
                reply, t_send, t_recv = self.c.probe(name, since.get(name, 0.0), 2.0)
            except grpc.RpcError as exc:
                if name not in self._unreachable:
                    self._unreachable.add(name)
                    self.collected.failures.append(
                        f"status of {self.c.where(name)}: {describe_rpc_error(exc)}"
                    )
                continue
            offset_ms, rtt_ms = best_offset([(t_send, reply.clock, t_recv)])
            self.c.update_clock(name, offset_ms, rtt_ms)
            got = [sample_codec.to_dict(s) for s in reply.samples]
            if got:
                since[name] = max(float(s["t"] or 0.0) for s in got)
                self.collected.samples.setdefault(name, []).extend(got)

    # --- the loop ------------------------------------------------------------------------------

    def execute(self, batches: Iterable[tuple[int, torch.Tensor]]) -> RunRecord:
        events = self.c.events
        while not events.empty():  # leftovers of an earlier run are not ours
            events.get_nowait()
        started = time.time()
        # Samples from just before the run give a baseline; older ones are not this run's.
        offsets = dict(self.c.clock_offsets_ms)
        for stage in self.c.plan:
            offset_s = offsets.get(stage.device, 0.0) / 1000.0
            self._since[stage.device] = started + offset_s - SAMPLE_LOOKBACK_S
        poller = threading.Thread(target=self._poll, name="status-poll", daemon=True)
        poller.start()
        try:
            self._loop(iter(batches), events)
        finally:
            self._stop_polling.set()
            poller.join(5.0)
        self.poll_once(self._since)  # the samples of the run's last moments
        return self._record(started, time.time())

    def _loop(self, it: Iterable[tuple[int, torch.Tensor]], events: queue.Queue[Event]) -> None:
        source = iter(it)
        exhausted = False
        stalls = 0
        while True:
            while not exhausted and len(self.pending) < self.window:
                try:
                    request_id, x = next(source)
                except StopIteration:
                    exhausted = True
                    break
                if request_id in self.pending or request_id in self.outputs:
                    raise RunError(f"request id {request_id} was given twice; ids must be unique")
                self.pending[request_id] = Pending(x=x)
                self.send(request_id)
            if exhausted and not self.pending:
                return
            try:
                event = events.get(timeout=self.stall_timeout_s)
            except queue.Empty:
                stalls += 1
                if stalls > MAX_STALLS:
                    raise RunError(
                        f"no result for {self.stall_timeout_s * stalls:.0f} s although every "
                        f"device answers; {len(self.pending)} requests unfinished"
                    ) from None
                self.stalled()
                continue
            stalls = 0
            self.handle(event)

    def _record(self, started: float, finished: float) -> RunRecord:
        offsets = dict(self.c.clock_offsets_ms)
        hops, uploads = [], []
        for raw in self.raw:
            hops.extend(hop_records(raw.request_id, raw.epoch, raw.hops, raw.arrival, offsets))
            if raw.hops:
                uploads.append(
                    upload_record(
                        raw.request_id,
                        raw.epoch,
                        raw.batch_size,
                        raw.bytes_out,
                        raw.send_start,
                        raw.hops[0],
                        offsets,
                    )
                )
        samples = {
            name: [{**s, "t": float(s["t"] or 0.0) - offsets.get(name, 0.0) / 1000.0} for s in got]
            for name, got in self.collected.samples.items()
        }
        return RunRecord(
            outputs=self.outputs,
            hops=hops,
            uploads=uploads,
            samples=samples,
            clock_offsets_ms=offsets,
            rtt_ms=dict(self.c.rtt_ms),
            started=started,
            finished=finished,
            epochs=sorted(self.epochs),
            failures=self.failures + self.collected.failures,
            replayed=self.replayed,
            duplicates=self.duplicates,
        )
