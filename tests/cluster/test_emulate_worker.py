"""An emulated cluster of real ``edgesplit worker`` processes answers Status with the token."""

from __future__ import annotations

import signal
import time

import pytest

from edgesplit.cluster.emulate import EmulatedCluster, EmulatedDevice
from edgesplit.config import read_token_file
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.proto.edgesplit_pb2_grpc import WorkerStub
from edgesplit.runtime.transport import open_channel
from tests.inprocess.test_emulate import children_alive, wait_gone


@pytest.mark.slow
def test_real_workers_serve_and_stop() -> None:
    devices = [EmulatedDevice("pi1", 0.5), EmulatedDevice("pi2", 1.0, threads=2)]
    with EmulatedCluster.start(devices, ready_timeout_s=90) as cluster:
        spec = cluster.spec
        token = read_token_file(cluster.token_file)
        for device in spec.devices:
            channel = open_channel(device.address, token)
            deadline = time.monotonic() + 60  # until its sampler has taken a sample (bounded)
            try:
                while True:
                    reply = WorkerStub(channel).Status(pb.StatusRequest(since_t=0.0), timeout=10)
                    if reply.samples or time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
            finally:
                channel.close()
            assert reply.name == device.name
            assert reply.threads == device.threads
            assert len(reply.samples) >= 1
        pids = [cluster.pid(d.name) for d in devices]
        cluster.stop("pi1")
        assert cluster.poll()["pi1"] in (0, -signal.SIGTERM)  # the worker exits cleanly
    assert wait_gone(pids) == []
    assert children_alive() == []
