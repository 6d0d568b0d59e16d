"""Uploaded images to model inputs, with limits that name the problem.

An upload is JPEG or PNG bytes. Each image is checked before it is decoded (size in bytes, then
the pixel count read from its header, so a small file that would decode to gigabytes is refused
cheaply), converted to the dataset's channels (grayscale for Fashion-MNIST), then preprocessed
exactly as ``edgesplit run`` preprocesses the test set (:func:`edgesplit.model.data.preprocess`:
bilinear resize to the model's input size, per-dataset normalisation). A Fashion-MNIST test image
sent as PNG therefore reaches the model as the same tensor a run gives it.

When stage 0 starts with the preprocessing (issue #19: the first hop carries the dataset's uint8
images at their native size), an image is sent as uint8 instead; one of another size is first
resized to the native size (bilinear, rounded to uint8), so it reaches the model through one
more resize than before, while an image of the dataset's own size is unchanged.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from edgesplit.errors import RequestError
from edgesplit.model import data

FORMATS = ("JPEG", "PNG")


@dataclass(frozen=True)
class ImageLimits:
    """What one request may carry (named defaults)."""

    max_images: int = 256
    """Images in one request at most."""
    max_image_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 16 * 1024 * 1024
    """Width x height of one image at most (checked from the header, before decoding)."""

    @property
    def max_request_bytes(self) -> int:
        """The body size above which a request is refused before it is read (413)."""
        return min(self.max_images * self.max_image_bytes, 256 * 1024 * 1024) + 1024 * 1024


def decode(blob: bytes, index: int, channels: int, limits: ImageLimits) -> torch.Tensor:
    """One image's bytes -> uint8 (channels, H, W); :class:`RequestError` naming the problem."""
    from PIL import Image, UnidentifiedImageError

    where = f"image {index}"
    if not blob:
        raise RequestError(f"{where} is empty; expected JPEG or PNG bytes", status=400)
    if len(blob) > limits.max_image_bytes:
        raise RequestError(
            f"{where} is {len(blob)} bytes; at most {limits.max_image_bytes} bytes are accepted",
            status=413,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(blob))
            if image.format not in FORMATS:
                raise RequestError(f"{where} is {image.format}; expected JPEG or PNG", status=415)
            width, height = image.size
            if width * height > limits.max_pixels:
                raise RequestError(
                    f"{where} is {width}x{height} = {width * height} pixels; at most "
                    f"{limits.max_pixels} pixels are accepted",
                    status=413,
                )
            converted = image.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RequestError(
            f"{where} is not an image (not JPEG or PNG, or damaged)", status=415
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt image data
        raise RequestError(f"{where} cannot be decoded: {exc}", status=415) from None
    array = np.array(converted, dtype=np.uint8)  # a writable copy
    array = array[None, :, :] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def model_inputs(
    blobs: Sequence[bytes],
    info: data.DatasetInfo,
    input_size: int,
    limits: ImageLimits,
    raw: bool = False,
) -> torch.Tensor:
    """Every image of one request -> float32 (n, 3, input_size, input_size), or with ``raw``
    uint8 (n, channels, native size, native size) (see the module doc)."""
    if not blobs:
        raise RequestError("the request holds no image; expected at least 1", status=400)
    if len(blobs) > limits.max_images:
        raise RequestError(
            f"the request holds {len(blobs)} images; at most {limits.max_images} per request",
            status=413,
        )
    rows = []
    for index, blob in enumerate(blobs):
        image = decode(blob, index, info.channels, limits)
        if raw:
            rows.append(native(image.unsqueeze(0), info.native_size))
        else:
            rows.append(data.preprocess(image.unsqueeze(0), info, input_size, 3))
    return torch.cat(rows)


def native(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) at ``size`` x ``size``: as they are at that size, else resized
    bilinearly and rounded."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    x = F.interpolate(images.to(torch.float32), size=(size, size), mode="bilinear")
    return x.round_().clamp_(0, 255).to(torch.uint8)


def encode_png(image: torch.Tensor | np.ndarray) -> bytes:
    """uint8 (C, H, W) or (H, W) -> PNG bytes (lossless: decoding gives the same pixels)."""
    from PIL import Image

    array = image.numpy() if isinstance(image, torch.Tensor) else image
    if array.ndim == 3:
        array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()
