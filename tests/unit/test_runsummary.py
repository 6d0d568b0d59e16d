"""The typed run summary (issue #26, #16): summarising is a pure function of the run record, the
model writes ``summary.json``, its committed JSON Schema cannot drift, old summaries load, and
:class:`edgesplit.RunResult` round-trips a run folder. No process, no socket."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import edgesplit
from edgesplit.config import ClusterSpec, parse_cluster
from edgesplit.errors import ConfigError
from edgesplit.metrics import runfolder
from edgesplit.metrics.summary import RunFacts, StageInfo, summarise
from edgesplit.model.graph import Unit
from edgesplit.runconfig import RunConfig
from edgesplit.runtime.records import DeviceFailure, HopRecord, PlanChange, RunRecord
from edgesplit.shared import runsummary
from edgesplit.shared.runsummary import RunSummary
from tests.summaries import summary_dict

SCHEMA = Path(__file__).parents[2] / "docs" / "summary.schema.json"
T0 = 1_000.0
"""The run's start on the coordinator clock (seconds)."""


def hop(request_id: int, stage: int, device: str, start: float, end: float) -> HopRecord:
    return HopRecord(request_id, 1, stage, device, 8, 0.5, 4.0, 0.1, 0.2, 1.0, 1000, start, end)


def a_record(**changes: Any) -> RunRecord:
    """Four micro-batches of 8 through pi1 then pi2 over one second; pi2 lost at 0.5 s."""
    uploads = [hop(r, -1, "coordinator", T0 + 0.25 * r, T0 + 0.25 * r + 0.01) for r in range(4)]
    hops = [hop(r, s, f"pi{s + 1}", T0 + 0.25 * r + 0.01 + 0.02 * s, T0 + 0.25 * r + 0.05 * (s + 1))
            for r in range(4) for s in range(2)]  # fmt: skip
    samples = {
        name: [{"t": T0 + k / 4, "process_cpu_percent": 25.0, "cpu_percent": 50.0,
                "memory_percent": 10.0, "rss_mb": 100.0, "temperature_c": None}
               for k in range(5)]
        for name in ("pi1", "pi2")
    }  # fmt: skip
    fields: dict[str, Any] = {
        "outputs": {},
        "hops": hops,
        "uploads": uploads,
        "samples": samples,
        "clock_offsets_ms": {"pi1": 0.5, "pi2": -0.5},
        "rtt_ms": {"pi1": 0.2, "pi2": 0.3},
        "started": T0,
        "finished": T0 + 1.0,
        "failures": [DeviceFailure("pi2", T0 + 0.5, "no heartbeat", 2, 0.25, 2)],
        "errors": ["pi2: unanswered status"],
        "replayed": 2,
        "plan_changes": [PlanChange(2, T0 + 0.6, "pi2 lost", (("pi1", 0, 2),))],
    }
    return RunRecord(**{**fields, **changes})


def a_cluster() -> ClusterSpec:
    return parse_cluster(
        {
            "devices": [
                {"name": "pi1", "address": "h:1", "power": {"idle_w": 2.0, "busy_w": 6.0}},
                {"name": "pi2", "address": "h:2", "power": {"idle_w": 2.0, "busy_w": 6.0}},
            ]
        }
    )


KILL = {"event": "inject", "t": T0 + 0.4, "spec": "pi2:kill@0.4s", "action": "kill",
        "devices": ["pi2"]}  # fmt: skip


def facts(**changes: Any) -> RunFacts:
    stages = [StageInfo("pi1", 0, 1, "conv", "conv", 100), StageInfo("pi2", 1, 2, "fc", "fc", 50)]
    fields: dict[str, Any] = {
        "config": RunConfig(model="mobilenet_v2", batch_size=8, partition="0-1,1-"),
        "dataset": "fashion-mnist",
        "weights": "random",
        "checkpoint_accuracy": None,
        "input_size": 32,
        "window": 4,
        "engine": "onnxruntime",
        "precision": "fp32",
        "images": 32,
        "predictions": [i % 10 for i in range(32)],
        "labels": [i % 10 if i < 16 else 0 for i in range(32)],
        "ran_images": 32,
        "record": a_record(),
        "stages": stages,
        "epoch": 1,
        "spec": a_cluster(),
        "params_total": 150,
        "partition": "0-1,1-",
        "injected": [KILL],
        "cpu_kinds": {"pi1": "x86-vnni", "pi2": "x86-vnni"},
        "notes": ["a note"],
    }
    return RunFacts(**{**fields, **changes})


# --- summarising is pure ----------------------------------------------------------------------


