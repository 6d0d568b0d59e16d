"""Prometheus metrics served from inside a worker process (``edgesplit worker --metrics-port``).

The device gauges carry the same names as the run's (``edgesplit_device_cpu_percent{device=...}``,
see :mod:`edgesplit.metrics.prometheus`), so one Grafana dashboard shows either source; they are
read from the worker's sampler when Prometheus scrapes (no thread of their own). The stage
counters are the worker's own: images and micro-batches computed, compute time (a histogram in
seconds) and output bytes handed to the link, labelled with the stage index of the plan epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from edgesplit.metrics.prometheus import (
    CPU_HELP,
    FREQ_HELP,
    MB,
    MEMORY_HELP,
    RSS_HELP,
    SYSTEM_CPU_HELP,
    TEMPERATURE_HELP,
)
from edgesplit.runtime.sampler import DeviceSample

POWER_HELP = "Device power from its meter (absent without one; see power_source in samples)"
COMPUTE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""A micro-batch stage takes milliseconds (a few units at 32 px) to seconds (224 px on a Pi)."""

SAMPLE_GAUGES: dict[str, tuple[str, str, float]] = {
    # DeviceSample field -> (metric, help, scale to the metric's unit)
    "process_cpu_percent": ("edgesplit_device_cpu_percent", CPU_HELP, 1.0),
    "cpu_percent": ("edgesplit_device_system_cpu_percent", SYSTEM_CPU_HELP, 1.0),
    "cpu_freq_mhz": ("edgesplit_device_cpu_frequency_hertz", FREQ_HELP, 1e6),
    "memory_percent": ("edgesplit_device_memory_used_ratio", MEMORY_HELP, 0.01),
    "rss_mb": ("edgesplit_device_rss_bytes", RSS_HELP, MB),
    "temperature_c": ("edgesplit_device_temperature_celsius", TEMPERATURE_HELP, 1.0),
    "power_w": ("edgesplit_device_power_watts", POWER_HELP, 1.0),
}


class WorkerView(Protocol):
    """What the metrics read from a :class:`~edgesplit.runtime.worker.Worker`."""

    def latest_sample(self) -> DeviceSample | None: ...

    def queue_depths(self) -> tuple[int, int]: ...


class _DeviceCollector(Collector):
    def __init__(self, device: str, worker: WorkerView) -> None:
        self.device = device
        self.worker = worker

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sample = self.worker.latest_sample()
        for field, (metric, text, scale) in SAMPLE_GAUGES.items():
            value = getattr(sample, field) if sample is not None else None
            family = GaugeMetricFamily(metric, text, labels=["device"])
            if value is not None:  # an absent sensor is no sample, never a 0
                family.add_metric([self.device], float(value) * scale)
            yield family
        queue, send_queue = self.worker.queue_depths()
        for metric, text, value in (
            ("edgesplit_device_queue_depth", "Micro-batches waiting for compute", queue),
            ("edgesplit_device_send_queue_depth", "Outputs waiting for a link", send_queue),
        ):
            family = GaugeMetricFamily(metric, text, labels=["device"])
            family.add_metric([self.device], float(value))
            yield family


class WorkerMetrics:
    """The metrics of one worker process, in their own registry. Pass :meth:`on_computed` as
    the worker's ``on_computed`` hook."""

    def __init__(
        self, device: str, worker: WorkerView, registry: CollectorRegistry | None = None
    ) -> None:
        self.device = device
        self.registry = registry or CollectorRegistry()
        r = self.registry
        labels = ["device", "stage"]
        self.images = Counter(
            "edgesplit_worker_images_computed", "Images this worker computed", labels, registry=r
        )
        self.batches = Counter(
            "edgesplit_worker_batches_computed", "Micro-batches computed", labels, registry=r
        )
        self.compute = Histogram(
            "edgesplit_worker_compute_seconds",
            "Stage compute time per micro-batch",
            labels,
            buckets=COMPUTE_BUCKETS_S,
            registry=r,
        )
        self.output_bytes = Counter(
            "edgesplit_worker_output_bytes",
            "Output tensor bytes handed to the link to the next hop",
            labels,
            registry=r,
        )
        r.register(_DeviceCollector(device, worker))

    def on_computed(self, stage: int, images: int, compute_s: float, bytes_out: int) -> None:
        labels = (self.device, str(stage))
        self.images.labels(*labels).inc(images)
        self.batches.labels(*labels).inc()
        self.compute.labels(*labels).observe(compute_s)
        self.output_bytes.labels(*labels).inc(bytes_out)


def serve(metrics: WorkerMetrics, port: int, addr: str = "127.0.0.1") -> None:
    """Serve ``/metrics`` on ``addr:port`` from a daemon thread (it ends with the process)."""
    start_http_server(port, addr=addr, registry=metrics.registry)
