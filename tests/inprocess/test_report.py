"""edgesplit report: plots and HTML from a real emulated run folder, exports, and clear errors for
missing or truncated run folders."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from edgesplit.cli import main
from edgesplit.errors import ConfigError
from edgesplit.metrics import report
from tests.summaries import a_summary
from tests.summaries import device as device_row

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("timeline", "devices", "latency_cdf", "stages")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short emulated run (3 real worker processes), made through the CLI --report path."""
    out = tmp_path_factory.mktemp("run") / "r1"
    args = [
        "run",
        "--devices",
        "3",
        "--model",
        "squeezenet1_1",
        "--random-weights",
        "--input-size",
        "32",
        "--limit",
        "192",
        "--batch-size",
        "8",
        "--out",
        str(out),
        "--report",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


def check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 5000, f"{path} is only {len(data)} bytes"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size[0] > 400 and image.size[1] > 200, image.size


@pytest.mark.slow
def test_run_with_report_writes_every_plot_embedded_in_html(run_dir: Path) -> None:
    page = (run_dir / "report.html").read_text()
    for name in PLOTS:
        png = run_dir / f"{name}.png"
        check_png(png)
        assert base64.b64encode(png.read_bytes()).decode() in page, f"{name} not embedded"
        assert f"title='{name}.png'" in page
    summary = json.loads((run_dir / "summary.json").read_text())
    for device in summary["devices"]:
        assert f"<td>{device['name']}</td>" in page  # the per-device table


@pytest.mark.slow
def test_compare_writes_side_by_side(run_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "r2"
    shutil.copytree(run_dir, other)
    result = CliRunner().invoke(
        main, ["report", str(run_dir), "--compare", str(other), "--out", str(tmp_path / "rep")]
    )
    assert result.exit_code == 0, result.output
    for name in (*PLOTS, "compare"):
        check_png(tmp_path / "rep" / f"{name}.png")
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "Runs compared" in page and "<td>r2</td>" in page


@pytest.mark.slow
def test_reductions_agree_with_the_summary(run_dir: Path) -> None:
    run = report.load_run(run_dir)
    latencies = sorted(report.request_latencies_ms(run.hops).values())
    n = len(latencies)
    p50 = latencies[-(-50 * n // 100) - 1]
    assert p50 == pytest.approx(run.summary.latency_ms.p50, rel=1e-6)
    # The four parts of a hop laid end to end reach the next hop's arrival.
    ids = report.timeline_window(run.hops, 20)
    assert len(ids) == 20
    t0 = report.run_start(run.hops)
    spans = report.intervals(run.hops, ids, t0)
    for hop in (h for h in run.hops if h.request_id == ids[0]):
        last = max(s.end_s for s in spans if s.device == hop.device and s.request_id == ids[0])
        assert last == pytest.approx(hop.end - t0, abs=2e-3)
    bins = report.throughput_bins(run.hops, report.bin_width_s(run.hops), t0)
    span = max(h.end for h in run.hops) - t0
    for device, (starts, rates) in bins.items():
        widths = [b - a for a, b in zip(starts, [*starts[1:], span], strict=True)]
        images = sum(r * w for r, w in zip(rates, widths, strict=True))
        assert images == pytest.approx(run.summary.completed_images), device


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_export_tables(run_dir: Path, tmp_path: Path, fmt: str) -> None:
    result = CliRunner().invoke(
        main, ["report", str(run_dir), "--format", fmt, "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    if fmt == "json":
        data = json.loads((tmp_path / "report.json").read_text())
        assert set(data) == {"devices", "stages", "latency", "runs"}
    else:
        header = (tmp_path / "report_stages.csv").read_text().splitlines()[0]
        assert header == "stage,device,queue_ms,compute_ms,send_ms,transfer_ms"


def test_parquet_without_pyarrow_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="needs pyarrow"):
        report.export(tmp_path, "parquet")


def test_missing_folder_is_one_line() -> None:
    result = CliRunner().invoke(main, ["report", "/nonexistent/run"])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "/nonexistent/run does not exist" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("name", report.REQUIRED)
def test_missing_file_names_it(run_dir: Path, tmp_path: Path, name: str) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / name).unlink()
    result = CliRunner().invoke(main, ["report", str(broken)])
    assert result.exit_code == 2
    assert f"has no {name}" in result.output and "\n" not in result.output.strip()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["summary.json", "requests.csv", "samples.csv"])
def test_truncated_file_names_it(run_dir: Path, tmp_path: Path, name: str) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    text = (broken / name).read_text()
    cut = len(text) * 2 // 3 + 7
    while text[cut - 1] == "\n":  # mid-line whatever the run wrote (a cut after a newline
        cut += 1  # leaves whole rows: not truncated)
    (broken / name).write_text(text[:cut])
    with pytest.raises(ConfigError, match=name):
        report.load_run(broken)


SUMMARY = a_summary(
    throughput_ips=400.0,
    latency_ms={"p50": 80.0, "p95": 130.0, "mean": 90.0},
    devices=[
        device_row("pi1", 0, cpu_percent=47.0, cpu_freq_mhz=1500.0, temperature_c=None),
        device_row("pi2", 1, cpu_percent=33.0, rss_mb=2.0, compute_ms_per_batch=12.5),
    ],
)


def test_prometheus_gauges_from_a_summary_with_units() -> None:
    from prometheus_client import generate_latest

    from edgesplit.metrics.prometheus import RunMetrics, device_samples

    samples = set(device_samples(SUMMARY))
    assert ("edgesplit_device_rss_bytes", "pi2", 2 * 1024 * 1024) in samples
    assert ("edgesplit_device_compute_seconds_per_batch", "pi2", 0.0125) in samples
    assert not any(m == "edgesplit_device_temperature_celsius" for m, _, _ in samples)  # absent
    metrics = RunMetrics()
    metrics.wrap(lambda *_: None)(64, 256, 0.5)
    text = generate_latest(metrics.registry).decode()
    assert "edgesplit_throughput_images_per_second 128.0" in text
    metrics.on_summary(SUMMARY)
    text = generate_latest(metrics.registry).decode()
    assert 'edgesplit_device_cpu_percent{device="pi1"} 47.0' in text
    assert 'edgesplit_latency_seconds{quantile="0.95"} 0.13' in text


def test_prometheus_serves_on_loopback() -> None:
    import socket
    import urllib.request

    from edgesplit.metrics.prometheus import RunMetrics, serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics = RunMetrics()
    metrics.on_summary(SUMMARY)
    serve(metrics, port)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    assert 'edgesplit_device_cpu_frequency_hertz{device="pi1"} 1.5e+09' in body


def test_grafana_dashboard_uses_only_metrics_we_export() -> None:
    import re

    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from edgesplit.metrics.prometheus import RunMetrics
    from edgesplit.metrics.worker_prometheus import WorkerMetrics

    class Idle:
        def latest_sample(self) -> None:
            return None

        def queue_depths(self) -> tuple[int, int]:
            return 0, 0

    run, worker = RunMetrics(), WorkerMetrics("pi1", Idle())
    run.on_summary(SUMMARY)
    worker.on_computed(0, 8, 0.1, 100)
    exported = {
        name
        for registry in (run.registry, worker.registry)
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for name in (family.name, *(s.name for s in family.samples))
    }
    dashboard = json.loads((Path(__file__).parents[2] / "docs/grafana-dashboard.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"edgesplit_\w+", target["expr"])
    }
    assert used and used <= exported, used - exported


def test_marks_collect_faults_losses_and_plan_changes_in_time_order() -> None:
    from edgesplit.metrics.report import marks

    summary = a_summary(
        injected=[{"time_s": 2.0, "spec": "pi2:stress@2s", "action": "stress", "devices": ["pi2"]}],
        failures=[{"time_s": 3.5, "device": "pi3", "reason": "no heartbeat"}],
        plan_changes=[
            {"time_s": 3.6, "epoch": 2, "reason": "pi3 lost", "stages": []},
            {"time_s": 1.0, "epoch": 1, "reason": "adaptive: faster", "stages": []},
        ],
    )
    got = [(m.time_s, m.kind, m.label) for m in marks(summary)]
    assert got == [
        (1.0, "plan", "plan epoch 1"),
        (2.0, "fault", "pi2:stress@2s"),
        (3.5, "lost", "pi3 lost"),
        (3.6, "plan", "plan epoch 2"),
    ]
    assert marks(a_summary()) == []
