"""The send side of a worker: one thread and one persistent channel per next hop.

A micro-batch leaves through the :class:`LinkSender` of its next hop. The sender applies the
emulated link (latency + bytes * 8 / bandwidth, see :func:`link_delay_s`) while holding the
link, so a link carries one message at a time like a real NIC does, and the compute thread
never waits for the network. A failed send becomes a recorded failure and a report to the
coordinator, never an exception that stops the worker.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from edgesplit.config import TlsSpec
from edgesplit.errors import EdgesplitError
from edgesplit.runtime import MAX_MESSAGE_BYTES
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.transport import describe_rpc_error, open_channel

log = logging.getLogger(__name__)

COORDINATOR_HOP = "coordinator"
SEND_TIMEOUT_S = 30.0
BUSY_RETRY_S = 0.05


class OversizeError(EdgesplitError):
    """A message would exceed the gRPC size limit."""


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
        self._thread = threading.Thread(target=self._loop, name=f"send-{address}", daemon=True)
        self._thread.start()

    def depth(self) -> int:
        return self._queue.qsize()

    def put(self, item: Outgoing) -> None:
        self._queue.put(item)

    def close(self, timeout_s: float = 2.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout_s)
        if self._channel is not None:
            self._channel.close()

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
                if not busy or time.monotonic() > deadline:
                    raise
                time.sleep(BUSY_RETRY_S)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            hop = item.batch.hops[-1]
            hop.send_start = time.time()
            delay = link_delay_s(item.shape, hop.bytes_out)
            if delay > 0:
                time.sleep(delay)
            hop.send_end = time.time()
            try:
                self._call(item)
            except (grpc.RpcError, OversizeError) as exc:
                why = describe_rpc_error(exc) if isinstance(exc, grpc.RpcError) else str(exc)
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
                self._on_failure(report, item.coordinator)
