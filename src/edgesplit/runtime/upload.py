"""The coordinator's uploads to the first stage of a run: the emulated wire, then one Forward
RPC left running while the next micro-batch is prepared.

The request's time on the (emulated) wire comes first; meanwhile the previous upload's RPC,
already on its way, finishes (the receiver parses it, as a device parses one message while the
next arrives); then this request's RPC starts and is left running. One upload RPC at a time:
:meth:`Uploads.start` settles the previous one before it starts another. Waiting for each RPC
before the next micro-batch's wire time made the coordinator, not the slowest stage, set the
pace (MobileNetV2 at 224, batch 8: 14 ms to prepare, 41 ms on the wire and 24 ms of RPC per
micro-batch, one after the other).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc

from edgesplit.errors import RunError
from edgesplit.runtime import health as hl
from edgesplit.runtime.links import LinkShape, link_delay_s
from edgesplit.runtime.ports import RunPort
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.transport import describe_rpc_error

BUSY_RETRY_S = 0.05
CONFIRM_TIMEOUT_S = 1.0
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
    """An upload whose RPC may still be running."""

    request_id: int
    device: str
    batch: pb.MicroBatch
    future: grpc.Future


class Uploads:
    """The upload RPC of one run (at most one running)."""

    def __init__(self, port: RunPort) -> None:
        self.c = port
        self._upload: _Upload | None = None

    @property
    def running(self) -> bool:
        return self._upload is not None

    def done(self) -> bool:
        """Has the running RPC (if any) finished?"""
        return self._upload is not None and self._upload.future.done()

    def start(self, request_id: int, device: str, batch: pb.MicroBatch) -> bool:
        """Put ``batch`` on the wire to ``device``, settle the previous upload, then start this
        one's RPC. False when the device of the previous upload turned out to be lost."""
        link = self.c.upload_link(device)
        delay = link_delay_s(
            LinkShape(link.bandwidth_mbps, link.latency_ms), len(batch.tensor.data)
        )
        if delay > 0:
            time.sleep(delay)
        if not self.settle():
            return False
        self._upload = _Upload(request_id, device, batch, self.c.forward(device, batch))
        return True

    def settle(self) -> bool:
        """Wait for the upload RPC still running, if any (a full first-stage queue makes it
        retry). False when its device turned out to be lost."""
        up, self._upload = self._upload, None
        while up is not None:
            try:
                up.future.result()
                return True
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    time.sleep(BUSY_RETRY_S)  # the first stage's queue is full: wait our turn
                    up.future = self.c.forward(up.device, up.batch)
                    continue
                if confirm_lost(self.c, up.device, f"upload failed: {describe_rpc_error(exc)}"):
                    return False
                raise RunError(
                    f"cannot send request {up.request_id} to stage 0: "
                    f"{self.c.worker_error(up.device, 'upload', exc)}"
                ) from None
        return True

    def cancel(self) -> None:
        if self._upload is not None:
            self._upload.future.cancel()
            self._upload = None