def test_summarise_reduces_the_record_into_the_documented_numbers() -> None:
    s = summarise(facts())
    assert (s.model, s.dataset, s.batch_size, s.window, s.wire) == (
        "mobilenet_v2", "fashion-mnist", 8, 4, "fp32"
    )  # fmt: skip
    assert s.images == s.completed_images == 32 and s.complete and s.error is None
    assert s.wall_s == pytest.approx(1.0) and s.throughput_ips == pytest.approx(32.0)
    # 16 of the first 16 right, then 1 in 10 of the other 16 (label 0 where i % 10 == 0)
    assert s.accuracy == pytest.approx((16 + 2) / 32)
    assert s.latency_ms.p50 == pytest.approx(100.0) and s.latency_ms.mean == pytest.approx(100.0)
    assert s.partition_method == "0-1,1-"
    assert s.stage_devices == ("pi1", "pi2") and s.plan.stages[1].units == (1, 2)
    assert [d.name for d in s.device_rows] == ["pi1", "pi2"]
    assert s.device_rows[0].images == 32 and s.device_rows[0].rss_mb == pytest.approx(100.0)
    [lost] = s.failures
    assert (lost.device, lost.time_s, lost.replayed, lost.recovery_s) == ("pi2", 0.5, 2, 0.25)
    [change] = s.plan_changes
    assert change.time_s == pytest.approx(0.6) and change.stages[0].units == (0, 2)
    [fault] = s.injected
    assert (fault.time_s, fault.action, fault.devices) == (0.4, "kill", ["pi2"])
    assert s.replayed == 2 and s.errors == ["pi2: unanswered status"]
    assert s.energy is not None and set(s.energy.devices) == {"pi1", "pi2"}
    assert s.energy_j_per_image == s.energy.energy_j_per_image > 0
    assert s.energy.window_t == (T0, T0 + 1.0)
    assert s.notes == ["a note"] and s.predicted is None and s.adaptive is None


def test_an_incomplete_run_counts_what_completed_and_says_so() -> None:
    predictions = [i % 10 if i < 24 else -1 for i in range(32)]
    s = summarise(facts(predictions=predictions, ran_images=24, error="interrupted (SIGTERM)"))
    assert (s.completed_images, s.complete, s.error) == (24, False, "interrupted (SIGTERM)")
    assert s.accuracy == pytest.approx((16 + 1) / 24)  # label 0 at 20 (20 % 10 == 0)
    assert s.throughput_ips == pytest.approx(24.0)
    assert s.notes[-1] == "accuracy over the 24 of 32 images that completed"


def test_no_labels_no_accuracy_and_no_wall_time_no_throughput() -> None:
    record = a_record(hops=[], uploads=[], finished=T0, failures=[], plan_changes=[])
    s = summarise(facts(labels=None, record=record, injected=()))
    assert s.accuracy is None and s.throughput_ips is None
    assert s.latency_ms.p50 is None and s.device_rows[0].compute_ms_per_batch is None
    assert s.failures == [] and s.injected == []


def test_the_nested_entries_are_typed_from_what_the_run_reports() -> None:
    predicted = {
        "objective": "throughput", "precision": "int8", "throughput_ips": 100.0,
        "latency_ms": 20.0, "bottleneck_ms": 10.0, "upload_ms": 1.0, "prepare_ms": 0.5,
        "host_ms": 0.2, "contended_ms": 10.0, "energy_j_per_image": 0.01,
        "stages": [{"device": "pi1", "units": [0, 2], "engine": "onnxruntime",
                    "precision": "int8", "compute_ms": 9.0, "latency_ms": 9.0,
                    "transfer_ms": 1.0, "memory_bytes": 10, "energy_mj": 1.0}],
        "notes": [],
    }  # fmt: skip
    gate = {"fp32_accuracy": 0.9, "int8_accuracy": 0.89, "images": 500,
            "kinds": ["x86-vnni"], "cached": False, "drop_points": 1.0}  # fmt: skip
    s = summarise(facts(predicted=predicted, int8_gate=gate))
    assert s.predicted is not None and s.predicted.stages[0].units == (0, 2)
    assert s.int8_gate is not None and s.int8_gate.kinds == ["x86-vnni"]
    with pytest.raises(ValueError, match="objective"):
        summarise(facts(predicted={k: v for k, v in predicted.items() if k != "objective"}))


# --- summary.json: written from the model, read back the same ----------------------------------


def test_summary_json_round_trips_through_the_model(tmp_path: Path) -> None:
    s = summarise(facts())
    runsummary.write(tmp_path, s)
    text = (tmp_path / "summary.json").read_text()
    assert runsummary.read(tmp_path) == s
    data = json.loads(text)
    assert list(data)[:3] == ["model", "dataset", "weights"]
    assert data["devices"][0]["name"] == "pi1" and "device_rows" not in data
    assert data["plan"]["stages"][0]["units"] == [0, 1]
    assert text.endswith("}\n") and text.startswith('{\n  "model": ')


def test_the_model_is_frozen() -> None:
    s = summarise(facts())
    with pytest.raises(ValueError, match="frozen"):
        s.images = 3  # type: ignore[misc]


def test_the_committed_schema_is_the_models() -> None:
    """docs/summary.schema.json is generated (python -m edgesplit.shared.runsummary >
    docs/summary.schema.json): it cannot drift from what runs write."""
    assert json.loads(SCHEMA.read_text()) == runsummary.json_schema()


