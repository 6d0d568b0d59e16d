"""Link streams (issue #19): frames, their acknowledgements, and a worker's Link stream under
garbage, a missing token and more streams than it keeps, over real gRPC on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgesplit.config import parse_cluster
from edgesplit.errors import StreamBroken
from edgesplit.runtime import codec, limits, wire
from edgesplit.runtime.coordinator import Coordinator
from edgesplit.runtime.links import WORKER_LINK, LinkStream, ack_code
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.transport import open_channel
from edgesplit.runtime.worker import RunningWorker
from tests.inprocess.test_worker_limits import (  # noqa: F401  (fixtures)
    DEADLINE_S,
    MODEL,
    SIZE,
    TOKEN,
    Sink,
    cache,
    install,
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
}
EPOCH = 11


# --- frames (pure) ---------------------------------------------------------------------------


def test_a_frame_round_trips_and_its_bytes_are_viewed_in_place() -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    batch = pb.MicroBatch(request_id=5, plan_epoch=3)
    payload = wire.activation_payload(x, "fp32", batch.tensor)
    assert np.shares_memory(payload, x)  # fp32: the engine's output is the payload
    frame = codec.pack(batch, payload)
    header, data = codec.unpack(frame)
    assert (header.request_id, header.plan_epoch, list(header.tensor.shape)) == (5, 3, [2, 3, 4])
    y = wire.decode_activation_array(header.tensor, data=data)
    assert np.array_equal(y, x) and np.shares_memory(y, np.frombuffer(frame, np.uint8))


@pytest.mark.parametrize("fmt", ["fp16", "int8"])
def test_converted_wire_formats_travel_in_frames(fmt: str) -> None:
    x = np.linspace(-3, 3, 60, dtype=np.float32).reshape(3, 20)
    batch = pb.MicroBatch(request_id=1)
    header, data = codec.unpack(codec.pack(batch, wire.activation_payload(x, fmt, batch.tensor)))
    expected = wire.decode_activation_array(wire.encode_activation(x, fmt))
    assert np.array_equal(wire.decode_activation_array(header.tensor, data=data), expected)


@pytest.mark.parametrize(
    ("frame", "says"),
    [
        (b"", "varint"),
        (b"\xff\xff\xff\xff\xff\xff", "varint"),
        (b"\x05ab", "do not fit"),
        (b"\x02\xff\xff", "serialized MicroBatch"),
    ],
)
def test_malformed_frames_are_codec_errors(frame: bytes, says: str) -> None:
    with pytest.raises(codec.CodecError, match=says):
        codec.unpack(frame)


def test_a_frame_must_not_carry_the_bytes_in_its_header() -> None:
    batch = pb.MicroBatch(request_id=1)
    codec.encode(np.zeros(2, np.float32), out=batch.tensor)
    with pytest.raises(codec.CodecError, match="after its header"):
        codec.unpack(codec.pack(batch, b""))


# --- a worker's Link stream ------------------------------------------------------------------


@pytest.fixture(scope="module")
def linked(cache: Path, model: torch.nn.Module) -> Iterator[RunningWorker]:  # noqa: F811
    w = start("ln", max_memory_mb=256)
    cluster = parse_cluster({"token": TOKEN, "devices": [{"name": "ln", "address": w.address}]})
    with Coordinator(cluster) as c:
        c.load_model(MODEL, 10, 3, SIZE, model)
    yield w
    w.stop(0.2)


def frame_of(request_id: int, x: np.ndarray, epoch: int = EPOCH) -> bytes:
    batch = pb.MicroBatch(request_id=request_id, plan_epoch=epoch)
    return codec.pack(batch, codec.encode_header(x, batch.tensor))


def test_garbage_frames_are_refused_one_by_one_and_the_stream_goes_on(
    linked: RunningWorker,
    sink: Sink,  # noqa: F811
) -> None:
    install(linked, sink, EPOCH)
    stream = LinkStream(open_channel(linked.address, TOKEN), WORKER_LINK, "ln")
    try:
        x = np.zeros((1, 3, SIZE, SIZE), np.float32)
        invalid, unknown = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION
        garbage = [
            (b"", invalid),
            (b"\x00", unknown),  # an empty header: epoch 0 is not installed
            (b"\x05ab", invalid),
            (frame_of(2, np.zeros((1, 3, SIZE + 1, SIZE), np.float32)), invalid),
            (frame_of(3, x.astype(np.float64)), invalid),
            (frame_of(4, x, epoch=EPOCH + 100), unknown),
            (frame_of(5, x)[:-1], invalid),
        ]
        codes = [ack_code(stream.send(f).result(DEADLINE_S)) for f, _ in garbage]
        assert codes == [expected for _, expected in garbage]
        ack = stream.send(frame_of(1, x)).result(DEADLINE_S)
        assert ack_code(ack) == grpc.StatusCode.OK and ack.request_id == 1
        wait_for(lambda: 1 in sink.results, "the valid micro-batch's result")
        assert not stream.broken
    finally:
        stream.close()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
@given(raw=st.binary(max_size=300) | st.builds(lambda b: b"\x10" + b, st.binary(max_size=64)))
def test_fuzzed_frames_get_allowed_acknowledgements(linked: RunningWorker, raw: bytes) -> None:
    stream = LinkStream(open_channel(linked.address, TOKEN), WORKER_LINK, "ln")
    try:
        ack = stream.send(raw).result(DEADLINE_S)
        assert ack_code(ack) in ALLOWED, ack
        assert len(ack.message) < 2000
    finally:
        stream.close()


def test_a_link_stream_without_the_token_is_refused(linked: RunningWorker) -> None:
    stream = LinkStream(open_channel(linked.address, "wrong token"), WORKER_LINK, "ln")
    x = np.zeros((1, 3, SIZE, SIZE), np.float32)
    with pytest.raises(StreamBroken) as err:
        stream.send(frame_of(1, x)).result(DEADLINE_S)
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert stub(linked).Status(pb.StatusRequest(), timeout=DEADLINE_S).name == "ln"


def test_streams_past_the_limit_end_the_oldest_and_the_worker_still_answers(
    linked: RunningWorker,
) -> None:
    channel = open_channel(linked.address, TOKEN)
    streams = []
    try:
        for _ in range(limits.MAX_LINK_STREAMS + 2):
            stream = LinkStream(channel, WORKER_LINK, "ln")
            ack = stream.send(b"").result(DEADLINE_S)  # the stream is open on the worker now
            assert ack_code(ack) == grpc.StatusCode.INVALID_ARGUMENT
            streams.append(stream)
        deadline = time.monotonic() + DEADLINE_S
        while not (streams[0].broken and streams[1].broken):
            assert time.monotonic() < deadline, "the oldest streams were not ended"
            time.sleep(0.05)
        assert not streams[-1].broken
        assert linked.worker.link_streams.count() <= limits.MAX_LINK_STREAMS
        assert stub(linked).Status(pb.StatusRequest(), timeout=DEADLINE_S).name == "ln"
    finally:
        for stream in streams:
            stream.close()
