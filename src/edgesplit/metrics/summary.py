"""Pure reductions of a run record into the per-device table and ``summary.json``.

Definitions (the glossary of the per-device table):

- *throughput* (images/s): images whose result reached the coordinator, divided by the run's
  wall time (first upload to last result). Per device: images that device computed over the same
  wall time, and its *capacity*, batch size / median compute time (what it could do alone).
- *network latency* (ms): median time from a stage's send start to the arrival at its next hop
  (emulated link delay + RPC + the next hop's receive), on one clock.
- *end-to-end latency* (ms): per micro-batch, from the coordinator's upload start to the
  result's arrival; reported as p50 / p95 / mean.
- *inference time per batch / per image* (ms): median stage compute time, and that over the
  batch size.
- *CPU %*: the worker process's CPU time over wall time (100 = one core), averaged over the
  device's samples during the run; *CPU MHz*: mean reported frequency (absent if the OS does not
  expose it); *memory %*: system memory in use; *RSS*: the worker process's resident memory.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgesplit.faults import relative
from edgesplit.runtime.records import HopRecord, RunRecord


@dataclass(frozen=True)
class StageInfo:
    """One stage of the plan as the table shows it."""

    device: str
    start: int
    end: int
    first_layer: str
    last_layer: str
    params: int


@dataclass(frozen=True)
class DeviceRow:
    name: str
    stage: int
    units: tuple[int, int]
    layers: str
    params: int
    images: int
    throughput_ips: float
    capacity_ips: float | None
    compute_ms_per_batch: float | None
    compute_ms_per_image: float | None
    queue_ms: float | None
    net_latency_ms: float | None
    bytes_sent: int
    cpu_percent: float | None
    system_cpu_percent: float | None
    cpu_freq_mhz: float | None
    memory_percent: float | None
    rss_mb: float | None
    temperature_c: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stage": self.stage,
            "units": list(self.units),
            "layers": self.layers,
            "params": self.params,
            "images": self.images,
            "throughput_ips": self.throughput_ips,
            "capacity_ips": self.capacity_ips,
            "compute_ms_per_batch": self.compute_ms_per_batch,
            "compute_ms_per_image": self.compute_ms_per_image,
            "queue_ms": self.queue_ms,
            "net_latency_ms": self.net_latency_ms,
            "bytes_sent": self.bytes_sent,
            "cpu_percent": self.cpu_percent,
            "system_cpu_percent": self.system_cpu_percent,
            "cpu_freq_mhz": self.cpu_freq_mhz,
            "memory_percent": self.memory_percent,
            "rss_mb": self.rss_mb,
            "temperature_c": self.temperature_c,
        }


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _mean(values: Sequence[float | int | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return statistics.fmean(present) if present else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` in [0, 100] (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def request_latencies_ms(
    hops: Sequence[HopRecord], uploads: Sequence[HopRecord]
) -> dict[int, float]:
    """End-to-end latency per request id: upload start to result arrival."""
    start: dict[int, float] = {}
    for u in uploads:
        start[u.request_id] = min(start.get(u.request_id, u.start), u.start)
    end: dict[int, float] = {}
    for h in hops:
        end[h.request_id] = max(end.get(h.request_id, h.end), h.end)
    return {r: (end[r] - start[r]) * 1000.0 for r in sorted(end) if r in start}


def _window(samples: Sequence[Mapping[str, Any]], started: float, finished: float) -> list[Any]:
    inside = [s for s in samples if started <= float(s["t"]) <= finished]
    return inside or list(samples[-1:])


def device_rows(
    stages: Sequence[StageInfo],
    hops: Sequence[HopRecord],
    samples: Mapping[str, Sequence[Mapping[str, Any]]],
    started: float,
    finished: float,
) -> list[DeviceRow]:
    """One row per stage of the plan (a device that runs no stage gets no row)."""
    wall = max(finished - started, 1e-9)
    by_device: dict[str, list[HopRecord]] = defaultdict(list)
    for h in hops:
        by_device[h.device].append(h)
    rows = []
    for index, stage in enumerate(stages):
        mine = by_device.get(stage.device, [])
        compute = [h.compute_ms for h in mine]
        per_image = [h.compute_ms / h.batch_size for h in mine if h.batch_size]
        images = sum(h.batch_size for h in mine)
        batch_ms = _median(compute)
        capacity = None
        if mine and batch_ms:
            capacity = statistics.median(h.batch_size for h in mine) / (batch_ms / 1000.0)
        window = _window(list(samples.get(stage.device, [])), started, finished)
        rows.append(
            DeviceRow(
                name=stage.device,
                stage=index,
                units=(stage.start, stage.end),
                layers=f"{stage.first_layer} .. {stage.last_layer}",
                params=stage.params,
                images=images,
                throughput_ips=images / wall,
                capacity_ips=capacity,
                compute_ms_per_batch=batch_ms,
                compute_ms_per_image=_median(per_image),
                queue_ms=_median([h.queue_ms for h in mine]),
                net_latency_ms=_median([h.transfer_ms for h in mine]),
                bytes_sent=sum(h.bytes_out for h in mine),
                cpu_percent=_mean([s.get("process_cpu_percent") for s in window]),
                system_cpu_percent=_mean([s.get("cpu_percent") for s in window]),
                cpu_freq_mhz=_mean([s.get("cpu_freq_mhz") for s in window]),
                memory_percent=_mean([s.get("memory_percent") for s in window]),
                rss_mb=_mean([s.get("rss_mb") for s in window]),
                temperature_c=_mean([s.get("temperature_c") for s in window]),
            )
        )
    return rows


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float | None]:
    return {
        "p50": percentile(latencies_ms, 50),
        "p95": percentile(latencies_ms, 95),
        "mean": statistics.fmean(latencies_ms) if latencies_ms else None,
    }


def fault_summary(record: RunRecord) -> dict[str, object]:
    """summary.json's fault keys; ``time_s`` is seconds since the run started."""
    return {
        "failures": [_timed(f.to_dict(), record.started) for f in record.failures],
        "replayed": record.replayed,
        "duplicates": record.duplicates,
        "plan_changes": [_timed(p.to_dict(), record.started) for p in record.plan_changes],
        "errors": record.errors[:100],
    }


def run_events(record: RunRecord, injected: list[dict[str, Any]]) -> list[dict[str, object]]:
    """events.jsonl: injected faults, device state transitions and plan changes, in time
    order."""
    events = relative(injected, record.started)
    events += [
        {"event": "state", **_timed(t.to_dict(), record.started)} for t in record.transitions
    ]
    events += [
        {"event": "plan", **_timed(p.to_dict(), record.started)} for p in record.plan_changes
    ]
    return sorted(events, key=lambda e: float(e["time_s"]))


def _timed(fields: dict[str, Any], started: float) -> dict[str, Any]:
    """``fields`` with its coordinator-clock ``t`` as ``time_s`` since ``started``."""
    t = fields.pop("t")
    return {"time_s": round(t - started, 3), **fields}
