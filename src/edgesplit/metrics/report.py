"""``edgesplit report``: read a run folder, reduce it, and write plots, an HTML page or tables.

The shell (reading files, writing files) is :func:`load_run`, :func:`export` and
:func:`edgesplit.metrics.plots.write_report` (it draws); everything between is a pure function
of the loaded run, so tests can check the numbers without matplotlib. No torch import: a report
must open on a laptop in a second.

Time: ``requests.csv`` and ``samples.csv`` carry seconds on the coordinator's clock (workers'
clocks are already offset), so every plot shares one time axis, starting at the run's first
upload. Intervals are half-open ``[start_s, end_s)``.
"""

from __future__ import annotations

import base64
import csv
import html
import importlib.util
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgesplit.errors import ConfigError
from edgesplit.metrics.summary import request_latencies_ms as summary_latencies_ms
from edgesplit.plan import energy
from edgesplit.runtime.records import HopRecord as Hop
from edgesplit.shared import runsummary
from edgesplit.shared.runsummary import RunSummary

REQUIRED = ("summary.json", "devices.csv", "requests.csv", "samples.csv")
"""Files a report cannot do without (predictions, plan and cluster are not plotted)."""

HOP_FLOATS = (
    "queue_ms",
    "compute_ms",
    "serialize_ms",
    "send_wait_ms",
    "transfer_ms",
    "start",
    "end",
)
HOP_INTS = ("request_id", "epoch", "stage", "batch_size", "bytes_out")
FORMATS = ("html", "csv", "json", "parquet")


@dataclass(frozen=True)
class Sample:
    """One sampler reading of one device; a value is None where the sensor is absent."""

    device: str
    t: float
    values: dict[str, float | None]


@dataclass(frozen=True)
class RunData:
    folder: Path
    summary: RunSummary
    devices: list[dict[str, str]]
    hops: list[Hop]
    samples: list[Sample]


@dataclass(frozen=True)
class Interval:
    """What a device was doing for a request during ``[start_s, end_s)``; ``kind`` is one of
    queue, compute, send (serialize + waiting to send) or transfer (on the wire)."""

    device: str
    request_id: int
    kind: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class StageCost:
    """Mean milliseconds per micro-batch at one stage."""

    stage: int
    device: str
    queue_ms: float
    compute_ms: float
    send_ms: float
    transfer_ms: float


# --- loading (the edge) -------------------------------------------------------------------------


def _read_csv(folder: Path, name: str, columns: Sequence[str]) -> list[dict[str, str]]:
    path = folder / name
    try:
        with open(path, "rb") as raw:
            raw.seek(max(0, path.stat().st_size - 1))
            # csv writes end every row with a newline; without one the last row may be cut
            # inside a cell and still parse.
            if raw.read(1) not in (b"\n", b""):
                raise ConfigError(f"{path} is truncated (its last line has no newline)")
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in columns if c not in header]
            if missing:
                raise ConfigError(f"{path}: missing columns {missing} (header: {header})")
            rows = []
            for row in reader:
                # A truncated last line has fewer cells: DictReader fills the rest with None.
                if None in row.values():
                    raise ConfigError(f"{path}: line {reader.line_num} is truncated")
                rows.append(row)
            return rows
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not a readable CSV file: {exc}") from None


SAMPLE_TEXT = ("device", "t", "power_source")
"""samples.csv columns that are not series to plot (``t`` is read on its own)."""


def _number(path: Path, line: int, column: str, text: str) -> float | None:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{path}: line {line}: {column} is {text!r}, expected a number") from None