def test_the_schema_accepts_a_summary_and_refuses_unknown_and_missing_keys() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    written = json.loads(summarise(facts()).to_json())
    jsonschema.validate(written, schema)
    with pytest.raises(jsonschema.ValidationError, match="surprise"):
        jsonschema.validate({**written, "surprise": 1}, schema)
    with pytest.raises(jsonschema.ValidationError, match="'window' is a required property"):
        jsonschema.validate({k: v for k, v in written.items() if k != "window"}, schema)


def test_a_summary_from_the_first_version_loads_with_defaults() -> None:
    """The first summary.json (no engine, precision, energy, faults' plan changes, ...) and one
    from a newer version (an unknown key) both load."""
    old = summary_dict(completed_images=12, images=16)
    s = runsummary.parse(json.dumps({**old, "from_the_future": {"x": 1}}))
    assert (s.engine, s.precision, s.wire, s.resumed_images) == ("torch", "fp32", "fp32", 0)
    assert s.complete is False and s.partition_method is None and s.energy is None
    assert s.injected == [] and s.plan_changes == [] and s.cpu_kinds == {} and s.error is None
    assert runsummary.parse(json.dumps(summary_dict())).complete is True


def test_a_summary_written_before_the_model_loads_unchanged() -> None:
    """tests/data/summary-86ee430.json: `edgesplit run` at 86ee430 (the inline dict) wrote it.
    It loads, and writing it again gives the same JSON plus the keys added since, at their
    defaults (``error``, ``final_plan``, ``not_fired``; issue #19: ``cpu``, ``cpu_tax``,
    ``versus_plan`` and the prediction's measured cost terms)."""
    text = (Path(__file__).parents[1] / "data" / "summary-86ee430.json").read_text()
    s = runsummary.parse(text)
    assert s.partition_method == "auto" and s.predicted is not None and s.energy is not None
    assert s.stage_devices == ("pi2", "pi1") and s.device_rows[1].name == "pi1"
    written = json.loads(text)
    added = {"coordinator_ms": 0.0, "window_ms": 0.0, "background_cpus": 0.0}
    assert json.loads(s.to_json()) == {
        **written,
        "predicted": {**written["predicted"], **added},
        "error": None,
        "final_plan": None,
        "not_fired": [],
        "cpu": None,
        "cpu_tax": None,
        "versus_plan": None,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"model": "x"}', r"expected a run summary, lacks dataset"),
        (json.dumps(summary_dict(batch_size="eight")), r"batch_size: .*integer.*'eight'"),
        ('{"model": ', r"unreadable or truncated"),
        ("[1, 2]", r"expected a run summary"),
    ],
)
def test_a_bad_summary_is_a_config_error_naming_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        runsummary.parse(text, "runs/x/summary.json")


def test_reading_a_folder_without_a_summary_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"has no summary\.json"):
        runsummary.read(tmp_path)


# --- RunResult is the typed summary of a run folder ---------------------------------------------


def write_folder(folder: Path) -> RunSummary:
    """A whole run folder from a summarised record (what ``run_job`` writes, no workers)."""
    f = facts()
    s = summarise(f)
    runfolder.write(
        folder,
        summary=s,
        rows=s.device_rows,
        record=f.record,
        spec=f.spec,
        predictions=torch.tensor(list(f.predictions)),
        labels=torch.tensor(list(f.labels or [])),
        units=[Unit(i, (f"n{i}",), 10, 100, (4,), 16) for i in range(2)],
    )
    return s


def test_run_result_is_the_summary_with_tables_and_round_trips(tmp_path: Path) -> None:
    pytest.importorskip("pandas")
    s = write_folder(tmp_path / "a")
    result = edgesplit.RunResult.load(tmp_path / "a")
    assert isinstance(result, RunSummary) and result.summary == s
    assert result.throughput_ips == s.throughput_ips and result.latency_ms.p95 is not None
    assert result.stage_devices == ("pi1", "pi2")
    assert list(result.devices["name"]) == ["pi1", "pi2"]
    assert len(result.requests) == 12 and set(result.requests["stage"]) == {-1, 0, 1}
    assert set(result.samples["device"]) == {"pi1", "pi2"}
    assert len(result.predictions) == 32
    assert result.row()["latency_p50_ms"] == s.latency_ms.p50
    saved = result.save(tmp_path / "b")
    again = edgesplit.RunResult.load(tmp_path / "b")
    assert again.summary == saved.summary == result.summary and again.folder == tmp_path / "b"
    assert (tmp_path / "b" / "summary.json").read_text() == s.to_json()
    assert "folder" not in json.loads(again.summary.to_json())
    with pytest.raises(ConfigError, match="already holds a run"):
        result.save(tmp_path / "b")


def test_run_result_plots_from_the_folder(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    write_folder(tmp_path)
    figure = edgesplit.RunResult.load(tmp_path).plot.timeline()
    assert figure.axes and figure.axes[0].collections  # the bars (broken_barh) were drawn
