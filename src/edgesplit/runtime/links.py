"""The send side of a worker: one thread and one persistent channel per next hop.

A micro-batch leaves through the :class:`LinkSender` of its next hop. The sender applies the
emulated link (latency + bytes * 8 / bandwidth, see :func:`link_delay_s`) while holding the
link, so a link carries one message at a time like a real NIC does, and the compute thread
never waits for the network. A failed send becomes a recorded failure and a report to the
coordinator, never an exception that stops the worker: whatever goes wrong with one message
(a refused call, an oversize message, a bug) is reported for that message and the sender goes
on with the next (issue #18, row 1: a sender that died silently dropped every later message).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from edgesplit.config import TlsSpec
from edgesplit.errors import EdgesplitError, OversizeError, SendStopped
from edgesplit.runtime import MAX_MESSAGE_BYTES
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.transport import describe_rpc_error, open_channel
from edgesplit.shared.timeouts import TIMEOUTS

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = TIMEOUTS.send_s
BUSY_RETRY_S = 0.05


@dataclass(frozen=True)
class LinkShape:
    """An emulated outgoing link. ``bandwidth_mbps=None`` means unshaped."""

    bandwidth_mbps: float | None = None
    latency_ms: float = 0.0


def link_delay_s(shape: LinkShape, nbytes: int) -> float:
    """Seconds a message of ``nbytes`` occupies the emulated link (latency + serialisation)."""
    delay = shape.latency_ms / 1000.0
    if shape.bandwidth_mbps:
        delay += nbytes * 8 / (shape.bandwidth_mbps * 1e6)
    return delay


@dataclass(frozen=True)
class Outgoing:
    """A computed micro-batch waiting for its link; ``batch.hops[-1]`` is this worker's hop."""

    batch: pb.MicroBatch
    shape: LinkShape
    to_coordinator: bool
    coordinator: str
    """The coordinator's address, where failures are reported."""
    on_done: Callable[[], None] | None = field(default=None, compare=False)
    """Called once the message is sent or reported failed (gives its memory back)."""


FailureSink = Callable[[pb.FailureReport, str], None]
"""Called with a failure report and the coordinator address to send it to."""


class LinkSender:
    """Sends to one address, one message at a time, over a persistent channel."""

    def __init__(
        self,
        device: str,
        address: str,
        token: str | None,
        tls: TlsSpec | None,
        on_failure: FailureSink,
    ) -> None:
        self.address = address
        self._device = device
        self._token = token
        self._tls = tls
        self._on_failure = on_failure
        self._queue: queue.Queue[Outgoing | None] = queue.Queue()
        self._channel: grpc.Channel | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"send-{address}", daemon=True)
        self._thread.start()

    def depth(self) -> int:
        return self._queue.qsize()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def put(self, item: Outgoing) -> None:
        self._queue.put(item)

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop sending (an emulated link delay in progress is cut short) and close the
        channel; messages still queued are dropped (the worker is going away)."""
        self._stop.set()
        self._queue.put(None)
        self._thread.join(timeout_s)
        if self._channel is not None:
            self._channel.close()

    def drain(self) -> list[Outgoing]:
        """Take every message still queued (used when the sender's thread is gone)."""
        items: list[Outgoing] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return items
            if item is not None:
                items.append(item)

    def _call(self, item: Outgoing) -> None:
        size = item.batch.ByteSize()
        if size > MAX_MESSAGE_BYTES:
            raise OversizeError(
                f"a {size}-byte message exceeds the {MAX_MESSAGE_BYTES}-byte limit; "
                "use smaller micro-batches"
            )
        if self._channel is None:
            self._channel = open_channel(self.address, self._token, self._tls)
        method = (
            "/edgesplit.v1.Coordinator/Result"
            if item.to_coordinator
            else ("/edgesplit.v1.Worker/Forward")
        )
        call = self._channel.unary_unary(
            method,
            request_serializer=pb.MicroBatch.SerializeToString,
            response_deserializer=pb.Ack.FromString,
        )
        deadline = time.monotonic() + SEND_TIMEOUT_S
        while True:
            try:
                call(item.batch, timeout=max(deadline - time.monotonic(), 0.1))
                return
            except grpc.RpcError as exc:
                # A full queue downstream is backpressure, not a failure: wait our turn.
                busy = exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                if not busy or time.monotonic() > deadline or self._stop.is_set():
                    raise
                self._stop.wait(BUSY_RETRY_S)

    def _loop(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is None:
                return
            try:
                self._send(item)
            except Exception as exc:  # never let one message stop the link (see module doc)
                why = describe_rpc_error(exc) if isinstance(exc, grpc.RpcError) else str(exc)
                if not isinstance(exc, (grpc.RpcError, EdgesplitError)):
                    why = f"{type(exc).__name__}: {why}"
                    log.exception("[%s] sender to %s failed", self._device, self.address)
                self.report(item, why)
            finally:
                if item.on_done is not None:
                    item.on_done()

    def _send(self, item: Outgoing) -> None:
        hop = item.batch.hops[-1]
        hop.send_start = time.time()
        delay = link_delay_s(item.shape, hop.bytes_out)
        if delay > 0 and self._stop.wait(delay):
            raise SendStopped("the sender closed before the emulated link delay ended")
        hop.send_end = time.time()
        self._call(item)

    def report(self, item: Outgoing, why: str) -> None:
        """Report ``item`` as not delivered to the coordinator (never raises)."""
        message = (
            f"[{self._device}] sending request {item.batch.request_id} "
            f"(epoch {item.batch.plan_epoch}) to {self.address} failed: {why}"
        )
        log.warning("%s", message)
        report = pb.FailureReport(
            device=self._device,
            plan_epoch=item.batch.plan_epoch,
            request_id=item.batch.request_id,
            next_hop=self.address,
            message=message,
        )
        try:
            self._on_failure(report, item.coordinator)
        except Exception:  # the report is best effort; the loop must go on
            log.exception("[%s] cannot report a failed send", self._device)
