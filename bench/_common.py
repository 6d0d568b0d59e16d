"""Shared helpers of the benchmarks in bench/: machine facts, partitions, CPU accounting,
per-stage reductions of hop records, tables and the results file.

Not a benchmark itself (``make bench`` should skip files starting with ``_``).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import torch

from edgesplit import __version__
from edgesplit.app.staging import unit_times_ms
from edgesplit.model import graph
from edgesplit.model.partition import Ranges, balanced_ranges, format_partition
from edgesplit.runconfig import ASSUMED_BANDWIDTH_MBPS
from edgesplit.runtime.records import HopRecord

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_facts() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "loadavg_at_start": list(os.getloadavg()),
        "torch_version": torch.__version__,
        "torch_parallel_backend": "OpenMP" if torch.backends.openmp.is_available() else "other",
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "edgesplit_version": __version__,
        "git_commit": commit,
    }


def balanced_partition(
    ug: graph.UnitGraph,
    batch_size: int,
    stages: int,
    threads: int,
    repeats: int = 5,
    cut_ms: Sequence[float] | None = None,
) -> tuple[Ranges, list[float]]:
    """Stages balanced by the unit times measured here with ``threads`` torch threads (the
    workers' count), plus ``cut_ms`` per hand-off if given. Returns (ranges, unit ms)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(batch_size, *ug.input_shape)
        unit_times_ms(ug, x, repeats=1)  # warm-up: first calls allocate and pick kernels
        costs = unit_times_ms(ug, x, repeats=repeats)
    finally:
        torch.set_num_threads(previous)
    return balanced_ranges(costs, stages, cut_ms), costs


def gigabit_cut_ms(ug: graph.UnitGraph, batch_size: int) -> list[float]:
    """Hand-off cost after each unit: its output at the gigabit goodput ``edgesplit run``
    assumes for unshaped links. Without it the balance happily cuts where a batch hands on
    megabytes (MobileNetV2's early expand layers), which costs CPU to encode and decode here."""
    return [u.out_bytes * batch_size * 8 / (ASSUMED_BANDWIDTH_MBPS * 1e3) for u in ug.units]


def stage_costs_ms(ranges: Ranges, unit_ms: Sequence[float]) -> list[float]:
    return [sum(unit_ms[a:b]) for a, b in ranges]


def describe_ranges(ranges: Ranges) -> str:
    return format_partition(ranges)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its threads so far."""
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def host_busy_s() -> float:
    """CPU seconds the whole host has been busy so far (all CPUs, everything but idle/iowait)."""
    t = psutil.cpu_times()
    return float(sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq")))


class CpuMeter:
    """CPU seconds used by ``pids`` (ours) and by everything else on the host over an interval,
    so a result can say how much the rest of the machine was competing."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.start_ours = {p: process_cpu_s(p) for p in self.pids}
        self.start_host = host_busy_s()
        self.start_t = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.start_t
        ours = {p: process_cpu_s(p) - v for p, v in self.start_ours.items()}
        host = host_busy_s() - self.start_host
        other = max(host - sum(ours.values()), 0.0)
        return {
            "wall_s": wall,
            "ours_cpu_s": sum(ours.values()),
            "host_busy_cpu_s": host,
            "other_processes_cpu_s": other,
            "other_processes_cores": other / wall if wall > 0 else None,
        }


def cgroup_cpu_stat(path: Path | None) -> dict[str, int]:
    """The cgroup's ``cpu.stat`` counters (nr_periods, nr_throttled, throttled_time ns ...)."""
    if path is None:
        return {}
    try:
        text = (path / "cpu.stat").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def diff_counters(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items()}


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def stage_breakdown(hops: Sequence[HopRecord], uploads: Sequence[HopRecord]) -> list[dict]:
    """Median and mean of every per-hop time, per stage (stage -1 is the coordinator upload)."""
    by_stage: dict[int, list[HopRecord]] = defaultdict(list)
    for h in [*uploads, *hops]:
        by_stage[h.stage].append(h)
    rows = []
    for stage in sorted(by_stage):
        mine = by_stage[stage]
        row: dict[str, Any] = {
            "stage": stage,
            "device": mine[0].device,
            "batches": len(mine),
            "bytes_out": mine[0].bytes_out,
        }
        for key in ("queue_ms", "compute_ms", "serialize_ms", "send_wait_ms", "transfer_ms"):
            values = [float(getattr(h, key)) for h in mine]
            row[key] = {"median": median(values), "mean": mean(values)}
        rows.append(row)
    return rows


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A fixed-width text table; floats with 2 decimals, None as '-'."""

    def cell(v: object) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.2f}"
        return str(v)

    text = [[str(h) for h in header], *[[cell(v) for v in r] for r in rows]]
    widths = [max(len(r[i]) for r in text) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in text]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` atomically; returns its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path
