"""A bounded hypothesis fuzz of a worker's handlers over real gRPC (issue #18; the long run
with worker processes is bench/fuzz.py).

Every message a caller holding the token can send gets one of the statuses a worker is
allowed to answer with, never INTERNAL or UNKNOWN; the worker keeps serving valid traffic;
every micro-batch it accepted is delivered or reported.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgesplit.config import parse_cluster
from edgesplit.runtime import codec
from edgesplit.runtime.coordinator import Coordinator
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.worker import RunningWorker
from tests.inprocess.test_worker_limits import (  # noqa: F401  (fixtures)
    MODEL,
    SIZE,
    TOKEN,
    Sink,
    cache,
    model,
    sink,
    start,
    stub,
    wait_for,
)

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAVAILABLE,  # a link probe to an address nobody serves
}
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
EPOCH = 7

numbers = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, 1e-300, 1e300, -1.0, 60_000.0, 60_000.1, 0.1]
)
dims = st.integers(-(2**63), 2**63 - 1) | st.sampled_from([0, 1, 3, 32, 2**40, -1])
texts = st.text(max_size=50) | st.sampled_from(["", "float32", "float16", "int8", "x" * 5000])


@pytest.fixture(scope="module")
def fuzzed(cache: Path, model: torch.nn.Module) -> Iterator[RunningWorker]:  # noqa: F811
    w = start("fz", max_memory_mb=256)
    cluster = parse_cluster({"token": TOKEN, "devices": [{"name": "fz", "address": w.address}]})
    with Coordinator(cluster) as c:
        c.load_model(MODEL, 10, 3, SIZE, model)
    yield w
    w.stop(0.2)


def answer(call: object, request: object, timeout: float = 10.0) -> grpc.StatusCode:
    try:
        call(request, timeout=timeout)  # type: ignore[operator]
    except grpc.RpcError as exc:
        assert exc.code() in ALLOWED, f"{exc.code()}: {exc.details()}"
        assert len(exc.details() or "") < 2000, "an error echoed too much of the request"
        return exc.code()
    return grpc.StatusCode.OK


@st.composite
def tensors(draw: st.DrawFn) -> pb.Tensor:
    msg = pb.Tensor(dtype=draw(texts | st.sampled_from(sorted(codec.ITEMSIZE))))
    if draw(st.booleans()):
        shape = [draw(st.integers(1, 4)), 3, SIZE, SIZE]
    else:
        shape = draw(st.lists(dims, max_size=10))
    msg.shape.extend(shape)
    itemsize = codec.ITEMSIZE.get(msg.dtype, 1)
    if draw(st.booleans()) and all(0 <= d <= 64 for d in shape):
        msg.data = bytes(int(np.prod(shape)) * itemsize)
    else:
        msg.data = draw(st.binary(max_size=256))
    if draw(st.booleans()):
        msg.scale = draw(numbers)
        msg.zero_point = draw(st.integers(-(2**31), 2**31 - 1))
    return msg


def test_fuzzed_messages_get_allowed_statuses_and_nothing_is_lost(
    fuzzed: RunningWorker,
    sink: Sink,  # noqa: F811
) -> None:
    s = stub(fuzzed)
    n = s.Status(pb.StatusRequest(), timeout=10).num_units
    s.InstallPlan(
        pb.InstallPlanRequest(
            epoch=EPOCH, stage=0, start=0, end=n, next_hop="coordinator",
            coordinator=sink.address,
        ),
        timeout=60,
    )  # fmt: skip
    accepted: list[int] = []
    ids = itertools.count(1000)

    @FUZZ
    @given(tensor=tensors(), epoch=st.sampled_from([EPOCH, 0, 2**64 - 1]))
    def forward(tensor: pb.Tensor, epoch: int) -> None:
        request_id = next(ids)
        msg = pb.MicroBatch(request_id=request_id, plan_epoch=epoch, tensor=tensor)
        if answer(s.Forward, msg) == grpc.StatusCode.OK:
            accepted.append(request_id)

    forward()

    @FUZZ
    @given(to=texts, latency=numbers, bandwidth=numbers, clear=st.booleans())
    def set_link(to: str, latency: float, bandwidth: float, clear: bool) -> None:
        request = pb.SetLinkRequest(to=to, latency_ms=latency, bandwidth_mbps=bandwidth)
        request.clear = clear
        answer(s.SetLink, request)
        s.SetLink(pb.SetLinkRequest(to="coordinator", clear=True), timeout=10)

    set_link()

    @FUZZ
    @given(
        sizes=st.lists(dims, max_size=80),
        repeats=st.integers(-(2**31), 2**31 - 1),
        latency=numbers,
        bandwidth=numbers,
    )
    def probe_link(sizes: list[int], repeats: int, latency: float, bandwidth: float) -> None:
        request = pb.ProbeLinkRequest(
            address="127.0.0.1:9", sizes=sizes, repeats=repeats, latency_ms=latency,
            bandwidth_mbps=bandwidth,
        )  # fmt: skip
        answer(s.ProbeLink, request, timeout=2.0)

    probe_link()

    @FUZZ
    @given(
        # Unit ranges that exist would build a session per example: the numbers are the fuzz.
        start=st.integers(10_000, 2**31 - 1) | st.sampled_from([-1, -(2**31)]),
        latency=numbers,
        bandwidth=numbers,
        wire=texts,
        next_hop=texts,
    )
    def install(start: int, latency: float, bandwidth: float, wire: str, next_hop: str) -> None:
        request = pb.InstallPlanRequest(
            epoch=9, stage=0, start=start, end=n, next_hop=next_hop, coordinator=sink.address,
            latency_ms=latency, bandwidth_mbps=bandwidth, wire=wire,
        )  # fmt: skip
        answer(s.InstallPlan, request, timeout=60)

    install()

    @FUZZ
    @given(
        batch=st.integers(-(2**31), 2**31 - 1),
        repeats=st.sampled_from([-5, 0, 51, 1000, 2**31 - 1]),
        input_size=st.integers(-(2**31), 2**31 - 1),
        digest=texts,
    )
    def load_and_profile(batch: int, repeats: int, input_size: int, digest: str) -> None:
        answer(s.Profile, pb.ProfileRequest(batch_size=batch, repeats=repeats), timeout=60)
        answer(
            s.LoadModel,
            pb.LoadModelRequest(model="m", model_sha256=digest, input_size=input_size),
        )

    load_and_profile()

    # Valid traffic still flows, and every accepted micro-batch arrived or was reported.
    x = np.zeros((2, 3, SIZE, SIZE), np.float32)
    ok = pb.MicroBatch(request_id=1, plan_epoch=EPOCH)
    codec.encode(x, out=ok.tensor)
    assert answer(s.Forward, ok) == grpc.StatusCode.OK
    wait_for(lambda: {1, *accepted} <= sink.accounted(), "every accepted micro-batch")
    assert 1 in sink.results
