"""A plan as a plain-text table."""

from __future__ import annotations

from edgesplit.planner.types import MB, Plan


def _fmt(v: object) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def plan_table(plan: Plan) -> str:
    """Stage, device, unit range, first/last unit, compute, transfer, memory, energy; then the
    totals and the prediction, then the notes."""
    header = ["stage", "device", "units", "first unit", "last unit", "compute ms", "transfer ms",
              "memory MB", "energy mJ"]  # fmt: skip
    rows = [
        [i, s.device, f"{s.start}-{s.end}", s.first_unit or "-", s.last_unit or "-",
         s.compute_ms, s.transfer_ms, s.memory_bytes / MB, s.energy_mj]
        for i, s in enumerate(plan.stages)
    ]  # fmt: skip
    p = plan.prediction
    rows.append(
        ["total", "", "", "", "", sum(s.compute_ms for s in plan.stages),
         sum(s.transfer_ms for s in plan.stages), sum(s.memory_bytes for s in plan.stages) / MB,
         sum(s.energy_mj for s in plan.stages) + p.idle_devices_mj]
    )  # fmt: skip
    text = [header, *[[_fmt(v) for v in r] for r in rows]]
    widths = [max(len(r[i]) for r in text) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in text]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, lines[1])
    lines.append(
        f"objective {plan.objective}: partition {plan.partition()}, upload {p.upload_ms:.2f} ms, "
        f"bottleneck {p.bottleneck_ms:.2f} ms, throughput {p.throughput_ips:.2f} img/s, "
        f"latency {p.latency_ms:.2f} ms, energy {p.energy_j_per_image:.4f} J/image"
    )
    if p.prepare_ms:
        lines.append(
            f"the coordinator prepares each micro-batch in {p.prepare_ms:.2f} ms before its "
            "upload (in the bottleneck)"
        )
    if p.coordinator_ms:
        lines.append(
            f"the coordinator spends {p.coordinator_ms:.2f} ms of CPU per micro-batch besides "
            "its preparation (uploading, taking the result; measured by the pilot)"
        )
    if p.background_cpus:
        lines.append(f"other work keeps {p.background_cpus:.2f} cores of this host busy")
    if p.window_ms >= p.bottleneck_ms > 0:
        lines.append(
            f"the window bounds the period: {p.window_ms:.2f} ms per micro-batch (the unloaded "
            "latency over the micro-batches in flight)"
        )
    if p.host_ms:
        bound = " (the bottleneck)" if p.host_ms >= p.bottleneck_ms else ""
        lines.append(
            f"the devices share this host: all their CPU work takes {p.host_ms:.2f} ms of its "
            f"cores per micro-batch{bound}"
        )
    if p.contended_ms > p.host_ms and p.contended_ms >= p.bottleneck_ms:
        lines.append(
            f"the processes sharing this host slow each other down: {p.contended_ms:.2f} ms per "
            "micro-batch (the bottleneck; a mean-field estimate of fair CPU sharing)"
        )
    bursts = [s for s in plan.stages if s.latency_ms is not None and s.latency_ms != s.compute_ms]
    if bursts:
        alone = ", ".join(f"{s.device} {s.latency_ms:.2f} ms" for s in bursts)
        lines.append(
            f"compute is what a busy pipeline sustains; a micro-batch alone runs faster under a "
            f"CPU quota ({alone}), which the latency counts"
        )
    if p.idle_devices_mj:
        lines.append(
            f"devices left idle draw {p.idle_devices_mj:.2f} mJ per micro-batch (in the total)"
        )
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)
