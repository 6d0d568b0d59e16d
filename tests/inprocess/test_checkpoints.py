"""Checkpoints: what is stored is what is loaded, and a wrong file is refused with a reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgesplit.errors import ModelError
from edgesplit.model import checkpoints, models
from tests.unit.test_data import make_mnist


@pytest.fixture
def saved(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = models.build("shufflenet_v2_x0_5", num_classes=10)
    path = tmp_path / "m.safetensors"
    checkpoints.save(
        model, path, model_name="shufflenet_v2_x0_5", dataset="fashion-mnist",
        input_size=32, num_classes=10, epochs=1, test_accuracy=0.5,
    )  # fmt: skip
    return model, path


def test_as_stored_is_exactly_what_load_returns(saved: tuple[torch.nn.Module, Path]) -> None:
    model, path = saved
    loaded, info = checkpoints.load(path, model_name="shufflenet_v2_x0_5", num_classes=10)
    stored = checkpoints.as_stored(model, half=True)
    assert models.state_dict_sha256(loaded) == models.state_dict_sha256(stored)
    assert models.state_dict_sha256(loaded) != models.state_dict_sha256(model)  # fp16-rounded
    assert info.dtype == "float16" and info.test_accuracy == 0.5 and info.input_size == 32
    assert info.sha256 == checkpoints.file_sha256(path)


def test_changed_file_is_refused(saved: tuple[torch.nn.Module, Path]) -> None:
    _, path = saved
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="corrupt or was changed"):
        checkpoints.load(path)


def test_wrong_model_or_class_count_is_refused(saved: tuple[torch.nn.Module, Path]) -> None:
    _, path = saved
    with pytest.raises(ModelError, match="holds a shufflenet_v2_x0_5, not a mobilenet_v2"):
        checkpoints.load(path, model_name="mobilenet_v2")
    with pytest.raises(ModelError, match="has 10 classes, the run expects 100"):
        checkpoints.load(path, num_classes=100)


def test_sidecar_disagreeing_with_header_is_refused(saved: tuple[torch.nn.Module, Path]) -> None:
    _, path = saved
    side = checkpoints.sidecar_path(path)
    doc = json.loads(side.read_text())
    doc["model"] = "mobilenet_v2"
    side.write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="header says model=shufflenet_v2_x0_5"):
        checkpoints.load(path)


def test_missing_or_malformed_sidecar(saved: tuple[torch.nn.Module, Path]) -> None:
    _, path = saved
    side = checkpoints.sidecar_path(path)
    side.write_text("{not json")
    with pytest.raises(ModelError, match="malformed"):
        checkpoints.load(path)
    side.unlink()
    with pytest.raises(ModelError, match="has no sidecar"):
        checkpoints.load(path)


def test_train_then_eval_through_the_cli(tmp_path: Path) -> None:
    make_mnist(tmp_path / "data" / "fashion-mnist", n_train=16, n_test=8)
    out = tmp_path / "ck" / "sq.safetensors"
    env_args = ["--data-dir", str(tmp_path / "data")]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    train = subprocess.run(
        [sys.executable, "-m", "edgesplit", "train", "--model", "squeezenet1_1", "--epochs", "1",
         "--batch-size", "8", "--out", str(out), *env_args],
        capture_output=True, text=True, timeout=300, check=False, env=env,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr
    info = checkpoints.read_info(out)
    assert info.model == "squeezenet1_1" and info.dataset == "fashion-mnist"
    assert "edgesplit train --model squeezenet1_1" in info.command
    assert info.test_accuracy is not None
    evaluated = subprocess.run(
        [sys.executable, "-m", "edgesplit", "eval", "--checkpoint", str(out), "--json", *env_args],
        capture_output=True, text=True, timeout=300, check=False, env=env,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    doc = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert doc["images"] == 8
    assert doc["accuracy"] == info.test_accuracy
    manifest = json.loads((out.parent / "MANIFEST.json").read_text())
    assert [e["file"] for e in manifest["checkpoints"]] == ["sq.safetensors"]
    assert manifest["checkpoints"][0]["sha256"] == info.sha256
