"""Tensors to and from the wire: dtype name + shape + raw little-endian bytes.

Decoding is the one place where bytes from the network become a tensor, so it checks
everything before allocating: the dtype is on an allowlist, the shape is non-negative and
bounded, and the byte count is exactly ``numel * itemsize``. Nothing is unpickled and
``torch.load`` is never called on network data.
"""

from __future__ import annotations

import math
import sys

import torch

from edgesplit.errors import EdgesplitError
from edgesplit.runtime.proto import edgesplit_pb2 as pb

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
"""Wire dtype names and the only dtypes a peer may send."""

_NAMES = {dtype: name for name, dtype in DTYPES.items()}

MAX_DIMS = 8
DEFAULT_MAX_ELEMENTS = 16 * 1024 * 1024
"""64 MiB of float32: the message size limit, so a larger claim is a lie or an attack."""


class CodecError(EdgesplitError):
    """A tensor message is malformed: unknown dtype, bad shape, or wrong byte count."""


if sys.byteorder != "little":  # pragma: no cover - every supported board is little endian
    raise ImportError("edgesplit's tensor codec assumes a little-endian host")


def encode(tensor: torch.Tensor, out: pb.Tensor | None = None) -> pb.Tensor:
    """Encode ``tensor`` (any device, any layout) into a ``Tensor`` message.

    Pass ``out`` (e.g. ``msg.tensor``) to fill a message field in place without a copy of the
    message.
    """
    name = _NAMES.get(tensor.dtype)
    if name is None:
        raise CodecError(
            f"cannot send dtype {tensor.dtype}; supported: {', '.join(sorted(DTYPES))}"
        )
    t = tensor.detach().to("cpu").contiguous()
    msg = pb.Tensor() if out is None else out
    msg.dtype = name
    del msg.shape[:]
    msg.shape.extend(t.shape)
    # Viewing as bytes works for every dtype, including bfloat16, which numpy lacks.
    msg.data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return msg


def decode(
    msg: pb.Tensor,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    expect_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Decode a ``Tensor`` message into a new, writable CPU tensor; raise :class:`CodecError`.

    ``max_elements`` bounds the element count claimed by the shape, checked before any
    allocation. ``expect_dtype`` additionally requires one dtype (e.g. a stage's input).
    """
    dtype = DTYPES.get(msg.dtype)
    if dtype is None:
        raise CodecError(
            f"unsupported tensor dtype {msg.dtype!r}; expected one of {', '.join(sorted(DTYPES))}"
        )
    if expect_dtype is not None and dtype != expect_dtype:
        raise CodecError(f"expected a {_NAMES[expect_dtype]} tensor, got {msg.dtype}")
    shape = tuple(int(d) for d in msg.shape)
    if len(shape) > MAX_DIMS:
        raise CodecError(f"tensor has {len(shape)} dimensions; at most {MAX_DIMS} are allowed")
    if any(d < 0 for d in shape):
        raise CodecError(f"tensor shape {list(shape)} has a negative dimension")
    numel = math.prod(shape)
    if numel > max_elements:
        raise CodecError(
            f"tensor shape {list(shape)} has {numel} elements; at most {max_elements} are allowed"
        )
    itemsize = torch.empty((), dtype=dtype).element_size()
    expected_bytes = numel * itemsize
    if len(msg.data) != expected_bytes:
        raise CodecError(
            f"tensor {msg.dtype}{list(shape)} needs {expected_bytes} bytes "
            f"({numel} x {itemsize}), got {len(msg.data)}"
        )
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    # bytearray makes the buffer writable and owned by the tensor (frombuffer would warn on
    # read-only bytes and alias the message).
    flat = torch.frombuffer(bytearray(msg.data), dtype=torch.uint8)
    return flat.view(dtype).reshape(shape)


def nbytes(msg: pb.Tensor) -> int:
    """Payload size of an encoded tensor in bytes."""
    return len(msg.data)
