"""A script that uses only edgesplit's public API; tests/inprocess/test_api.py runs
``mypy --strict`` on it (it is never executed there), so the public surface stays fully typed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

import edgesplit


def experiment(out: Path) -> pd.DataFrame:
    s: edgesplit.Split = edgesplit.split("mobilenet_v2", input_size=32, partition="0-9,9-")
    units: pd.DataFrame = s.units
    assert s.num_units == len(units)
    with edgesplit.EmulatedCluster(cpus=[1, 0.5, 0.25]) as cluster:
        prof: edgesplit.Profile = edgesplit.profile(cluster, "mobilenet_v2", batch_size=16)
        plan: edgesplit.Plan = edgesplit.plan(prof, objective="throughput")
        ips: float = plan.throughput_ips
        result: edgesplit.RunResult = edgesplit.run(
            model="mobilenet_v2", cluster=cluster, partition=plan, limit=256
        )
        fixed = edgesplit.run(model="mobilenet_v2", cluster=cluster, partition="0-11,11-22,22-")
        grid: pd.DataFrame = edgesplit.sweep(
            cluster, partitions=["equal", "auto"], batch_sizes=[8, 16], progress=False
        )
        starts: int = cluster.worker_starts
        pids: dict[str, int] = cluster.pids
    sim: edgesplit.Simulation = edgesplit.simulate(prof, plan, images=1000, devices="4xpi1")
    figure: Figure = result.plot.timeline()
    devices: Figure = fixed.plot.devices()
    figure.savefig(out / "timeline.png")
    devices.savefig(out / "devices.png")
    saved = result.save(out / "run")
    again = edgesplit.RunResult.load(out / "run")
    assert again.summary == saved.summary
    throughput: float | None = again.throughput_ips
    typed: edgesplit.RunSummary = again.summary
    p50: float | None = typed.latency_ms.p50
    first: str = typed.plan.stages[0].device
    rss: list[float | None] = [row.rss_mb for row in again.device_rows]
    print(p50, first, rss, again.predicted.throughput_ips if again.predicted else None)
    print(ips, throughput, starts, pids, sim.throughput_ips, result.devices, result.requests)
    try:
        edgesplit.Cluster.from_file(out / "cluster.yaml")
    except edgesplit.EdgesplitError as exc:
        print(exc)
    return grid
