"""The per-device table printed at the end of a run (the same numbers as ``devices.csv``)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from edgesplit.metrics.runsummary import DeviceRow, RunSummary


def _f(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def _params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def device_table(summary: RunSummary, rows: Sequence[DeviceRow]) -> Table:
    latency, accuracy = summary.latency_ms, summary.accuracy
    title = (
        f"{summary.model} on {summary.dataset}: {summary.images} images, "
        f"batch {summary.batch_size}, {_f(summary.throughput_ips)} images/s, "
        f"end-to-end {_f(summary.wall_s, 2)} s, latency p50 {_f(latency.p50)} ms "
        f"p95 {_f(latency.p95)} ms, accuracy "
        f"{'n/a (no labels)' if accuracy is None else f'{accuracy:.4f}'}, "
        f"params {_params(summary.params_total)}"
    )
    table = Table(title=title, title_justify="left")
    columns = [
        ("Device", "left"),
        ("Units [start, end)", "left"),
        ("Layers", "left"),
        ("Params", "right"),
        ("Throughput (img/s)", "right"),
        ("Capacity (img/s)", "right"),
        ("Net latency (ms)", "right"),
        ("Time/batch (ms)", "right"),
        ("Time/image (ms)", "right"),
        ("Queue (ms)", "right"),
        ("CPU % (proc)", "right"),
        ("CPU MHz", "right"),
        ("Mem %", "right"),
        ("RSS MB", "right"),
        ("Temp °C", "right"),
    ]
    for name, justify in columns:
        # On a narrow console a device name is never cut (it is what the row is about) and
        # layer names fold instead of ending in an ellipsis.
        table.add_column(
            name,
            justify=justify,  # type: ignore[arg-type]
            no_wrap=name == "Device",
            overflow="fold" if name == "Layers" else "ellipsis",
        )
    for row in rows:
        table.add_row(
            row.name,
            f"[{row.units[0]}, {row.units[1]})",
            row.layers,
            _params(row.params),
            _f(row.throughput_ips),
            _f(row.capacity_ips),
            _f(row.net_latency_ms, 2),
            _f(row.compute_ms_per_batch, 2),
            _f(row.compute_ms_per_image, 3),
            _f(row.queue_ms, 2),
            _f(row.cpu_percent),
            _f(row.cpu_freq_mhz, 0),
            _f(row.memory_percent),
            _f(row.rss_mb, 0),
            _f(row.temperature_c),
        )
    return table