def load_run(folder: Path) -> RunData:
    """Read a run folder written by ``edgesplit run``; a missing, truncated or malformed file is
    a :class:`ConfigError` that names it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(
            f"run folder {folder} does not exist (expected a folder from edgesplit run)"
        )
    for name in REQUIRED:
        if not (folder / name).is_file():
            raise ConfigError(f"run folder {folder} has no {name} (is the run complete?)")
    summary = runsummary.read(folder)
    devices = _read_csv(folder, "devices.csv", ["name"])
    path = folder / "requests.csv"
    hops = []
    for line, row in enumerate(_read_csv(folder, "requests.csv", HOP_FLOATS + HOP_INTS), 2):
        nums = {c: _number(path, line, c, row[c]) for c in HOP_FLOATS + HOP_INTS}
        if any(v is None for v in nums.values()):
            raise ConfigError(f"{path}: line {line} has empty timing cells")
        values: dict[str, Any] = {c: float(nums[c] or 0.0) for c in HOP_FLOATS}
        values.update({c: int(nums[c] or 0) for c in HOP_INTS})
        hops.append(Hop(device=row["device"], **values))
    if not hops:
        raise ConfigError(f"{path} has no rows (the run completed no micro-batch)")
    path = folder / "samples.csv"
    samples = []
    for line, row in enumerate(_read_csv(folder, "samples.csv", ["device", "t"]), 2):
        t = _number(path, line, "t", row["t"])
        rest = {k: _number(path, line, k, v) for k, v in row.items() if k not in SAMPLE_TEXT}
        samples.append(Sample(row["device"], t or 0.0, rest))
    return RunData(folder, summary, devices, hops, samples)


# --- reductions (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Mark:
    """Something that happened during the run, drawn as a vertical line on the time series."""

    time_s: float
    """Seconds since the run started (its first upload, within a few ms)."""
    kind: str
    """"fault" (an injected fault), "lost" (a device lost) or "plan" (a plan change)."""
    label: str


def marks(summary: RunSummary) -> list[Mark]:
    """Injected faults, device losses and plan changes from ``summary.json``, in time order."""
    out = [Mark(event.time_s, "fault", event.spec) for event in summary.injected]
    out += [Mark(failure.time_s, "lost", f"{failure.device} lost") for failure in summary.failures]
    out += [Mark(c.time_s, "plan", f"plan epoch {c.epoch}") for c in summary.plan_changes]
    return sorted(out, key=lambda m: m.time_s)


def run_start(hops: Sequence[Hop]) -> float:
    """The run's time zero: its first upload, in coordinator-clock seconds."""
    return min(h.start for h in hops)


