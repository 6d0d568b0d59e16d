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
from dataclasses import dataclass

import torch

from edgesplit.errors import (
    InstallFailed,
    RunAborted,
    RunError,
    RunInterrupted,
)
from edgesplit.runtime import MAX_MESSAGE_BYTES, codec
from edgesplit.runtime import book as bk
from edgesplit.runtime import health as hl
from edgesplit.runtime.book import MAX_ATTEMPTS, Pending
from edgesplit.runtime.heartbeat import Collected, Heartbeats
from edgesplit.runtime.live import FailureSeen, LiveCallback, LiveFeed, LiveObserver, ResultSeen
from edgesplit.runtime.ports import (
    Event,
    FailureEvent,
    HealthEvent,
    ResultEvent,
    RunPort,
    Wake,
)
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.records import RunRecord, hop_records, upload_record
from edgesplit.runtime.upload import CONFIRM_TIMEOUT_S, Uploads, confirm_lost
from edgesplit.shared.plan import Stage

__all__ = [
    "MAX_ATTEMPTS",
    "Event",
    "FailureEvent",
    "HealthEvent",
    "InstallFailed",
    "Item",
    "Pending",
    "Replan",
    "ResultEvent",
    "Run",
    "RunAborted",
    "RunInterrupted",
    "Wake",
]

log = logging.getLogger(__name__)

MAX_STALLS = 2
SAMPLE_LOOKBACK_S = 1.0
UPLOAD_POLL_S = 0.02
"""While an upload RPC runs, the loop looks at it this often between events."""

KEPT_SAMPLES = 600
"""Heartbeat samples kept per device when a run keeps no outputs (a serving session)."""

Replan = Callable[[list[str]], list[Stage]]
"""Given the usable devices (cluster order), the stages ``(device, start, end)`` to run on."""


Item = tuple[int, torch.Tensor] | None
"""What a run's input yields: ``(request_id, batch)``, or None from a feed with nothing yet."""


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


