"""Workers and the coordinator in this process, over real gRPC on 127.0.0.1.

One small model (squeezenet1_1 at 32x32) keeps this tier fast; the multi-process tier runs
all five models.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import torch

from edgesplit.config import ClusterSpec, parse_cluster
from edgesplit.engines import Execution
from edgesplit.errors import EdgesplitError, RunError, WorkerError
from edgesplit.model import models
from edgesplit.runtime import PROTOCOL_VERSION, codec
from edgesplit.runtime.coordinator import Coordinator
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.proto import edgesplit_pb2_grpc as pb_grpc
from edgesplit.runtime.transport import open_channel
from edgesplit.runtime.worker import RunningWorker, WorkerConfig, serve

TOKEN = "in-process-test-token"
MODEL = "squeezenet1_1"
SIZE = 32
TORCH = Execution(engine="torch")
"""The exact reference engine: its split runs are bit-identical to the whole model."""


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build(MODEL, num_classes=10)


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RunningWorker]]:
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGESPLIT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    running = [
        serve(WorkerConfig(name=f"w{i}", token=TOKEN, threads=1), "127.0.0.1:0") for i in range(3)
    ]
    yield running
    for w in running:
        w.stop(0.5)
    mp.undo()


def cluster_of(workers: list[RunningWorker], **extra: object) -> ClusterSpec:
    devices = [{"name": f"w{i}", "address": w.address} for i, w in enumerate(workers)]
    return parse_cluster({"token": TOKEN, "devices": devices, **extra})


@pytest.fixture(scope="module")
def coordinator(workers: list[RunningWorker], model: torch.nn.Module) -> Iterator[Coordinator]:
    with Coordinator(cluster_of(workers)) as c:
        c.check()
        c.load_model(MODEL, 10, 3, SIZE, model)
        yield c


def stub(worker: RunningWorker, token: str | None = TOKEN) -> pb_grpc.WorkerStub:
    return pb_grpc.WorkerStub(open_channel(worker.address, token))


def test_status_reports_versions_clock_and_samples(
    coordinator: Coordinator, workers: list[RunningWorker]
) -> None:
    time.sleep(0.3)  # let the sampler take a reading
    reply = stub(workers[0]).Status(pb.StatusRequest(), timeout=5)
    assert reply.name == "w0"
    assert reply.protocol_version == PROTOCOL_VERSION
    assert reply.torch_version == torch.__version__
    assert abs(reply.clock - time.time()) < 5
    assert reply.model == MODEL
    assert reply.num_units > 3
    assert reply.threads == 1
    assert len(reply.samples) >= 1
    later = stub(workers[0]).Status(pb.StatusRequest(since_t=time.time() + 60), timeout=5)
    assert len(later.samples) == 0


def test_split_run_matches_the_whole_model(
    coordinator: Coordinator, model: torch.nn.Module
) -> None:
    n = coordinator._num_units
    assert n is not None
    epoch = coordinator.install_plan(
        [("w0", 0, n // 3), ("w1", n // 3, n // 2), ("w2", n // 2, n)], execution=TORCH
    )
    inputs = [(i, torch.randn(2, 3, SIZE, SIZE)) for i in range(5)]
    seen: list[int] = []
    record = coordinator.run(inputs, window=2, on_result=lambda rid, _t: seen.append(rid))
    assert sorted(seen) == [0, 1, 2, 3, 4]
    with torch.inference_mode():
        for rid, x in inputs:
            assert torch.equal(record.outputs[rid], model(x))
    assert len(record.hops) == 15 and len(record.uploads) == 5
    assert {h.device for h in record.hops} == {"w0", "w1", "w2"}
    assert all(h.epoch == epoch and h.batch_size == 2 for h in record.hops)
    assert all(h.compute_ms > 0 and h.transfer_ms > -5 for h in record.hops)
    assert set(record.clock_offsets_ms) == {"w0", "w1", "w2"}
    assert record.epochs == [epoch]
    assert record.failures == [] and record.replayed == 0
    assert record.samples, "expected device samples from status polling"


def test_check_names_a_wrong_token(workers: list[RunningWorker]) -> None:
    with (
        Coordinator(cluster_of(workers[:1], token="wrong")) as c,
        pytest.raises(WorkerError, match=r"device w0 at 127\.0\.0\.1:\d+ rejected our token"),
    ):
        c.check()


def test_check_names_an_unreachable_device(tmp_path: Path) -> None:
    cluster = parse_cluster(
        {"token": TOKEN, "devices": [{"name": "gone", "address": "127.0.0.1:9"}]}
    )
    start = time.monotonic()
    with (
        Coordinator(cluster) as c,
        pytest.raises(WorkerError, match=r"device gone at 127\.0\.0\.1:9 is unreachable"),
    ):
        c.check()
    assert time.monotonic() - start < 6


def rpc_error(fn: Callable[..., object], *args: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, timeout=10)
    return info.value


def test_forward_refusals_name_what_was_expected(
    coordinator: Coordinator, workers: list[RunningWorker]
) -> None:
    n = coordinator._num_units
    assert n is not None
    epoch = coordinator.install_plan([("w0", 0, n // 2), ("w1", n // 2, n)])
    s = stub(workers[0])

    err = rpc_error(s.Forward, pb.MicroBatch(plan_epoch=epoch + 100))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"unknown plan epoch {epoch + 100}" in err.details()

    wrong_shape = pb.MicroBatch(plan_epoch=epoch, tensor=codec.encode(torch.zeros(2, 3, 16, 16)))
    err = rpc_error(s.Forward, wrong_shape)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"expects input [N, 3, {SIZE}, {SIZE}], got [2, 3, 16, 16]" in err.details()

    wrong_dtype = pb.MicroBatch(
        plan_epoch=epoch, tensor=codec.encode(torch.zeros(2, 3, SIZE, SIZE, dtype=torch.float64))
    )
    err = rpc_error(s.Forward, wrong_dtype)
    assert "expected a float32 tensor, got float64" in err.details()

    lying = pb.MicroBatch(
        plan_epoch=epoch, tensor=pb.Tensor(dtype="float32", shape=[1 << 30, 3], data=b"")
    )
    err = rpc_error(s.Forward, lying)
    assert "at most" in err.details()

    short = pb.MicroBatch(
        plan_epoch=epoch,
        tensor=pb.Tensor(dtype="float32", shape=[1, 3, SIZE, SIZE], data=b"\0" * 12),
    )
    err = rpc_error(s.Forward, short)
    assert "bytes" in err.details() and err.code() == grpc.StatusCode.INVALID_ARGUMENT

    err = rpc_error(
        s.InstallPlan,
        pb.InstallPlanRequest(
            epoch=99, start=0, end=n + 1, next_hop="coordinator", coordinator="x:1"
        ),
    )
    assert f"0 <= start < end <= {n}" in err.details()


def test_load_model_refusals(workers: list[RunningWorker]) -> None:
    s = stub(workers[2])
    base = {"model": MODEL, "num_classes": 10, "in_channels": 3, "input_size": SIZE}
    err = rpc_error(s.LoadModel, pb.LoadModelRequest(**base, model_sha256="../../x"))
    assert "64 lowercase hex" in err.details()
    reply = s.LoadModel(pb.LoadModelRequest(**base, model_sha256="0" * 64), timeout=10)
    assert reply.need_model and not reply.loaded


def put(s: pb_grpc.WorkerStub, chunks: list[pb.ModelChunk]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        s.PutModel(iter(chunks), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return info.value


def test_put_model_refuses_bad_streams_and_keeps_nothing(
    workers: list[RunningWorker], tmp_path: Path
) -> None:
    s = stub(workers[2])
    data = b"not an onnx model, but bytes all the same"
    sha = hashlib.sha256(data).hexdigest()
    whole = dict(sha256=sha, total_bytes=len(data))
    err = put(s, [pb.ModelChunk(**whole, offset=0, data=data[:-1])])
    assert "ended at byte" in err.details()
    wrong = dict(sha256="1" * 64, total_bytes=len(data))
    assert "digest mismatch" in put(s, [pb.ModelChunk(**wrong, offset=0, data=data)]).details()
    gap = [pb.ModelChunk(**whole, offset=0, data=data[:5]), pb.ModelChunk(**whole, offset=6)]
    assert "expected 5" in put(s, gap).details()
    big = pb.ModelChunk(sha256=sha, total_bytes=3 << 20, offset=0, data=bytes((1 << 20) + 1))
    assert "at most" in put(s, [big]).details()
    assert "64 lowercase hex" in put(s, [pb.ModelChunk(sha256="../x", total_bytes=1)]).details()
    # The digest matched, but it is no ONNX model: stored, then refused by LoadModel.
    s.PutModel(iter([pb.ModelChunk(**whole, offset=0, data=data)]), timeout=10)
    request = pb.LoadModelRequest(model=MODEL, num_classes=10, in_channels=3, input_size=SIZE)
    request.model_sha256 = sha
    assert "not a valid ONNX" in rpc_error(s.LoadModel, request).details()
    assert not list(workers[2].worker.store.directory.glob(".part-*"))


def test_model_bytes_travel_once_across_runs_replans_and_restarts(
    model: torch.nn.Module, tmp_path: Path
) -> None:
    """Two runs, a re-plan and a worker restart: the compiled model crosses the wire once."""
    from edgesplit.engines.onnx_engine import compile_model
    from edgesplit.model import graph
    from edgesplit.runtime.model_store import ModelStore

    compiled = compile_model(
        graph.trace(model, (3, SIZE, SIZE)), MODEL, models.state_dict_sha256(model)
    )

    def start(i: int) -> RunningWorker:
        store = ModelStore(tmp_path / f"store{i}")
        return serve(WorkerConfig(name=f"w{i}", token=TOKEN, threads=1, store=store), "127.0.0.1:0")

    def received(w: RunningWorker) -> int:
        return int(stub(w).Status(pb.StatusRequest(), timeout=5).model_bytes_received)

    def one_run(running: list[RunningWorker], plans: list[list[tuple[str, int, int]]]) -> None:
        with Coordinator(cluster_of(running)) as c:
            c.check()
            n = c.load_model(MODEL, 10, 3, SIZE, model)
            assert n == compiled.num_units
            for plan in plans:
                c.install_plan([(d, a, b if b > 0 else n) for d, a, b in plan])
                record = c.run([(i, torch.randn(2, 3, SIZE, SIZE)) for i in range(3)], window=2)
                assert sorted(record.outputs) == [0, 1, 2]

    running = [start(0), start(1)]
    try:
        one_run(running, [[("w0", 0, 4), ("w1", 4, -1)], [("w1", 0, 9), ("w0", 9, -1)]])
        assert [received(w) for w in running] == [len(compiled.data)] * 2
        one_run(running, [[("w0", 0, 2), ("w1", 2, -1)]])
        assert [received(w) for w in running] == [len(compiled.data)] * 2
        running[0].stop(0.5)
        running[0] = start(0)  # a restart: a new process would find the same store
        one_run(running, [[("w1", 0, 5), ("w0", 5, -1)]])
        assert [received(w) for w in running] == [0, len(compiled.data)]
    finally:
        for w in running:
            w.stop(0.5)


def test_garbage_payloads_and_the_worker_keeps_serving(
    coordinator: Coordinator, workers: list[RunningWorker], model: torch.nn.Module
) -> None:
    channel = grpc.insecure_channel(
        workers[0].address, options=[("grpc.max_send_message_length", 80 * 1024 * 1024)]
    )
    meta = (("authorization", f"Bearer {TOKEN}"),)
    raw = channel.unary_unary("/edgesplit.v1.Worker/Forward")
    torch.manual_seed(1)
    for payload in (
        bytes(torch.randint(0, 256, (64,), dtype=torch.uint8).tolist()),
        b"\xff\xff\xff",
        b"\x1a\x05\x0a\x03flo",
    ):
        with pytest.raises(grpc.RpcError) as info:
            raw(payload, metadata=meta, timeout=10)
        assert info.value.code() in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.FAILED_PRECONDITION,
        )
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\0" * (65 * 1024 * 1024), metadata=meta, timeout=20)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as info:
        stub(workers[0], token="nope").Status(pb.StatusRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as info:
        stub(workers[0], token=None).Status(pb.StatusRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    channel.close()

    n = coordinator._num_units
    assert n is not None
    coordinator.install_plan([("w0", 0, n)], execution=TORCH)
    x = torch.randn(1, 3, SIZE, SIZE)
    record = coordinator.run([(1, x)], window=1)
    with torch.inference_mode():
        assert torch.equal(record.outputs[1], model(x))


def test_dead_next_hop_is_reported_and_the_run_fails_with_one_line(
    workers: list[RunningWorker], model: torch.nn.Module
) -> None:
    victim = serve(WorkerConfig(name="victim", token=TOKEN), "127.0.0.1:0")
    devices = [
        {"name": "w0", "address": workers[0].address},
        {"name": "victim", "address": victim.address},
    ]
    cluster = parse_cluster({"token": TOKEN, "devices": devices})
    with Coordinator(cluster) as c:
        n = c.load_model(MODEL, 10, 3, SIZE, model)
        c.install_plan([("w0", 0, n // 2), ("victim", n // 2, n)])
        victim.stop(0.1)
        with pytest.raises(
            RunError,
            match=r"run cannot finish .*: device victim at 127\.0\.0\.1:\d+ holds stage 1 and is "
            r"lost \(send failed: .*UNAVAILABLE.*\); no replan function was given",
        ):
            c.run([(0, torch.randn(1, 3, SIZE, SIZE))], window=1, stall_timeout_s=5)
    status = stub(workers[0]).Status(pb.StatusRequest(), timeout=5)
    assert any("failed" in f for f in status.failures)


def test_worker_refuses_to_start_without_a_token() -> None:
    with pytest.raises(EdgesplitError, match="has no token"):
        serve(WorkerConfig(name="x", token=None), "127.0.0.1:0")


def test_an_oversized_micro_batch_is_a_run_error(coordinator: Coordinator) -> None:
    n = coordinator._num_units
    assert n is not None
    coordinator.install_plan([("w0", 0, n)])
    huge = torch.zeros(5600, 3, SIZE, SIZE)  # 68.8 MB of float32, over the 64 MiB limit
    # The module's coordinator is shared: on a loaded host an earlier test's run can leave w0
    # LOST (a first heartbeat 0.25 s after a long quiet); check() makes every device HEALTHY.
    coordinator.check()
    with pytest.raises(RunError, match=r"request 3 is \d+ bytes on the wire; the limit is"):
        coordinator.run([(3, huge)], window=1)


def test_uploads_wait_their_turn_at_a_full_first_stage(model: torch.nn.Module) -> None:
    """A first stage that queues one micro-batch refuses the rest (RESOURCE_EXHAUSTED) while it
    computes; the coordinator's uploads, which overlap their RPCs with the next micro-batch,
    retry until taken: every result arrives once and equals the whole model's."""
    narrow = serve(WorkerConfig(name="narrow", token=TOKEN, threads=1, max_queue=1), "127.0.0.1:0")
    try:
        cluster = parse_cluster(
            {"token": TOKEN, "devices": [{"name": "narrow", "address": narrow.address}]}
        )
        with Coordinator(cluster) as c:
            n = c.load_model(MODEL, 10, 3, SIZE, model)
            c.install_plan([("narrow", 0, n)], execution=TORCH)
            inputs = [(i, torch.randn(16, 3, SIZE, SIZE)) for i in range(12)]
            seen: list[int] = []
            record = c.run(inputs, window=8, on_result=lambda rid, _t: seen.append(rid))
        assert sorted(seen) == list(range(12))
        with torch.inference_mode():
            for rid, x in inputs:
                assert torch.equal(record.outputs[rid], model(x))
        assert record.replayed == 0 and record.failures == []
        status = stub(narrow).Status(pb.StatusRequest(), timeout=5)
        assert not status.failures
    finally:
        narrow.stop(0.5)