def timeline_window(hops: Sequence[Hop], size: int = 20) -> list[int]:
    """``size`` consecutive request ids from the middle of the run, where the pipeline is full
    (the first and last few micro-batches show it filling and draining)."""
    ids = sorted({h.request_id for h in hops})
    first = max(0, (len(ids) - size) // 2)
    return ids[first : first + size]


def intervals(hops: Sequence[Hop], request_ids: Sequence[int], t0: float) -> list[Interval]:
    """Each hop of the given requests cut into queue, compute, send and transfer intervals, in
    seconds since ``t0``. The parts are laid end to end from the arrival, as the worker measured
    them; they sum to ``end - start`` up to clock rounding."""
    wanted = set(request_ids)
    out = []
    for h in hops:
        if h.request_id not in wanted:
            continue
        t = h.start - t0
        parts = (
            ("queue", h.queue_ms),
            ("compute", h.compute_ms),
            ("send", h.serialize_ms + h.send_wait_ms),
            ("transfer", h.transfer_ms),
        )
        for kind, ms in parts:
            if ms > 0:
                out.append(Interval(h.device, h.request_id, kind, t, t + ms / 1000))
                t += ms / 1000
    return out


def request_latencies_ms(hops: Sequence[Hop]) -> dict[int, float]:
    """End-to-end latency per request, as in summary.json (upload start to result arrival);
    ``hops`` hold the uploads as stage -1."""
    return summary_latencies_ms([h for h in hops if h.stage >= 0], [h for h in hops if h.stage < 0])


def stage_costs(hops: Sequence[Hop]) -> list[StageCost]:
    """Mean queue, compute, send (serialize + send wait) and transfer per micro-batch, per stage
    (the upload as stage -1). A stage served by two devices after a replay is split by device."""
    groups: dict[tuple[int, str], list[Hop]] = defaultdict(list)
    for h in hops:
        groups[(h.stage, h.device)].append(h)

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    return [
        StageCost(
            stage,
            device,
            mean([h.queue_ms for h in g]),
            mean([h.compute_ms for h in g]),
            mean([h.serialize_ms + h.send_wait_ms for h in g]),
            mean([h.transfer_ms for h in g]),
        )
        for (stage, device), g in sorted(groups.items())
    ]


def bin_width_s(hops: Sequence[Hop]) -> float:
    """1-s bins, but at least ~10 bins for a short run (a 0.6 s run would be one bar)."""
    span = max(h.end for h in hops) - run_start(hops)
    return 1.0 if span >= 10 else max(span / 10, 0.01)


def throughput_bins(
    hops: Sequence[Hop], bin_s: float, t0: float
) -> dict[str, tuple[list[float], list[float]]]:
    """Per device, images per second it passed on in each ``[k * bin_s, (k+1) * bin_s)`` bin
    (counted at arrival at the next hop). Returns bin starts (s since ``t0``) and rates. The
    last bin is cut at the run's end and divided by its real width, so a run's tail does not
    look like a slowdown."""
    span = max(h.end for h in hops) - t0
    n = max(1, math.ceil(span / bin_s - 1e-9))  # the run's last arrival closes the last bin
    counts: dict[str, list[float]] = {}
    for h in hops:
        if h.stage < 0:
            continue
        row = counts.setdefault(h.device, [0.0] * n)
        row[min(int((h.end - t0) // bin_s), n - 1)] += h.batch_size
    starts = [k * bin_s for k in range(n)]
    widths = [bin_s] * (n - 1) + [max(span - starts[-1], 1e-6)]
    return {
        d: (starts, [c / w for c, w in zip(row, widths, strict=True)]) for d, row in counts.items()
    }


def compare_rows(runs: Sequence[RunData]) -> list[dict[str, Any]]:
    """One row per run with the headline numbers, for the side-by-side table and chart."""
    rows = []
    for run in runs:
        s = run.summary
        rows.append(
            {
                "run": run.folder.name,
                "model": s.model,
                "batch_size": s.batch_size,
                "devices": len(s.device_rows),
                "throughput_ips": s.throughput_ips,
                "latency_p50_ms": s.latency_ms.p50,
                "latency_p95_ms": s.latency_ms.p95,
                "accuracy": s.accuracy,
            }
        )
    return rows


def tables(run: RunData, others: Sequence[RunData] = ()) -> dict[str, list[dict[str, Any]]]:
    """Everything the report shows, as named tables of flat rows (what ``--format`` writes)."""
    latencies = request_latencies_ms(run.hops)
    return {
        "devices": [dict(r) for r in run.devices],
        "stages": [asdict(c) for c in stage_costs(run.hops)],
        "latency": [{"request_id": r, "latency_ms": ms} for r, ms in latencies.items()],
        "runs": compare_rows([run, *others]),
    }


# --- output (the edge) ----------------------------------------------------------------------------

CAPTIONS = {
    "timeline": "Pipeline timeline: what each device did for ~20 micro-batches in steady state.",
    "devices": "Per-device time series from the samplers, and throughput from requests.csv.",
    "latency_cdf": "End-to-end latency per micro-batch (upload start to result arrival).",
    "stages": "Per-stage time per micro-batch, stacked.",
    "compare": "Runs side by side.",
}


def _cell_text(v: Any) -> str:
    """Numbers rounded for reading (CSV cells arrive as text); the files keep every digit."""
    if isinstance(v, str):
        try:
            v = float(v) if v.strip() and not v.strip().isdigit() else int(v) if v.strip() else v
        except ValueError:
            return v
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v == int(v) and abs(v) < 1e9:
            return str(int(v))
        digits = 1 if abs(v) >= 100 else 2 if abs(v) >= 1 else 3
        return f"{v:.{digits}f}"
    return str(v)


def _html_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "<p>(no rows)</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell_text(v))}</td>" for v in r.values()) + "</tr>"
        for r in rows
    )
    return f"<div class='scroll'><table><tr>{head}</tr>{body}</table></div>"


def _units(text: Any) -> str:
    """A unit range as the CLI prints it, half-open: ``[0, 21)`` (``devices.csv`` holds the
    JSON list ``[0, 21]``)."""
    try:
        a, b = json.loads(text) if isinstance(text, str) else text
    except (ValueError, TypeError):
        return str(text)
    return f"[{a}, {b})"


def device_tables(
    devices: Sequence[dict[str, str]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``devices.csv`` as two tables that fit a page: the pipeline's numbers, then the
    samplers' (the CLI's default and ``--wide`` columns)."""
    pipeline, sensors = [], []
    for d in devices:
        pipeline.append(
            {
                "device": d.get("name"),
                "units [start, end)": _units(d.get("units")),
                "params": d.get("params"),
                "throughput img/s": d.get("throughput_ips"),
                "capacity img/s": d.get("capacity_ips"),
                "net latency ms": d.get("net_latency_ms"),
                "time/batch ms": d.get("compute_ms_per_batch"),
                "queue ms": d.get("queue_ms"),
            }
        )
        sensors.append(
            {
                "device": d.get("name"),
                "layers": d.get("layers"),
                "CPU % proc": d.get("cpu_percent"),
                "CPU % system": d.get("system_cpu_percent"),
                "CPU MHz": d.get("cpu_freq_mhz"),
                "mem %": d.get("memory_percent"),
                "RSS MB": d.get("rss_mb"),
                "temp °C": d.get("temperature_c") or "n/a",
            }
        )
    return pipeline, sensors


def plan_section(s: RunSummary, devices: Sequence[dict[str, str]]) -> str:
    """The plan: predicted against measured per stage and for the run, the plan history."""
    parts = []
    predicted = s.predicted
    measured = {d.get("name"): d for d in devices}
    if predicted is not None:
        rows = []
        for stage in predicted.stages:
            m = measured.get(stage.device, {})
            rows.append(
                {
                    "device": stage.device,
                    "units [start, end)": _units(stage.units),
                    "predicted compute ms": stage.compute_ms,
                    "measured compute ms": m.get("compute_ms_per_batch"),
                    "predicted transfer ms": stage.transfer_ms,
                    "measured net latency ms": m.get("net_latency_ms"),
                }
            )
        if s.plan_changes:
            parts.append(
                "<p>The plan changed during the run (history below): the prediction is the first "
                "plan's, a device's measured times are over the whole run.</p>"
            )
        ips, got = predicted.throughput_ips, s.throughput_ips
        error = f" ({(got - ips) / ips:+.0%} against it)" if ips and got else ""
        parts.append(
            "<p>"
            + html.escape(
                f"planned for {predicted.objective} ({predicted.precision}): "
                f"predicted {_cell_text(ips)} img/s, measured {_cell_text(got)} img/s{error}"
            )
            + "</p>"
            + _html_table(rows)
        )
    else:
        parts.append(f"<p>partition {html.escape(s.partition)} (not planned)</p>")
    if s.plan_changes:
        first = _stage_text([(x.device, x.units) for x in s.plan.stages])
        history = [{"time s": 0.0, "epoch": s.plan.epoch, "reason": "first plan", "stages": first}]
        history += [
            {
                "time s": c.time_s,
                "epoch": c.epoch,
                "reason": c.reason,
                "stages": _stage_text([(x.device, x.units) for x in c.stages]),
            }
            for c in s.plan_changes
        ]
        parts.append("<h3>Plan history</h3>" + _html_table(history))
    if s.failures:
        lost = [f.model_dump(mode="json") for f in s.failures]
        parts.append("<h3>Lost devices</h3>" + _html_table(lost))
    return "".join(parts)


def _stage_text(stages: Sequence[tuple[str, tuple[int, int]]]) -> str:
    return ", ".join(f"{device} {_units(units)}" for device, units in stages)


def energy_section(s: RunSummary) -> str:
    """Joules per image (measured where metered, else the power model) against the plan's."""
    e = s.energy
    if e is None:
        return "<p>(no energy record)</p>"
    planned = s.predicted.energy_j_per_image if s.predicted is not None else None
    line = f"{_cell_text(e.energy_j_per_image)} J/image over the run"
    line += f" ({'metered: ' + ', '.join(e.metered) if e.metered else 'power model'})"
    if planned:
        line += f"; the plan predicted {_cell_text(planned)} J/image"
    return f"<p>{html.escape(line)}</p>" + _html_table(energy.device_rows(s))


def render_html(run: RunData, pngs: dict[str, Path], data: dict[str, list[dict[str, Any]]]) -> str:
    """One self-contained page: the PNGs embedded as base64 data URIs (the page can be mailed
    alone), each also named so a reader can find the file beside it."""
    s = run.summary
    title = f"edgesplit run {run.folder.name}: {s.model} on {s.dataset}"
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:75em}"
        "table{border-collapse:collapse}.scroll{overflow-x:auto;max-width:100%}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px;text-align:right}"
        "img{max-width:100%}</style>",
        f"</head><body><h1>{html.escape(title)}</h1>",
        "<p>"
        + html.escape(
            f"{s.images} images, batch {s.batch_size}, "
            f"throughput {s.throughput_ips or 0:.1f} images/s, latency p50 "
            f"{s.latency_ms.p50 or 0:.1f} ms / p95 {s.latency_ms.p95 or 0:.1f} ms, "
            f"accuracy {'n/a' if s.accuracy is None else f'{s.accuracy:.4f}'}, "
            f"failures {len(s.failures)}"
        )
        + "</p>",
    ]
    if not s.complete:
        parts.append(f"<p><b>{html.escape(completion_line(run.folder, s))}</b></p>")
    if len(data["runs"]) > 1:
        parts.append("<h2>Runs compared</h2>" + _html_table(data["runs"]))
    pipeline, sensors = device_tables(data["devices"])
    parts.append("<h2>Per device (devices.csv)</h2>" + _html_table(pipeline))
    parts.append("<h3>Samplers and stage layers</h3>" + _html_table(sensors))
    parts.append("<h2>Plan: predicted against measured</h2>" + plan_section(s, data["devices"]))
    metered = energy.comparison(s)
    if metered is not None:
        text = "<br>".join(html.escape(line) for line in metered.lines())
        parts.append(f"<h2>Energy: measured against predicted</h2><p>{text}</p>")
    parts.append("<h2>Energy</h2>" + energy_section(s))
    for name, path in pngs.items():
        encoded = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(
            f"<h2>{html.escape(CAPTIONS.get(name, name))}</h2>"
            f"<img alt='{name}' title='{path.name}' src='data:image/png;base64,{encoded}'>"
        )
    parts.append("<h2>Per-stage means (ms)</h2>" + _html_table(data["stages"]))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def export(
    run_dir: Path, fmt: str, compare: Sequence[Path] = (), out: Path | None = None
) -> list[Path]:
    """Write the report's tables as ``report_<name>.csv`` files, one ``report.json``, or
    ``report_<name>.parquet`` files (needs pyarrow); returns the paths written."""
    if fmt not in FORMATS[1:]:
        raise ConfigError(f"export format must be one of {FORMATS[1:]}, got {fmt!r}")
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise ConfigError("--format parquet needs pyarrow: pip install pyarrow (or use csv/json)")
    run = load_run(run_dir)
    data = tables(run, [load_run(c) for c in compare])
    out = Path(out) if out is not None else run.folder
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        path = out / "report.json"
        path.write_text(json.dumps(data, indent=2) + "\n")
        return [path]
    paths = []
    for name, rows in data.items():
        path = out / f"report_{name}.{fmt}"
        if fmt == "csv":
            columns = list(rows[0]) if rows else []
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)
        else:
            import pyarrow as pa  # type: ignore[import-not-found, unused-ignore]
            import pyarrow.parquet as pq  # type: ignore[import-not-found, unused-ignore]

            pq.write_table(pa.Table.from_pylist(rows), path)
        paths.append(path)
    return paths


