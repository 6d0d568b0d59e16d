"""The preprocessing of :class:`~edgesplit.shared.imagespec.ImageSpec` as a torch module: the one
definition used by training, evaluation, the coordinator's reference and stage 0's graph.

Stage 0 of a traced model starts with these operations (:func:`edgesplit.model.graph.trace` with a
spec), so the ONNX model a worker runs takes uint8 images; the same module on the same uint8
images gives the same floats bit for bit in torch wherever it runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgesplit.shared.imagespec import ImageSpec


def spec_for(
    in_shape: tuple[int, ...],
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    channels: int = 3,
) -> ImageSpec:
    """The spec of images of per-sample shape ``in_shape`` for a model taking ``channels`` x
    ``size`` x ``size``."""
    c, h, w = (int(d) for d in in_shape)
    return ImageSpec((c, h, w), size, channels, tuple(mean), tuple(std))


class Preprocess(nn.Module):
    """uint8 ``[N, *spec.in_shape]`` -> normalised float32 ``[N, *spec.model_shape]``.

    Every branch is decided here from the spec, so torch.fx traces it (no control flow on
    tensors). The result of the channel expansion is a view; the first layer reads it."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, spec: ImageSpec) -> None:
        super().__init__()
        self.spec = spec
        c = spec.in_shape[0]
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, c, 1, 1))
        self._resize = spec.in_shape[1:] != (spec.size, spec.size)
        self._expand = c != spec.channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32).div(255.0)
        if self._resize:
            size = (self.spec.size, self.spec.size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        if self._expand:
            x = x.expand(-1, self.spec.channels, -1, -1)
        return x
