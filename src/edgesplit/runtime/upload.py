"""The coordinator's uploads to the first stage of a run: the emulated wire, then one frame
left unacknowledged on the device's link stream while the next micro-batch is prepared.

The request's time on the (emulated) wire comes first; meanwhile the previous upload, already on
the device's link stream, is acknowledged (the receiver checks it, as a device parses one
message while the next arrives); then this request's frame goes out and is left
unacknowledged. One upload at a time: :meth:`Uploads.start` settles the previous one before it
starts another. Waiting for each upload before the next micro-batch's wire time made the
coordinator, not the slowest stage, set the pace (MobileNetV2 at 224, batch 8: 14 ms to
prepare, 41 ms on the wire and 24 ms of RPC per micro-batch, one after the other).
"""

from __future__ import annotations

import time
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass

import grpc

from edgesplit.errors import RunError, StreamBroken
from edgesplit.runtime import health as hl
from edgesplit.runtime.links import BUSY_RETRY_S, LinkShape, LinkStream, ack_code, link_delay_s
from edgesplit.runtime.ports import RunPort
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.shared.timeouts import TIMEOUTS

CONFIRM_TIMEOUT_S = TIMEOUTS.confirm_s
"""How long a device named in a failed send gets to answer our own probe."""


def confirm_lost(port: RunPort, name: str, why: str) -> bool:
    """A send to ``name`` failed: probe it once; if it does not answer either, it is LOST."""
    try:
        port.probe(name, since_t=time.time(), timeout_s=CONFIRM_TIMEOUT_S)
    except grpc.RpcError:
        port.observe(name, hl.SendFailed(time.time(), why))
        return True
    return False


@dataclass
class _Upload:
    """An upload not yet acknowledged."""

    request_id: int
    device: str
    frame: bytes
    stream: LinkStream
    future: Future[pb.LinkAck]
    retried: bool = False
    """Sent again on a new stream after its stream broke (once at most)."""


class Uploads:
    """The uploads of one run (at most one unacknowledged)."""

    def __init__(self, port: RunPort) -> None:
        self.c = port
        self._upload: _Upload | None = None

    @property
    def running(self) -> bool:
        return self._upload is not None

    def done(self) -> bool:
        """Has the upload still out (if any) been acknowledged?"""
        return self._upload is not None and self._upload.future.done()

    def start(self, request_id: int, device: str, frame: bytes, payload_bytes: int) -> bool:
        """Put ``frame`` on the wire to ``device``, settle the previous upload, then send this
        one on the device's link stream. False when the device of the previous upload turned
        out to be lost."""
        link = self.c.upload_link(device)
        delay = link_delay_s(LinkShape(link.bandwidth_mbps, link.latency_ms), payload_bytes)
        if delay > 0:
            time.sleep(delay)
        if not self.settle():
            return False
        stream = self.c.link(device)
        self._upload = _Upload(request_id, device, frame, stream, stream.send(frame))
        return True

    def settle(self) -> bool:
        """Wait for the acknowledgement of the upload still out, if any (a full first-stage
        queue makes it retry). False when its device turned out to be lost."""
        up, self._upload = self._upload, None
        while up is not None:
            why = self._wait(up)
            if why is None:
                return True
            if why == "retry":
                continue
            if confirm_lost(self.c, up.device, f"upload failed: {why}"):
                return False
            raise RunError(
                f"cannot send request {up.request_id} to stage 0: upload: "
                f"{self.c.where(up.device)} failed: {why}"
            )
        return True

    def _wait(self, up: _Upload) -> str | None:
        """None once ``up`` is acknowledged; "retry" after sending it again; else why it
        failed."""
        timeout_s = self.c.rpc_timeout_s
        try:
            ack = up.future.result(timeout=timeout_s)
        except StreamBroken as exc:
            if up.retried:
                return str(exc)
            up.retried, up.stream = True, self.c.link(up.device)  # ended before the frame
            up.future = up.stream.send(up.frame)
            return "retry"
        except futures.TimeoutError:
            why = f"no acknowledgement within {timeout_s:.0f} s"
            up.stream.close(why)  # a later frame must not get this one's acknowledgement
            return why
        code = ack_code(ack)
        if code == grpc.StatusCode.OK:
            return None
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            time.sleep(BUSY_RETRY_S)  # the first stage's queue is full: wait our turn
            up.stream = self.c.link(up.device)
            up.future = up.stream.send(up.frame)
            return "retry"
        return f"{code.name}: {ack.message}"

    def cancel(self) -> None:
        if self._upload is not None:
            self._upload.future.cancel()
            self._upload = None
