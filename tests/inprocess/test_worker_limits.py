"""Issue #18: a worker nothing can wedge or exhaust, one test per row of the issue's table.

Workers run in this process behind real gRPC on 127.0.0.1 (their budgets count reservations
only: the process's RSS is pytest's). A small "sink" server stands in for the coordinator's
Result/ReportFailure service so each test sees exactly what the worker delivered or reported.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from edgesplit.config import parse_cluster
from edgesplit.errors import Refused
from edgesplit.model import models
from edgesplit.runtime import codec, limits
from edgesplit.runtime.auth import RejectLog
from edgesplit.runtime.budget import Budget
from edgesplit.runtime.coordinator import Coordinator
from edgesplit.runtime.links import LinkSender, LinkShape, Outgoing
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.proto import edgesplit_pb2_grpc as pb_grpc
from edgesplit.runtime.transport import bind, make_server, open_channel, service_handler
from edgesplit.runtime.weights import trim_lru
from edgesplit.runtime.worker import RunningWorker, WorkerConfig, serve

TOKEN = "limits-test-token"
MODEL = "squeezenet1_1"
SIZE = 32
MB = 1 << 20
DEADLINE_S = 60.0
"""Generous bound for waiting on a condition (never a timing assertion)."""


@dataclass
class Sink:
    """The coordinator's Result and ReportFailure service, recording what arrives."""

    address: str = ""
    results: list[int] = field(default_factory=list)
    failures: list[pb.FailureReport] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def result(self, batch: pb.MicroBatch, _data: memoryview) -> None:
        with self.lock:
            self.results.append(batch.request_id)

    def failure(self, report: pb.FailureReport) -> pb.Ack:
        with self.lock:
            self.failures.append(report)
        return pb.Ack()

    def accounted(self) -> set[int]:
        with self.lock:
            return set(self.results) | {f.request_id for f in self.failures}


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    handler = service_handler(
        "edgesplit.v1.Coordinator",
        {"ReportFailure": (pb.FailureReport, s.failure)},
        links={"Results": s.result},
    )
    server = make_server([handler], [TOKEN])
    s.address = f"127.0.0.1:{bind(server, '127.0.0.1:0', None)}"
    server.start()
    yield s
    server.stop(None)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("cache")
    mp.setenv("EDGESPLIT_CACHE_DIR", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build(MODEL, num_classes=10)


def start(name: str, max_memory_mb: int = 4096, **extra: object) -> RunningWorker:
    config = WorkerConfig(
        name=name,
        token=TOKEN,
        threads=1,
        max_memory_bytes=max_memory_mb * MB,
        memory_counts_process=False,
        **extra,  # type: ignore[arg-type]
    )
    return serve(config, "127.0.0.1:0")


@pytest.fixture(scope="module")
def worker(cache: Path, model: torch.nn.Module) -> Iterator[RunningWorker]:
    """A worker holding the model (loaded through a real coordinator)."""
    w = start("w0", max_memory_mb=128)
    cluster = parse_cluster({"token": TOKEN, "devices": [{"name": "w0", "address": w.address}]})
    with Coordinator(cluster) as c:
        c.load_model(MODEL, 10, 3, SIZE, model)
    yield w
    w.stop(0.2)


def stub(w: RunningWorker, token: str | None = TOKEN) -> pb_grpc.WorkerStub:
    return pb_grpc.WorkerStub(open_channel(w.address, token))


def code_of(call: object, *args: object, **kwargs: object) -> tuple[grpc.StatusCode, str]:
    try:
        call(*args, **kwargs)  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def install(
    w: RunningWorker, sink: Sink, epoch: int, start_unit: int = 0, end: int | None = None
) -> int:
    n = stub(w).Status(pb.StatusRequest(), timeout=10).num_units
    stub(w).InstallPlan(
        pb.InstallPlanRequest(
            epoch=epoch, stage=0, start=start_unit, end=end or n,
            next_hop="coordinator", coordinator=sink.address, engine="onnxruntime",
        ),
        timeout=60,
    )  # fmt: skip
    return n


def batch(request_id: int, epoch: int, x: np.ndarray) -> pb.MicroBatch:
    msg = pb.MicroBatch(request_id=request_id, plan_epoch=epoch)
    codec.encode(x, out=msg.tensor)
    return msg


def wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# --- row 1: links that cannot be slept through --------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"latency_ms": 1e300},
        {"latency_ms": float("inf")},
        {"latency_ms": float("nan")},
        {"latency_ms": -1.0},
        {"bandwidth_mbps": 1e-300},
        {"bandwidth_mbps": float("inf")},
    ],
)
def test_row1_set_link_refuses_numbers_outside_their_range(
    worker: RunningWorker, change: dict[str, float]
) -> None:
    code, details = code_of(
        stub(worker).SetLink, pb.SetLinkRequest(to="127.0.0.1:9", **change), timeout=10
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "must be a finite number in [" in details


def test_row1_install_plan_refuses_an_infinite_latency(worker: RunningWorker, sink: Sink) -> None:
    request = pb.InstallPlanRequest(
        epoch=90, stage=0, start=0, end=1, next_hop="coordinator", coordinator=sink.address,
        latency_ms=float("inf"),
    )  # fmt: skip
    code, details = code_of(stub(worker).InstallPlan, request, timeout=30)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "latency_ms" in details


def test_row1_a_sender_reports_a_message_it_cannot_send_and_keeps_sending(sink: Sink) -> None:
    """An error on one message (here a link delay time.sleep cannot take, as a SetLink of
    1e300 ms once made) is reported to the coordinator, and the next message still goes."""
    reports: list[pb.FailureReport] = []
    sender = LinkSender("dev", sink.address, TOKEN, None, lambda r, _c: reports.append(r))
    try:

        def item(request_id: int, shape: LinkShape) -> Outgoing:
            msg = batch(request_id, 1, np.zeros((1, 2), np.float32))
            msg.hops.add(device="dev", bytes_out=8)
            return Outgoing(msg, shape, True, sink.address)

        sender.put(item(1, LinkShape(latency_ms=1e300)))
        sender.put(item(2, LinkShape()))
        wait_for(lambda: sink.results == [2], "the second message")
        assert [r.request_id for r in reports] == [1]
        assert "OverflowError" in reports[0].message or "sleep" in reports[0].message.lower()
        assert sender.alive()
    finally:
        sender.close()


# --- row 2: handlers honour their caller's deadline --------------------------------------


def test_row2_probe_link_stops_at_its_callers_deadline(worker: RunningWorker) -> None:
    code, details = code_of(
        stub(worker).ProbeLink,
        pb.ProbeLinkRequest(address=worker.address, sizes=[10], repeats=1, latency_ms=1e7),
        timeout=10,
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "latency_ms" in details
    slow = pb.ProbeLinkRequest(
        address=worker.address, sizes=[10], repeats=50, latency_ms=limits.MAX_LATENCY_MS
    )
    codes = []
    threads = [
        threading.Thread(
            target=lambda: codes.append(code_of(stub(worker).ProbeLink, slow, timeout=1.0)[0])
        )
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S)
    assert len(codes) == 8
    assert set(codes) <= {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
    # The handlers were freed: the worker answers.
    assert stub(worker).Status(pb.StatusRequest(), timeout=DEADLINE_S).name == "w0"


# --- rows 3 and 4: a memory budget in bytes ---------------------------------------------


def test_row3_a_stalled_link_fills_the_budget_not_the_memory(
    worker: RunningWorker, sink: Sink
) -> None:
    """Forwards whose outputs cannot leave are refused with RESOURCE_EXHAUSTED once the
    budget is full; everything accepted is delivered or reported once the link recovers."""
    install(worker, sink, epoch=3, start_unit=0, end=1)
    budget = worker.worker.budget
    s = stub(worker)
    s.SetLink(pb.SetLinkRequest(to="coordinator", latency_ms=300.0), timeout=10)
    accepted, refused = [], 0
    x = np.zeros((256, 3, SIZE, SIZE), np.float32)  # 3 MB in, 3.2 MB out
    try:
        for i in range(100):
            code, details = code_of(s.Forward, batch(i, 3, x), timeout=30)
            if code == grpc.StatusCode.OK:
                accepted.append(i)
            else:
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
                refused += 1
            assert budget.reserved_bytes <= budget.limit_bytes
    finally:
        s.SetLink(pb.SetLinkRequest(to="coordinator", clear=True), timeout=10)
    assert refused > 0 and accepted
    wait_for(lambda: set(accepted) <= sink.accounted(), "every accepted micro-batch")
    assert set(sink.results) == set(accepted)  # delivered, not only reported
    wait_for(lambda: budget.reserved_bytes == 0, "the budget to be given back")
    status = s.Status(pb.StatusRequest(), timeout=10)
    assert status.memory_budget_bytes == 128 * MB and status.memory_reserved_bytes == 0
    assert status.rss_bytes > 0
    s.DropEpoch(pb.DropEpochRequest(epoch=3), timeout=10)


def test_row4_a_huge_fp16_batch_is_refused_before_it_is_decoded(
    worker: RunningWorker, sink: Sink
) -> None:
    install(worker, sink, epoch=4)
    x = np.zeros((5000, 3, SIZE, SIZE), np.float16)  # 29 MiB on the wire, 59 MiB decoded
    code, details = code_of(stub(worker).Forward, batch(1, 4, x), timeout=60)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "memory budget" in details and "retry later" in details
    assert worker.worker.budget.reserved_bytes == 0
    stub(worker).DropEpoch(pb.DropEpochRequest(epoch=4), timeout=10)


def test_a_batch_whose_output_could_never_be_sent_is_refused_at_once(
    worker: RunningWorker, sink: Sink
) -> None:
    install(worker, sink, epoch=5, start_unit=0, end=1)  # 3 x 32 x 32 in, 64 x 7 x 7 out
    x = np.zeros((5400, 3, SIZE, SIZE), np.float16)  # 32 MiB in, 68 MB out
    code, details = code_of(stub(worker).Forward, batch(1, 5, x), timeout=60)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "over the 67108864-byte message limit" in details
    stub(worker).DropEpoch(pb.DropEpochRequest(epoch=5), timeout=10)


def test_the_budget_counts_bytes_and_gives_them_back() -> None:
    budget = Budget(100 * MB, count_process=False)
    held = budget.reserve(60 * MB, "a")
    with pytest.raises(Refused, match=r"memory budget: b needs 50\.0 MB"):
        budget.reserve(50 * MB, "b")
    held.release()
    held.release()  # idempotent
    budget.reserve(90 * MB, "c").release()
    assert budget.reserved_bytes == 0


def test_a_worker_over_its_budget_is_retried_by_the_coordinator(
    cache: Path, model: torch.nn.Module
) -> None:
    """RESOURCE_EXHAUSTED from a full budget is "busy, retry later" to the coordinator: a run
    through a worker whose budget holds about one micro-batch completes, exact, with no
    failure and no replay."""
    narrow = start("narrow", max_memory_mb=16)
    try:
        cluster = parse_cluster(
            {"token": TOKEN, "devices": [{"name": "narrow", "address": narrow.address}]}
        )
        with Coordinator(cluster) as c:
            n = c.load_model(MODEL, 10, 3, SIZE, model)
            c.install_plan([("narrow", 0, n)])
            inputs = [(i, torch.randn(96, 3, SIZE, SIZE)) for i in range(10)]
            record = c.run(inputs, window=6)
        assert narrow.worker.refused_for_memory > 0  # the budget did refuse some
        assert sorted(record.outputs) == list(range(10))
        with torch.inference_mode():
            for rid, x in inputs:
                assert torch.allclose(record.outputs[rid], model(x), atol=1e-4)
        assert record.replayed == 0 and record.failures == []
        assert not stub(narrow).Status(pb.StatusRequest(), timeout=10).failures
    finally:
        narrow.stop(0.2)


# --- row 5: bounded bookkeeping ---------------------------------------------------------


def test_row5_epochs_link_overrides_and_senders_are_bounded(
    worker: RunningWorker, sink: Sink
) -> None:
    s = stub(worker)
    n = s.Status(pb.StatusRequest(), timeout=10).num_units
    for epoch in range(100, 100 + limits.MAX_EPOCHS + 4):
        s.InstallPlan(
            pb.InstallPlanRequest(
                epoch=epoch, stage=0, start=n - 1, end=n,
                next_hop=f"127.0.0.1:{20000 + epoch}", coordinator=sink.address,
            ),
            timeout=60,
        )  # fmt: skip
    epochs = [e.epoch for e in s.Status(pb.StatusRequest(), timeout=10).epochs]
    assert len(epochs) <= limits.MAX_EPOCHS and max(epochs) == 100 + limits.MAX_EPOCHS + 3
    for e in epochs:
        s.DropEpoch(pb.DropEpochRequest(epoch=e), timeout=10)
    assert not worker.worker._senders
    codes = [
        code_of(s.SetLink, pb.SetLinkRequest(to=f"10.0.0.1:{1000 + i}", latency_ms=1), timeout=10)[
            0
        ]
        for i in range(limits.MAX_LINK_OVERRIDES + 3)
    ]
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 3
    for i in range(limits.MAX_LINK_OVERRIDES):
        s.SetLink(pb.SetLinkRequest(to=f"10.0.0.1:{1000 + i}", clear=True), timeout=10)
    assert not worker.worker._link_overrides


def test_row5_cache_files_are_trimmed_least_recently_used_first(tmp_path: Path) -> None:
    for i in range(6):
        path = tmp_path / f"{i}.safetensors"
        path.write_bytes(b"x" * 10)
        import os

        os.utime(path, (1000 + i, 1000 + i))
    trim_lru(tmp_path, "*.safetensors", max_files=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{i}.safetensors" for i in (2, 3, 4, 5)]
    trim_lru(tmp_path, "*.safetensors", max_files=10, max_bytes=25)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["4.safetensors", "5.safetensors"]


# --- row 6: shapes ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [[0, 2**40, 2**40], [1, 3, 2**40, 0], [2**62, 0]])
def test_row6_an_empty_tensor_with_huge_dimensions_is_invalid(
    worker: RunningWorker, sink: Sink, shape: list[int]
) -> None:
    install(worker, sink, epoch=6)
    msg = pb.MicroBatch(request_id=1, plan_epoch=6)
    msg.tensor.dtype = "float32"
    msg.tensor.shape.extend(shape)
    code, details = code_of(stub(worker).Forward, msg, timeout=10)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "counting empty dimensions as 1" in details
    stub(worker).DropEpoch(pb.DropEpochRequest(epoch=6), timeout=10)


# --- rows 7 and 8: model building, echoed strings, digests, the rejection log -----------


def test_row7_a_reference_at_another_input_size_and_a_huge_profile_are_refused(
    worker: RunningWorker,
) -> None:
    status = stub(worker).Status(pb.StatusRequest(), timeout=10)
    request = pb.LoadModelRequest(
        model=MODEL, num_classes=10, in_channels=3, input_size=4096,
        weights_sha256=status.weights_sha256 or "0" * 64, model_sha256=status.model_sha256,
        torch_reference=True,
    )  # fmt: skip
    code, details = code_of(stub(worker).LoadModel, request, timeout=60)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "must match the model's input [3, 32, 32], got [3, 4096, 4096]" in details
    budget = worker.worker.budget
    limit, budget.limit_bytes = budget.limit_bytes, 24 * MB  # the model needs ~12 MB
    try:
        code, details = code_of(
            stub(worker).Profile, pb.ProfileRequest(batch_size=256, repeats=1), timeout=60
        )
    finally:
        budget.limit_bytes = limit
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "this profile" in details


def test_row8_echoed_strings_are_cut_and_digests_matched_whole(worker: RunningWorker) -> None:
    msg = pb.MicroBatch(request_id=1, plan_epoch=1)
    msg.tensor.dtype = "q" * 10_000
    with pytest.raises(codec.CodecError) as info:
        codec.check(msg.tensor, 100)
    assert len(str(info.value)) < 300 and "10000 characters" in str(info.value)
    code, details = code_of(
        stub(worker).LoadModel,
        pb.LoadModelRequest(model="m", model_sha256="a" * 64 + "\n"),
        timeout=10,
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "64 lowercase hex" in details
    code, details = code_of(
        stub(worker).SetLink, pb.SetLinkRequest(to="x" * 10_000, latency_ms=1), timeout=10
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and len(details) < 300


def test_row8_unauthenticated_calls_are_logged_once_per_peer_per_minute(
    worker: RunningWorker, caplog: pytest.LogCaptureFixture
) -> None:
    log = RejectLog(interval_s=60.0)
    assert log.rejected("ipv4:10.0.0.1:5000", "/x") is True
    assert [log.rejected("ipv4:10.0.0.1:5001", "/x") for _ in range(50)] == [False] * 50
    assert log.rejected("ipv4:10.0.0.2:5000", "/x") is True  # another peer
    with caplog.at_level(logging.WARNING, logger="edgesplit.runtime.auth"):
        bad = stub(worker, token="wrong")
        for _ in range(20):
            assert code_of(bad.Probe, pb.ProbeRequest(), timeout=10)[0] == (
                grpc.StatusCode.UNAUTHENTICATED
            )
    lines = [r for r in caplog.records if "from ipv4:127.0.0.1 with a bad" in r.getMessage()]
    assert len(lines) == 1 and "rejected 1 call(s)" in lines[0].getMessage()


# --- row 9: probe sizes -----------------------------------------------------------------


def test_row9_probe_stream_counts_its_bytes_and_refuses_oversized_or_unauthenticated(
    worker: RunningWorker,
) -> None:
    s = stub(worker)
    reply = s.ProbeStream(iter([pb.ProbeChunk(data=bytes(1000))] * 3), timeout=DEADLINE_S)
    assert reply.received_bytes == 3000
    assert s.ProbeStream(iter([]), timeout=DEADLINE_S).received_bytes == 0
    huge = pb.ProbeChunk(data=bytes(limits.MAX_PROBE_CHUNK_BYTES + 1))
    code, details = code_of(s.ProbeStream, iter([huge]), timeout=DEADLINE_S)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "must be in" in details
    chunk = pb.ProbeChunk(data=bytes(limits.MAX_PROBE_CHUNK_BYTES))
    sent = [0]

    def endless() -> Iterator[pb.ProbeChunk]:
        while sent[0] < 10 * limits.MAX_PROBE_BYTES // len(chunk.data):
            sent[0] += 1
            yield chunk

    code, details = code_of(s.ProbeStream, endless(), timeout=DEADLINE_S)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "at most" in details
    code, _ = code_of(stub(worker, "wrong").ProbeStream, iter([chunk] * 4), timeout=DEADLINE_S)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = code_of(stub(worker, None).ProbeStream, iter([chunk] * 4), timeout=DEADLINE_S)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert s.Status(pb.StatusRequest(), timeout=10).name == "w0"


def test_row2_stalled_probe_streams_are_bounded_and_cancelled(
    worker: RunningWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sender that opens probe streams and never ends them (no deadline of its own) holds
    at most MAX_CONCURRENT_PROBE_STREAMS handlers, each for at most MAX_PROBE_STREAM_S."""
    monkeypatch.setattr(limits, "MAX_PROBE_STREAM_S", 5.0)
    release = threading.Event()

    def stalled() -> Iterator[pb.ProbeChunk]:
        yield pb.ProbeChunk(data=b"x")
        release.wait(DEADLINE_S)

    codes: list[grpc.StatusCode] = []
    threads = [
        threading.Thread(
            target=lambda: codes.append(code_of(stub(worker).ProbeStream, stalled())[0])
        )
        for _ in range(limits.MAX_CONCURRENT_PROBE_STREAMS)
    ]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)  # let them open (not a timing assertion: they last 5 s)
        code, details = code_of(stub(worker).ProbeStream, stalled(), timeout=DEADLINE_S)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "probe streams" in details
        for t in threads:
            t.join(DEADLINE_S)
    finally:
        release.set()
    assert [c.name for c in codes] == ["CANCELLED"] * limits.MAX_CONCURRENT_PROBE_STREAMS
    reply = stub(worker).ProbeStream(iter([pb.ProbeChunk(data=b"y")]), timeout=DEADLINE_S)
    assert reply.received_bytes == 1


@pytest.mark.parametrize(
    "request_fields",
    [
        {"sizes": [10], "repeats": 1, "latency_ms": float("inf")},
        {"sizes": [1000] * 100_000, "repeats": 1},
        {"sizes": [limits.MAX_PROBE_TOTAL_BYTES // 40] * 50, "repeats": 50},
        {"sizes": [10], "repeats": 1, "bandwidth_mbps": 1e-300},
    ],
)
def test_row9_probe_link_refuses_numbers_outside_their_range(
    worker: RunningWorker, request_fields: dict[str, object]
) -> None:
    request = pb.ProbeLinkRequest(address=worker.address, **request_fields)  # type: ignore[arg-type]
    code, details = code_of(stub(worker).ProbeLink, request, timeout=DEADLINE_S)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "must be" in details
