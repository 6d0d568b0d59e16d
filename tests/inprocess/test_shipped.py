"""The shipped checkpoints on the real Fashion-MNIST test set (Debian's dataset-fashion-mnist,
which `make test` installs): the manifest's accuracy is reproduced by `edgesplit eval`, and by the
distributed pipeline over all 10,000 images, prediction for prediction."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgesplit.model import checkpoints, data
from edgesplit.model.train import predict

MANIFEST = checkpoints.SHIPPED_DIR / "MANIFEST.json"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
MIN_ACCURACY = {"mobilenet_v2": 0.91}
DEFAULT_MIN_ACCURACY = 0.88

pytestmark = [
    pytest.mark.skipif(not MANIFEST.exists(), reason="no shipped checkpoints yet"),
    pytest.mark.skipif(not FMNIST.exists(), reason="needs Debian's dataset-fashion-mnist"),
]


def entries() -> list[dict[str, object]]:
    if not MANIFEST.exists():
        return []
    return list(json.loads(MANIFEST.read_text())["checkpoints"])


def edgesplit(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgesplit", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_manifest_is_small_and_accurate_enough() -> None:
    total = 0
    for entry in entries():
        path = checkpoints.SHIPPED_DIR / str(entry["file"])
        assert checkpoints.file_sha256(path) == entry["sha256"]
        total += path.stat().st_size
        floor = MIN_ACCURACY.get(str(entry["model"]), DEFAULT_MIN_ACCURACY)
        assert float(entry["test_accuracy"]) >= floor, entry  # type: ignore[arg-type]
        assert int(entry["input_size"]) >= 32  # type: ignore[call-overload]
    assert total < 40e6


@pytest.mark.slow
@pytest.mark.parametrize("entry", entries(), ids=lambda e: str(e["model"]))
def test_eval_reproduces_the_manifest_accuracy(entry: dict[str, object]) -> None:
    result = edgesplit(
        "eval", "--checkpoint", str(checkpoints.SHIPPED_DIR / str(entry["file"])), "--json"
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert doc["images"] == 10_000
    assert doc["accuracy"] == entry["test_accuracy"]


@pytest.mark.slow
def test_distributed_run_over_the_whole_test_set_matches_one_process(tmp_path: Path) -> None:
    path = checkpoints.shipped("mobilenet_v2")
    model, info = checkpoints.load(path)
    test_set = data.load("fashion-mnist", "test")
    reference = predict(model, test_set, info.input_size)

    out = tmp_path / "run"
    result = edgesplit(
        "run", "--devices", "3", "--model", "mobilenet_v2", "--out", str(out), "--json"
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == summary["completed_images"] == 10_000
    assert summary["weights"] == str(path)
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    predictions = torch.tensor([int(r["prediction"]) for r in rows])
    assert len(predictions) == 10_000
    assert torch.equal(predictions, reference)
    assert summary["accuracy"] == info.test_accuracy
