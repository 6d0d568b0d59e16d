"""The report's figures, drawn with matplotlib's Agg backend (no display; works over SSH and in
CI). Each function takes a loaded run (or reductions of it) and returns a Figure; :func:`render`
saves them as PNGs. The numbers come from the pure reductions in :mod:`edgesplit.metrics.report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: never try to open a window

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from edgesplit.metrics import report

COLORS = {"queue": "#bbbbbb", "compute": "#1f77b4", "send": "#ff7f0e", "transfer": "#2ca02c"}
LABELS = {
    "queue": "queue (waiting at device)",
    "compute": "compute",
    "send": "serialize + send wait",
    "transfer": "transfer (on the wire)",
}
# Each device row has three lanes so overlapping work stays visible: requests queue while the
# device computes another, and a send can wait while the next compute runs.
LANES = {"queue": 0.55, "compute": 0.3, "send": 0.05, "transfer": 0.05}
LANE_H = 0.22


def device_order(run: report.RunData) -> list[str]:
    """Coordinator first, then devices in stage order (the path a micro-batch takes)."""
    first_stage: dict[str, int] = {}
    for h in run.hops:
        first_stage[h.device] = min(first_stage.get(h.device, h.stage), h.stage)
    return sorted(first_stage, key=lambda d: (first_stage[d], d))


def timeline(run: report.RunData, size: int = 20) -> Figure:
    """Gantt chart of ``size`` micro-batches in steady state, on the coordinator's clock."""
    ids = report.timeline_window(run.hops, size)
    window = [h for h in run.hops if h.request_id in set(ids)]
    t0 = report.run_start(window)
    spans = report.intervals(window, ids, t0)
    devices = device_order(run)
    row = {d: len(devices) - 1 - i for i, d in enumerate(devices)}  # first device on top
    fig, ax = plt.subplots(figsize=(13, 1.2 + 1.1 * len(devices)))
    for s in spans:
        y = row[s.device] + LANES[s.kind]
        width_ms = (s.end_s - s.start_s) * 1000
        ax.broken_barh(
            [(s.start_s * 1000, width_ms)],
            (y, LANE_H),
            facecolors=COLORS[s.kind],
            edgecolors="white",
            linewidth=0.4,
        )
        if s.kind == "compute" and width_ms > 0:
            ax.text(
                s.start_s * 1000 + width_ms / 2,
                y + LANE_H / 2,
                str(s.request_id),
                ha="center",
                va="center",
                fontsize=6,
                color="white",
                clip_on=True,
            )
    ax.set_yticks([row[d] + 0.4 for d in devices], devices)
    ax.set_ylim(-0.1, len(devices))
    ax.set_xlabel("time since the window's first upload (ms, coordinator clock)")
    ax.set_title(
        f"Pipeline timeline: micro-batches {ids[0]}..{ids[-1]} "
        f"(numbers on compute bars = request id)"
    )
    ax.grid(axis="x", alpha=0.3)
    ax.legend(
        handles=[Patch(color=COLORS[k], label=LABELS[k]) for k in COLORS],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.18 if len(devices) > 2 else -0.3),
        ncol=4,
        fontsize=8,
    )
    fig.tight_layout()
    return fig


def _series(run: report.RunData, key: str, t0: float) -> dict[str, tuple[list[float], list[float]]]:
    out: dict[str, tuple[list[float], list[float]]] = {}
    for s in run.samples:
        value = s.values.get(key)
        if value is not None:
            xs, ys = out.setdefault(s.device, ([], []))
            xs.append(s.t - t0)
            ys.append(value)
    return out


MARK_STYLES = {"fault": ("red", "--"), "lost": ("black", ":"), "plan": ("purple", "-.")}


def _draw_marks(axes: Sequence[Any], marks: Sequence[report.Mark]) -> None:
    """Vertical lines for faults, losses and plan changes on every panel; labels on the top one."""
    for i, ax in enumerate(axes):
        for mark in marks:
            color, style = MARK_STYLES[mark.kind]
            ax.axvline(mark.time_s, color=color, linestyle=style, linewidth=1.0, alpha=0.8)
            if i == 0:
                ax.annotate(
                    mark.label,
                    (mark.time_s, 1.0),
                    xycoords=("data", "axes fraction"),
                    xytext=(3, -2),
                    textcoords="offset points",
                    fontsize=7,
                    color=color,
                    va="top",
                    rotation=90,
                )


