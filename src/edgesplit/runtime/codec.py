"""Tensors to and from the wire: dtype name + shape + raw little-endian bytes.

Decoding is the one place where bytes from the network become a tensor, so it checks
everything before allocating: the dtype is on an allowlist, the shape is non-negative and
bounded, and the byte count is exactly ``numel * itemsize``. Nothing is unpickled and
``torch.load`` is never called on network data. The worker's side is numpy only (no torch).
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

import numpy as np
from google.protobuf.message import DecodeError

from edgesplit.errors import CodecError
from edgesplit.runtime.proto import edgesplit_pb2 as pb

if TYPE_CHECKING:  # the worker runs without torch; only the coordinator's helpers use it
    import torch

Buffer = bytes | bytearray | memoryview | np.ndarray
"""Tensor bytes: bytes-like, or a C-contiguous array whose memory they are."""


def _view(data: Buffer) -> memoryview:
    """``data`` as a flat byte view (no copy)."""
    view = data.data if isinstance(data, np.ndarray) else memoryview(data)
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


ITEMSIZE: dict[str, int] = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float64": 8,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}
"""Wire dtype names (torch's, without "torch.") with their item sizes: the only dtypes a peer
may send."""
DTYPES = ITEMSIZE
NUMPY: dict[str, np.dtype[Any]] = {name: np.dtype(name) for name in ITEMSIZE if name != "bfloat16"}
"""The numpy dtype of each wire dtype (numpy has no bfloat16; such tensors decode in torch)."""
_NUMPY_NAMES = {dtype: name for name, dtype in NUMPY.items()}

MAX_DIMS = 8
DEFAULT_MAX_ELEMENTS = 16 * 1024 * 1024
"""64 MiB of float32: the message size limit, so a larger claim is a lie or an attack."""


if sys.byteorder != "little":  # pragma: no cover - every supported board is little endian
    raise ImportError("edgesplit's tensor codec assumes a little-endian host")


def _torch_name(tensor: Any) -> str:
    name = str(tensor.dtype).removeprefix("torch.")
    if name not in ITEMSIZE:
        raise CodecError(
            f"cannot send dtype {tensor.dtype}; supported: {', '.join(sorted(ITEMSIZE))}"
        )
    return name


def encode_header(tensor: torch.Tensor | np.ndarray, out: pb.Tensor) -> np.ndarray:
    """Fill ``out``'s dtype and shape for ``tensor`` (numpy, or torch on any device and layout)
    and return a C-contiguous numpy array whose buffer is the tensor's wire bytes (the tensor's
    own memory when it is contiguous on the CPU already: no copy). ``out.data`` is left alone."""
    if isinstance(tensor, np.ndarray):
        name = _NUMPY_NAMES.get(tensor.dtype)
        if name is None:
            raise CodecError(
                f"cannot send dtype {tensor.dtype}; supported: {', '.join(sorted(NUMPY))}"
            )
        array = np.ascontiguousarray(tensor)
        shape: tuple[int, ...] = array.shape
    else:  # a torch tensor: viewing as bytes works for every dtype, bfloat16 included
        import torch

        name = _torch_name(tensor)
        t = tensor.detach().to("cpu").contiguous()
        shape = tuple(t.shape)
        array = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else np.empty(0, np.uint8)
    out.dtype = name
    del out.shape[:]
    out.shape.extend(shape)
    return array


def encode(tensor: torch.Tensor | np.ndarray, out: pb.Tensor | None = None) -> pb.Tensor:
    """Encode ``tensor`` (a numpy array, or a torch tensor on any device and layout) into a
    ``Tensor`` message, its bytes in ``data``.

    Pass ``out`` (e.g. ``msg.tensor``) to fill a message field in place without a copy of the
    message. Link streams send the bytes outside the message instead (:func:`pack`)."""
    msg = pb.Tensor() if out is None else out
    array = encode_header(tensor, msg)
    msg.data = array.tobytes() if array.size else b""
    return msg


def _cut(text: str, limit: int = 40) -> str:
    """A caller's string for an error message: at most ``limit`` characters of it."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def check(
    msg: pb.Tensor,
    max_elements: int,
    expect_dtype: str | None = None,
    data: Buffer | None = None,
) -> tuple[int, ...]:
    """The message's shape after checking dtype, shape and byte count; :class:`CodecError`.

    ``max_elements`` bounds the element count claimed by the shape, checked before any
    allocation. ``expect_dtype`` (a wire name, e.g. "float32") additionally requires one dtype.
    ``data`` is the tensor's bytes when they came outside the message (a link frame, see
    :func:`unpack`); None: ``msg.data``.
    """
    itemsize = ITEMSIZE.get(msg.dtype)
    if itemsize is None:
        raise CodecError(
            f"unsupported tensor dtype {_cut(msg.dtype)}; "
            f"expected one of {', '.join(sorted(ITEMSIZE))}"
        )
    if expect_dtype is not None and msg.dtype != expect_dtype:
        raise CodecError(f"expected a {expect_dtype} tensor, got {msg.dtype}")
    if len(msg.shape) > MAX_DIMS:
        raise CodecError(f"tensor has {len(msg.shape)} dimensions; at most {MAX_DIMS} are allowed")
    shape = tuple(int(d) for d in msg.shape)
    if any(d < 0 for d in shape):
        raise CodecError(f"tensor shape {list(shape)} has a negative dimension")
    # Every dimension is bounded too: [0, 2**40, 2**40] holds no elements, but numpy and the
    # engines overflow on its extents (issue #18, row 6).
    numel = math.prod(shape)
    extent = math.prod(max(d, 1) for d in shape)
    if numel > max_elements or extent > max_elements:
        raise CodecError(
            f"tensor shape {list(shape)} spans {extent} elements; at most {max_elements} "
            "are allowed (counting empty dimensions as 1)"
        )
    expected_bytes = numel * itemsize
    got = len(msg.data) if data is None else _view(data).nbytes
    if got != expected_bytes:
        raise CodecError(
            f"tensor {msg.dtype}{list(shape)} needs {expected_bytes} bytes "
            f"({numel} x {itemsize}), got {got}"
        )
    return shape


