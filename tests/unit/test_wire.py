"""Activation wire formats: fp16 and int8 round trips within their stated bounds, and bad
messages refused."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgesplit.errors import ConfigError
from edgesplit.runtime import codec, wire
from edgesplit.runtime.proto import edgesplit_pb2 as pb


def round_trip(x: torch.Tensor, fmt: str) -> tuple[torch.Tensor, pb.Tensor]:
    msg = pb.Tensor.FromString(wire.encode_activation(x, fmt).SerializeToString())
    return wire.decode_activation(msg), msg


def test_fp32_is_exact() -> None:
    x = torch.randn(4, 16, 8, 8)
    back, msg = round_trip(x, "fp32")
    assert torch.equal(back, x)
    assert len(msg.data) == x.numel() * 4


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(1e-3, 1e4))
def test_fp16_within_its_bound(seed: int, spread: float) -> None:
    x = torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(seed)) * spread
    back, msg = round_trip(x, "fp16")
    assert back.dtype == torch.float32 and len(msg.data) == x.numel() * 2
    bound = torch.where(x.abs() >= 2**-14, x.abs() * 2**-11, torch.full_like(x, 2**-25))
    assert bool(((back - x).abs() <= bound).all())


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(1e-3, 1e4), st.floats(-5, 5))
def test_int8_within_half_a_step(seed: int, spread: float, shift: float) -> None:
    x = torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(seed)) * spread
    x = x + shift * spread
    back, msg = round_trip(x, "int8")
    assert msg.dtype == "int8" and len(msg.data) == x.numel()
    assert msg.HasField("scale") and -128 <= msg.zero_point <= 127
    # scale / 2 from rounding, plus float32 arithmetic in the decode.
    bound = msg.scale / 2 + 1e-6 * float(x.abs().max())
    assert float((back - x).abs().max()) <= bound


def test_int8_relu_output_and_constants() -> None:
    x = torch.relu(torch.randn(3, 10))
    back, msg = round_trip(x, "int8")
    assert msg.zero_point == -128  # the range starts at 0, so 0 is exact
    assert bool((back[x == 0] == 0).all())
    zeros, _ = round_trip(torch.zeros(2, 3), "int8")
    assert torch.equal(zeros, torch.zeros(2, 3))
    ones, _ = round_trip(torch.full((2, 3), 7.0), "int8")
    assert float((ones - 7.0).abs().max()) <= 7.0 / 255 / 2 + 1e-6


def test_encode_refuses_what_it_cannot_carry() -> None:
    with pytest.raises(codec.CodecError, match="exceeds fp16's range"):
        wire.encode_activation(torch.tensor([1e5]), "fp16")
    with pytest.raises(codec.CodecError, match="inf or nan"):
        wire.encode_activation(torch.tensor([1.0, float("inf")]), "int8")
    with pytest.raises(ConfigError, match="wire format must be one of fp32, fp16, int8"):
        wire.encode_activation(torch.zeros(1), "int4")


def test_decode_refuses_bad_quantization_fields() -> None:
    good = wire.encode_activation(torch.randn(2, 3), "int8")
    for field, value, message in [
        ("scale", 0.0, "scale must be finite and > 0"),
        ("scale", float("nan"), "scale must be finite and > 0"),
        ("zero_point", 300, "zero point must be in"),
    ]:
        bad = pb.Tensor()
        bad.CopyFrom(good)
        setattr(bad, field, value)
        with pytest.raises(codec.CodecError, match=message):
            wire.decode_activation(bad)
    scaled_float = codec.encode(torch.zeros(2, 3))
    scaled_float.scale = 0.5
    with pytest.raises(codec.CodecError, match="must be int8"):
        wire.decode_activation(scaled_float)
    with pytest.raises(codec.CodecError, match="expected a float32 tensor, got int32"):
        wire.decode_activation(codec.encode(torch.zeros(2, dtype=torch.int32)))
