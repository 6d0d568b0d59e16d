"""Live metrics as a user sees them (issue #7): ``edgesplit run --metrics-port`` scraped while
the run goes, its plain dashboard lines in a log, and ``edgesplit worker --metrics-port``."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.inprocess.test_cli_run import SMALL, Cli, cli_fixture

__all__ = ["cli_fixture"]  # the ``cli`` fixture, used here too

Samples = dict[tuple[str, str], float]
"""(metric sample name, device label) -> value."""

# Two devices, one micro-batch in flight and 200 ms links: ~5 s of run with the CPUs mostly
# free, long enough for several scrapes and a few dashboard lines.
LIVE_RUN = [
    "run", "--devices", "2", "--partition", "0-16,16-", "--limit", "64", "--input-size", "32",
    *SMALL, "--window", "1", "--latency-ms", "200",
]  # fmt: skip
START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> Samples | None:
    """The endpoint's samples by (name, device), or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
    return {
        (s.name, s.labels.get("device", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.slow
def test_run_metrics_endpoint_has_every_devices_throughput_and_cpu_during_the_run(
    cli: Any, tmp_path: Path
) -> None:
    port = free_port()
    run: Cli = cli(*LIVE_RUN, "--metrics-port", str(port), "--out", str(tmp_path / "run"))
    run.wait_for_stderr("running 64 images", START_TIMEOUT_S)
    during: list[Samples] = []
    while run.proc.poll() is None:
        got = scrape(port)
        if got is not None and run.proc.poll() is None:  # still running when scraped
            during.append(got)
        time.sleep(0.3)
    assert run.wait(30) == 0, run.stderr
    assert len(during) >= 3, f"only {len(during)} scrapes during the run:\n{run.stderr}"
    for device in ("pi1", "pi2"):
        cpu = [s[("edgesplit_device_cpu_percent", device)] for s in during if
               ("edgesplit_device_cpu_percent", device) in s]  # fmt: skip
        rate = [s.get(("edgesplit_device_throughput_images_per_second", device)) for s in during]
        assert cpu, f"no CPU gauge for {device} in {len(during)} scrapes"
        assert any(r is not None and r > 0 for r in rate), (device, rate)
        assert any(("edgesplit_device_queue_depth", device) in s for s in during), device
    assert any(s.get(("edgesplit_throughput_images_per_second", ""), 0) > 0 for s in during)
    assert any(s.get(("edgesplit_images_completed_total", ""), 0) > 0 for s in during)

    # stderr is a pipe here: the dashboard is plain lines, the pipeline then one per device.
    lines = run.stderr.splitlines()
    blocks = [i for i, line in enumerate(lines) if line.startswith("  live ")]
    assert blocks, run.stderr
    assert "/64 images | " in lines[blocks[0]] and " img/s p50 " in lines[blocks[0]]
    assert lines[blocks[0] + 1].startswith("    pi1 stage 0: cpu ")
    assert lines[blocks[0] + 2].startswith("    pi2 stage 1: cpu ")
    assert lines[blocks[0] + 1].endswith(" img/s")


@pytest.mark.slow
def test_worker_metrics_endpoint_serves_its_device_cpu(cli: Any, tmp_path: Path) -> None:
    port = free_port()
    ready = tmp_path / "ready"
    worker: Cli = cli(
        "worker", "--name", "w9", "--listen", "127.0.0.1:0", "--insecure-no-token",
        "--metrics-port", str(port), "--ready-file", str(ready),
    )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    got: Samples | None = None
    while time.monotonic() < deadline and worker.proc.poll() is None:
        got = scrape(port) if ready.exists() else None
        if got is not None and ("edgesplit_device_cpu_percent", "w9") in got:
            break
        time.sleep(0.2)
    assert got is not None and ("edgesplit_device_cpu_percent", "w9") in got, worker.stderr
    assert got[("edgesplit_device_rss_bytes", "w9")] > 1e6
    assert 0 < got[("edgesplit_device_memory_used_ratio", "w9")] < 1
    assert got[("edgesplit_device_queue_depth", "w9")] == 0
    assert f"worker w9 metrics on http://127.0.0.1:{port}/metrics" in worker.stderr
    worker.proc.terminate()
    assert worker.wait(20) == 0, worker.stderr
