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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from edgesplit.cluster.faults import relative
from edgesplit.metrics import cpu, versus
from edgesplit.plan import energy
from edgesplit.runtime.records import HopRecord, RunRecord
from edgesplit.shared.runsummary import (
    Adaptive,
    ChangedStage,
    CpuUse,
    DeviceRow,
    EnergySummary,
    Failure,
    FinalPlan,
    FinalStage,
    Injection,
    Int8Gate,
    LatencyMs,
    NotFired,
    PlanChange,
    PlanStage,
    PrecisionChoice,
    Predicted,
    RunPlan,
    RunSummary,
)
from edgesplit.shared.stats import percentile

M = TypeVar("M", bound=BaseModel)

if TYPE_CHECKING:
    from edgesplit.config import ClusterSpec
    from edgesplit.runconfig import RunConfig


@dataclass(frozen=True)
class StageInfo:
    """One stage of the plan as the table shows it."""

    device: str
    start: int
    end: int
    first_layer: str
    last_layer: str
    params: int


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _mean(values: Sequence[float | int | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return statistics.fmean(present) if present else None


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


def latency_summary(latencies_ms: Sequence[float]) -> LatencyMs:
    return LatencyMs(
        p50=percentile(latencies_ms, 50),
        p95=percentile(latencies_ms, 95),
        mean=statistics.fmean(latencies_ms) if latencies_ms else None,
    )


def fault_summary(record: RunRecord) -> tuple[list[Failure], list[PlanChange]]:
    """summary.json's device losses and plan changes; ``time_s`` is seconds since the run
    started."""
    failures = [Failure(**_timed(f.to_dict(), record.started)) for f in record.failures]
    changes = [
        PlanChange(
            time_s=round(p.t - record.started, 3),
            epoch=p.epoch,
            reason=p.reason,
            stages=[ChangedStage(device=d, units=(a, b)) for d, a, b in p.stages],
        )
        for p in record.plan_changes
    ]
    return failures, changes


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


# --- the run summary (summary.json) ----------------------------------------------------------


@dataclass(frozen=True)
class RunFacts:
    """What a finished (or stopped) run knows: the input of :func:`summarise`.

    ``predictions`` holds one class per image of the run (``images`` of them), -1 where no
    result arrived; ``labels`` the dataset's labels for the same images (None without labels).
    ``ran_images`` were computed by this run (a resumed run's earlier ones are
    ``resumed_images``). ``injected`` are the fault injector's events, ``t`` on the coordinator
    clock."""

    config: RunConfig
    dataset: str
    weights: str
    checkpoint_accuracy: float | None
    input_size: int
    window: int
    engine: str | None
    precision: str
    images: int
    predictions: Sequence[int]
    labels: Sequence[int] | None
    ran_images: int
    record: RunRecord
    stages: Sequence[StageInfo]
    epoch: int
    spec: ClusterSpec
    params_total: int
    partition: str
    resumed_images: int = 0
    predicted: Mapping[str, Any] | None = None
    injected: Sequence[dict[str, Any]] = ()
    adaptive: Mapping[str, Any] | None = None
    precision_choice: Mapping[str, Any] | None = None
    int8_gate: Mapping[str, Any] | None = None
    cpu_kinds: Mapping[str, str] = field(default_factory=dict)
    notes: Sequence[str] = ()
    error: str | None = None
    """Why the run stopped early."""
    final_stages: Sequence[StageInfo] | None = None
    """The stages of the plan the run ended with when it differs from ``stages`` (the table's
    rows follow it), installed as ``final_epoch``."""
    final_epoch: int | None = None
    layer_counts: Mapping[str, int] = field(default_factory=dict)
    """Graph nodes per device in the final plan."""
    not_fired: Sequence[Mapping[str, Any]] = ()
    coordinator_cpu_s: float | None = None
    """The coordinator process's CPU seconds over the run (None: not measured)."""
    reference_cpu_ms_per_image: float | None = None
    """CPU ms per image of one process running the whole model (see :mod:`.cpu`)."""
    reference_cpu: str | None = None
    """Where ``reference_cpu_ms_per_image`` comes from."""


def accuracy(predictions: Sequence[int], labels: Sequence[int] | None) -> float | None:
    """Correct over completed (prediction >= 0) images; None without labels or results."""
    if labels is None:
        return None
    done = [(p, label) for p, label in zip(predictions, labels, strict=False) if p >= 0]
    return sum(p == label for p, label in done) / len(done) if done else None


def summarise(facts: RunFacts) -> RunSummary:
    """The run's ``summary.json`` from what it measured: a pure function (no clock, no file, no
    process). The accuracy of an incomplete run is over the images that completed, and says
    so in a note."""
    record, config = facts.record, facts.config
    completed = sum(1 for p in facts.predictions if p >= 0)
    notes = list(facts.notes)
    score = accuracy(facts.predictions, facts.labels)
    if score is not None and completed < facts.images:
        notes.append(f"accuracy over the {completed} of {facts.images} images that completed")
    final = facts.final_stages or facts.stages
    rows = device_rows(final, record.hops, record.samples, record.started, record.finished)
    latencies = list(request_latencies_ms(record.hops, record.uploads).values())
    energies = energy.device_energy(
        facts.spec, rows, record.samples, record.started, record.finished, facts.images
    )
    spent = EnergySummary.model_validate(
        energy.energy_summary(energies, facts.images, record.started, record.finished)
    )
    failures, changes = fault_summary(record)
    throughput = facts.ran_images / record.wall_s if record.wall_s > 0 else None
    predicted = _optional(Predicted, facts.predicted)
    used = cpu_use(facts)
    return RunSummary(
        model=config.model,
        dataset=facts.dataset,
        weights=facts.weights,
        checkpoint_accuracy=facts.checkpoint_accuracy,
        input_size=facts.input_size,
        batch_size=config.batch_size,
        window=facts.window,
        engine=facts.engine,
        precision=facts.precision,
        wire=config.wire,
        images=facts.images,
        completed_images=completed,
        complete=completed == facts.images,
        resumed_images=facts.resumed_images,
        wall_s=record.wall_s,
        throughput_ips=throughput,
        latency_ms=latency_summary(latencies),
        accuracy=score,
        params_total=facts.params_total,
        partition=facts.partition,
        partition_method=config.partition or "auto",
        predicted=predicted,
        energy=spent,
        energy_j_per_image=spent.energy_j_per_image,
        cpu=used,
        cpu_tax=used.cpu_tax if used is not None else None,
        versus_plan=(
            versus.versus_plan(
                predicted, throughput, request_intervals(record), spent.energy_j_per_image
            )
            if predicted is not None
            else None
        ),
        plan=RunPlan(epoch=facts.epoch, stages=[_plan_stage(s) for s in facts.stages]),
        final_plan=_final_plan(facts),
        device_rows=rows,
        clock_offsets_ms=record.clock_offsets_ms,
        rtt_ms=record.rtt_ms,
        failures=failures,
        replayed=record.replayed,
        duplicates=record.duplicates,
        plan_changes=changes,
        errors=record.errors[:100],
        injected=[Injection(**e) for e in relative(list(facts.injected), record.started)],
        not_fired=[NotFired(**f) for f in facts.not_fired],
        adaptive=_optional(Adaptive, facts.adaptive),
        precision_choice=_optional(PrecisionChoice, facts.precision_choice),
        int8_gate=_optional(Int8Gate, facts.int8_gate),
        cpu_kinds=dict(facts.cpu_kinds),
        notes=notes,
        error=facts.error,
    )


def _plan_stage(s: StageInfo) -> PlanStage:
    return PlanStage(
        device=s.device,
        units=(s.start, s.end),
        first_layer=s.first_layer,
        last_layer=s.last_layer,
        params=s.params,
    )


def _final_plan(facts: RunFacts) -> FinalPlan | None:
    """The plan the run ended with, when it differs from the first one."""
    if not facts.final_stages:
        return None
    stages = [
        FinalStage(
            device=s.device, units=(s.start, s.end), layers=facts.layer_counts.get(s.device, 0)
        )
        for s in facts.final_stages
    ]
    epoch = facts.final_epoch if facts.final_epoch is not None else facts.epoch
    return FinalPlan(epoch=epoch, stages=stages)


def request_intervals(record: RunRecord) -> dict[int, tuple[float, float]]:
    """Per request id: (first upload start, last result arrival), coordinator clock, seconds."""
    start: dict[int, float] = {}
    for u in record.uploads:
        start[u.request_id] = min(start.get(u.request_id, u.start), u.start)
    end: dict[int, float] = {}
    for h in record.hops:
        end[h.request_id] = max(end.get(h.request_id, h.end), h.end)
    return {r: (start[r], end[r]) for r in end if r in start}


def cpu_use(facts: RunFacts) -> CpuUse | None:
    """Every process's CPU over the run and the ``cpu_tax`` (None when the coordinator's CPU
    was not measured)."""
    record = facts.record
    if facts.coordinator_cpu_s is None:
        return None
    devices = sorted({s.device for s in [*facts.stages, *(facts.final_stages or ())]})
    devices_s = cpu.devices_cpu_s(record.samples, devices, record.started, record.finished)
    per_image, tax = cpu.cpu_tax(
        facts.coordinator_cpu_s, devices_s, facts.ran_images, facts.reference_cpu_ms_per_image
    )
    if per_image is None:
        return None
    return CpuUse(
        coordinator_s=facts.coordinator_cpu_s,
        devices_s=devices_s,
        images=facts.ran_images,
        cpu_ms_per_image=per_image,
        reference_ms_per_image=facts.reference_cpu_ms_per_image,
        reference=facts.reference_cpu,
        cpu_tax=tax,
    )


def _optional(model: type[M], value: Mapping[str, Any] | None) -> M | None:
    return None if value is None else model.model_validate(dict(value))