class Run:
    """The state of one :meth:`Coordinator.run` call: a request book (:mod:`.book`, pure) and
    the sockets, clocks and callbacks around it."""

    def __init__(
        self,
        coordinator: RunPort,
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
        if not coordinator.current()[1]:
            raise RunError("no plan installed; call install_plan before run")
        self.c = coordinator
        self.window = window
        self.on_result = on_result
        self.stall_timeout_s = stall_timeout_s
        self.status_interval_s = status_interval_s
        self.replan = replan
        self.book = bk.Book()
        self.outputs: dict[int, torch.Tensor] = {}
        self.raw: list[_Raw] = []
        self.errors: list[str] = []
        self.collected = Collected()
        self.uploads = Uploads(coordinator)
        history = coordinator.history(0, 0)
        self._transitions_from = self._transitions_seen = history.transitions_end
        self._changes_from = history.plan_changes_end
        self.on_live = on_live
        self.observer = observer
        self.live: LiveFeed | None = None
        self.keep_outputs = keep_outputs

    @property
    def pending(self) -> dict[int, Pending]:
        return self.book.pending

    # --- sending -------------------------------------------------------------------------------

    def send(self, request_id: int) -> bool:
        """Upload one pending request to the first stage of the current plan
        (:class:`~edgesplit.runtime.upload.Uploads`). False when that device (or the one the
        previous upload went to) turned out to be lost (the requests stay pending;
        :meth:`reconcile` replays them)."""
        epoch, plan = self.c.current()
        batch = pb.MicroBatch(request_id=request_id, plan_epoch=epoch)
        pending = self.book.pending[request_id]
        payload = codec.encode_header(pending.x, batch.tensor)  # the input's own memory
        frame = codec.pack(batch, payload)
        if len(frame) > MAX_MESSAGE_BYTES:
            raise RunError(
                f"request {request_id} is {len(frame)} bytes on the wire; the limit is "
                f"{MAX_MESSAGE_BYTES}: use smaller micro-batches"
            )
        bk.sent(self.book, request_id, epoch, payload.nbytes, time.time())
        return self.uploads.start(request_id, plan[0].device, frame, payload.nbytes)

    def _replay(self, action: bk.Replay) -> bool:
        """Send a request again; False if that found a lost device."""
        log.info("replaying request %d (%s)", action.request_id, action.reason)
        bk.replaying(self.book, action)
        return self.send(action.request_id)

    def _act(self, action: bk.Replay | bk.Abort) -> None:
        """Apply the answer to a failure report or a stall."""
        if isinstance(action, bk.Abort):
            raise RunError(action.reason)
        if not self._replay(action):
            self.reconcile()

    # --- devices and plans ---------------------------------------------------------------------

    def _note_losses(self) -> None:
        """Record the LOST transitions since the last call as device failures."""
        history = self.c.history(self._transitions_seen, self._changes_from)
        self._transitions_seen = history.transitions_end
        bk.note_losses(self.book, history.transitions)

    def _installed(self) -> dict[int, tuple[str, ...]]:
        return {e: tuple(s.device for s in p) for e, p in self.c.installed_epochs().items()}

    def reconcile(self) -> None:
        """Apply :func:`~edgesplit.runtime.book.next_action` until nothing is left to do:
        replan when the usable devices changed, replay every unfinished request last sent
        under a plan that uses a device no longer usable, drop drained epochs."""
        while True:
            self._note_losses()
            action = bk.next_action(self.book, self.c.health(), self._installed())
            if action is None:
                return
            if isinstance(action, bk.Abort):
                raise RunError(action.reason)
            if isinstance(action, bk.Replan):
                try:
                    self._switch(action)
                except InstallFailed as exc:
                    self.c.observe(exc.device, hl.SendFailed(time.time(), str(exc)))
            elif isinstance(action, bk.Replay):
                self._replay(action)  # a loss it finds shows in the next action
            else:
                log.info("epoch %d drained; dropping it", action.epoch)
                self.c.drop_epoch_later(action.epoch, action.devices)

    def _switch(self, action: bk.Replan) -> None:
        usable = list(action.usable)
        if self.replan is None:
            _, plan = self.c.current()
            dead = [(i, s.device) for i, s in enumerate(plan) if s.device not in usable]
            if dead:
                index, name = dead[0]
                raise RunError(
                    f"run cannot finish ({len(self.book.pending)} requests unfinished): "
                    f"{self.c.where(name)} holds stage {index} and is lost "
                    f"({self.c.health()[name].reason}); no replan function was given"
                )
            bk.replanned(self.book, action.usable, None)
            return
        stages = self.replan(usable)
        outside = sorted({d for d, _, _ in stages} - set(usable))
        if outside:
            raise RunError(
                f"replan gave stages to {outside}, which are not usable; usable: {usable}"
            )
        epoch = self.c.install_plan(
            stages, reason=action.reason, timeout_s=self.c.health_policy.deadline_s
        )
        bk.replanned(self.book, action.usable, epoch)

    # --- receiving -----------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        if isinstance(event, Wake):
            return
        if isinstance(event, FailureEvent):
            self._failed(event.report)
        elif isinstance(event, ResultEvent):
            self._result(event)
        self.reconcile()

    def _failed(self, report: pb.FailureReport) -> None:
        self.errors.append(report.message)
        if self.live is not None:
            self.live.push(FailureSeen(time.time(), report.device, report.message))
        action = bk.after_failure(self.book, report.request_id, report.plan_epoch, report.message)
        if action is None:
            return  # a copy we replayed already, or a result that arrived after all
        target = self.c.device_at(report.next_hop)
        if target is not None and (
            not self.c.health()[target].usable or confirm_lost(self.c, target, report.message)
        ):
            self.reconcile()
            return
        self._act(action)

    def _result(self, event: ResultEvent) -> None:
        batch, tensor, arrival = event.batch, event.tensor, event.arrival
        pending = bk.completed(self.book, batch.request_id, batch.plan_epoch, arrival)
        if pending is None:
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
        if self.live is not None:
            offsets, _ = self.c.clocks()
            hops = hop_records(raw.request_id, raw.epoch, raw.hops, arrival, offsets)
            self.live.push(ResultSeen.from_records(arrival, raw.send_start, raw.batch_size, hops))
        if self.on_result is not None:
            self.on_result(batch.request_id, tensor)

    def stalled(self) -> None:
        """Nothing arrived for ``stall_timeout_s``: fix the plan, then replay what is left."""
        self.reconcile()
        why = f"no result after {self.stall_timeout_s:.0f} s"
        for request_id in sorted(self.book.pending):
            pending = self.book.pending.get(request_id)
            if pending is not None:
                action = bk.after_failure(self.book, request_id, pending.epoch, why)
                if action is not None:
                    self._act(action)

    # --- the loop ------------------------------------------------------------------------------

    def execute(self, batches: Iterable[Item]) -> RunRecord:
        """Run to the end; :class:`RunAborted` (with the partial record) if it cannot finish."""
        events = self.c.events
        while not events.empty():  # leftovers of an earlier run are not ours
            events.get_nowait()
        started = time.time()
        beats, plan_ok = self._start(started)
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
            self.uploads.cancel()
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

    def _start(self, started: float) -> tuple[Heartbeats, bool]:
        """Start the heartbeats and the live feed; also whether the plan fits the devices."""
        # Samples from just before the run give a baseline; older ones are not this run's.
        offsets, _ = self.c.clocks()
        since = {
            d.name: started + offsets.get(d.name, 0.0) / 1000.0 - SAMPLE_LOOKBACK_S
            for d in self.c.cluster.devices
        }
        usable = self.c.usable_devices()
        _, plan = self.c.current()
        plan_ok = all(s.device in usable for s in plan)
        self.book.planned_for = tuple(usable) if plan_ok else ()
        if self.on_live is not None or self.observer is not None:
            stages = [s.device for s in plan]
            self.live = LiveFeed(self.on_live, started, stages, observer=self.observer)
        beats = Heartbeats(self.c, self.c.events.put, self.status_interval_s, since, self.live)
        self.collected = beats.start().collected
        if not self.keep_outputs:
            self.collected.limit = KEPT_SAMPLES
        return beats, plan_ok

    def _loop(self, it: Iterable[Item], events: queue.Queue[Event]) -> None:
        source = iter(it)
        exhausted = False
        stalls = 0
        while True:
            while not exhausted and len(self.book.pending) < self.window:
                try:
                    item = next(source)
                except StopIteration:
                    exhausted = True
                    break
                if item is None:
                    break  # a feed with nothing yet; it puts a Wake on the events when it has
                request_id, x = item
                refused = bk.admit(self.book, request_id, x, request_id in self.outputs)
                if refused:
                    raise RunError(refused)
                if not self.send(request_id):
                    self.reconcile()
            if self.uploads.done() and not self.uploads.settle():
                self.reconcile()
            if exhausted and not self.book.pending:
                return
            uploading = self.uploads.running
            try:
                event = events.get(timeout=UPLOAD_POLL_S if uploading else self.stall_timeout_s)
            except queue.Empty:
                if uploading or not self.book.pending:
                    # An upload still running is not a stall (its RPC has a timeout), nor is a
                    # feed with nothing to send.
                    continue
                stalls += 1
                if stalls > MAX_STALLS:
                    raise RunError(
                        f"no result for {self.stall_timeout_s * stalls:.0f} s although every "
                        f"device answers; {len(self.book.pending)} requests unfinished"
                    ) from None
                self.stalled()
                continue
            if isinstance(event, (ResultEvent, FailureEvent)):
                stalls = 0
            self.handle(event)

    def _record(self, started: float, finished: float) -> RunRecord:
        offsets, rtt = self.c.clocks()
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
        history = self.c.history(self._transitions_from, self._changes_from)
        return RunRecord(
            outputs=self.outputs,
            hops=hops,
            uploads=uploads,
            samples=samples,
            clock_offsets_ms=offsets,
            rtt_ms=rtt,
            started=started,
            finished=finished,
            epochs=sorted(self.book.epochs),
            failures=list(self.book.failures),
            errors=self.errors + self.collected.errors,
            replayed=self.book.replayed,
            duplicates=self.book.duplicates,
            plan_changes=history.plan_changes,
            transitions=history.transitions,
        )