def decode_array(
    msg: pb.Tensor,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    expect_dtype: str | None = None,
) -> np.ndarray:
    """Decode a ``Tensor`` message into a new, writable numpy array; raise :class:`CodecError`
    (see :func:`check`). bfloat16 has no numpy dtype and is refused here."""
    check(msg, max_elements, expect_dtype)  # before the copy
    # A bytearray makes the buffer writable and owned by the array (the message is not aliased).
    return view_array(msg, bytearray(msg.data), max_elements, expect_dtype)


def view_array(
    msg: pb.Tensor,
    data: Buffer,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    expect_dtype: str | None = None,
) -> np.ndarray:
    """The tensor described by ``msg`` whose bytes are ``data``, as a numpy array that views
    ``data`` in place (no copy; read-only when ``data`` is); checked like :func:`check`."""
    shape = check(msg, max_elements, expect_dtype, data)
    dtype = NUMPY.get(msg.dtype)
    if dtype is None:
        raise CodecError(f"dtype {msg.dtype} has no numpy equivalent; send float32 or float16")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def decode(
    msg: pb.Tensor,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
    expect_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """:func:`decode_array` as a torch tensor (the coordinator's side; bfloat16 included)."""
    import torch

    expect = None if expect_dtype is None else str(expect_dtype).removeprefix("torch.")
    shape = check(msg, max_elements, expect)
    dtype = getattr(torch, msg.dtype)
    if math.prod(shape) == 0:
        return torch.empty(shape, dtype=dtype)
    flat = torch.frombuffer(bytearray(msg.data), dtype=torch.uint8)
    return flat.view(dtype).reshape(shape)


FRAME_HEADER_MAX_BYTES = 4 * 1024 * 1024
"""A link frame's MicroBatch header (request id, epoch, dtype, shape, hop timings): far more
than any pipeline's hops need."""


def pack(batch: pb.MicroBatch, data: Buffer) -> bytes:
    """A link-stream frame: the varint length of ``batch`` serialized (its tensor without
    ``data``), that, then the tensor's bytes. One copy of ``data``, straight from the array the
    engine produced; the receiver views the bytes in place (:func:`unpack`)."""
    header = batch.SerializeToString()
    return b"".join((_varint(len(header)), header, _view(data)))


def unpack(frame: bytes) -> tuple[pb.MicroBatch, memoryview]:
    """(header, tensor bytes) of a frame made by :func:`pack`; the bytes view ``frame`` (no
    copy). :class:`CodecError` for anything else."""
    view = memoryview(frame)
    length, start = _read_varint(view)
    if length > FRAME_HEADER_MAX_BYTES or start + length > len(view):
        raise CodecError(
            f"a link frame starts with its header length; {length} bytes do not fit in a "
            f"{len(view)}-byte frame (at most {FRAME_HEADER_MAX_BYTES})"
        )
    try:
        batch = pb.MicroBatch.FromString(bytes(view[start : start + length]))  # small
    except DecodeError as exc:
        raise CodecError(f"a link frame's header must be a serialized MicroBatch: {exc}") from None
    if batch.tensor.data:
        raise CodecError("a link frame carries the tensor's bytes after its header, not in it")
    return batch, view[start + length :]


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(view: memoryview) -> tuple[int, int]:
    """(value, bytes used) of the varint at the start of ``view`` (at most 5 bytes)."""
    value = 0
    for i in range(min(5, len(view))):
        byte = view[i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, i + 1
    raise CodecError("a link frame must start with its header length (a varint of <= 5 bytes)")


def nbytes(msg: pb.Tensor) -> int:
    """Payload size of an encoded tensor in bytes."""
    return len(msg.data)
