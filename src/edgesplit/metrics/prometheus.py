"""Run metrics for Prometheus (and Grafana: docs/grafana-dashboard.json), with the official
``prometheus_client``.

Live during the run: per device (``{device="pi1"}``) the readings of its sampler, its queue
depths and its throughput over the last few seconds (from the snapshots of
:mod:`edgesplit.runtime.live`), and the pipeline's throughput and latency quantiles over the
same window. At the end, the run summary's whole-run numbers replace them. Names follow the
Prometheus conventions: base units in the name (``_hertz``, ``_bytes``, ``_seconds``,
``_celsius``), ``_ratio`` for fractions, ``_total`` for counters; CPU stays in percent
(100 = one core), as the per-device table shows it.

The server binds to loopback by default: metrics name devices and models, and there is no auth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from edgesplit.runtime.health import DeviceState
from edgesplit.runtime.live import LiveSnapshot
from edgesplit.shared.runsummary import RunSummary

HEALTH_STATES = tuple(s.value for s in DeviceState)

MB = 1024.0 * 1024.0

CPU_HELP = "Worker process CPU, percent of one core (100 = one core busy)"
SYSTEM_CPU_HELP = "System CPU use of the device, percent of all cores"
FREQ_HELP = "CPU frequency"
MEMORY_HELP = "System memory in use, 0-1"
RSS_HELP = "Worker process resident memory"
TEMPERATURE_HELP = "CPU temperature"

DEVICE_GAUGES: dict[str, tuple[str, str, float]] = {
    # summary device key -> (metric name, help, scale to the metric's unit)
    "cpu_percent": ("edgesplit_device_cpu_percent", CPU_HELP, 1.0),
    "system_cpu_percent": ("edgesplit_device_system_cpu_percent", SYSTEM_CPU_HELP, 1.0),
    "cpu_freq_mhz": ("edgesplit_device_cpu_frequency_hertz", FREQ_HELP, 1e6),
    "memory_percent": ("edgesplit_device_memory_used_ratio", MEMORY_HELP, 0.01),
    "rss_mb": ("edgesplit_device_rss_bytes", RSS_HELP, MB),
    "temperature_c": ("edgesplit_device_temperature_celsius", TEMPERATURE_HELP, 1.0),
    "throughput_ips": (
        "edgesplit_device_throughput_images_per_second",
        "Images the device passed on per second (last few seconds; the whole run at the end)",
        1.0,
    ),
    "compute_ms_per_batch": (
        "edgesplit_device_compute_seconds_per_batch",
        "Median stage compute time per micro-batch (at the end of the run)",
        1e-3,
    ),
    "queue_ms": (
        "edgesplit_device_queue_wait_seconds",
        "Median wait before compute (at the end of the run)",
        1e-3,
    ),
    "bytes_sent": (
        "edgesplit_device_sent_bytes",
        "Activation bytes sent to the next hop (at the end of the run)",
        1.0,
    ),
}

LIVE_DEVICE_GAUGES: dict[str, tuple[str, float]] = {
    # DeviceSnapshot attribute -> (metric name, scale); the metrics are DEVICE_GAUGES' or below
    "process_cpu_percent": ("edgesplit_device_cpu_percent", 1.0),
    "cpu_percent": ("edgesplit_device_system_cpu_percent", 1.0),
    "cpu_freq_mhz": ("edgesplit_device_cpu_frequency_hertz", 1e6),
    "memory_percent": ("edgesplit_device_memory_used_ratio", 0.01),
    "rss_mb": ("edgesplit_device_rss_bytes", MB),
    "temperature_c": ("edgesplit_device_temperature_celsius", 1.0),
    "throughput_ips": ("edgesplit_device_throughput_images_per_second", 1.0),
    "queue_depth": ("edgesplit_device_queue_depth", 1.0),
    "send_queue_depth": ("edgesplit_device_send_queue_depth", 1.0),
    "stage": ("edgesplit_device_stage", 1.0),
    "reachable": ("edgesplit_device_up", 1.0),
}

LIVE_ONLY_GAUGES: dict[str, str] = {
    "edgesplit_device_queue_depth": "Micro-batches waiting for the device's compute",
    "edgesplit_device_send_queue_depth": "Outputs waiting for the device's outgoing link",
    "edgesplit_device_stage": "Stage index the device runs in the current plan",
    "edgesplit_device_up": "1 while the device answers Status calls, 0 when it does not",
}


def device_samples(summary: RunSummary) -> Iterator[tuple[str, str, float]]:
    """(metric name, device, value in the metric's unit) for every known number in a run
    summary's per-device list; absent sensors (None) are skipped, not exported as 0."""
    for device in summary.device_rows:
        for key, (metric, _, scale) in DEVICE_GAUGES.items():
            value = getattr(device, key)
            if isinstance(value, (int, float)):
                yield metric, device.name, float(value) * scale


class RunMetrics:
    """The metrics of one run, in their own registry (so tests and several runs in one process
    do not collide with the global default). Feed it :meth:`on_progress`, :meth:`on_live` and,
    at the end, :meth:`on_summary`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.images_done = Counter("edgesplit_images_completed", "Images with a result", registry=r)
        self.run_images = Gauge("edgesplit_run_images", "Images in the run", registry=r)
        self.elapsed = Gauge(
            "edgesplit_run_elapsed_seconds", "Time since the run started", registry=r
        )
        self.throughput = Gauge(
            "edgesplit_throughput_images_per_second",
            "Images with a result per second (last few seconds; the whole run at the end)",
            registry=r,
        )
        self.latency = Gauge(
            "edgesplit_latency_seconds",
            "End-to-end latency per micro-batch, upload start to result (last few seconds; "
            "the whole run at the end)",
            ["quantile"],
            registry=r,
        )
        self.failures = Counter(
            "edgesplit_failures", "Failed requests reported by workers", registry=r
        )
        self.device = {
            metric: Gauge(metric, text, ["device"], registry=r)
            for metric, text, _ in DEVICE_GAUGES.values()
        }
        self.device.update(
            (metric, Gauge(metric, text, ["device"], registry=r))
            for metric, text in LIVE_ONLY_GAUGES.items()
        )
        self.device_state = Gauge(
            "edgesplit_device_state",
            "1 for the coordinator's current view of the device (healthy, suspect, lost, "
            "probation), 0 for the others",
            ["device", "state"],
            registry=r,
        )
        self.device_images = Counter(
            "edgesplit_device_images", "Images the device passed on", ["device"], registry=r
        )
        self._done = 0
        self._failures = 0
        self._device_images: dict[str, int] = {}
        self._live = False

    def on_progress(self, done: int, total: int, elapsed_s: float) -> None:
        self.images_done.inc(max(done - self._done, 0))
        self._done = max(done, self._done)
        self.run_images.set(total)
        self.elapsed.set(elapsed_s)
        if not self._live and elapsed_s > 0:  # until the first live snapshot
            self.throughput.set(done / elapsed_s)

    def on_live(self, snapshot: LiveSnapshot) -> None:
        """Every gauge the live view knows, set from ``snapshot`` (absent sensors stay unset)."""
        self._live = True
        self.throughput.set(snapshot.throughput_ips)
        for q, value in (("0.5", snapshot.latency_p50_s), ("0.95", snapshot.latency_p95_s)):
            if value is not None:
                self.latency.labels(quantile=q).set(value)
        self.failures.inc(max(snapshot.failures - self._failures, 0))
        self._failures = max(snapshot.failures, self._failures)
        for device in snapshot.devices:
            for attribute, (metric, scale) in LIVE_DEVICE_GAUGES.items():
                value = getattr(device, attribute)
                if value is not None:
                    self.device[metric].labels(device=device.name).set(float(value) * scale)
            if device.health is not None:
                for state in HEALTH_STATES:
                    value = 1.0 if state == device.health else 0.0
                    self.device_state.labels(device=device.name, state=state).set(value)
            seen = self._device_images.get(device.name, 0)
            self.device_images.labels(device=device.name).inc(max(device.images - seen, 0))
            self._device_images[device.name] = max(device.images, seen)

    def on_summary(self, summary: RunSummary) -> None:
        self.throughput.set(summary.throughput_ips or 0.0)
        for q, value in (("0.5", summary.latency_ms.p50), ("0.95", summary.latency_ms.p95)):
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
