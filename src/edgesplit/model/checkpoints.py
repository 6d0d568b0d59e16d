"""Checkpoints: a safetensors file plus a JSON sidecar, and the shipped ``checkpoints/`` folder.

The sidecar (``<name>.json`` beside ``<name>.safetensors``) records the model, dataset, input size,
classes, epochs, test accuracy, the file's sha256 and the exact command that made it. The same
identity (model, dataset, classes, input size) is also written into the safetensors header, so a
file that lost its sidecar is still checked. :func:`load` refuses a file whose sha256, model or
class count does not match, with an error that says which.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from edgesplit.errors import ModelError
from edgesplit.model import models

SHIPPED_DIR = (Path(__file__).parent.parent / "_shipped").resolve()
"""The shipped checkpoints: package data (``src/edgesplit/_shipped`` links to the repository's
``checkpoints/``; a wheel carries the files), so any install finds them (issue #20)."""


@dataclass(frozen=True)
class CheckpointInfo:
    model: str
    dataset: str
    input_size: int
    num_classes: int
    in_channels: int
    epochs: int
    test_accuracy: float | None
    sha256: str
    dtype: str
    command: str = ""
    seed: int | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def _stored_state(model: nn.Module, half: bool) -> dict[str, torch.Tensor]:
    """The tensors as written to disk: contiguous, floating ones in fp16 when ``half``."""
    state = {}
    for key, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        if half and t.is_floating_point():
            t = t.to(torch.float16)
        state[key] = t
    return state


def as_stored(model: nn.Module, half: bool = True) -> nn.Module:
    """A copy of ``model`` with exactly the weights :func:`load` will give back after
    :func:`save` (fp16-rounded when ``half``), so accuracy can be measured before writing."""
    import copy

    stored = copy.deepcopy(model)
    stored.load_state_dict(
        {
            k: v.to(t.dtype)
            for (k, v), t in zip(
                _stored_state(model, half).items(), model.state_dict().values(), strict=True
            )
        }
    )
    return stored.eval()


def save(
    model: nn.Module,
    path: Path,
    *,
    model_name: str,
    dataset: str,
    input_size: int,
    num_classes: int,
    in_channels: int = 3,
    epochs: int = 0,
    test_accuracy: float | None = None,
    half: bool = True,
    command: str = "",
    seed: int | None = None,
    extra: dict[str, object] | None = None,
) -> CheckpointInfo:
    """Write ``model``'s weights (floating tensors in fp16 when ``half``) and the sidecar."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = _stored_state(model, half)
    header = {
        "model": model_name,
        "dataset": dataset,
        "num_classes": str(num_classes),
        "in_channels": str(in_channels),
        "input_size": str(input_size),
    }
    save_file(state, str(path), metadata=header)
    info = CheckpointInfo(
        model=model_name,
        dataset=dataset,
        input_size=input_size,
        num_classes=num_classes,
        in_channels=in_channels,
        epochs=epochs,
        test_accuracy=test_accuracy,
        sha256=file_sha256(path),
        dtype="float16" if half else "float32",
        command=command,
        seed=seed,
        extra=extra or {},
    )
    sidecar_path(path).write_text(info.to_json())
    return info


def read_info(path: Path) -> CheckpointInfo:
    """The sidecar of checkpoint ``path``, validated against the file's sha256."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"checkpoint {path} does not exist")
    side = sidecar_path(path)
    try:
        doc = json.loads(side.read_text())
        info = CheckpointInfo(**doc)
    except FileNotFoundError:
        raise ModelError(
            f"checkpoint {path} has no sidecar {side}; expected the JSON file written with it"
        ) from None
    except (json.JSONDecodeError, TypeError) as exc:
        raise ModelError(f"checkpoint sidecar {side} is malformed: {exc}") from exc
    actual = file_sha256(path)
    if actual != info.sha256:
        raise ModelError(
            f"checkpoint {path} is corrupt or was changed: sha256 {actual[:16]}..., "
            f"its sidecar expects {info.sha256[:16]}..."
        )
    return info


def _header(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"checkpoint {path} is not a readable safetensors file: {exc}") from exc


def load(
    path: Path, model_name: str | None = None, num_classes: int | None = None
) -> tuple[nn.Module, CheckpointInfo]:
    """Build the checkpoint's model and load its weights (as float32).

    ``model_name`` / ``num_classes``, when given, must match the checkpoint."""
    info = read_info(path)
    header = _header(path)
    for key, expected in (
        ("model", info.model),
        ("num_classes", str(info.num_classes)),
        ("input_size", str(info.input_size)),
    ):
        if key in header and header[key] != expected:
            raise ModelError(
                f"checkpoint {path}: its header says {key}={header[key]}, "
                f"its sidecar says {key}={expected}"
            )
    if model_name is not None and model_name != info.model:
        raise ModelError(f"checkpoint {path} holds a {info.model}, not a {model_name}")
    if num_classes is not None and num_classes != info.num_classes:
        raise ModelError(
            f"checkpoint {path} has {info.num_classes} classes, the run expects {num_classes}"
        )
    model = models.build(info.model, num_classes=info.num_classes, in_channels=info.in_channels)
    models.load_checkpoint_into(model, Path(path))
    return model.eval(), info


def update_manifest(folder: Path) -> Path:
    """Rewrite ``folder/MANIFEST.json`` from the sidecars of the checkpoints in ``folder``."""
    entries = []
    for weights in sorted(Path(folder).glob("*.safetensors")):
        info = read_info(weights)
        entries.append(
            {
                "file": weights.name,
                "model": info.model,
                "dataset": info.dataset,
                "input_size": info.input_size,
                "num_classes": info.num_classes,
                "test_accuracy": info.test_accuracy,
                "epochs": info.epochs,
                "dtype": info.dtype,
                "size_bytes": weights.stat().st_size,
                "sha256": info.sha256,
                "command": info.command,
            }
        )
    manifest = Path(folder) / "MANIFEST.json"
    manifest.write_text(json.dumps({"checkpoints": entries}, indent=2) + "\n")
    return manifest


def shipped(model_name: str, dataset: str = "fashion-mnist") -> Path:
    """The shipped checkpoint for ``model_name`` on ``dataset`` (from ``MANIFEST.json``)."""
    manifest = SHIPPED_DIR / "MANIFEST.json"
    try:
        entries = json.loads(manifest.read_text())["checkpoints"]
    except FileNotFoundError:
        raise ModelError(f"no shipped checkpoints: {manifest} is missing") from None
    for entry in entries:
        if entry["model"] == model_name and entry["dataset"] == dataset:
            return SHIPPED_DIR / entry["file"]
    have = ", ".join(f"{e['model']}/{e['dataset']}" for e in entries)
    raise ModelError(f"no shipped checkpoint for {model_name} on {dataset}; shipped: {have}")
