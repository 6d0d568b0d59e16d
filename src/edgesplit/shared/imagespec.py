"""What stage 0 of a compiled model does to the images it receives (issue #19, item 1).

The coordinator sends the dataset's uint8 images at their native size (``in_shape``, e.g.
``[1, 28, 28]`` for Fashion-MNIST: 784 bytes an image); the first operations of stage 0's
graph turn them into the model's input: float in [0, 1], bilinear resize to ``size``, per
channel ``(x - mean) / std``, grayscale repeated to ``channels``. The native size is sent
rather than the model's input size because it is the cheapest first hop (at 224 px, 784 B
against 150 KB of uint8 or 602 KB of float32 per image) and because resizing the floats
after the hop is the very computation training and ``edgesplit eval`` do, so nothing is
rounded on the way (exactness, see :mod:`edgesplit.model.preprocessing`).

This module is plain data (no torch): the spec rides in the compiled ONNX model's metadata
(:data:`META_KEY`) so a worker that builds the torch reference adds the same operations, and is
checked like anything from the network.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from edgesplit.errors import ModelError

META_KEY = "edgesplit.preprocess"
MAX_SIDE = 4096
MAX_CHANNELS = 64


@dataclass(frozen=True)
class ImageSpec:
    """uint8 images ``[N, *in_shape]`` -> float32 ``[N, channels, size, size]``."""

    in_shape: tuple[int, int, int]
    """Per-sample shape of the uint8 images sent to stage 0: (channels, height, width)."""
    size: int
    """The model's input height and width."""
    channels: int
    """The model's input channels (1-channel images are repeated to this many)."""
    mean: tuple[float, ...]
    std: tuple[float, ...]
    """Per channel of ``in_shape``, on the [0, 1] scale."""

    def __post_init__(self) -> None:
        c, h, w = self.in_shape
        if not (0 < c <= MAX_CHANNELS and 0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
            raise ModelError(
                f"image shape must be [channels <= {MAX_CHANNELS}, height, width <= {MAX_SIDE}],"
                f" got {list(self.in_shape)}"
            )
        if not (0 < self.size <= MAX_SIDE and 0 < self.channels <= MAX_CHANNELS):
            raise ModelError(
                f"model input must be {MAX_CHANNELS} channels and {MAX_SIDE} px at most, got "
                f"{self.channels} channels at {self.size} px"
            )
        if len(self.mean) != c or len(self.std) != c:
            raise ModelError(
                f"mean and std need one value per image channel ({c}), got "
                f"{len(self.mean)} and {len(self.std)}"
            )
        if not all(math.isfinite(m) for m in self.mean) or not all(
            math.isfinite(s) and s > 0 for s in self.std
        ):
            raise ModelError(f"mean must be finite and std > 0, got {self.mean}, {self.std}")
        if c != self.channels and c != 1:
            raise ModelError(
                f"images have {c} channels; the model expects {self.channels} "
                "(only grayscale is expanded automatically)"
            )

    @property
    def model_shape(self) -> tuple[int, int, int]:
        """Per-sample shape of the float tensor the model itself sees."""
        return (self.channels, self.size, self.size)

    @property
    def bytes_per_image(self) -> int:
        """Bytes of one image on the first hop."""
        return math.prod(self.in_shape)

    def to_json(self) -> str:
        return json.dumps(
            {
                "in_shape": list(self.in_shape),
                "size": self.size,
                "channels": self.channels,
                "mean": list(self.mean),
                "std": list(self.std),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> ImageSpec:
        """Parse :meth:`to_json` output; anything else is a :class:`ModelError` saying what."""
        try:
            raw = json.loads(text)
            c, h, w = (_int(d) for d in raw["in_shape"])
            return cls(
                in_shape=(c, h, w),
                size=_int(raw["size"]),
                channels=_int(raw["channels"]),
                mean=tuple(_float(m) for m in raw["mean"][:MAX_CHANNELS]),
                std=tuple(_float(s) for s in raw["std"][:MAX_CHANNELS]),
            )
        except (KeyError, TypeError, ValueError, ModelError) as exc:
            raise ModelError(
                f"the model's {META_KEY} metadata is malformed: {type(exc).__name__}: {exc}"
            ) from None


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ModelError(f"expected an integer, got {value!r:.40}")
    return value


def _float(value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ModelError(f"expected a number, got {value!r:.40}")
    return float(value)
