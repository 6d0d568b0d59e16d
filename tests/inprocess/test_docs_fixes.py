"""Issue #20's fixes that need no cluster: the table's width, the input-size check, injections
that never fired, dataset messages, the light ``run --help``, package-data checkpoints."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from edgesplit.app.job import checked_input_size
from edgesplit.cluster.faults import Injector, parse_injections
from edgesplit.errors import ConfigError, DataError
from edgesplit.metrics.summary import DeviceRow
from edgesplit.metrics.table import device_table
from edgesplit.model import checkpoints, data
from tests.summaries import a_summary, stage


def _rows(names: list[str]) -> list[DeviceRow]:
    return [
        DeviceRow(
            name=name,
            stage=i,
            units=(10 * i, 10 * i + 11),
            layers="features_10_conv_0_0 .. features_16_conv_3",
            params=1_543_210,
            images=10_000,
            throughput_ips=2405.123456,
            capacity_ips=12345.6789,
            compute_ms_per_batch=123.456,
            compute_ms_per_image=15.432,
            queue_ms=1234.56,
            net_latency_ms=123.456,
            bytes_sent=10,
            cpu_percent=100.0,
            system_cpu_percent=190.0,
            cpu_freq_mhz=2450.0,
            memory_percent=85.5,
            rss_mb=1234.0,
            temperature_c=None,
        )
        for i, name in enumerate(names)
    ]


SUMMARY = a_summary(
    model="mobilenet_v3_small", dataset="fashion-mnist", images=10000, batch_size=16,
    throughput_ips=2405.1, wall_s=4.16, accuracy=0.9054,
    latency_ms={"p50": 10.2, "p95": 20.4}, params_total=1_543_210,
)  # fmt: skip


def _render(width: int, wide: bool = False) -> str:
    console = Console(width=width, file=io.StringIO())
    rows = _rows(["pi1", "pi2", "pi3", "pi4"])
    console.print(device_table(SUMMARY, rows, {r.name: 57 for r in rows}, wide=wide))
    return console.file.getvalue()  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize("width", [120, 1000])
def test_default_table_fits_120_columns_with_nothing_cut(width: int) -> None:
    # 1000: what `run` prints into a pipe or a log (the table at its natural width).
    text = _render(width)
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 120, text
    assert "…" not in text
    for number in ("2405.1", "12345.7", "123.46", "1234.56", "1234", "1.54M", "[30, 41)"):
        assert number in text, (number, text)
    assert "Layers" in text and " 57 " in text  # the layer count per device


def test_default_table_fits_a_120_column_terminal_given_by_columns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    console = Console(file=io.StringIO(), force_terminal=True, color_system=None)
    assert console.width == 120
    rows = _rows(["pi1", "pi2", "pi3"])
    console.print(device_table(SUMMARY, rows, {r.name: 5 for r in rows}))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 120
    assert "…" not in text


def test_wide_table_adds_layer_names_and_the_sampler_columns() -> None:
    narrow, wide = _render(1000), _render(1000, wide=True)
    for extra in ("features_10_conv_0_0 .. features_16_conv_3", "MHz", "Temp", "2450"):
        assert extra in wide and extra not in narrow


def test_an_input_size_the_checkpoint_was_not_trained_at_is_refused() -> None:
    path = Path("ck.safetensors")
    assert checked_input_size(None, 32, path) == 32
    assert checked_input_size(32, 32, path) == 32
    with pytest.raises(ConfigError, match=r"--input-size 224: .* trained at 32 px.*chance"):
        checked_input_size(224, 32, path)


class _Cluster:
    """The injector's view of an emulated cluster: only what these injections call."""

    def __init__(self) -> None:
        self.killed: list[str] = []

    def kill(self, name: str) -> None:
        self.killed.append(name)


def test_injections_not_yet_due_when_the_run_ends_are_reported_as_not_fired() -> None:
    cluster = _Cluster()
    specs = ["pi1:kill@0s", "pi2:pause@300s+5s"]
    injector = Injector(cluster, parse_injections(specs, ["pi1", "pi2"]))  # type: ignore[arg-type]
    injector.start()
    deadline = time.monotonic() + 30
    while not injector.events and time.monotonic() < deadline:
        time.sleep(0.01)
    injector.stop()
    assert cluster.killed == ["pi1"]
    assert [e["spec"] for e in injector.events] == ["pi1:kill@0s"]
    assert injector.not_fired() == [
        {"spec": "pi2:pause@300s+5s", "action": "pause", "at_s": 300.0},
        {"spec": "pi2:pause@300s+5s", "action": "end pause", "at_s": 305.0},
    ]


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100", "fashion-mnist"])
def test_missing_dataset_says_which_files_data_dir_needs(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError) as info:
        data._load_mnist(data.DATASETS[name], False, [tmp_path], False) if "mnist" in name else (
            data._load_cifar(data.DATASETS[name], False, [tmp_path], False)
        )
    message = str(info.value)
    assert "--download" in message and "--data-dir DIR with" in message
    assert ("t10k-images-idx3-ubyte" if "mnist" in name else "cifar-") in message


@pytest.mark.parametrize("command", ["run", "eval", "train"])
def test_every_command_whose_messages_promise_download_has_it(command: str) -> None:
    from click.testing import CliRunner

    from edgesplit.cli import main

    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0 and "--download" in result.output