def device_series(run: report.RunData) -> Figure:
    """Per-device CPU, frequency, memory, temperature and power (if any sensor) and throughput
    over time."""
    t0 = report.run_start(run.hops)
    panels: list[tuple[str, str, dict[str, tuple[list[float], list[float]]]]] = [
        (
            "worker process CPU (%, 100 = one core)",
            "CPU (%)",
            _series(run, "process_cpu_percent", t0),
        ),
        ("system CPU (% of all cores)", "CPU (%)", _series(run, "cpu_percent", t0)),
        ("CPU frequency", "frequency (MHz)", _series(run, "cpu_freq_mhz", t0)),
        ("system memory in use", "memory (%)", _series(run, "memory_percent", t0)),
    ]
    temperature = _series(run, "temperature_c", t0)
    if temperature:
        panels.append(("CPU temperature", "temperature (°C)", temperature))
    measured_power = _series(run, "power_w", t0)
    if measured_power:
        panels.append(("measured power (metered devices)", "power (W)", measured_power))
    bin_s = report.bin_width_s(run.hops)
    rates = report.throughput_bins(run.hops, bin_s, t0)
    panels.append((f"images passed on per {bin_s:.3g}-s bin", "throughput (images/s)", rates))
    devices = [d for d in device_order(run) if d != "coordinator"]
    colors = {d: f"C{i}" for i, d in enumerate(devices)}
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 2.3 * len(panels)), sharex=True)
    for ax, (title, ylabel, data) in zip(axes, panels, strict=True):
        for device in devices:
            if device in data:
                xs, ys = data[device]
                if data is rates:
                    # Repeat the last rate at the bin's end so the last bin is drawn too.
                    end = max(h.end for h in run.hops) - t0
                    xs, ys = [*xs, end], [*ys, ys[-1]]
                    ax.step(xs, ys, where="post", label=device, color=colors[device])
                else:
                    ax.plot(xs, ys, marker=".", label=device, color=colors[device])
        if not data:
            ax.text(0.5, 0.5, "no samples", transform=ax.transAxes, ha="center")
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    _draw_marks(axes, report.marks(run.summary))
    axes[0].legend(loc="upper right", fontsize=8, ncol=len(devices))
    axes[-1].set_xlabel(
        "time since the run's first upload (s, coordinator clock); red dashed: injected fault, "
        "black dotted: device lost, purple: plan change"
    )
    fig.tight_layout()
    return fig


def latency_cdf(run: report.RunData) -> Figure:
    """Empirical CDF of end-to-end latency per micro-batch, with p50 and p95 marked."""
    values = sorted(report.request_latencies_ms(run.hops).values())
    n = len(values)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.step(values, [(i + 1) / n for i in range(n)], where="post")
    for q, style in ((50, "--"), (95, ":")):
        # Nearest rank, as in summary.json, so the marks match the printed numbers.
        v = values[max(0, -(-q * n // 100) - 1)]
        ax.axvline(v, linestyle=style, color="gray", label=f"p{q} = {v:.1f} ms")
    ax.set_xlabel("end-to-end latency per micro-batch (ms)")
    ax.set_ylabel("fraction of micro-batches")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Latency CDF ({n} micro-batches of {run.summary.batch_size} images)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def stage_bars(run: report.RunData) -> Figure:
    """Where a micro-batch's time goes at each stage: stacked mean milliseconds."""
    costs = report.stage_costs(run.hops)
    names = [f"{'upload' if c.stage < 0 else f'stage {c.stage}'}\n{c.device}" for c in costs]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(costs)), 4.5))
    bottom = [0.0] * len(costs)
    for kind, attr in (
        ("queue", "queue_ms"),
        ("compute", "compute_ms"),
        ("send", "send_ms"),
        ("transfer", "transfer_ms"),
    ):
        heights = [getattr(c, attr) for c in costs]
        ax.bar(names, heights, bottom=bottom, color=COLORS[kind], label=LABELS[kind])
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_ylabel("mean time per micro-batch (ms)")
    ax.set_title("Per-stage time per micro-batch")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def comparison(rows: Sequence[dict[str, Any]]) -> Figure:
    """Runs side by side: throughput, latency p50/p95 and accuracy."""
    names = [str(r["run"]) for r in rows]
    xs = list(range(len(rows)))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    axes[0].bar(xs, [r["throughput_ips"] or 0 for r in rows], color="C0")
    axes[0].set_ylabel("throughput (images/s)")
    w = 0.38
    axes[1].bar([x - w / 2 for x in xs], [r["latency_p50_ms"] or 0 for r in rows], w, label="p50")
    axes[1].bar([x + w / 2 for x in xs], [r["latency_p95_ms"] or 0 for r in rows], w, label="p95")
    axes[1].set_ylabel("end-to-end latency (ms)")
    axes[1].legend()
    axes[2].bar(xs, [100 * (r["accuracy"] or 0) for r in rows], color="C2")
    axes[2].set_ylabel("accuracy (%)")
    for ax, title in zip(axes, ("Throughput", "Latency", "Accuracy"), strict=True):
        ax.set_xticks(xs, names, rotation=20, ha="right", fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def render(run: report.RunData, others: Sequence[report.RunData], out: Path) -> dict[str, Path]:
    """Draw every figure into ``out`` as PNG; returns name -> path in report order."""
    figures = {
        "timeline": lambda: timeline(run),
        "devices": lambda: device_series(run),
        "latency_cdf": lambda: latency_cdf(run),
        "stages": lambda: stage_bars(run),
    }
    if others:
        rows = report.compare_rows([run, *others])
        figures["compare"] = lambda: comparison(rows)
    paths = {}
    for name, draw in figures.items():
        fig = draw()
        paths[name] = out / f"{name}.png"
        fig.savefig(paths[name], dpi=110)
        plt.close(fig)
    return paths


def write_report(run_dir: Path, compare: Sequence[Path] = (), out: Path | None = None) -> Path:
    """Write ``report.html`` and its PNGs into ``out`` (default: the run folder); returns the
    HTML path."""
    run = report.load_run(run_dir)
    others = [report.load_run(c) for c in compare]
    out = Path(out) if out is not None else run.folder
    out.mkdir(parents=True, exist_ok=True)
    pngs = render(run, others, out)
    page = out / "report.html"
    page.write_text(report.render_html(run, pngs, report.tables(run, others)))
    return page