# --- runs that did not finish ---------------------------------------------------------------


def completion_line(folder: Path, summary: RunSummary | None) -> str:
    """How much of the run in ``folder`` completed, and how to finish it; "" for a complete
    run. Without a summary (the coordinator was killed) the count comes from results.jsonl."""
    from edgesplit.metrics import resultlog

    total: int | None
    if summary is not None and summary.complete:
        return ""
    if summary is not None:
        done, total = summary.completed_images, summary.images
        why = summary.error or "stopped early"
    else:
        done, why = resultlog.completed_images(folder), "the coordinator stopped without a summary"
        total = _configured_images(folder)
    return (
        f"incomplete run ({why}): {done} of {total if total is not None else '?'} images "
        f"completed; finish it with: edgesplit run --resume {folder}"
    )


def _configured_images(folder: Path) -> int | None:
    from edgesplit.metrics import manifest

    try:
        made = manifest.read(folder)
    except ConfigError:
        return None
    dataset = made.get("dataset")
    return int(dataset["images"]) if isinstance(dataset, dict) and "images" in dataset else None


def write_partial_report(folder: Path, out: Path | None = None) -> Path:
    """``report.html`` for a run whose coordinator died before writing its summary: what the
    manifest and the result log say (no timings: they were still in the coordinator)."""
    from edgesplit.metrics import manifest

    made = manifest.read(folder)
    line = completion_line(folder, None)
    config = made.get("config", {})
    rows = [{"setting": k, "value": json.dumps(v)} for k, v in config.items()]
    title = f"edgesplit run {folder.name}: {config.get('model')} on {config.get('dataset')}"
    page = "\n".join([
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1><p><b>{html.escape(line)}</b></p>",
        "<h2>Configuration (manifest.json)</h2>" + _html_table(rows),
        "</body></html>\n",
    ])  # fmt: skip
    out = Path(out) if out is not None else folder
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.html").write_text(page)
    return out / "report.html"
