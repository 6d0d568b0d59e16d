"""The live view fed by a real run: workers and the coordinator in this process over gRPC on
127.0.0.1 (squeezenet1_1 at 32 px), the worker's own metrics counting the same work."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edgesplit.config import parse_cluster
from edgesplit.metrics.worker_prometheus import WorkerMetrics
from edgesplit.model import models
from edgesplit.runtime.coordinator import Coordinator
from edgesplit.runtime.live import LiveSnapshot
from edgesplit.runtime.worker import RunningWorker, WorkerConfig, serve

TOKEN = "live-test-token"
MODEL = "squeezenet1_1"
SIZE = 32


@pytest.fixture()
def workers(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> Iterator[list[RunningWorker]]:
    monkeypatch.setenv("EDGESPLIT_CACHE_DIR", str(tmp_path))
    running = [
        serve(WorkerConfig(name=f"w{i}", token=TOKEN, threads=1), "127.0.0.1:0") for i in range(2)
    ]
    yield running
    for w in running:
        w.stop(0.5)


def test_a_run_feeds_live_snapshots_and_worker_counters(workers: list[RunningWorker]) -> None:
    torch.manual_seed(0)
    model = models.build(MODEL, num_classes=10)
    metrics = WorkerMetrics("w0", workers[0].worker)
    workers[0].worker.on_computed = metrics.on_computed
    devices = [{"name": f"w{i}", "address": w.address} for i, w in enumerate(workers)]
    snapshots: list[LiveSnapshot] = []
    with Coordinator(parse_cluster({"token": TOKEN, "devices": devices})) as c:
        c.check()
        n = c.load_model(MODEL, 10, 3, SIZE, model)
        c.install_plan([("w0", 0, n // 2), ("w1", n // 2, n)])
        inputs = [(i, torch.randn(4, 3, SIZE, SIZE)) for i in range(6)]
        c.run(inputs, window=2, status_interval_s=0.1, on_live=snapshots.append)

    assert snapshots, "on_live was never called"
    last = snapshots[-1]
    assert last.images == 24
    assert [(d.name, d.stage, d.images) for d in last.devices] == [("w0", 0, 24), ("w1", 1, 24)]
    assert [d.health for d in last.devices] == ["healthy", "healthy"]  # from the heartbeats
    for name in ("w0", "w1"):
        seen = [d for s in snapshots for d in s.devices if d.name == name]
        assert any(d.throughput_ips > 0 for d in seen), name
        assert any(d.process_cpu_percent is not None for d in seen), name
        assert any(d.queue_depth is not None for d in seen), name
    assert any(s.latency_p50_s is not None and s.latency_p50_s > 0 for s in snapshots)

    text = generate_latest(metrics.registry).decode()
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    stage0 = (("device", "w0"), ("stage", "0"))
    assert got[("edgesplit_worker_images_computed_total", stage0)] == 24
    assert got[("edgesplit_worker_batches_computed_total", stage0)] == 6
    assert got[("edgesplit_worker_compute_seconds_count", stage0)] == 6
    assert got[("edgesplit_worker_output_bytes_total", stage0)] > 0
    assert ("edgesplit_device_cpu_percent", (("device", "w0"),)) in got
