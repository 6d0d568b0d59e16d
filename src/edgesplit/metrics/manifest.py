"""``manifest.json``: how a run folder was made, written before the first image runs.

The exact command line, the resolved configuration (a :class:`RunConfig` as JSON, which
``edgesplit run --from`` and ``--resume`` read back), edgesplit's version and git commit (when
it runs from a checkout), the versions of Python and the libraries that change results, the
coordinator's and every worker's CPU (model, kind, cores), the OS, and a digest of the dataset
as loaded (images and labels, so two runs on different copies of the data can be told apart).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from edgesplit._version import __version__
from edgesplit.adapt.policy import AdaptPolicy
from edgesplit.engines import cpu
from edgesplit.errors import ConfigError
from edgesplit.runconfig import RunConfig

if TYPE_CHECKING:
    from edgesplit.model.data import ImageSet
    from edgesplit.runtime.coordinator import DeviceInfo

FILE = "manifest.json"
LIBRARIES = ("torch", "torchvision", "onnxruntime", "onnx", "grpcio", "protobuf", "numpy")
"""Libraries whose versions go into the manifest."""
FIELDS = (
    "command",
    "config",
    "edgesplit",
    "python",
    "libraries",
    "os",
    "coordinator",
    "devices",
    "dataset",
    "created",
)
"""Every top-level key of a manifest."""


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """``config`` as JSON-ready data (paths as strings, tuples as lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}


def config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    """The :class:`RunConfig` that :func:`config_to_dict` wrote; unknown keys are refused."""
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(
            f"the manifest's config has keys this edgesplit does not know: {', '.join(unknown)}"
        )
    values = dict(data)
    for name in ("checkpoint", "data_dir", "out"):
        if values.get(name) is not None:
            values[name] = Path(values[name])
    for name in ("inject", "cpus_each"):
        if values.get(name) is not None:
            values[name] = tuple(values[name])
    if isinstance(values.get("adapt_policy"), dict):
        values["adapt_policy"] = AdaptPolicy(**values["adapt_policy"])
    try:
        return RunConfig(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"the manifest's config does not make a run configuration: {exc}"
        ) from None


def git_commit() -> str | None:
    """The commit of the checkout edgesplit runs from (``+dirty`` with local changes), or None
    when it is an installed package."""
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "-uno"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty.strip() else "")


def dataset_digest(dataset: ImageSet, limit: int | None) -> dict[str, Any]:
    """sha256 of the images (and labels) the run uses, as loaded."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    images = hashlib.sha256(dataset.images[:count].contiguous().numpy().tobytes()).hexdigest()
    labels = None
    if dataset.labels is not None:
        labels = hashlib.sha256(dataset.labels[:count].contiguous().numpy().tobytes()).hexdigest()
    return {"name": dataset.name, "images": count, "images_sha256": images, "labels_sha256": labels}


def build(
    config: RunConfig,
    devices: Mapping[str, DeviceInfo],
    dataset: ImageSet,
    command: list[str] | None = None,
    emulated: bool = True,
) -> dict[str, Any]:
    """The manifest of a run that is about to start (see the module doc); ``emulated``: its
    cluster was started for it (else it came from a cluster file)."""
    return {
        "command": command if command is not None else list(sys.argv),
        "emulated": emulated,
        "config": config_to_dict(config),
        "edgesplit": {"version": __version__, "commit": git_commit()},
        "python": platform.python_version(),
        "libraries": {name: cpu.package_version(name) or None for name in LIBRARIES},
        "os": platform.platform(),
        "coordinator": {
            "cpu_model": cpu.cpu_model(),
            "cpu_kind": cpu.cpu_kind(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "devices": {
            name: {
                "address": info.address,
                "cpu_model": info.cpu_model,
                "cpu_kind": info.cpu_kind,
                "cores": info.cores or None,
                "threads": info.threads,
                "edgesplit": info.edgesplit_version,
                "python": info.python_version,
                "onnxruntime": info.onnxruntime_version or None,
            }
            for name, info in devices.items()
        },
        "dataset": dataset_digest(dataset, config.limit),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def resumed(earlier: Mapping[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a resumed run: the first run's, with each resumption's command line,
    time and devices appended under ``resumptions``."""
    made = dict(earlier)
    made["resumptions"] = [
        *earlier.get("resumptions", []),
        {key: now[key] for key in ("command", "created", "devices", "edgesplit")},
    ]
    return made


def write(folder: Path, manifest: Mapping[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path)
    return path


def read(folder: Path) -> dict[str, Any]:
    """``folder``'s manifest; :class:`ConfigError` naming what is wrong."""
    path = folder / FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{folder} has no {FILE}: expected a run folder written by edgesplit run"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is unreadable: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ConfigError(f"{path}: expected an object with a 'config' object")
    return data


def differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Where two manifests differ, one ``key: a -> b`` line each (``created`` and the command
    line left out: they always differ)."""
    lines = []
    for key in sorted(set(a) | set(b)):
        if not prefix and key in ("created", "command", "resumptions"):
            continue
        name = f"{prefix}{key}"
        left, right = a.get(key), b.get(key)
        if isinstance(left, Mapping) and isinstance(right, Mapping):
            lines.extend(differences(left, right, f"{name}."))
        elif left != right:
            lines.append(f"{name}: {json.dumps(left)} -> {json.dumps(right)}")
    return lines
