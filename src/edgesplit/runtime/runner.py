"""One run: feed micro-batches with backpressure, collect results, keep the plan on usable devices.

Invariants: a request is done only when its result reached the coordinator; until then its
input is kept, so it can be replayed. Results are de-duplicated by request id, so a replayed
request counts once whichever copy arrives first. User callbacks run on the caller's thread,
except ``on_live`` (see :class:`~edgesplit.runtime.live.LiveFeed`).

Plans change in three ways, all through new epochs (workers keep old ones, so nothing in flight
is disturbed): :meth:`Coordinator.switch_plan` from any thread; a device LOST (heartbeats
missed past the deadline, or a failed send that our own probe confirms), after which
``replan(usable devices)`` gives the plan and every unfinished request sent under a plan that
uses a lost device is replayed; and a lost device re-admitted after probation. An old epoch is
dropped on the workers once none of its requests is unfinished.

A run's input is finite (a dataset) or a *feed* (``edgesplit serve``): an iterable that may
yield ``None`` for "nothing to send yet" and puts a :class:`Wake` on ``coordinator.events``
when it has something; the loop then waits for events without counting the quiet as a stall.
A feed ends when its iterator does. With ``keep_outputs=False`` (a long-lived feed) results go
to ``on_result`` only and the record keeps none of them, so memory stays bounded.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import torch

from edgesplit.errors import InstallFailed, RunAborted, RunError, RunInterrupted, StreamBroken
from edgesplit.runtime import MAX_MESSAGE_BYTES, codec
from edgesplit.runtime import health as hl
from edgesplit.runtime.heartbeat import Collected, HealthEvent, Heartbeats
from edgesplit.runtime.links import LinkShape, LinkStream, ack_code, link_delay_s
from edgesplit.runtime.live import FailureSeen, LiveCallback, LiveFeed, LiveObserver, ResultSeen
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.records import DeviceFailure, RunRecord, hop_records, upload_record
from edgesplit.shared.names import COORDINATOR
from edgesplit.shared.timeouts import TIMEOUTS

if TYPE_CHECKING:
    from edgesplit.runtime.coordinator import Coordinator

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
"""Sends of one request after failure reports or stalls (not device losses) before giving up."""
MAX_STALLS = 2
BUSY_RETRY_S = 0.05
SAMPLE_LOOKBACK_S = 1.0
CONFIRM_TIMEOUT_S = TIMEOUTS.confirm_s
"""How long a device named in a failed send gets to answer our own probe."""
UPLOAD_POLL_S = 0.02
"""While an upload RPC runs, the loop looks at it this often between events."""

KEPT_SAMPLES = 600
"""Heartbeat samples kept per device when a run keeps no outputs (a serving session)."""

Replan = Callable[[list[str]], list[tuple[str, int, int]]]
"""Given the usable devices (cluster order), the stages ``(device, start, end)`` to run on."""


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
class Wake:
    """A feed has input ready (or its batching wait ran out): look at it now."""


Event = ResultEvent | FailureEvent | HealthEvent | Wake
Item = tuple[int, torch.Tensor] | None
"""What a run's input yields: ``(request_id, batch)``, or None from a feed with nothing yet."""


@dataclass
class Pending:
    x: torch.Tensor
    attempts: int = 0
    epoch: int = 0
    """The epoch of the last send."""
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
class _Upload:
    """An upload not yet acknowledged (see :meth:`Run.send`)."""

    request_id: int
    device: str
    frame: bytes
    stream: LinkStream
    future: Future[pb.LinkAck]
    retried: bool = False
    """Sent again on a new stream after its stream broke (once at most)."""


