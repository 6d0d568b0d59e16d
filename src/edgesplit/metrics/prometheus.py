"""Live run metrics for Prometheus (and Grafana: docs/grafana-dashboard.json), with the official
``prometheus_client``.

What the coordinator knows while a run goes (images done, elapsed time) is published on every
progress callback; per-device numbers arrive with the run summary at the end, because workers
send their samples and hop records only when the run finishes (live per-device gauges need the
runtime changes described in the report issue #7). Names carry their unit, as Prometheus asks:
``_percent``, ``_mhz``, ``_celsius``, ``_seconds``, ``_images_per_second``.

The server binds to loopback by default: metrics name devices and models, and there is no auth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

DEVICE_GAUGES: dict[str, tuple[str, str, float]] = {
    # summary device key -> (metric name, help, scale to the metric's unit)
    "cpu_percent": ("edgesplit_device_cpu_percent", "Worker process CPU, 100 = one core", 1.0),
    "system_cpu_percent": (
        "edgesplit_device_system_cpu_percent",
        "System CPU use of the device, percent of all cores",
        1.0,
    ),
    "cpu_freq_mhz": ("edgesplit_device_cpu_frequency_mhz", "Mean CPU frequency, MHz", 1.0),
    "memory_percent": ("edgesplit_device_memory_percent", "System memory in use, percent", 1.0),
    "rss_mb": ("edgesplit_device_rss_bytes", "Worker resident memory, bytes", 1024.0 * 1024.0),
    "temperature_c": ("edgesplit_device_temperature_celsius", "Mean CPU temperature", 1.0),
    "throughput_ips": (
        "edgesplit_device_throughput_images_per_second",
        "Images the device computed per second of run wall time",
        1.0,
    ),
    "compute_ms_per_batch": (
        "edgesplit_device_compute_seconds_per_batch",
        "Median stage compute time per micro-batch",
        1e-3,
    ),
    "queue_ms": ("edgesplit_device_queue_seconds", "Median wait before compute", 1e-3),
    "bytes_sent": ("edgesplit_device_sent_bytes", "Activation bytes sent to the next hop", 1.0),
}


def device_samples(summary: Mapping[str, Any]) -> Iterator[tuple[str, str, float]]:
    """(metric name, device, value in the metric's unit) for every known number in a run
    summary's per-device list; absent sensors (None) are skipped, not exported as 0."""
    for device in summary.get("devices") or []:
        for key, (metric, _, scale) in DEVICE_GAUGES.items():
            value = device.get(key)
            if isinstance(value, (int, float)):
                yield metric, str(device["name"]), float(value) * scale


class RunMetrics:
    """The gauges of one run, in their own registry (so tests and several runs in one process
    do not collide with the global default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.images_done = Gauge("edgesplit_images_completed", "Images with a result", registry=r)
        self.images_total = Gauge("edgesplit_images_total", "Images in the run", registry=r)
        self.elapsed = Gauge(
            "edgesplit_run_elapsed_seconds", "Time since the run started", registry=r
        )
        self.throughput = Gauge(
            "edgesplit_throughput_images_per_second",
            "Images with a result per second since the run started",
            registry=r,
        )
        self.latency = Gauge(
            "edgesplit_latency_seconds",
            "End-to-end latency per micro-batch (upload start to result)",
            ["quantile"],
            registry=r,
        )
        self.device = {
            metric: Gauge(metric, text, ["device"], registry=r)
            for metric, text, _ in DEVICE_GAUGES.values()
        }

    def on_progress(self, done: int, total: int, elapsed_s: float) -> None:
        self.images_done.set(done)
        self.images_total.set(total)
        self.elapsed.set(elapsed_s)
        if elapsed_s > 0:
            self.throughput.set(done / elapsed_s)

    def on_summary(self, summary: Mapping[str, Any]) -> None:
        self.throughput.set(float(summary.get("throughput_ips") or 0.0))
        for q, key in (("0.5", "p50"), ("0.95", "p95")):
            value = (summary.get("latency_ms") or {}).get(key)
            if value is not None:
                self.latency.labels(quantile=q).set(value / 1000)
        for metric, device, value in device_samples(summary):
            self.device[metric].labels(device=device).set(value)

    def wrap(
        self, progress: Callable[[int, int, float], None]
    ) -> Callable[[int, int, float], None]:
        """A progress callback that updates the gauges, then calls ``progress``."""

        def both(done: int, total: int, elapsed_s: float) -> None:
            self.on_progress(done, total, elapsed_s)
            progress(done, total, elapsed_s)

        return both


def serve(metrics: RunMetrics, port: int, addr: str = "127.0.0.1") -> None:
    """Serve ``/metrics`` on ``addr:port`` from a daemon thread (it ends with the process)."""
    start_http_server(port, addr=addr, registry=metrics.registry)
