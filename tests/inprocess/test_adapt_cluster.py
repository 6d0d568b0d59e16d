"""``run --adaptive`` on a real emulated cluster: a CPU hog on one device and slow links to it
mid-run make the controller switch plans, and no image is lost or duplicated across the switch
(checked image by image against single-process predictions of the shipped checkpoint).

The links make the test deterministic: on a loaded 2-core machine a CPU hog inside one
device's share may hardly show next to the host's own contention, a shaped link always does."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from edgesplit.adapt import AdaptPolicy
from edgesplit.app.job import RunConfig, run_job
from edgesplit.errors import ConfigError
from edgesplit.model import checkpoints, data
from edgesplit.runtime.live import LiveSnapshot
from tests.cluster.test_faults_cluster import BATCH, MODEL, SIZE, read_run, uploads_per_request


def reference(limit: int) -> list[int]:
    """Single-process predictions of the shipped checkpoint for the first ``limit`` images."""
    model, _ = checkpoints.load(checkpoints.shipped(MODEL), model_name=MODEL, num_classes=10)
    model.eval()
    dataset = data.load("fashion-mnist", "test")
    predictions: list[int] = []
    with torch.inference_mode():
        for _, x, _ in dataset.batches(256, SIZE, 3, limit):
            predictions.extend(model(x).argmax(1).tolist())
    return predictions


SWITCH_TIMEOUT_S = 120.0
AFTER_SWITCH_S = 2.0


@pytest.mark.slow
def test_adaptive_run_switches_under_stress_and_loses_no_image(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    limit = 2400
    config = RunConfig(
        model=MODEL,
        batch_size=BATCH,
        limit=limit,
        devices=3,
        engine="torch",  # slower stages than onnxruntime: the hog shows in compute times
        out=folder,
        inject=(
            "pi2:stress@1s",
            "link:pi1-pi2:bandwidth=5mbps@1s",
            "link:pi2-pi3:bandwidth=5mbps@1s",
        ),
        adaptive=True,
        adapt_policy=AdaptPolicy(hold_s=0.5, min_interval_s=2.0),
    )
    switched: list[str] = []

    def on_live(snapshot: LiveSnapshot) -> None:
        if snapshot.adaptive and snapshot.adaptive.startswith("adaptive: switched"):
            switched.append(snapshot.adaptive)

    wait_until: list[float] = []

    seen_switch: list[float] = []

    def progress(done: int, total: int, elapsed_s: float) -> None:
        # Not a race with the clock (issue #15): past half of the images, results trickle
        # until the controller has switched (bounded), however fast this machine runs them,
        # and for AFTER_SWITCH_S more, so that micro-batches run under the new epoch.
        if done < total // 2:
            return
        if switched and not seen_switch:
            seen_switch.append(time.monotonic())
        if seen_switch and time.monotonic() - seen_switch[0] >= AFTER_SWITCH_S:
            return
        if not wait_until:
            wait_until.append(time.monotonic() + SWITCH_TIMEOUT_S)
        if time.monotonic() < wait_until[0]:
            time.sleep(0.05)

    run_job(config, on_progress=progress, on_live=on_live)
    assert switched, f"no adaptive switch within {SWITCH_TIMEOUT_S:g} s of the run's half"
    summary, predictions, _ = read_run(folder)
    assert summary["completed_images"] == limit
    assert predictions == reference(limit)
    assert set(uploads_per_request(folder).values()) == {1}
    adaptive = [c for c in summary["plan_changes"] if c["reason"].startswith("adaptive: ")]
    assert adaptive, summary["plan_changes"]
    assert summary["adaptive"]["switches"] == len(adaptive)
    assert summary["adaptive"]["decisions"] >= len(adaptive)
    plans = [json.loads(line) for line in (folder / "plans.jsonl").read_text().splitlines()]
    switches = [p for p in plans if p["switch"]]
    assert len(switches) == len(adaptive)
    assert all(p["gain"] >= 0.15 for p in switches)
    assert all(not p["switch"] and p["reason"] for p in plans if p not in switches)
    # Which observation a switch names is left to the pure tests (tests/unit/test_adapt.py):
    # on a fresh clone one switch named pi2's speed, another came 2.5 s in with a gain from
    # speed factors too small to be named; a link may not have carried a tensor yet.


def test_adaptive_needs_the_auto_partition() -> None:
    with pytest.raises(ConfigError, match=r"--adaptive .* needs --partition auto"):
        run_job(RunConfig(model=MODEL, partition="equal", adaptive=True, limit=16))
