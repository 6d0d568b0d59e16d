"""Activation wire formats: how a stage's float32 output travels to the next hop.

* ``fp32`` — exact (the default).
* ``fp16`` — half the bytes. Error bound per element: ``|x - x'| <= 2**-11 * |x|`` for
  ``|x| >= 2**-14``, and ``<= 2**-25`` below (fp16's subnormal spacing, halved). Values beyond
  fp16's range (65504) are refused rather than sent as infinity.
* ``int8`` — a quarter of the bytes: per-tensor affine quantization with the scale and zero point
  in the message, ``x' = (q - zero_point) * scale``. ``scale = (max - min) / 255`` over the
  tensor (0 is always inside the range), so ``|x - x'| <= scale / 2`` per element.

Decoding accepts any of the three, so a receiver never needs to know what the sender chose; the
result is float32, except uint8 images on the first hop, which stay uint8 for the stage that
starts with their preprocessing (:mod:`edgesplit.shared.imagespec`). Everything from the network is
checked by :mod:`codec` first.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from edgesplit.errors import ConfigError
from edgesplit.runtime import codec
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.shared.names import WIRE_FORMATS, check_wire

if TYPE_CHECKING:  # workers run without torch; torch tensors come only from the coordinator
    import torch

FP16_MAX = 65504.0
_QMIN, _QMAX = -128, 127


def _as_float32(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x, dtype=np.float32)
    import torch

    return x.detach().to("cpu", torch.float32).contiguous().numpy()


def int8_params(x: torch.Tensor | np.ndarray) -> tuple[float, int]:
    """Per-tensor affine (scale, zero point) covering ``[min(x, 0), max(x, 0)]`` in int8."""
    a = _as_float32(x)
    low = min(float(a.min()), 0.0) if a.size else 0.0
    high = max(float(a.max()), 0.0) if a.size else 0.0
    if not (math.isfinite(low) and math.isfinite(high)):
        raise codec.CodecError("cannot send a tensor with inf or nan in int8 wire format")
    scale = (high - low) / (_QMAX - _QMIN)
    if scale == 0.0:
        return 1.0, 0
    zero_point = round(_QMIN - low / scale)
    return scale, max(_QMIN, min(_QMAX, zero_point))


def encode_activation(
    x: torch.Tensor | np.ndarray, wire: str, out: pb.Tensor | None = None
) -> pb.Tensor:
    """Encode a float activation (numpy or torch) in format ``wire`` (see the module doc)
    into ``out``, its bytes in ``data``."""
    msg = pb.Tensor() if out is None else out
    payload = activation_payload(x, wire, msg)
    msg.data = payload.tobytes() if payload.size else b""
    return msg


def activation_payload(x: torch.Tensor | np.ndarray, wire: str, out: pb.Tensor) -> np.ndarray:
    """Fill ``out``'s dtype, shape (and int8 scale and zero point) for ``x`` in format ``wire``
    and return the array whose buffer is the wire bytes: ``x`` itself for fp32 (no copy), the
    converted array otherwise. ``out.data`` is left alone (link frames carry the bytes after
    the message, :func:`codec.pack`)."""
    a = _as_float32(x)
    if wire == "fp32":
        return codec.encode_header(a, out)
    if wire == "fp16":
        peak = float(np.abs(a).max()) if a.size else 0.0
        if peak > FP16_MAX:
            raise codec.CodecError(
                f"activation magnitude {peak:g} exceeds fp16's range ({FP16_MAX:g}); "
                "use the fp32 or int8 wire format"
            )
        return codec.encode_header(a.astype(np.float16), out)
    if wire == "int8":
        scale, zero_point = int8_params(a)
        q = np.round(a / np.float32(scale)) + np.float32(zero_point)
        payload = codec.encode_header(np.clip(q, _QMIN, _QMAX).astype(np.int8), out)
        out.scale = scale
        out.zero_point = zero_point
        return payload
    raise ConfigError(f"wire format must be one of {', '.join(WIRE_FORMATS)}, got {wire!r}")


def decode_activation_array(
    msg: pb.Tensor, max_elements: int = codec.DEFAULT_MAX_ELEMENTS, data: codec.Buffer | None = None
) -> np.ndarray:
    """A float32 array from a message in any wire format (uint8 images stay uint8);
    :class:`codec.CodecError` if the message is malformed (also a bad scale or zero point).

    ``data``: the tensor's bytes when they came outside the message (a link frame). An fp32
    tensor then comes back as a read-only view of them (no copy); without ``data`` every array
    is a new, writable one."""
    if data is None:
        data = bytearray(msg.data)  # writable, and not aliasing the message
    if msg.HasField("scale"):
        if msg.dtype != "int8":
            raise codec.CodecError(f"a quantized tensor must be int8, got {msg.dtype}")
        if not (math.isfinite(msg.scale) and msg.scale > 0):
            raise codec.CodecError(f"int8 scale must be finite and > 0, got {msg.scale}")
        if not _QMIN <= msg.zero_point <= _QMAX:
            raise codec.CodecError(
                f"int8 zero point must be in [{_QMIN}, {_QMAX}], got {msg.zero_point}"
            )
        q = codec.view_array(msg, data, max_elements=max_elements, expect_dtype="int8")
        scale = np.float32(msg.scale)
        return (q.astype(np.float32) - np.float32(msg.zero_point)) * scale
    if msg.dtype == "float16":
        return codec.view_array(msg, data, max_elements=max_elements).astype(np.float32)
    if msg.dtype == "uint8":  # images on the first hop; the stage checks it takes them
        return codec.view_array(msg, data, max_elements=max_elements)
    return codec.view_array(msg, data, max_elements=max_elements, expect_dtype="float32")


def decode_activation(
    msg: pb.Tensor, max_elements: int = codec.DEFAULT_MAX_ELEMENTS, data: codec.Buffer | None = None
) -> torch.Tensor:
    """:func:`decode_activation_array` as a writable torch tensor (the coordinator's side)."""
    import torch

    array = decode_activation_array(msg, max_elements, data)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def wire_bytes_per_element(wire: str) -> int:
    """Payload bytes of one activation element in format ``wire`` (for transfer estimates)."""
    return {"fp32": 4, "fp16": 2, "int8": 1}[check_wire(wire)]
