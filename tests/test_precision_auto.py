"""``--precision auto``: int8 only where the planner predicts a gain and the measured accuracy
drop stays inside the bound."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgesplit import autoplan, engines, precision
from tests.conftest import traced
from tests.test_profiler_precision import _profile

needs_onnxruntime = pytest.mark.skipif(
    not engines.onnxruntime_available(), reason="onnxruntime is not installed"
)


def _plans(int8_ms: float) -> tuple[autoplan.planner.Plan, autoplan.planner.Plan]:
    profile = _profile(int8=(int8_ms, int8_ms))
    fp32 = autoplan.plan(profile, autoplan.PlanRequest())
    int8 = autoplan.plan(profile, autoplan.PlanRequest(precision="int8"))
    return fp32, int8


def test_int8_runs_when_faster_and_inside_the_bound() -> None:
    fp32, int8 = _plans(10.0)
    seen: list[tuple[tuple[int, int], ...]] = []

    def measure(ranges: tuple[tuple[int, int], ...]) -> tuple[float, float]:
        seen.append(ranges)
        return 0.90, 0.895

    plan, choice = precision.choose(fp32, int8, measure, max_drop_points=1.0)
    assert plan is int8 and choice.precision == "int8"
    assert seen == [tuple((s.start, s.end) for s in int8.stages)]
    assert choice.drop_points == pytest.approx(0.5)
    assert choice.int8_value is not None and choice.int8_value < choice.fp32_value


def test_fp32_runs_when_int8_costs_too_much_or_gains_nothing() -> None:
    fp32, int8 = _plans(10.0)
    plan, choice = precision.choose(fp32, int8, lambda r: (0.90, 0.85), max_drop_points=1.0)
    assert plan is fp32 and choice.precision == "fp32"
    assert "5.00 accuracy points" in choice.reason and "too many" in choice.reason

    slow_fp32, slow_int8 = _plans(60.0)  # int8 slower than fp32 (40 ms per unit)

    def never(ranges: tuple[tuple[int, int], ...]) -> tuple[float, float]:
        raise AssertionError("no gain: nothing to measure")

    plan, choice = precision.choose(slow_fp32, slow_int8, never, max_drop_points=1.0)
    assert plan is slow_fp32 and "no gain" in choice.reason
    plan, choice = precision.choose(fp32, int8, None, max_drop_points=1.0)
    assert plan is fp32 and "without labels" in choice.reason


@needs_onnxruntime
def test_accuracies_compare_fp32_and_the_quantized_stages_on_the_same_images() -> None:
    _, ug = traced("squeezenet1_1", 32)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(40, 3, 32, 32, generator=generator)
    with torch.inference_mode():
        labels = ug.stage(0, ug.num_units)(images).argmax(1)  # fp32 is right by definition
    calibration = torch.randn(16, 3, 32, 32, generator=generator)
    fp32_acc, int8_acc = precision.accuracies(
        ug, ((0, 9), (9, ug.num_units)), "onnxruntime", calibration, images, labels
    )
    assert fp32_acc == 1.0
    assert 0.0 <= int8_acc <= 1.0


def _edgesplit(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "edgesplit", *args], capture_output=True,
                          text=True, timeout=600, env=env, check=False)  # fmt: skip


def test_auto_precision_needs_the_auto_partition(tmp_path: Path) -> None:
    bad = _edgesplit(tmp_path, "run", "--precision", "auto", "--partition", "equal")
    assert bad.returncode != 0
    assert "--precision auto compares the planner's fp32 and int8 plans" in bad.stderr


@pytest.mark.slow
@needs_onnxruntime
def test_run_with_auto_precision_records_its_choice(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _edgesplit(tmp_path, "run", "--devices", "2", "--model", "squeezenet1_1",
                        "--limit", "64", "--engine", "onnxruntime", "--precision", "auto",
                        "--calibration-images", "32", "--out", str(out), "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    choice = summary["precision_choice"]
    assert summary["precision"] == choice["precision"]
    assert summary["predicted"]["precision"] == choice["precision"]
    assert any(n.startswith("--precision auto chose") for n in summary["notes"])
    if choice["drop_points"] is not None:  # int8 predicted faster: the drop was measured
        assert 0.0 <= choice["fp32_accuracy"] <= 1.0
        expect = "int8" if choice["drop_points"] <= choice["max_drop_points"] else "fp32"
        assert choice["precision"] == expect
    else:
        assert choice["precision"] == "fp32"
