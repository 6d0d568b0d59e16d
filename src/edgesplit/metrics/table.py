"""The per-device table printed at the end of a run (the same numbers as ``devices.csv``).

The default table fits a 120-column terminal (issue #20): one short column per number that
matters for the pipeline, with the layer count of each device's stage. ``wide=True`` adds the
stage's first and last layer, time per image, system CPU %, CPU MHz, memory % and temperature
(``devices.csv`` in the run folder has them all).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from rich import box
from rich.table import Table

from edgesplit.shared.runsummary import DeviceRow, RunSummary

Column = tuple[str, str, Callable[[DeviceRow], str]]
"""Header, justification, cell of a row."""


def _f(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def _params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def title(summary: RunSummary) -> str:
    latency, accuracy = summary.latency_ms, summary.accuracy
    return (
        f"{summary.model} on {summary.dataset}: {summary.images} images, "
        f"batch {summary.batch_size}, {_f(summary.throughput_ips)} images/s, "
        f"end-to-end {_f(summary.wall_s, 2)} s, latency p50 {_f(latency.p50)} ms "
        f"p95 {_f(latency.p95)} ms, accuracy "
        f"{'n/a (no labels)' if accuracy is None else f'{accuracy:.4f}'}, "
        f"params {_params(summary.params_total)}"
    )


def footer(summary: RunSummary) -> str | None:
    """The CPU line under the table: every process's CPU per image and the ``cpu_tax``."""
    cpu = summary.cpu
    if cpu is None:
        return None
    images = max(cpu.images, 1)
    workers = sum(cpu.devices_s.values()) * 1000.0 / images
    text = (
        f"CPU per image, every process: {cpu.cpu_ms_per_image:.2f} ms (coordinator "
        f"{cpu.coordinator_s * 1000.0 / images:.2f}, workers {workers:.2f})"
    )
    if cpu.cpu_tax is None or cpu.reference_ms_per_image is None:
        return text + "; cpu_tax n/a (no profile of the whole model)"
    return (
        f"{text}; cpu_tax {cpu.cpu_tax:.2f} against {cpu.reference_ms_per_image:.2f} ms for one "
        f"process running the whole model ({cpu.reference})"
    )


def _columns(layer_counts: Mapping[str, int], wide: bool) -> list[Column]:
    def layers(row: DeviceRow) -> str:
        count = layer_counts.get(row.name)
        return "n/a" if count is None else str(count)

    columns: list[Column] = [
        ("Device", "left", lambda r: r.name),
        ("Units\n[start, end)", "left", lambda r: f"[{r.units[0]}, {r.units[1]})"),
        ("Layers", "right", layers),
    ]
    if wide:
        columns.append(("First .. last layer", "left", lambda r: r.layers))
    columns += [
        ("Params", "right", lambda r: _params(r.params)),
        ("Throughput\nimg/s", "right", lambda r: _f(r.throughput_ips)),
        ("Capacity\nimg/s", "right", lambda r: _f(r.capacity_ips)),
        ("Net lat.\nms", "right", lambda r: _f(r.net_latency_ms, 2)),
        ("Time/batch\nms", "right", lambda r: _f(r.compute_ms_per_batch, 2)),
    ]
    if wide:
        columns.append(("Time/image\nms", "right", lambda r: _f(r.compute_ms_per_image, 3)))
    columns += [
        ("Queue\nms", "right", lambda r: _f(r.queue_ms, 2)),
        ("CPU %\nproc", "right", lambda r: _f(r.cpu_percent)),
    ]
    if wide:
        columns += [
            ("CPU %\nsystem", "right", lambda r: _f(r.system_cpu_percent)),
            ("CPU\nMHz", "right", lambda r: _f(r.cpu_freq_mhz, 0)),
            ("Mem\n%", "right", lambda r: _f(r.memory_percent)),
        ]
    columns.append(("RSS\nMB", "right", lambda r: _f(r.rss_mb, 0)))
    if wide:
        columns.append(("Temp\n°C", "right", lambda r: _f(r.temperature_c)))
    return columns


def device_table(
    summary: RunSummary,
    rows: Sequence[DeviceRow],
    layer_counts: Mapping[str, int] | None = None,
    wide: bool = False,
) -> Table:
    """The table of ``rows`` under the run's title line. ``layer_counts``: graph nodes
    (layers) of each device's stage, by device name."""
    table = Table(
        title=title(summary),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        caption=footer(summary),
        caption_justify="left",
    )
    columns = _columns(layer_counts or {}, wide)
    for name, justify, _ in columns:
        # A device name is never cut (it is what the row is about); layer names fold.
        table.add_column(
            name,
            justify=justify,  # type: ignore[arg-type]
            no_wrap=name == "Device",
            overflow="fold" if name.startswith("First") else "ellipsis",
        )
    for row in rows:
        table.add_row(*(cell(row) for _, _, cell in columns))
    return table
