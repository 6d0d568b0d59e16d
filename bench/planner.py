"""Planner speed: time to plan 60 units x 8 devices (target < 100 ms for throughput) and 200 units
x 10 devices, per objective, on seeded synthetic Pi-like clusters; and what the exact plan gains
over the balanced split in fixed device order (partition.balanced_ranges) measured in the same run.

Reports the median wall time and the median CPU time of this process (the machine is shared and
noisy: wall time includes waiting for a core). Also: energy under a latency bound (the Pareto
search, slower) on a smaller cluster, and the slow-link case (10 Mbit/s links: the latency plan
keeps the model on one device and says so).

    .venv/bin/python bench/planner.py            # a few minutes on a loaded 2-core machine
    .venv/bin/python bench/planner.py --quick    # one run each, 60 x 8 only
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable

import _common as common

from edgesplit.model.partition import balanced_ranges
from edgesplit.plan.planner import (
    DeviceCost,
    LinkCost,
    Plan,
    Problem,
    UnitCost,
    choose_plan,
    evaluate,
)

TARGET_MS = 100.0
MB = 1_000_000


def pi_cluster(units: int, devices: int, seed: int = 0, slow_mbps: float | None = None) -> Problem:
    """Units with log-normal times and MobileNet-like tensor sizes; devices at speed factors
    0.6..1.4 of a nominal Pi, one with a 64 MB budget; gigabit links, two pairs at 100 Mbit/s
    (or every link at ``slow_mbps``)."""
    rng = random.Random(seed)
    base = [rng.lognormvariate(1.0, 0.8) for _ in range(units)]
    unit_costs = tuple(
        UnitCost(
            out_bytes=8 * rng.choice([24, 32, 64, 96, 160]) * rng.choice([7, 14, 28]) ** 2 * 4,
            weight_bytes=rng.randint(10_000, 1_500_000),
            activation_bytes=rng.randint(100_000, 8 * MB),
            name=f"unit{i}",
        )
        for i in range(units)
    )
    device_costs = []
    for d in range(devices):
        speed = rng.uniform(0.6, 1.4)
        device_costs.append(
            DeviceCost(
                name=f"pi{d + 1}",
                unit_ms=tuple(b / speed for b in base),
                memory_budget_bytes=64 * MB if d == 1 else None,
                busy_fraction=rng.uniform(0.25, 1.0),
            )
        )
    names = [d.name for d in device_costs]
    if slow_mbps is not None:
        default, links = LinkCost(bandwidth_mbps=slow_mbps, latency_ms=1.0), ()
    else:
        default = LinkCost(bandwidth_mbps=940.0, latency_ms=0.2)
        slow = LinkCost(bandwidth_mbps=100.0, latency_ms=1.0)
        links = tuple((a, b, slow) for a, b in (names[0:2], names[2:4]) if a != b)
    return Problem(
        units=unit_costs,
        devices=tuple(device_costs),
        batch_size=8,
        input_bytes=8 * 3 * 224 * 224,  # uint8 images
        default_link=default,
        links=links,
    )


def timed(fn: Callable[[], Plan], repeats: int) -> tuple[Plan, dict[str, float]]:
    walls, cpus = [], []
    plan = fn()  # warm-up (imports, numpy caches)
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        plan = fn()
        walls.append((time.perf_counter() - w) * 1000)
        cpus.append((time.process_time() - c) * 1000)
    return plan, {
        "wall_ms_median": statistics.median(walls),
        "cpu_ms_median": statistics.median(cpus),
        "wall_ms": walls,
        "cpu_ms": cpus,
    }


def balanced_baseline(problem: Problem) -> Plan:
    """What edgesplit did before the planner: all devices in the given order, stages balanced by
    the first device's unit times (memory not checked)."""
    k = min(len(problem.devices), problem.num_units)
    ranges = balanced_ranges(problem.devices[0].unit_ms, k)
    stages = [(d.name, a, b) for d, (a, b) in zip(problem.devices, ranges, strict=True)]
    return evaluate(problem, stages, check_memory=False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per case at 60 x 8 (5)")
    p.add_argument("--large-repeats", type=int, default=1, help="timed runs at 200 x 10 (1)")
    p.add_argument("--quick", action="store_true", help="one run each, 60 x 8 only")
    p.add_argument("--name", default="planner", help="results file bench/results/NAME.json")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.name = 1, f"{args.name}-quick"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    facts = common.machine_facts()
    meter = common.CpuMeter([])
    sizes = [(60, 8, args.repeats)] + ([] if args.quick else [(200, 10, args.large_repeats)])
    cases, rows = [], []
    for units, devices, repeats in sizes:
        problem = pi_cluster(units, devices)
        baseline = balanced_baseline(problem)
        for objective in ("throughput", "latency", "energy"):
            plan, times = timed(lambda p=problem, o=objective: choose_plan(p, o), repeats)
            pred = plan.prediction
            case = {
                "units": units,
                "devices": devices,
                "objective": objective,
                **times,
                "stages": len(plan.stages),
                "partition": plan.partition(),
                "prediction": pred.__dict__,
                "notes": list(plan.notes),
            }
            cases.append(case)
            rows.append(
                [
                    f"{units} x {devices}",
                    objective,
                    times["wall_ms_median"],
                    times["cpu_ms_median"],
                    len(plan.stages),
                    pred.throughput_ips,
                    pred.latency_ms,
                    pred.energy_j_per_image,
                ]
            )
        rows.append(
            [
                f"{units} x {devices}",
                "balanced, fixed order",
                None,
                None,
                len(baseline.stages),
                baseline.prediction.throughput_ips,
                baseline.prediction.latency_ms,
                baseline.prediction.energy_j_per_image,
            ]
        )
        cases.append(
            {
                "units": units,
                "devices": devices,
                "objective": "baseline",
                "prediction": baseline.prediction.__dict__,
            }
        )
    # Energy under a latency bound uses the Pareto search: much slower, so a smaller cluster.
    small = pi_cluster(30, 6)
    bound = choose_plan(small, "latency").prediction.latency_ms * 1.2
    plan, times = timed(lambda: choose_plan(small, "energy", max_latency_ms=bound), 1)
    cases.append(
        {
            "units": 30,
            "devices": 6,
            "objective": "energy",
            "max_latency_ms": bound,
            **times,
            "partition": plan.partition(),
            "prediction": plan.prediction.__dict__,
        }
    )
    rows.append(
        [
            "30 x 6",
            f"energy, latency <= {bound:.0f} ms",
            times["wall_ms_median"],
            times["cpu_ms_median"],
            len(plan.stages),
            plan.prediction.throughput_ips,
            plan.prediction.latency_ms,
            plan.prediction.energy_j_per_image,
        ]
    )
    slow = pi_cluster(60, 8, slow_mbps=10.0)
    slow_plan = choose_plan(slow, "latency")
    host = meter.stop()

    header = ["size", "objective", "wall ms", "cpu ms", "stages", "img/s", "latency ms", "J/img"]
    print(common.table(header, rows))
    t60 = next(c for c in cases if c["units"] == 60 and c["objective"] == "throughput")
    base60 = next(c for c in cases if c["units"] == 60 and c["objective"] == "baseline")
    gain = t60["prediction"]["throughput_ips"] / base60["prediction"]["throughput_ips"]
    met = t60["cpu_ms_median"] < TARGET_MS
    print(
        f"\nthroughput plan 60 x 8: median {t60['cpu_ms_median']:.1f} ms CPU, "
        f"{t60['wall_ms_median']:.1f} ms wall (target < {TARGET_MS:.0f} ms: "
        f"{'met' if met else 'MISSED'} in CPU time); predicted throughput {gain:.2f}x the "
        f"balanced fixed-order split. Slow links (10 Mbit/s), latency plan: "
        f"{slow_plan.partition()} on {len(slow_plan.stages)} device(s); "
        f"{'; '.join(slow_plan.notes) or 'no note'}. Other processes used "
        f"{host['other_processes_cores']:.2f} cores meanwhile."
    )
    payload = {
        "benchmark": "planner",
        "settings": {
            "repeats": args.repeats,
            "large_repeats": args.large_repeats,
            "quick": args.quick,
            "instances": "bench/planner.py:pi_cluster, seed 0",
        },
        "machine": facts,
        "cases": cases,
        "target_ms": TARGET_MS,
        "throughput_60x8_cpu_ms": t60["cpu_ms_median"],
        "throughput_60x8_wall_ms": t60["wall_ms_median"],
        "target_met_cpu": met,
        "throughput_gain_vs_balanced_fixed_order": gain,
        "slow_links_latency_plan": {
            "partition": slow_plan.partition(),
            "stages": len(slow_plan.stages),
            "notes": list(slow_plan.notes),
        },
        "host_cpu_during_measurement": host,
        "elapsed_s": time.perf_counter() - t_start,
    }
    path = common.write_result(args.name, payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
