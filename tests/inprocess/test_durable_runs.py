"""Runs that survive their coordinator (issue #25): results logged as they arrive, a complete
folder after SIGTERM, a readable one after SIGKILL, ``--resume`` finishing either image for
image, and the manifest that says how a folder was made."""

from __future__ import annotations

import csv
import json
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from edgesplit.errors import ConfigError
from edgesplit.metrics import manifest, resultlog, runfolder
from edgesplit.runconfig import RunConfig
from tests.cluster.test_faults_cluster import reference
from tests.inprocess.test_cli_run import Cli, cli_argv, cli_fixture, left_behind

__all__ = ["cli_fixture"]  # the ``cli`` fixture, used here too

LIMIT = 4000
BATCH = 16
# Shaped links bound the pace from above on any machine (2 stages, window 2, 3 crossings of
# 30 ms each): the run takes >= 4 s past its first results, so an interruption lands mid-run.
LONG_RUN = [
    "run", "--devices", "2", "--partition", "equal", "--limit", str(LIMIT),
    "--batch-size", str(BATCH), "--window", "2", "--latency-ms", "30", "--no-dashboard",
]  # fmt: skip
START_TIMEOUT_S = 300.0


# --- pure parts -------------------------------------------------------------------------------


def test_result_log_is_read_back_up_to_its_last_whole_line(tmp_path: Path) -> None:
    with resultlog.ResultLog(tmp_path) as log:
        log.append(0, [1, 2])
        log.append(2, [3, 4], epoch=1)
        log.append(0, [5, 6])  # a replayed micro-batch: the later line wins
    with open(tmp_path / resultlog.FILE, "a") as f:
        f.write('{"start": 4, "predictions": [7')  # cut by a crash mid-write
    got = resultlog.read(tmp_path)
    assert [(r.start, r.predictions) for r in got] == [(0, (5, 6)), (2, (3, 4))]
    assert resultlog.completed_images(tmp_path) == 4
    assert resultlog.read(tmp_path / "nowhere") == []
    (tmp_path / resultlog.FILE).unlink()  # not a run folder: conftest checks those


def test_config_round_trips_through_the_manifest() -> None:
    config = RunConfig(
        model="squeezenet1_1", limit=40, inject=("pi2:kill@1s",), cpus_each=(1.0, 0.5),
        out=Path("/tmp/x"), data_dir=Path("/data"),
    )  # fmt: skip
    assert manifest.config_from_dict(json.loads(json.dumps(manifest.config_to_dict(config)))) == (
        config
    )
    with pytest.raises(ConfigError, match="does not know: colour"):
        manifest.config_from_dict({**manifest.config_to_dict(config), "colour": "red"})


def test_manifest_differences_name_each_changed_setting() -> None:
    a = {"config": {"limit": 64, "model": "m"}, "created": "t1", "python": "3.11"}
    b = {"config": {"limit": 4000, "model": "m"}, "created": "t2", "python": "3.12"}
    assert manifest.differences(a, b) == ["config.limit: 64 -> 4000", 'python: "3.11" -> "3.12"']
    assert manifest.differences(a, a) == []


def test_a_folder_with_a_run_is_not_overwritten(tmp_path: Path) -> None:
    runfolder.refuse_existing(tmp_path)  # empty: fine
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"already holds a run \(summary.json\).*--resume"):
        runfolder.refuse_existing(tmp_path)


# --- real runs --------------------------------------------------------------------------------


def interrupt_mid_run(cli: Any, folder: Path, sig: signal.Signals) -> tuple[Cli, int]:
    """Start the long run, wait until a random count past 1,000 images has results in its
    log, send ``sig``; returns the run and the images logged when the signal was sent."""
    run: Cli = cli(*LONG_RUN, "--out", str(folder))
    target = random.Random().randrange(1000, 2600) // BATCH
    deadline = time.monotonic() + START_TIMEOUT_S
    logged = 0
    while logged < target:
        assert run.proc.poll() is None, f"the run ended before {target} results:\n{run.stderr}"
        assert time.monotonic() < deadline, f"{logged} results after {START_TIMEOUT_S:g} s"
        time.sleep(0.02)
        path = folder / resultlog.FILE
        logged = path.read_text().count("\n") if path.exists() else 0
    run.proc.send_signal(sig)
    run.wait(60)
    return run, logged * BATCH


def predictions_of(folder: Path) -> list[int]:
    with open(folder / "predictions.csv") as f:
        return [int(row["prediction"] or -1) for row in csv.DictReader(f)]


