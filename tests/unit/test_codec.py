"""Tensor codec: round trips for every allowed dtype, and clear rejection of bad messages."""

from __future__ import annotations

import pytest
import torch

from edgesplit.errors import EdgesplitError
from edgesplit.runtime import codec
from edgesplit.runtime.proto import edgesplit_pb2 as pb


@pytest.mark.parametrize("name", sorted(codec.DTYPES))
def test_round_trip_every_dtype(name: str) -> None:
    dtype = getattr(torch, name)
    source = (torch.randn(2, 3, 4) * 50).to(dtype)
    msg = codec.encode(source)
    assert msg.dtype == name
    assert list(msg.shape) == [2, 3, 4]
    wire = pb.Tensor.FromString(msg.SerializeToString())
    back = codec.decode(wire)
    assert back.dtype == dtype
    assert torch.equal(back, source)


def test_round_trip_is_bit_exact_and_writable() -> None:
    source = torch.randn(4, 8, 5, 5)
    source[0, 0, 0, 0] = float("nan")
    back = codec.decode(codec.encode(source))
    assert back.view(torch.int32).equal(source.view(torch.int32))
    back.add_(1.0)  # a read-only buffer would make this fail or warn


def test_non_contiguous_and_empty() -> None:
    source = torch.arange(24, dtype=torch.float32).reshape(4, 6).t()
    assert torch.equal(codec.decode(codec.encode(source)), source)
    empty = codec.decode(codec.encode(torch.empty(0, 3)))
    assert tuple(empty.shape) == (0, 3)


def test_encode_into_field() -> None:
    batch = pb.MicroBatch(request_id=7)
    codec.encode(torch.ones(2, 2), out=batch.tensor)
    assert torch.equal(codec.decode(batch.tensor), torch.ones(2, 2))


def test_encode_rejects_complex() -> None:
    with pytest.raises(codec.CodecError, match="cannot send dtype"):
        codec.encode(torch.zeros(2, dtype=torch.complex64))


def _msg(dtype: str, shape: list[int], data: bytes) -> pb.Tensor:
    return pb.Tensor(dtype=dtype, shape=shape, data=data)


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        (_msg("object", [1], b"\0" * 8), "unsupported tensor dtype 'object'"),
        (_msg("", [1], b"\0" * 4), "unsupported tensor dtype"),
        (_msg("float32", [2, -1], b""), "negative dimension"),
        (_msg("float32", [2, 2], b"\0" * 15), r"needs 16 bytes \(4 x 4\), got 15"),
        (_msg("float32", [2, 2], b"\0" * 17), "needs 16 bytes"),
        (_msg("float32", [1 << 20, 1 << 20], b""), "at most"),
        (_msg("float32", [1] * 9, b"\0" * 4), "9 dimensions"),
    ],
)
def test_decode_rejects(msg: pb.Tensor, match: str) -> None:
    with pytest.raises(codec.CodecError, match=match):
        codec.decode(msg)


def test_decode_rejects_wrong_expected_dtype() -> None:
    msg = codec.encode(torch.zeros(2, dtype=torch.float64))
    with pytest.raises(codec.CodecError, match="expected a float32 tensor, got float64"):
        codec.decode(msg, expect_dtype=torch.float32)


def test_max_elements_is_checked_before_allocation() -> None:
    msg = _msg("float32", [10, 10], b"\0" * 400)
    with pytest.raises(codec.CodecError, match="100 elements; at most 50"):
        codec.decode(msg, max_elements=50)


def test_codec_error_is_an_edgesplit_error() -> None:
    assert issubclass(codec.CodecError, EdgesplitError)
