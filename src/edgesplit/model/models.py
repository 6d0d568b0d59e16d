"""The model zoo: torchvision models adapted to a dataset (classes, input channels), and a
user's own model given as ``path/to/file.py:callable`` (see :func:`load_user_model`).

``build(name, num_classes=10, in_channels=3, weights=None)`` returns an ``nn.Module`` in eval
mode. Weights are ``None`` (random, seeded by the caller), ``"imagenet"`` (only from the local
torchvision cache; nothing is downloaded unless ``allow_download=True``) or a path to a
safetensors checkpoint.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgesplit.errors import ModelError

if TYPE_CHECKING:  # torch and torchvision take seconds to import; the CLI's --help should not
    from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZooEntry:
    """How to build one torchvision model and where its ImageNet weights live."""

    builder: Callable[..., nn.Module]
    weights_enum: type
    default_input_size: int = 224


KNOWN_MODELS = (
    "efficientnet_b0",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "shufflenet_v2_x0_5",
    "squeezenet1_1",
)
DEFAULT_MODEL = "mobilenet_v2"


@functools.cache
def zoo() -> dict[str, ZooEntry]:
    """The torchvision builders, keyed by :data:`KNOWN_MODELS` (imports torchvision)."""
    import torchvision.models as tvm

    return {
        "mobilenet_v2": ZooEntry(tvm.mobilenet_v2, tvm.MobileNet_V2_Weights),
        "mobilenet_v3_small": ZooEntry(tvm.mobilenet_v3_small, tvm.MobileNet_V3_Small_Weights),
        "squeezenet1_1": ZooEntry(tvm.squeezenet1_1, tvm.SqueezeNet1_1_Weights),
        "shufflenet_v2_x0_5": ZooEntry(tvm.shufflenet_v2_x0_5, tvm.ShuffleNet_V2_X0_5_Weights),
        "efficientnet_b0": ZooEntry(tvm.efficientnet_b0, tvm.EfficientNet_B0_Weights),
    }


def known_models() -> list[str]:
    """Names accepted by :func:`build`, sorted."""
    return sorted(KNOWN_MODELS)


def _entry(name: str) -> ZooEntry:
    if name not in KNOWN_MODELS:
        raise ModelError(
            f"unknown model {name!r}; expected one of {', '.join(known_models())}, "
            "a path/to/file.py:callable returning an nn.Module, or a .onnx file"
        )
    return zoo()[name]


def is_user_model(name: str) -> bool:
    """Whether ``name`` is ``path/to/file.py:callable`` (a user's own model)."""
    path, sep, attr = name.rpartition(":")
    return bool(sep) and path.endswith(".py") and attr.isidentifier()


def is_onnx_model(name: str) -> bool:
    """Whether ``name`` is a path to an ONNX file."""
    return name.lower().endswith(".onnx")


def load_user_model(spec: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Call ``callable`` of ``path/to/file.py:callable`` (a function or class) and return the
    ``nn.Module`` it gives. ``num_classes`` and ``in_channels`` are passed when it takes
    parameters of those names (or ``**kwargs``). The file runs on this machine only (the
    coordinator); workers receive the exported ONNX model, never the code."""
    import importlib.util
    import inspect
    import sys

    from torch import nn

    file, _, attr = spec.rpartition(":")
    path = Path(file).expanduser()
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist (from --model {spec})")
    module_name = f"edgesplit_user_model_{abs(hash(str(path.resolve())))}"
    loader = importlib.util.spec_from_file_location(module_name, path)
    if loader is None or loader.loader is None:
        raise ModelError(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(loader)
    sys.modules[module_name] = module
    try:
        loader.loader.exec_module(module)
    except Exception as exc:  # the user's file may raise anything at import
        raise ModelError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"{path} has no callable {attr!r}")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {
        key: value
        for key, value in (("num_classes", num_classes), ("in_channels", in_channels))
        if takes_any or key in params
    }
    try:
        model = factory(**kwargs)
    except Exception as exc:
        raise ModelError(f"{spec}({kwargs}) failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec} returned {type(model).__name__}, expected a torch nn.Module")
    return model.eval()


def imagenet_weights_path(name: str) -> Path:
    """Where torchvision's cache keeps the ImageNet weights of ``name``."""
    import torch

    weights = _entry(name).weights_enum.DEFAULT  # type: ignore[attr-defined]
    filename = weights.url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _load_imagenet(name: str, model: nn.Module, allow_download: bool) -> None:
    import torch

    path = imagenet_weights_path(name)
    if not path.exists():
        if not allow_download:
            raise ModelError(
                f"ImageNet weights for {name} not found at {path}; put the file there "
                "or pass --download to fetch it"
            )
        weights = _entry(name).weights_enum.DEFAULT  # type: ignore[attr-defined]
        weights.get_state_dict(progress=True)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)


def _replace_head(model: nn.Module, num_classes: int) -> None:
    """Swap the ImageNet classifier for one with ``num_classes`` outputs."""
    import torchvision
    from torch import nn

    if isinstance(model, torchvision.models.SqueezeNet):
        conv = model.classifier[1]
        assert isinstance(conv, nn.Conv2d)
        model.classifier[1] = nn.Conv2d(conv.in_channels, num_classes, kernel_size=1)
        return
    if isinstance(model, torchvision.models.ShuffleNetV2):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        return
    classifier = model.classifier
    assert isinstance(classifier, nn.Sequential)
    last = classifier[-1]
    assert isinstance(last, nn.Linear)
    classifier[-1] = nn.Linear(last.in_features, num_classes)


def _replace_stem(model: nn.Module, in_channels: int) -> None:
    """Swap the first convolution for one that takes ``in_channels`` channels."""
    from torch import nn

    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                new = nn.Conv2d(
                    in_channels,
                    child.out_channels,
                    kernel_size=child.kernel_size,  # type: ignore[arg-type]
                    stride=child.stride,  # type: ignore[arg-type]
                    padding=child.padding,  # type: ignore[arg-type]
                    bias=child.bias is not None,
                )
                setattr(parent, child_name, new)
                return


def build(
    name: str,
    num_classes: int = 10,
    in_channels: int = 3,
    weights: str | Path | None = None,
    allow_download: bool = False,
) -> nn.Module:
    """Build zoo model ``name`` for ``num_classes`` classes and ``in_channels`` input channels.

    ``weights``: ``None`` for random initialisation, ``"imagenet"`` for torchvision's ImageNet
    weights from the local cache (the head is replaced afterwards, so only the backbone is
    pretrained), or a path to a safetensors checkpoint (see :mod:`edgesplit.model.checkpoints`).
    ``name`` may also be ``path/to/file.py:callable`` (:func:`load_user_model`).
    """
    if is_user_model(name):
        if weights == "imagenet":
            raise ModelError(f"ImageNet weights exist for zoo models only, not {name}")
        model = load_user_model(name, num_classes, in_channels)
        if weights is not None:
            load_checkpoint_into(model, Path(weights))
        return model.eval()
    entry = _entry(name)
    if num_classes < 1:
        raise ModelError(f"num_classes must be >= 1, got {num_classes}")
    if in_channels < 1:
        raise ModelError(f"in_channels must be >= 1, got {in_channels}")
    model = entry.builder(weights=None)
    if weights == "imagenet":
        _load_imagenet(name, model, allow_download)
    if num_classes != 1000:
        _replace_head(model, num_classes)
    if in_channels != 3:
        _replace_stem(model, in_channels)
    if weights is not None and weights != "imagenet":
        load_checkpoint_into(model, Path(weights))
    return model.eval()


def load_checkpoint_into(model: nn.Module, path: Path) -> None:
    """Load a safetensors state dict into ``model``; a mismatch is a :class:`ModelError`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.exists():
        raise ModelError(f"checkpoint {path} does not exist")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"checkpoint {path} is not a readable safetensors file: {exc}") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelError(
            f"checkpoint {path} does not match the model: "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ModelError(
                f"checkpoint {path}: {key} has shape {list(tensor.shape)}, "
                f"the model expects {list(expected[key].shape)}"
            )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def state_dict_sha256(model: nn.Module) -> str:
    """A stable digest of a model's weights (names, dtypes, shapes and bytes)."""
    import torch

    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        digest.update(key.encode())
        digest.update(str(t.dtype).encode())
        digest.update(str(list(t.shape)).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
