"""`edgesplit split` as a user runs it: a real subprocess for the exit codes and messages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def edgesplit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgesplit", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_unknown_model_exits_nonzero_with_the_known_models() -> None:
    result = edgesplit("split", "--model", "resnet9000")
    assert result.returncode != 0
    assert result.stderr.strip().startswith("error: unknown model 'resnet9000'")
    assert "mobilenet_v2" in result.stderr and "squeezenet1_1" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_partition_exits_nonzero_with_a_precise_message() -> None:
    result = edgesplit(
        "split",
        "--model",
        "squeezenet1_1",
        "--input-size",
        "64",
        "--partition",
        "0-5,6-",
        "--check",
    )
    assert result.returncode != 0
    assert "stage 1 starts at unit 6 but the previous stage ended at 5 (a gap)" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_passes_and_json_lists_units() -> None:
    result = edgesplit(
        "split",
        "--model",
        "mobilenet_v3_small",
        "--input-size",
        "64",
        "--partition",
        "0-4,4-9,9-",
        "--check",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["model"] == "mobilenet_v3_small" and doc["input_size"] == 64
    assert doc["max_abs_diff"] == 0.0
    assert doc["partition"] == [[0, 4], [4, 9], [9, len(doc["units"])]]
    assert set(doc["units"][0]) == {"index", "nodes", "params", "macs", "out_shape", "out_bytes"}


def test_table_output_names_stages() -> None:
    result = edgesplit(
        "split",
        "--model",
        "squeezenet1_1",
        "--input-size",
        "64",
        "--partition",
        "0-5,5-",
        "--check",
    )
    assert result.returncode == 0, result.stderr
    assert "squeezenet1_1: 18 units" in result.stdout
    assert "stage 1: units [5, 18)" in result.stdout
    assert "reproduce the model bit for bit" in result.stdout


@pytest.mark.parametrize("command", [[], ["split"]])
def test_help_explains_every_option(command: list[str]) -> None:
    result = edgesplit(*command, "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout
    if command == ["split"]:
        for option in (
            "--model",
            "--input-size",
            "--num-classes",
            "--partition",
            "--check",
            "--json",
            "--batch-size",
            "--in-channels",
        ):
            assert option in result.stdout
