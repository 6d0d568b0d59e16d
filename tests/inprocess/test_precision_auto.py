"""``--precision auto``: int8 only where the planner predicts a gain and the measured accuracy
drop stays inside the bound."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgesplit import engines
from edgesplit.engines import cpu
from edgesplit.errors import AccuracyError
from edgesplit.plan import autoplan, precision
from tests.inprocess.test_profiler_precision import _profile

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
    seen: list[precision.Stages] = []

    def measure(stages: precision.Stages) -> tuple[float, float]:
        seen.append(stages)
        return 0.90, 0.895

    plan, choice = precision.choose(fp32, int8, measure, max_drop_points=1.0)
    assert plan is int8 and choice.precision == "int8"
    assert seen == [tuple((s.device, s.start, s.end) for s in int8.stages)]
    assert choice.drop_points == pytest.approx(0.5)
    assert choice.int8_value is not None and choice.int8_value < choice.fp32_value


def test_fp32_runs_when_int8_costs_too_much_or_gains_nothing() -> None:
    fp32, int8 = _plans(10.0)
    plan, choice = precision.choose(fp32, int8, lambda r: (0.90, 0.85), max_drop_points=1.0)
    assert plan is fp32 and choice.precision == "fp32"
    assert "5.00 accuracy points" in choice.reason and "too many" in choice.reason

    slow_fp32, slow_int8 = _plans(60.0)  # int8 slower than fp32 (40 ms per unit)

    def never(stages: precision.Stages) -> tuple[float, float]:
        raise AssertionError("no gain: nothing to measure")

    plan, choice = precision.choose(slow_fp32, slow_int8, never, max_drop_points=1.0)
    assert plan is slow_fp32 and "no gain" in choice.reason
    plan, choice = precision.choose(fp32, int8, None, max_drop_points=1.0)
    assert plan is fp32 and "without labels" in choice.reason


def test_a_negative_drop_is_said_as_a_gain() -> None:
    assert precision.describe_drop(0.42) == "costs 0.42 accuracy points"
    assert precision.describe_drop(-0.67) == "gains 0.67 accuracy points"
    fp32, int8 = _plans(10.0)
    _, choice = precision.choose(fp32, int8, lambda s: (0.90, 0.9067), max_drop_points=1.0)
    assert choice.reason == "int8 gains 0.67 accuracy points (bound 1)"


def test_int8_gate_refuses_a_drop_above_the_bound_naming_it_and_the_cpu_kinds() -> None:
    kept = precision.GateResult(0.9100, 0.9050, 300, ("x86-avx2", "x86-avx2"))
    precision.check_int8(kept, max_drop_points=1.0)  # 0.50 points: allowed
    assert "costs 0.50 accuracy points" in kept.describe() and "x86-avx2" in kept.describe()
    lost = precision.GateResult(0.9100, 0.8780, 300, ("x86-avx2", "arm64-neon", "x86-avx2"))
    with pytest.raises(AccuracyError) as info:
        precision.check_int8(lost, max_drop_points=1.0)
    message = str(info.value)
    assert "int8 loses 3.20 accuracy points on x86-avx2, arm64-neon" in message
    assert "--max-accuracy-drop allows 1" in message


def _edgesplit(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # edgesplit's caches follow EDGESPLIT_CACHE_DIR (else ~/.cache/edgesplit, shared by runs).
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "EDGESPLIT_CACHE_DIR": str(tmp_path / "cache" / "edgesplit")}  # fmt: skip
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


@pytest.mark.slow
@needs_onnxruntime
def test_int8_run_measures_its_drop_on_the_devices_once(tmp_path: Path) -> None:
    """``--precision int8`` measures the drop through the stages its workers built for their
    CPU kind, records it with the kinds, and a second run takes it from the cache."""
    summaries = []
    for run in ("first", "second"):
        out = tmp_path / run
        result = _edgesplit(tmp_path, "run", "--devices", "2", "--model", "squeezenet1_1",
                            "--partition", "equal", "--limit", "64", "--engine", "onnxruntime",
                            "--precision", "int8", "--calibration-images", "32",
                            "--out", str(out), "--json")  # fmt: skip
        assert result.returncode == 0, result.stderr
        summaries.append(json.loads((out / "summary.json").read_text()))
    first, second = (s["int8_gate"] for s in summaries)
    kind = cpu.cpu_kind()  # emulated devices run on this CPU
    assert first["kinds"] == second["kinds"] == [kind, kind]
    assert first["images"] == precision.HELD_OUT_IMAGES
    assert (first["cached"], second["cached"]) == (False, True)
    assert first["drop_points"] == second["drop_points"] <= 1.0
    assert summaries[0]["cpu_kinds"] == {"pi1": kind, "pi2": kind}
    assert any("held-out training images through the stages as built for" in n
               for n in summaries[0]["notes"])  # fmt: skip
