"""`edgesplit run --partition auto` end to end: real workers profiled, a plan chosen by the
planner, and its prediction recorded next to what was measured."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgesplit.plan.profile import load_profile

pytestmark = pytest.mark.slow


def edgesplit(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "edgesplit", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )


def test_auto_partition_profiles_plans_and_records_the_prediction(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["run", "--devices", "2", "--model", "squeezenet1_1", "--limit", "96"]
    result = edgesplit(tmp_path, *args, "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    assert "timing 18 units" in result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["partition_method"] == "auto"
    assert summary["completed_images"] == 96
    predicted = summary["predicted"]
    assert predicted["objective"] == "throughput"
    assert predicted["throughput_ips"] > 0
    planned = [(s["device"], s["units"]) for s in predicted["stages"]]
    ran = [(s["device"], s["units"]) for s in summary["plan"]["stages"]]
    assert planned == ran
    # Energy: every device of the cluster, used or not, and the total per image.
    energy = summary["energy"]
    assert set(energy["devices"]) == {"pi1", "pi2"}
    assert summary["energy_j_per_image"] == pytest.approx(
        sum(d["energy_j_per_image"] for d in energy["devices"].values())
    )
    assert summary["energy_j_per_image"] > 0
    profile = load_profile(out / "profile.json")
    assert [d.name for d in profile.devices] == ["pi1", "pi2"]
    # The chosen stages were timed as one stage each, and the prediction rests on those times.
    for stage in predicted["stages"]:
        start, end = stage["units"]
        device = profile.device(stage["device"])
        assert device.is_timed(start, end)
        assert f"{stage['device']}: timing stage" in result.stderr
        costs = device.stage_costs(
            "fp32", (profile.input_bytes, *(u.out_bytes for u in profile.units))
        )
        sustained = {(s, e): ms for s, e, ms, _ in costs.measured}[(start, end)]
        assert stage["compute_ms"] == pytest.approx(sustained)
    assert (out / "plan.txt").read_text().startswith("stage")

    again = edgesplit(tmp_path, *args, "--out", str(tmp_path / "again"), "--json")
    assert again.returncode == 0, again.stderr
    assert "cached profile" in again.stderr
    assert "timing 18 units" not in again.stderr
    # Stages timed by the first run are not timed again (the cached profile keeps them).
    timed_before = {
        (d.name, span) for d in profile.devices for span in d.stage_timings.get("fp32", {})
    }
    said = re.findall(r"(\w+): timing stages? ([\d, -]+) as one stage", again.stderr)
    timed_again = {(name, span.strip()) for name, spans in said for span in spans.split(",")}
    assert timed_again.isdisjoint(timed_before), timed_again & timed_before


def test_latency_objective_keeps_the_model_on_one_device_over_slow_links(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    result = edgesplit(
        tmp_path,
        "run", "--devices", "2", "--model", "mobilenet_v2", "--limit", "32",
        "--bandwidth-mbps", "10", "--objective", "latency", "--out", str(out), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["plan"]["stages"]) == 1
    assert any("kept on one device" in note for note in summary["notes"])
    assert summary["predicted"]["objective"] == "latency"


def test_unknown_objective_and_bad_cpus_fail_before_starting(tmp_path: Path) -> None:
    bad = edgesplit(tmp_path, "run", "--objective", "speed")
    assert bad.returncode == 2
    assert "throughput" in bad.stderr
    cpus = edgesplit(tmp_path, "run", "--cpus", "1,fast")
    assert cpus.returncode == 2
    assert "one per device like 1,0.5,0.25" in cpus.stderr


def test_a_given_partition_is_evaluated_and_every_run_is_compared_with_its_prediction(
    tmp_path: Path,
) -> None:
    """Issue #19: a manual partition gets a prediction from the same cost model (its stages
    timed, the pilot's per-call costs in), the run is compared with it for every objective,
    and every process's CPU per image gives the ``cpu_tax``."""
    out = tmp_path / "run"
    result = edgesplit(
        tmp_path,
        "run", "--devices", "2", "--model", "squeezenet1_1", "--limit", "1600",
        "--partition", "0-9,9-", "--objective", "energy", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["partition_method"] == "0-9,9-"
    predicted = summary["predicted"]
    assert predicted["objective"] == "energy" and predicted["throughput_ips"] > 0
    assert [s["units"] for s in predicted["stages"]] == [[0, 9], [9, 18]]
    assert "pi1: timing stage 0-9 as one stage" in result.stderr
    # the pilot measures at the run's window (2 stages: 4 in flight), not one micro-batch alone
    assert summary["window"] == 4
    assert any(note.startswith("pilot (") and "4 in flight" in note for note in summary["notes"])
    profile = load_profile(out / "profile.json")
    assert all(d.call_cpu_ms > 0 for d in profile.devices) and profile.coordinator_ms > 0
    versus = summary["versus_plan"]
    assert versus["objective"] == "energy"
    assert versus["throughput_ips"]["measured"] == pytest.approx(summary["throughput_ips"])
    assert versus["energy_j_per_image"]["error"] is not None
    assert versus["latency_ms"]["measured"] > 0
    # the energy comparison is printed first, then throughput and latency
    printed = [line for line in result.stdout.splitlines() if "against the prediction" in line]
    assert [line.split(":")[0] for line in printed] == [
        "energy", "throughput", "unloaded latency"
    ]  # fmt: skip
    assert result.stdout.index("the given partition, evaluated for energy") >= 0
    cpu = summary["cpu"]
    assert cpu["coordinator_s"] > 0 and set(cpu["devices_s"]) == {"pi1", "pi2"}
    assert summary["cpu_tax"] == pytest.approx(cpu["cpu_tax"]) and summary["cpu_tax"] > 1.0
    assert "cpu_tax" in result.stdout