def test_run_help_lists_the_known_datasets_without_importing_torch() -> None:
    code = (
        "import sys, edgesplit.cli.run as r; print(r.DATASETS_HELP); print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == [", ".join(data.known_datasets()), "False"]


def test_shipped_checkpoints_are_package_data() -> None:
    package = Path(checkpoints.__file__).parent.parent  # edgesplit/, where pyproject ships them
    assert (package / "_shipped" / "MANIFEST.json").is_file()
    manifest = json.loads((checkpoints.SHIPPED_DIR / "MANIFEST.json").read_text())
    assert checkpoints.shipped("mobilenet_v2").is_file()
    assert manifest


def test_doctor_version_fix_pins_no_local_build_tag() -> None:
    from edgesplit.cluster.doctor import version_fix

    fix = version_fix("pi1", ("0.1.0", "2.14.1+cu130"), torch_differs=True)
    assert "+cu130" not in fix and "torch==2.14.1" in fix and "whl/cpu" in fix
    assert version_fix("pi1", ("0.1.0", "2.14.1"), torch_differs=False) == (
        "pip install edgesplit==0.1.0 on pi1"
    )


def test_certs_for_the_coordinator_print_the_cluster_file_entry(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgesplit.cli import main

    runner = CliRunner()
    assert runner.invoke(main, ["certs", "init", str(tmp_path)]).exit_code == 0
    coordinator = runner.invoke(main, ["certs", "issue", str(tmp_path), "coordinator"])
    assert coordinator.exit_code == 0
    assert "tls: {ca:" in coordinator.output and "--tls-cert" not in coordinator.output
    worker = runner.invoke(main, ["certs", "issue", str(tmp_path), "pi1"])
    assert "--tls-cert" in worker.output


def test_report_rounds_numbers_and_prints_half_open_units() -> None:
    from edgesplit.metrics.report import _cell_text, device_tables, energy_section, plan_section

    assert _cell_text("1520.0551007217202") == "1520.1"
    assert _cell_text("0.12345678") == "0.123" and _cell_text("6960") == "6960"
    assert _cell_text("features_0_0 .. add_3") == "features_0_0 .. add_3"
    row = {
        "name": "pi1", "units": "[0, 21]", "params": "6960", "throughput_ips": "47.11332878",
        "capacity_ips": "", "compute_ms_per_batch": "69.6356", "cpu_freq_mhz": "2596.138",
        "layers": "a .. b",
    }  # fmt: skip
    pipeline, sensors = device_tables([row])
    assert pipeline[0]["units [start, end)"] == "[0, 21)"
    assert "CPU MHz" in sensors[0] and "CPU MHz" not in pipeline[0]  # two tables fit a page
    predicted_stage = {"device": "pi1", "units": [0, 21], "compute_ms": 50.0, "latency_ms": 50.0,
                       "transfer_ms": 1.0, "memory_bytes": 0, "energy_mj": 1.0}  # fmt: skip
    summary = a_summary(
        predicted={"objective": "throughput", "precision": "fp32", "throughput_ips": 100.0,
                   "latency_ms": 60.0, "bottleneck_ms": 50.0, "energy_j_per_image": 0.2,
                   "stages": [predicted_stage]},
        throughput_ips=80.0,
        plan={"epoch": 1, "stages": [stage("pi1", 0)]},
        plan_changes=[{"time_s": 3.8, "epoch": 2, "reason": "lost pi2",
                       "stages": [{"device": "pi1", "units": [0, 21]}]}],
        energy={"window_t": [0.0, 1.0], "energy_j": 4.0, "energy_j_per_image": 0.25,
                "model_energy_j": 4.0, "model_energy_j_per_image": 0.25, "metered": [],
                "devices": {}},
    )  # fmt: skip
    plan = plan_section(summary, [row])
    assert "predicted 100 img/s, measured 80 img/s (-20% against it)" in plan
    assert "69.64" in plan and "Plan history" in plan and "lost pi2" in plan
    assert "0.250 J/image" in energy_section(summary) and "0.200 J/image" in energy_section(summary)


def test_a_partition_may_name_the_device_of_each_stage() -> None:
    from edgesplit.errors import PartitionError
    from edgesplit.model.partition import split_devices

    assert split_devices("0-12,12-") == ("0-12,12-", None)
    assert split_devices("pi2:0-12, pi1:12-") == ("0-12,12-", ["pi2", "pi1"])
    with pytest.raises(PartitionError, match="some stages only"):
        split_devices("pi2:0-12,12-")
    with pytest.raises(PartitionError, match="pi2 two stages"):
        split_devices("pi2:0-12,pi2:12-")


def test_named_partition_devices_are_checked_against_the_cluster() -> None:
    from edgesplit.app.job import partition_devices
    from edgesplit.config import ClusterSpec

    spec = ClusterSpec.model_validate(
        {"devices": [{"name": n, "address": f"127.0.0.1:{5000 + i}"} for i, n in
                     enumerate(["pi1", "pi2", "pi3"])]}
    )  # fmt: skip
    assert partition_devices("0-5,5-", spec, 2) == ["pi1", "pi2"]
    assert partition_devices("pi3:0-5,pi1:5-", spec, 2) == ["pi3", "pi1"]
    with pytest.raises(ConfigError, match="names pi9"):
        partition_devices("pi9:0-5,pi1:5-", spec, 2)
