"""Run summaries for unit tests: a whole, valid :class:`RunSummary` with the keys a test cares
about changed (no run, no process)."""

from __future__ import annotations

from typing import Any

from edgesplit.shared.runsummary import RunSummary


def device(name: str, stage: int = 0, **values: Any) -> dict[str, Any]:
    """One row of ``devices`` with ``values`` set (sensors absent unless given)."""
    return {"name": name, "stage": stage, "units": [stage, stage + 1], "layers": "a .. b",
            "params": 1000, "images": 8, "throughput_ips": 1.0, **values}  # fmt: skip


def stage(name: str, index: int) -> dict[str, Any]:
    return {"device": name, "units": [index, index + 1], "first_layer": "a", "last_layer": "b",
            "params": 1000}  # fmt: skip


def summary_dict(**changes: Any) -> dict[str, Any]:
    """A two-stage run's ``summary.json`` as a dict, top-level keys replaced by ``changes``."""
    base: dict[str, Any] = {
        "model": "mobilenet_v2",
        "dataset": "fashion-mnist",
        "weights": "random",
        "checkpoint_accuracy": None,
        "input_size": 32,
        "batch_size": 8,
        "window": 4,
        "images": 16,
        "completed_images": 16,
        "wall_s": 1.0,
        "throughput_ips": 16.0,
        "latency_ms": {"p50": 10.0, "p95": 12.0, "mean": 10.5},
        "accuracy": 0.5,
        "params_total": 2000,
        "partition": "0-1,1-",
        "plan": {
            "epoch": 1,
            "stages": [stage("pi1", 0), stage("pi2", 1)],
        },
        "devices": [device("pi1", 0), device("pi2", 1)],
        "clock_offsets_ms": {"pi1": 0.1, "pi2": -0.2},
        "rtt_ms": {"pi1": 0.3, "pi2": 0.4},
        "failures": [],
        "replayed": 0,
        "duplicates": 0,
        "notes": [],
    }
    return {**base, **changes}


def a_summary(**changes: Any) -> RunSummary:
    """:func:`summary_dict` as the model."""
    return RunSummary.model_validate(summary_dict(**changes))