class Run:
    """The state of one :meth:`Coordinator.run` call."""

    def __init__(
        self,
        coordinator: Coordinator,
        window: int,
        on_result: Callable[[int, torch.Tensor], None] | None,
        stall_timeout_s: float,
        status_interval_s: float,
        replan: Replan | None = None,
        on_live: LiveCallback | None = None,
        observer: LiveObserver | None = None,
        keep_outputs: bool = True,
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
        self.replan = replan
        self.pending: dict[int, Pending] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.raw: list[_Raw] = []
        self.errors: list[str] = []
        self.failures: list[DeviceFailure] = []
        self.replayed = 0
        self.duplicates = 0
        self.epochs: set[int] = set()
        self.collected = Collected()
        self._upload: _Upload | None = None
        self._planned_for: tuple[str, ...] = ()
        """The usable devices the current plan was made for."""
        self._transitions_from = len(coordinator.transitions)
        self._transitions_seen = self._transitions_from
        self._changes_from = len(coordinator.plan_changes)
        self.on_live = on_live
        self.observer = observer
        self.live: LiveFeed | None = None
        self.keep_outputs = keep_outputs

    # --- sending -------------------------------------------------------------------------------

    def send(self, request_id: int) -> bool:
        """Upload one pending request to the first stage of the current plan. False when that
        device (or the one the previous upload went to) turned out to be lost (the requests
        stay pending; :meth:`reconcile` replays them).

        The request's time on the (emulated) wire comes first; meanwhile the previous upload,
        already on the device's link stream, is acknowledged (the receiver checks it, as a
        device parses one message while the next arrives); then this request's frame goes out
        and is left unacknowledged. One upload at a time: ``send`` settles the previous one
        before it starts another.
        Waiting for each RPC before the next micro-batch's wire time made the coordinator, not
        the slowest stage, set the pace (MobileNetV2 at 224, batch 8: 14 ms to prepare, 41 ms
        on the wire and 24 ms of RPC per micro-batch, one after the other)."""
        pending = self.pending[request_id]
        epoch, plan = self.c.current()
        first = plan[0].device
        link = self.c.cluster.sender_link(COORDINATOR, first)
        batch = pb.MicroBatch(request_id=request_id, plan_epoch=epoch)
        payload = codec.encode_header(pending.x, batch.tensor)  # the input's own memory
        frame = codec.pack(batch, payload)
        if len(frame) > MAX_MESSAGE_BYTES:
            raise RunError(
                f"request {request_id} is {len(frame)} bytes on the wire; the limit is "
                f"{MAX_MESSAGE_BYTES}: use smaller micro-batches"
            )
        pending.attempts += 1
        pending.epoch = epoch
        pending.bytes_out = payload.nbytes
        self.epochs.add(epoch)
        pending.send_start = time.time()
        delay = link_delay_s(LinkShape(link.bandwidth_mbps, link.latency_ms), pending.bytes_out)
        if delay > 0:
            time.sleep(delay)
        if not self.settle_upload():
            return False
        stream = self.c.link(first)
        self._upload = _Upload(request_id, first, frame, stream, stream.send(frame))
        return True

    def settle_upload(self) -> bool:
        """Wait for the acknowledgement of the upload still out, if any (a full first-stage
        queue makes it retry). False when its device turned out to be lost."""
        up, self._upload = self._upload, None
        while up is not None:
            try:
                ack = up.future.result(timeout=self.c.rpc_timeout_s)
            except StreamBroken as exc:
                if not up.retried:  # the stream may have ended before the frame: once more
                    up.retried, up.stream = True, self.c.link(up.device)
                    up.future = up.stream.send(up.frame)
                    continue
                why = str(exc)
            except futures.TimeoutError:
                why = f"no acknowledgement within {self.c.rpc_timeout_s:.0f} s"
                up.stream.close(why)  # a later frame must not get this one's acknowledgement
            else:
                code = ack_code(ack)
                if code == grpc.StatusCode.OK:
                    return True
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    time.sleep(BUSY_RETRY_S)  # the first stage's queue is full: wait our turn
                    up.stream = self.c.link(up.device)
                    up.future = up.stream.send(up.frame)
                    continue
                why = f"{code.name}: {ack.message}"
            if self._confirm_lost(up.device, f"upload failed: {why}"):
                return False
            raise RunError(
                f"cannot send request {up.request_id} to stage 0: upload: "
                f"{self.c.where(up.device)} failed: {why}"
            )
        return True

    def replay(self, request_id: int, why: str) -> None:
        """Send a pending request again under the current epoch; give up after MAX_ATTEMPTS."""
        pending = self.pending[request_id]
        if pending.attempts >= MAX_ATTEMPTS:
            raise RunError(f"request {request_id} failed {pending.attempts} times; last: {why}")
        log.info("replaying request %d (%s)", request_id, why)
        self.replayed += 1
        if not self.send(request_id):
            self.reconcile()

    # --- devices and plans ---------------------------------------------------------------------

    def _confirm_lost(self, name: str, why: str) -> bool:
        """A send to ``name`` failed: probe it once; if it does not answer either, it is LOST."""
        try:
            self.c.probe(name, since_t=time.time(), timeout_s=CONFIRM_TIMEOUT_S)
        except grpc.RpcError:
            self.c.observe(name, hl.SendFailed(time.time(), why))
            return True
        return False

    def _note_losses(self) -> list[DeviceFailure]:
        """DeviceFailures for the LOST transitions recorded since the last call."""
        transitions = self.c.transitions[self._transitions_seen :]
        self._transitions_seen += len(transitions)
        new = [
            DeviceFailure(t.device, t.t, t.reason)
            for t in transitions
            if t.after == hl.DeviceState.LOST.value
        ]
        self.failures.extend(new)
        return new

    def reconcile(self) -> None:
        """Make the plan fit the usable devices: replan when they changed, then replay every
        unfinished request last sent under a plan that uses a device no longer usable."""
        while True:
            self._note_losses()
            usable = self.c.usable_devices()
            if not usable:
                raise RunError(
                    f"run cannot finish: every device is lost ({self._describe_lost()}); "
                    f"{len(self.outputs)} requests completed, {len(self.pending)} unfinished"
                )
            if tuple(usable) != self._planned_for:
                try:
                    self._switch(usable)
                except InstallFailed as exc:
                    self.c.observe(exc.device, hl.SendFailed(time.time(), str(exc)))
                    continue  # plan again without it
            if self._replay_lost(set(usable)):
                return

    def _switch(self, usable: list[str]) -> None:
        lost = [d for d in self._planned_for if d not in usable]
        back = [d for d in usable if d not in self._planned_for]
        _, plan = self.c.current()
        if self.replan is None:
            dead = [(i, s.device) for i, s in enumerate(plan) if s.device not in usable]
            if dead:
                index, name = dead[0]
                raise RunError(
                    f"run cannot finish ({len(self.pending)} requests unfinished): "
                    f"{self.c.where(name)} holds stage {index} and is lost "
                    f"({self.c.health()[name].reason}); no replan function was given"
                )
            self._planned_for = tuple(usable)
            return
        stages = self.replan(usable)
        outside = sorted({d for d, _, _ in stages} - set(usable))
        if outside:
            raise RunError(
                f"replan gave stages to {outside}, which are not usable; usable: {usable}"
            )
        parts = ([f"lost {', '.join(lost)}"] if lost else []) + (
            [f"re-admitted {', '.join(back)}"] if back else []
        )
        epoch = self.c.install_plan(
            stages,
            reason="; ".join(parts) or "devices changed",
            timeout_s=self.c.health_policy.deadline_s,
        )
        self._planned_for = tuple(usable)
        for failure in self.failures:
            if failure.recovery_epoch is None:
                failure.recovery_epoch = epoch

    def _replay_lost(self, usable: set[str]) -> bool:
        """Replay requests stuck on lost devices; False if a replay found another loss."""
        installed = self.c.installed_epochs()
        for request_id in sorted(self.pending):
            pending = self.pending.get(request_id)
            if pending is None:
                continue
            plan = installed.get(pending.epoch, ())
            dead = [s.device for s in plan if s.device not in usable]
            if plan and not dead:
                continue
            self._credit(dead)
            log.info("replaying request %d (lost %s)", request_id, dead or "epoch")
            self.replayed += 1
            if not self.send(request_id):
                return False
        return True

    def _credit(self, dead: list[str]) -> None:
        """Count one replay against the newest failure of a device in ``dead``."""
        for failure in reversed(self.failures):
            if failure.device in dead or not dead:
                failure.replayed += 1
                return
        if self.failures:
            self.failures[-1].replayed += 1

    def _describe_lost(self) -> str:
        return "; ".join(
            f"{name}: {h.reason or h.state.value}"
            for name, h in self.c.health().items()
            if not h.usable
        )

    def _drop_drained(self) -> None:
        """Drop every old epoch that no unfinished request uses any more."""
        current = self.c.epoch
        busy = {p.epoch for p in self.pending.values()}
        usable = set(self.c.usable_devices())
        for epoch, plan in self.c.installed_epochs().items():
            if epoch < current and epoch not in busy:
                log.info("epoch %d drained; dropping it", epoch)
                self.c.drop_epoch_later(epoch, [s.device for s in plan if s.device in usable])

    # --- receiving -----------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        if isinstance(event, Wake):
            return
        if isinstance(event, HealthEvent):
            self.reconcile()
        elif isinstance(event, FailureEvent):
            self._failed(event.report)
        else:
            self._result(event)
        self._drop_drained()

    def _failed(self, report: pb.FailureReport) -> None:
        self.errors.append(report.message)
        if self.live is not None:
            self.live.push(FailureSeen(time.time(), report.device, report.message))
        pending = self.pending.get(report.request_id)
        if pending is None or pending.epoch != report.plan_epoch:
            return  # a copy we replayed already, or a result that arrived after all
        target = self.c.device_at(report.next_hop)
        if target is not None and (
            not self.c.health()[target].usable or self._confirm_lost(target, report.message)
        ):
            self.reconcile()
            return
        self.replay(report.request_id, report.message)

    def _result(self, event: ResultEvent) -> None:
        batch, tensor, arrival = event.batch, event.tensor, event.arrival
        pending = self.pending.pop(batch.request_id, None)
        if pending is None:
            self.duplicates += 1
            return
        raw = _Raw(
            request_id=batch.request_id,
            epoch=batch.plan_epoch,
            hops=list(batch.hops),
            arrival=arrival,
            send_start=pending.send_start,
            bytes_out=pending.bytes_out,
            batch_size=int(pending.x.shape[0]) if pending.x.dim() else 1,
        )
        if self.keep_outputs:
            self.outputs[batch.request_id] = tensor
            self.raw.append(raw)
        for failure in self.failures:
            ended = (
                failure.recovery_epoch is not None and batch.plan_epoch >= failure.recovery_epoch
            )
            if failure.recovery_s is None and ended:
                failure.recovery_s = arrival - failure.t
        if self.live is not None:
            offsets = dict(self.c.clock_offsets_ms)
            hops = hop_records(raw.request_id, raw.epoch, raw.hops, arrival, offsets)
            self.live.push(ResultSeen.from_records(arrival, raw.send_start, raw.batch_size, hops))
        if self.on_result is not None:
            self.on_result(batch.request_id, tensor)

    def stalled(self) -> None:
        """Nothing arrived for ``stall_timeout_s``: fix the plan, then replay what is left."""
        self.reconcile()
        for request_id in sorted(self.pending):
            if request_id in self.pending:
                self.replay(request_id, f"no result after {self.stall_timeout_s:.0f} s")

    # --- the loop ------------------------------------------------------------------------------

    def execute(self, batches: Iterable[Item]) -> RunRecord:
        """Run to the end; :class:`RunAborted` (with the partial record) if it cannot finish."""
        events = self.c.events
        while not events.empty():  # leftovers of an earlier run are not ours
            events.get_nowait()
        started = time.time()
        # Samples from just before the run give a baseline; older ones are not this run's.
        offsets = dict(self.c.clock_offsets_ms)
        since = {
            d.name: started + offsets.get(d.name, 0.0) / 1000.0 - SAMPLE_LOOKBACK_S
            for d in self.c.cluster.devices
        }
        usable = self.c.usable_devices()
        plan_ok = all(s.device in usable for s in self.c.plan)
        self._planned_for = tuple(usable) if plan_ok else ()
        if self.on_live is not None or self.observer is not None:
            stages = [s.device for s in self.c.plan]
            self.live = LiveFeed(self.on_live, started, stages, observer=self.observer)
        beats = Heartbeats(self.c, events.put, self.status_interval_s, since, self.live).start()
        self.collected = beats.collected
        if not self.keep_outputs:
            self.collected.limit = KEPT_SAMPLES
        failed: RunError | None = None
        interrupted: KeyboardInterrupt | SystemExit | None = None
        try:
            if not plan_ok:
                self.reconcile()
            self._loop(iter(batches), events)
        except RunError as exc:
            failed = exc
        except (KeyboardInterrupt, SystemExit) as exc:
            interrupted = exc  # the caller writes what finished, then stops
        finally:
            if self._upload is not None:
                self._upload.future.cancel()
                self._upload = None
            beats.stop()
        if interrupted is None:
            for name in self.c.usable_devices():  # the samples of the run's last moments
                beats.beat(name, timeout_s=CONFIRM_TIMEOUT_S)
        self._note_losses()
        record = self._record(started, time.time())
        if interrupted is not None:
            raise RunInterrupted(record, interrupted) from None
        if failed is not None:
            raise RunAborted(str(failed), record) from None
        return record

    def _loop(self, it: Iterable[Item], events: queue.Queue[Event]) -> None:
        source = iter(it)
        exhausted = False
        stalls = 0
        while True:
            while not exhausted and len(self.pending) < self.window:
                try:
                    item = next(source)
                except StopIteration:
                    exhausted = True
                    break
                if item is None:
                    break  # a feed with nothing yet; it puts a Wake on the events when it has
                request_id, x = item
                if request_id in self.pending or request_id in self.outputs:
                    raise RunError(f"request id {request_id} was given twice; ids must be unique")
                self.pending[request_id] = Pending(x=x)
                if not self.send(request_id):
                    self.reconcile()
            done = self._upload is not None and self._upload.future.done()
            if done and not self.settle_upload():
                self.reconcile()
            if exhausted and not self.pending:
                return
            uploading = self._upload is not None
            try:
                event = events.get(timeout=UPLOAD_POLL_S if uploading else self.stall_timeout_s)
            except queue.Empty:
                if uploading or not self.pending:
                    # An upload still running is not a stall (its RPC has a timeout), nor is a
                    # feed with nothing to send.
                    continue
                stalls += 1
                if stalls > MAX_STALLS:
                    raise RunError(
                        f"no result for {self.stall_timeout_s * stalls:.0f} s although every "
                        f"device answers; {len(self.pending)} requests unfinished"
                    ) from None
                self.stalled()
                continue
            if isinstance(event, (ResultEvent, FailureEvent)):
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
            failures=list(self.failures),
            errors=self.errors + self.collected.errors,
            replayed=self.replayed,
            duplicates=self.duplicates,
            plan_changes=self.c.plan_changes[self._changes_from :],
            transitions=self.c.transitions[self._transitions_from :],
        )