def resume(folder: Path) -> dict[str, Any]:
    result = subprocess.run(
        cli_argv("run", "--resume", str(folder), "--no-dashboard"),
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary: dict[str, Any] = json.loads((folder / "summary.json").read_text())
    return summary


def check_resumed(folder: Path, summary: dict[str, Any], done_before: int) -> None:
    assert summary["complete"] and summary["completed_images"] == LIMIT
    assert summary["resumed_images"] >= done_before
    assert predictions_of(folder) == reference()[:LIMIT]  # image for image, none missing
    starts = [
        json.loads(line)["start"]
        for line in (folder / resultlog.FILE).read_text().splitlines()
        if '"start"' in line
    ]
    assert sorted(starts) == list(range(0, LIMIT, BATCH)), "an image ran twice or never"
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds.index("interrupted") < kinds.index("resumed")
    made = manifest.read(folder)
    assert len(made["resumptions"]) == 1 and "--resume" in made["resumptions"][0]["command"]


@pytest.mark.slow
def test_sigterm_writes_the_folder_for_what_finished_and_resume_completes_it(
    cli: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "run"
    run, logged = interrupt_mid_run(cli, folder, signal.SIGTERM)
    assert run.proc.returncode == 128 + signal.SIGTERM, run.stderr
    assert left_behind([], run.tag) == []
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["complete"] is False and summary["images"] == LIMIT
    assert logged <= summary["completed_images"] < LIMIT
    assert "interrupted by a signal (SIGTERM)" in summary["error"]
    got = predictions_of(folder)
    done = [i for i, p in enumerate(got) if p >= 0]
    assert len(done) == summary["completed_images"]
    assert [got[i] for i in done] == [reference()[i] for i in done]
    report = subprocess.run(cli_argv("report", str(folder)), capture_output=True, text=True,
                            timeout=300, check=False)  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert f"{summary['completed_images']} of {LIMIT} images completed" in report.stdout
    check_resumed(folder, resume(folder), summary["completed_images"])


@pytest.mark.slow
def test_sigkill_leaves_a_readable_folder_and_resume_completes_it(cli: Any, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    run, logged = interrupt_mid_run(cli, folder, signal.SIGKILL)
    assert run.proc.returncode == -signal.SIGKILL
    assert not (folder / "summary.json").exists()
    # The documented bound: no result that was logged is lost to SIGKILL (each line is flushed
    # as it arrives); at most the window in flight runs again.
    kept = resultlog.completed_images(folder)
    assert logged <= kept < LIMIT
    report = subprocess.run(cli_argv("report", str(folder)), capture_output=True, text=True,
                            timeout=300, check=False)  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert f"{kept} of {LIMIT} images completed" in report.stdout
    assert (folder / "report.html").exists()
    check_resumed(folder, resume(folder), kept)


@pytest.mark.slow
def test_from_reruns_the_configuration_and_resume_refuses_other_options(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    args = ["run", "--devices", "2", "--partition", "equal", "--limit", "64", "--no-dashboard"]
    for command in ([*args, "--out", str(first)], ["run", "--from", str(first), "--out",
                                                   str(second), "--no-dashboard"]):  # fmt: skip
        result = subprocess.run(cli_argv(*command), capture_output=True, text=True, timeout=600,
                                check=False)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    a, b = manifest.read(first), manifest.read(second)
    assert {**a["config"], "out": None} == {**b["config"], "out": None}
    assert predictions_of(first) == predictions_of(second)
    compared = subprocess.run(cli_argv("report", str(first), "--compare", str(second)),
                              capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert compared.returncode == 0, compared.stderr
    assert f'config.out: "{first}" -> "{second}"' in compared.stdout
    refused = subprocess.run(cli_argv("run", "--resume", str(first), "--limit", "5"),
                             capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert refused.returncode == 2
    assert "--resume takes the configuration from" in refused.stderr
    assert "--limit would change it" in refused.stderr
    again = subprocess.run(cli_argv("run", "--limit", "8", "--out", str(first)),
                           capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert again.returncode == 2 and "already holds a run" in again.stderr


def test_default_folder_names_a_model_file_by_its_last_part() -> None:
    for model, ends in [("mobilenet_v2", "-mobilenet_v2"), ("/tmp/m/net.onnx", "-net.onnx"),
                        ("./mycnn.py:MyCNN", "-mycnn.py-MyCNN")]:  # fmt: skip
        folder = runfolder.default_folder(model)
        assert folder.parent == Path("runs") and folder.name.endswith(ends), folder
