"""The send side of a link: one long-lived stream, and for a worker one thread, per next hop.

A :class:`LinkStream` is one bidirectional call to the next hop's ``Link`` (a worker) or
``Results`` (the coordinator): micro-batches go out as frames (:func:`codec.pack`: the tensor's
bytes straight from the engine's output, viewed in place by the receiver) and each comes back
acknowledged, in order; a broken stream fails every frame not yet acknowledged, and the next
send opens a new one. No per-message call setup, token check or header exchange.

A micro-batch leaves through the :class:`LinkSender` of its next hop. The sender applies the
emulated link (latency + bytes * 8 / bandwidth, see :func:`link_delay_s`) while holding the
link, so a link carries one message at a time like a real NIC does, and the compute thread
never waits for the network. A failed send becomes a recorded failure and a report to the
coordinator, never an exception that stops the worker: whatever goes wrong with one message
(a refused call, an oversize message, a bug) is reported for that message and the sender goes
on with the next (issue #18, row 1: a sender that died silently dropped every later message).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import grpc
import numpy as np

from edgesplit.config import TlsSpec
from edgesplit.errors import EdgesplitError, LinkRefused, OversizeError, SendStopped, StreamBroken
from edgesplit.runtime import MAX_MESSAGE_BYTES, codec
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.transport import describe_rpc_error, open_channel
from edgesplit.shared.timeouts import TIMEOUTS

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = TIMEOUTS.send_s
BUSY_RETRY_S = 0.05


WORKER_LINK = "/edgesplit.v1.Worker/Link"
RESULTS_LINK = "/edgesplit.v1.Coordinator/Results"
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def ack_code(ack: pb.LinkAck) -> grpc.StatusCode:
    """The status an acknowledgement carries (UNKNOWN for a number gRPC does not define)."""
    return _CODES.get(ack.code, grpc.StatusCode.UNKNOWN)


class LinkStream:
    """One long-lived bidirectional call carrying frames to a receiver and their
    acknowledgements back, in order. :meth:`send` returns a future of the frame's
    :class:`pb.LinkAck`; when the stream breaks, every frame not yet acknowledged fails with
    :class:`StreamBroken` and the stream stays broken (open a new one)."""

    def __init__(self, channel: grpc.Channel, method: str, peer: str) -> None:
        self.peer = peer
        self._lock = threading.Lock()
        self._frames: queue.Queue[bytes | None] = queue.Queue()
        self._waiting: collections.deque[Future[pb.LinkAck]] = collections.deque()
        self._broken: StreamBroken | None = None
        call = channel.stream_stream(method, response_deserializer=pb.LinkAck.FromString)
        # No deadline: the stream lives as long as the link; each frame's wait is bounded by
        # its sender, keep-alives notice a dead peer on a quiet stream.
        self._call = call(iter(self._frames.get, None))
        self._reader = threading.Thread(target=self._read, name=f"acks-{peer}", daemon=True)
        self._reader.start()

    @property
    def broken(self) -> bool:
        with self._lock:
            return self._broken is not None

    def unacknowledged(self) -> int:
        with self._lock:
            return len(self._waiting)

    def send(self, frame: bytes) -> Future[pb.LinkAck]:
        """Queue ``frame`` on the stream; the future resolves to its acknowledgement."""
        future: Future[pb.LinkAck] = Future()
        with self._lock:
            if self._broken is not None:
                future.set_exception(self._broken)
                return future
            self._waiting.append(future)
            self._frames.put(frame)
        return future

    def close(self, why: str = "the link was closed") -> None:
        """End the stream; frames not yet acknowledged fail with :class:`StreamBroken`."""
        self._break(StreamBroken(why))

    def _read(self) -> None:
        broken = StreamBroken(f"{self.peer} ended the stream")
        try:
            for ack in self._call:
                with self._lock:
                    future = self._waiting.popleft() if self._waiting else None
                if future is None:
                    broken = StreamBroken(f"{self.peer} acknowledged a frame never sent")
                    break
                _resolve(future, ack)
        except grpc.RpcError as exc:
            broken = StreamBroken(f"{self.peer}: {describe_rpc_error(exc)}", exc.code())
        except Exception as exc:  # whatever ends the reader breaks the stream
            broken = StreamBroken(f"{self.peer}: {type(exc).__name__}: {exc}")
        self._break(broken)

    def _break(self, broken: StreamBroken) -> None:
        with self._lock:
            if self._broken is None:
                self._broken = broken
            broken = self._broken
            waiting, self._waiting = list(self._waiting), collections.deque()
        self._frames.put(None)  # ends the request iterator
        self._call.cancel()
        for future in waiting:
            with contextlib.suppress(InvalidStateError):  # the caller cancelled it
                future.set_exception(broken)


def _resolve(future: Future[pb.LinkAck], ack: pb.LinkAck) -> None:
    with contextlib.suppress(InvalidStateError):  # the caller cancelled it
        future.set_result(ack)


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
    payload: np.ndarray | None = field(default=None, compare=False)
    """The tensor's bytes (the engine's output itself for fp32); None: in ``batch.tensor``."""


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
        self._stream: LinkStream | None = None
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
        if self._stream is not None:
            self._stream.close()
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

    def _open(self, to_coordinator: bool) -> LinkStream:
        """The stream to the next hop, opened again after it broke."""
        if self._stream is None or self._stream.broken:
            if self._channel is None:
                self._channel = open_channel(self.address, self._token, self._tls)
            method = RESULTS_LINK if to_coordinator else WORKER_LINK
            self._stream = LinkStream(self._channel, method, self.address)
        return self._stream

    def _call(self, item: Outgoing) -> None:
        if item.payload is None:  # the bytes are in the message: send them after it
            header = pb.MicroBatch()
            header.CopyFrom(item.batch)
            header.tensor.ClearField("data")
            frame = codec.pack(header, item.batch.tensor.data)
        else:
            frame = codec.pack(item.batch, item.payload)
        if len(frame) > MAX_MESSAGE_BYTES:
            raise OversizeError(
                f"a {len(frame)}-byte message exceeds the {MAX_MESSAGE_BYTES}-byte limit; "
                "use smaller micro-batches"
            )
        deadline = time.monotonic() + SEND_TIMEOUT_S
        retried = False
        while True:
            stream = self._open(item.to_coordinator)
            try:
                ack = self._await(stream, stream.send(frame), deadline)
            except StreamBroken:
                # The stream may have ended before this frame (the peer restarted, or ended
                # its oldest stream): one more try on a new one; a duplicate is dropped by id.
                if retried or self._stop.is_set():
                    raise
                retried = True
                continue
            code = ack_code(ack)
            if code == grpc.StatusCode.OK:
                return
            # A full queue downstream is backpressure, not a failure: wait our turn.
            busy = code == grpc.StatusCode.RESOURCE_EXHAUSTED
            if not busy or time.monotonic() > deadline or self._stop.is_set():
                raise LinkRefused(f"{code.name}: {ack.message}", code)
            self._stop.wait(BUSY_RETRY_S)

    def _await(self, stream: LinkStream, future: Future[pb.LinkAck], deadline: float) -> pb.LinkAck:
        """The frame's acknowledgement; a receiver that gives none by ``deadline`` (or a
        sender closing) ends the stream rather than wedging this link."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stop.is_set():
                what = "the sender closed" if self._stop.is_set() else "no acknowledgement"
                stream.close(f"{what} after {SEND_TIMEOUT_S:.0f} s")
                raise SendStopped(f"{what} from {self.address} within {SEND_TIMEOUT_S:.0f} s")
            try:
                return future.result(timeout=min(remaining, 0.5))
            except futures.TimeoutError:
                continue

    def _loop(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is None:
                return
            try:
                self._send(item)
            except Exception as exc:  # never let one message stop the link (see module doc)
                why = str(exc)
                if not isinstance(exc, EdgesplitError):
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
