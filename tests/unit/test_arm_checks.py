"""The pure parts of `make check-arm`'s scripts (scripts/arm/check_models.py and
cluster_check.py): what they compare and how they make an int8 model loadable by the
aarch64 root's older onnxruntime. The emulated runs themselves are `make check-arm`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "arm" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


check_models = _load("check_models")
cluster_check = _load("cluster_check")


def test_keep_used_opsets_drops_the_domains_no_node_uses() -> None:
    """What makes the coordinator's int8 model (ONNX Runtime 1.32's quantizer stamps
    ``ai.onnx.ml`` 5) load on the aarch64 worker's onnxruntime 1.17."""
    from edgesplit.engines.onnx_engine import keep_used_opsets

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    stamped = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 5)]
    model = helper.make_model(graph, opset_imports=stamped)
    keep_used_opsets(model)
    cleaned = onnx.load_from_string(model.SerializeToString())
    assert [(o.domain, o.version) for o in cleaned.opset_import] == [("", 17)]
    assert [n.op_type for n in cleaned.graph.node] == ["Relu"]


def _run(predictions: list[int], accuracy: float, checkpoint: float = 0.9) -> dict[str, Any]:
    summary = {
        "images": len(predictions),
        "completed_images": len(predictions),
        "partition": "0-2,2-4,4-",
        "plan": {"stages": [{"device": "x86-1", "units": [0, 2]},
                            {"device": "pi-arm", "units": [2, 4]}]},
        "accuracy": accuracy,
        "checkpoint_accuracy": checkpoint,
        "throughput_ips": 1.0,
        "devices": [{"name": "pi-arm", "rss_mb": 200.0}],
    }  # fmt: skip
    return {"summary": summary, "predictions": predictions, "seconds": 1.0}


def test_compare_fp32_needs_the_same_argmax_as_the_all_x86_cluster() -> None:
    same = cluster_check.compare(_run([1, 2, 3, 4], 0.9), _run([1, 2, 3, 4], 0.9), "fp32")
    assert same["argmax_agreement_vs_all_x86"] == 1.0 and same["passed"]
    assert same["arm_units"] == [2, 4]
    differs = cluster_check.compare(_run([1, 2, 3, 5], 0.9), _run([1, 2, 3, 4], 0.9), "fp32")
    assert differs["argmax_agreement_vs_all_x86"] == 0.75 and not differs["passed"]


def test_compare_int8_is_judged_by_the_drop_against_the_checkpoint() -> None:
    kept = cluster_check.compare(_run([1, 2], 0.895), _run([1, 3], 0.9), "int8")
    assert kept["drop_points_vs_checkpoint"] == pytest.approx(0.5) and kept["passed"]
    lost = cluster_check.compare(_run([1, 2], 0.88), _run([1, 2], 0.9), "int8")
    assert lost["drop_points_vs_checkpoint"] == pytest.approx(2.0) and not lost["passed"]


def test_compare_reports_a_failed_run_as_failed() -> None:
    row = cluster_check.compare({"error": "error: boom", "seconds": 3.0}, _run([1], 0.9), "fp32")
    assert row == {"wall_s": 3.0, "error": "error: boom", "passed": False}
