"""Real worker processes on 127.0.0.1, driven by the coordinator, checked against one process.

Three workers are started once for the module and reused for every model (load_model again).
Inputs are 64x64, batches of 2, so all five models in 2- and 3-stage splits stay fast.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import torch

from edgesplit.config import ClusterSpec, parse_cluster
from edgesplit.engines import Execution
from edgesplit.model import models
from edgesplit.runtime import codec
from edgesplit.runtime.coordinator import Coordinator
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.proto import edgesplit_pb2_grpc as pb_grpc
from edgesplit.runtime.transport import open_channel

pytestmark = pytest.mark.slow

TOKEN = "multi-process-test-token"
SIZE = 64
MODELS = [
    "mobilenet_v2",
    "mobilenet_v3_small",
    "squeezenet1_1",
    "shufflenet_v2_x0_5",
    "efficientnet_b0",
]
READY_TIMEOUT_S = 60.0


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    address: str
    log: Path


def start_worker(name: str, tmp: Path, cache: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    ready = tmp / f"{name}.ready"
    log = tmp / f"{name}.log"
    env = {**os.environ, "EDGESPLIT_TOKEN": TOKEN, "EDGESPLIT_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "-m", "edgesplit", "worker", "--listen", "127.0.0.1:0",
           "--name", name, "--threads", "1", "--ready-file", str(ready)]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    return process, ready, log


def wait_ready(process: subprocess.Popen[bytes], ready: Path, log: Path) -> str:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if ready.exists():
            return ready.read_text().strip()
        if process.poll() is not None:
            raise RuntimeError(f"worker exited with {process.returncode}: {log.read_text()}")
        time.sleep(0.1)
    raise RuntimeError(f"worker not ready after {READY_TIMEOUT_S} s: {log.read_text()}")


@pytest.fixture(scope="module")
def procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Proc]]:
    tmp = tmp_path_factory.mktemp("workers")
    started = []
    try:
        # Start all first, then wait: the three imports of torch overlap.
        for i in range(3):
            started.append((f"p{i}", *start_worker(f"p{i}", tmp, tmp / "cache")))
        yield [Proc(n, p, wait_ready(p, r, lg), lg) for n, p, r, lg in started]
    finally:
        for _, process, _, _ in started:
            if process.poll() is None:
                process.kill()
            process.wait(10)


def cluster_of(procs: list[Proc]) -> ClusterSpec:
    devices = [{"name": p.name, "address": p.address} for p in procs]
    return parse_cluster(
        {
            "token": TOKEN,
            "devices": devices,
            "default_link": {"bandwidth_mbps": 1000, "latency_ms": 0.2},
        }
    )


@pytest.fixture(scope="module")
def coordinator(procs: list[Proc]) -> Iterator[Coordinator]:
    with Coordinator(cluster_of(procs)) as c:
        info = c.check()
        assert set(info) == {"p0", "p1", "p2"}
        yield c


def cuts(n: int, stages: int) -> list[tuple[str, int, int]]:
    bounds = [round(n * k / stages) for k in range(stages + 1)]
    return [(f"p{k}", bounds[k], bounds[k + 1]) for k in range(stages)]


@pytest.mark.parametrize("name", MODELS)
def test_distributed_matches_single_process(coordinator: Coordinator, name: str) -> None:
    torch.manual_seed(0)
    model = models.build(name, num_classes=10)
    n = coordinator.load_model(name, 10, 3, SIZE, model)
    inputs = [(i, torch.randn(2, 3, SIZE, SIZE)) for i in range(3)]
    with torch.inference_mode():
        reference = {rid: model(x) for rid, x in inputs}
    for stages in (2, 3):
        epoch = coordinator.install_plan(cuts(n, stages))
        record = coordinator.run(inputs, window=2)
        assert sorted(record.outputs) == [0, 1, 2]
        for rid, ref in reference.items():
            out = record.outputs[rid]
            assert (out - ref).abs().max().item() <= 1e-5, f"{name} {stages} stages, request {rid}"
            assert torch.equal(out.argmax(1), ref.argmax(1))
        assert len(record.hops) == 3 * stages
        assert all(h.epoch == epoch for h in record.hops)
        assert sorted({h.stage for h in record.hops}) == list(range(stages))
        assert record.failures == []


def test_worker_survives_abuse_then_serves(coordinator: Coordinator, procs: list[Proc]) -> None:
    torch.manual_seed(0)
    model = models.build("squeezenet1_1", num_classes=10)
    n = coordinator.load_model("squeezenet1_1", 10, 3, SIZE, model)
    epoch = coordinator.install_plan(cuts(n, 2), execution=Execution(engine="torch"))
    target = procs[0].address
    raw_channel = grpc.insecure_channel(
        target, options=[("grpc.max_send_message_length", 80 << 20)]
    )
    meta = (("authorization", f"Bearer {TOKEN}"),)
    forward = raw_channel.unary_unary("/edgesplit.v1.Worker/Forward")
    good = pb.MicroBatch(
        request_id=5, plan_epoch=epoch, tensor=codec.encode(torch.zeros(1, 3, SIZE, SIZE))
    )
    wire = good.SerializeToString()
    abuse: list[bytes] = [
        os.urandom(256),
        wire[: len(wire) // 2],  # truncated
        pb.MicroBatch(
            plan_epoch=epoch, tensor=codec.encode(torch.zeros(1, 3, SIZE, SIZE, dtype=torch.int32))
        ).SerializeToString(),
        pb.MicroBatch(
            plan_epoch=epoch, tensor=codec.encode(torch.zeros(1, 3, SIZE + 1, SIZE))
        ).SerializeToString(),
        pb.MicroBatch(
            plan_epoch=epoch, tensor=pb.Tensor(dtype="float32", shape=[1 << 40], data=b"")
        ).SerializeToString(),
        pb.MicroBatch(plan_epoch=epoch + 50, tensor=good.tensor).SerializeToString(),
        b"\0" * (65 << 20),  # over the 64 MiB limit
    ]
    for payload in abuse:
        with pytest.raises(grpc.RpcError) as info:
            forward(payload, metadata=meta, timeout=30)
        assert info.value.code() != grpc.StatusCode.OK
        assert info.value.code() != grpc.StatusCode.UNAVAILABLE, "the worker died"
    with pytest.raises(grpc.RpcError) as info:
        forward(wire, metadata=(("authorization", "Bearer wrong"),), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    raw_channel.close()

    x = torch.randn(2, 3, SIZE, SIZE)
    record = coordinator.run([(42, x)], window=1)
    with torch.inference_mode():
        assert torch.equal(record.outputs[42], model(x))
    assert all(p.process.poll() is None for p in procs)


def test_sigterm_shuts_a_worker_down_cleanly(tmp_path: Path) -> None:
    process, ready, log = start_worker("term", tmp_path, tmp_path / "cache")
    try:
        address = wait_ready(process, ready, log)
        stub = pb_grpc.WorkerStub(open_channel(address, TOKEN))
        assert stub.Status(pb.StatusRequest(), timeout=10).name == "term"
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_worker_without_token_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "EDGESPLIT_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "edgesplit", "worker", "--listen", "127.0.0.1:0", "--name", "x"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "has no token" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
