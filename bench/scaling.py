"""Pipeline scaling: throughput of K = 1..4 emulated devices, each capped at 0.5 CPU (cgroup)
with one torch thread, against one such device running the whole model (K = 1 through the same
pipeline) and a plain single process in a 0.5-CPU cgroup. All measured in the same run.

For every K the stages are balanced by unit times measured here (one thread, same batch), the
window is 2*K, and the result explains itself: per-stage compute and hand-off times, the CPU
each worker actually obtained, cgroup throttling, the coordinator's and other processes' CPU,
and a decomposition of ratio/K into split, balance and pipeline efficiencies.

    .venv/bin/python bench/scaling.py            # ~3 min
    .venv/bin/python bench/scaling.py --quick    # smoke run, ~1 min
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as common
import torch

from edgesplit.cluster.emulate import (
    EmulatedCluster,
    EmulatedDevice,
    create_cgroup,
    exit_on_sigterm,
    remove_cgroup,
)
from edgesplit.config import LinkSpec
from edgesplit.model import graph, models
from edgesplit.model.partition import balanced_ranges
from edgesplit.runtime.coordinator import Coordinator

TARGET_PER_DEVICE = 0.8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="mobilenet_v2", help="model name (default mobilenet_v2)")
    p.add_argument("--input-size", type=int, default=224, help="input height = width (224)")
    p.add_argument("--batch-size", type=int, default=8, help="images per micro-batch (8)")
    p.add_argument("--max-devices", type=int, default=4, help="K runs from 1 to this (4)")
    p.add_argument("--cpus", type=float, default=0.5, help="CPU cap per device in cores (0.5)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (1)")
    p.add_argument("--batches", type=int, default=32, help="measured micro-batches per K (32)")
    p.add_argument("--rounds", type=int, default=1, help="repeat K=1..max this often (1)")
    p.add_argument(
        "--cut-cost",
        choices=["gigabit", "none"],
        default="gigabit",
        help="hand-off cost added when balancing: 'gigabit' = tensor bytes at the assumed "
        "940 Mbit/s, as edgesplit run does (default); 'none' = unit times only",
    )
    p.add_argument("--no-single", action="store_true", help="skip the cgroup single process")
    p.add_argument("--quick", action="store_true", help="smoke run: 8 batches, 1 round")
    p.add_argument("--name", default="scaling", help="results file bench/results/NAME.json")
    p.add_argument("--child", type=int, metavar="BATCHES", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.rounds = 8, 1
        if args.name == "scaling":
            args.name = "scaling-quick"
    return args


# --- the single-process baseline (runs as a child inside its own cgroup) ----------------------


def child_main(args: argparse.Namespace) -> int:
    """Run the whole eager model on ``args.child`` batches; print one JSON line."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = models.build(args.model, num_classes=10).eval()
    x = torch.randn(args.batch_size, 3, args.input_size, args.input_size)
    with torch.inference_mode():
        for _ in range(2):
            model(x)
        cpu0, t0 = time.process_time(), time.perf_counter()
        for _ in range(args.child):
            model(x)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    images = args.child * args.batch_size
    print(json.dumps({"throughput_ips": images / wall, "wall_s": wall, "cpu_s": cpu}))
    return 0


def single_in_cgroup(args: argparse.Namespace, mechanism: str) -> dict[str, Any]:
    """The plain single process, started in a fresh cgroup capped at ``args.cpus``."""
    if not mechanism.startswith("cgroup"):
        return {"skipped": f"no cgroup here (mechanism {mechanism})"}
    cgroup = create_cgroup(mechanism, "single", args.cpus)  # type: ignore[arg-type]
    procs = str(cgroup / "cgroup.procs")

    def enter() -> None:
        with open(procs, "w") as fh:
            fh.write(str(os.getpid()))

    argv = [sys.executable, str(Path(__file__).resolve()), "--child", str(args.batches)]
    argv += ["--threads", str(args.threads), "--batch-size", str(args.batch_size)]
    argv += ["--model", args.model, "--input-size", str(args.input_size)]
    before = common.cgroup_cpu_stat(cgroup)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, preexec_fn=enter, check=False)
    finally:
        after = common.cgroup_cpu_stat(cgroup)
        remove_cgroup(cgroup)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["cpu_cores_obtained"] = result["cpu_s"] / result["wall_s"]
    result["cgroup"] = common.diff_counters(after, before)
    return result


# --- one K ----------------------------------------------------------------------------------


def steady_throughput(arrivals: list[float], batch_size: int) -> float | None:
    """Images per second between the first and the last result (pipeline fill excluded)."""
    arrivals = sorted(arrivals)
    if len(arrivals) < 2 or arrivals[-1] <= arrivals[0]:
        return None
    return (len(arrivals) - 1) * batch_size / (arrivals[-1] - arrivals[0])


def run_k(
    cluster: EmulatedCluster,
    coordinator: Coordinator,
    k: int,
    ranges: tuple[tuple[int, int], ...],
    xs: list[torch.Tensor],
    args: argparse.Namespace,
) -> dict[str, Any]:
    names = cluster.names[:k]
    coordinator.install_plan([(n, a, b) for n, (a, b) in zip(names, ranges, strict=True)])
    window = 2 * k
    warm = xs[: window + 2]
    coordinator.run(enumerate(warm), window=window)

    pids = {n: cluster.pid(n) for n in names}
    cg_before = {n: common.cgroup_cpu_stat(cluster.cgroup(n)) for n in names}
    cpu_before = {n: common.process_cpu_s(p) for n, p in pids.items()}
    meter = common.CpuMeter([os.getpid(), *pids.values()])
    coord_cpu0 = time.process_time()
    record = coordinator.run(((i, x) for i, x in enumerate(xs)), window=window)
    coord_cpu = time.process_time() - coord_cpu0
    host = meter.stop()
    wall = record.wall_s
    cpu_s = {n: common.process_cpu_s(p) - cpu_before[n] for n, p in pids.items()}
    cgroups = {
        n: common.diff_counters(common.cgroup_cpu_stat(cluster.cgroup(n)), cg_before[n])
        for n in names
    }

    images = len(record.outputs) * args.batch_size
    arrivals = [h.end for h in record.hops if h.stage == k - 1]
    stages = common.stage_breakdown(record.hops, record.uploads)
    for row in stages:
        if row["stage"] < 0:
            continue
        name = row["device"]
        busy = row["compute_ms"]["median"] + row["serialize_ms"]["median"]
        row["busy_ms_per_batch"] = busy
        row["cpu_s"] = cpu_s[name]
        row["cpu_cores_obtained"] = cpu_s[name] / wall
        row["cpu_ms_per_batch"] = cpu_s[name] * 1000.0 / len(xs)
        row["cgroup"] = cgroups[name]
        periods = cgroups[name].get("nr_periods", 0)
        row["throttled_fraction_of_periods"] = (
            cgroups[name].get("nr_throttled", 0) / periods if periods else None
        )
    return {
        "k": k,
        "partition": common.describe_ranges(ranges),
        "window": window,
        "batches": len(record.outputs),
        "images": images,
        "wall_s": wall,
        "throughput_wall_ips": images / wall,
        "throughput_steady_ips": steady_throughput(arrivals, args.batch_size),
        "coordinator_cpu_cores": coord_cpu / wall,
        "host_cpu": host,
        "stages": stages,
        "failures": [f.to_dict() for f in record.failures],
        "errors": record.errors,
        "replayed": record.replayed,
    }


def analyse(result: dict[str, Any], base: dict[str, Any], cpus: float) -> dict[str, Any]:
    """ratio / K = split efficiency x balance efficiency x pipeline efficiency, all measured:

    * split: K=1's busy time per batch / the sum of the K stages' busy times (extra work that
      splitting adds: more decode/encode, more small kernels; also noise between runs);
    * balance: mean stage busy time / the largest one (a perfect partition gives 1);
    * pipeline: measured throughput / batch_size over the bottleneck's busy time (bubbles, the
      coordinator, CPU the stage did not get).
    """
    k = result["k"]
    stages = [s for s in result["stages"] if s["stage"] >= 0]
    busy = [s["busy_ms_per_batch"] for s in stages]
    base_busy = next(s["busy_ms_per_batch"] for s in base["stages"] if s["stage"] == 0)
    measured = result["throughput_steady_ips"] or result["throughput_wall_ips"]
    predicted = result_batch(result) / (max(busy) / 1000.0)
    bottleneck = max(range(k), key=lambda i: busy[i])
    obtained = sum(s["cpu_cores_obtained"] for s in stages)
    return {
        "split_efficiency": base_busy / sum(busy),
        "balance_efficiency": (sum(busy) / k) / max(busy),
        "pipeline_efficiency": measured / predicted,
        "bottleneck_stage": bottleneck,
        "bottleneck_busy_ms": max(busy),
        "predicted_ips_from_bottleneck": predicted,
        "stage_busy_ms": busy,
        "cpu_obtained_total_cores": obtained,
        "cpu_cap_total_cores": k * cpus,
    }


def explain(res: dict[str, Any], a: dict[str, Any], ratio: float, target: float) -> str:
    """One paragraph of measured reasons, for the results file."""
    k = res["k"]
    b = a["bottleneck_stage"]
    stage = next(s for s in res["stages"] if s["stage"] == b)
    bound = a["unit_granularity_bound"]
    return (
        f"K={k}: ratio {ratio:.2f} vs target {target:.2f}. Plan {res['partition']}: with the "
        f"hand-off costs the partition itself allows at most {a['planned_max_ratio']:.2f}x "
        f"(unit times alone, free hand-offs: {bound['max_ratio']:.2f}x with "
        f"{bound['partition']}). Bottleneck stage {b}: {a['bottleneck_busy_ms']:.0f} ms busy "
        f"per batch (predicts {a['predicted_ips_from_bottleneck']:.1f} img/s, measured "
        f"{res['throughput_steady_ips']:.1f}); it got {stage['cpu_cores_obtained']:.2f} cores "
        f"and was throttled in {100 * (stage['throttled_fraction_of_periods'] or 0):.0f}% of "
        f"CFS periods. Efficiencies: split {a['split_efficiency']:.2f}, balance "
        f"{a['balance_efficiency']:.2f}, pipeline {a['pipeline_efficiency']:.2f}. Workers got "
        f"{a['cpu_obtained_total_cores']:.2f} of {a['cpu_cap_total_cores']:.1f} capped cores; "
        f"the coordinator used {res['coordinator_cpu_cores']:.2f} and other processes "
        f"{res['host_cpu']['other_processes_cores']:.2f} of the host's cores."
    )


def result_batch(result: dict[str, Any]) -> int:
    return int(result["images"] // max(result["batches"], 1))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return child_main(args)
    logging.basicConfig(level=logging.WARNING)
    t_start = time.perf_counter()
    facts = common.machine_facts()
    torch.manual_seed(0)
    model = models.build(args.model, num_classes=10).eval()
    shape = (3, args.input_size, args.input_size)
    ug = graph.trace(model, shape)
    ks = list(range(1, args.max_devices + 1))
    _, unit_ms = common.balanced_partition(ug, args.batch_size, 1, args.threads)
    cut_ms = None
    if args.cut_cost == "gigabit":
        cut_ms = common.gigabit_cut_ms(ug, args.batch_size)
    plans = {k: balanced_ranges(unit_ms, k, cut_ms) for k in ks}
    # The best any partition at unit granularity could do if hand-offs were free: the units are
    # lumpy (a few of them carry a fifth of the model each), which caps the speed-up.
    bounds = {}
    for k in ks:
        free = balanced_ranges(unit_ms, k)
        bottleneck = max(common.stage_costs_ms(free, unit_ms))
        bounds[k] = {"partition": common.describe_ranges(free), "bottleneck_ms": bottleneck,
                     "max_ratio": sum(unit_ms) / bottleneck}  # fmt: skip
    xs = [torch.randn(args.batch_size, *shape) for _ in range(args.batches)]
    devices = [EmulatedDevice(f"pi{i}", args.cpus, args.threads) for i in ks]
    rounds: list[dict[int, dict[str, Any]]] = []
    singles: list[dict[str, Any]] = []
    with exit_on_sigterm(), EmulatedCluster.start(devices, default_link=LinkSpec()) as cluster:
        mechanism = cluster.mechanism
        print(
            f"{args.model} @ {args.input_size}, batch {args.batch_size}, devices capped at "
            f"{args.cpus} CPU ({mechanism}), {args.threads} thread(s), {args.batches} batches"
        )
        with Coordinator(cluster.spec) as coordinator:
            coordinator.check()
            coordinator.load_model(args.model, 10, 3, args.input_size, model)
            for r in range(args.rounds):
                if not args.no_single:
                    singles.append(single_in_cgroup(args, mechanism))
                got = {}
                for k in ks:
                    got[k] = run_k(cluster, coordinator, k, plans[k], xs, args)
                    print(
                        f"  round {r + 1} K={k}: {got[k]['throughput_steady_ips']:.2f} img/s "
                        f"(steady), {got[k]['throughput_wall_ips']:.2f} img/s (wall)"
                    )
                rounds.append(got)

    # Per K, the round with the median steady throughput (one round: that round).
    chosen: dict[int, dict[str, Any]] = {}
    for k in ks:
        runs = sorted((r[k] for r in rounds), key=lambda x: x["throughput_steady_ips"] or 0.0)
        chosen[k] = runs[len(runs) // 2]
    base = chosen[1]
    base_ips = base["throughput_steady_ips"]
    rows, per_k = [], []
    for k in ks:
        res = chosen[k]
        ratio = res["throughput_steady_ips"] / base_ips
        target = TARGET_PER_DEVICE * k
        met = ratio >= target if k >= 2 else None
        analysis = analyse(res, base, args.cpus)
        analysis["unit_granularity_bound"] = bounds[k]
        analysis["planned_stage_ms"] = common.stage_costs_ms(plans[k], unit_ms)
        planned = list(analysis["planned_stage_ms"])
        if cut_ms is not None:
            analysis["planned_cut_ms"] = [cut_ms[b - 1] for _, b in plans[k][:-1]]
            for i, c in enumerate(analysis["planned_cut_ms"]):
                planned[i] += c
        analysis["planned_max_ratio"] = sum(unit_ms) / max(planned)
        analysis["explanation"] = explain(res, analysis, ratio, target)
        per_k.append({**res, "ratio_vs_k1": ratio, "target_ratio": target, "target_met": met,
                      "analysis": analysis})  # fmt: skip
        rows.append([
            k, res["partition"], res["throughput_steady_ips"], res["throughput_wall_ips"], ratio,
            target if k >= 2 else None, {True: "yes", False: "NO", None: "-"}[met],
            analysis["predicted_ips_from_bottleneck"], analysis["cpu_obtained_total_cores"],
            res["coordinator_cpu_cores"], res["host_cpu"]["other_processes_cores"],
        ])  # fmt: skip
    header = ["K", "partition", "img/s", "img/s wall", "ratio", "target", "met",
              "bottleneck img/s", "CPU got", "coord CPU", "others CPU"]  # fmt: skip
    print()
    print(common.table(header, rows))

    stage_rows = []
    for res in per_k:
        for s in res["stages"]:
            if s["stage"] < 0:
                continue
            stage_rows.append([
                res["k"], s["stage"], s["bytes_out"], s["queue_ms"]["median"],
                s["compute_ms"]["median"], s["serialize_ms"]["median"],
                s["send_wait_ms"]["median"], s["transfer_ms"]["median"],
                s["cpu_cores_obtained"], s["cpu_ms_per_batch"],
                s["throttled_fraction_of_periods"],
            ])  # fmt: skip
    print("\nper stage, median ms per batch; CPU got in cores; throttled = share of CFS periods")
    print(common.table(
        ["K", "stage", "bytes_out", "queue", "compute", "serialize", "send_wait", "transfer",
         "CPU got", "CPU ms/batch", "throttled"],
        stage_rows,
    ))  # fmt: skip
    eff_rows = [
        [r["k"], r["ratio_vs_k1"] / r["k"], r["analysis"]["split_efficiency"],
         r["analysis"]["balance_efficiency"], r["analysis"]["pipeline_efficiency"]]
        for r in per_k
    ]  # fmt: skip
    for row, r in zip(eff_rows, per_k, strict=True):
        row.append(r["analysis"]["planned_max_ratio"])
        row.append(r["analysis"]["unit_granularity_bound"]["max_ratio"])
    print("\nratio/K = split x balance x pipeline efficiency; plan bound = best ratio the chosen "
          "plan allows (unit times + hand-off costs); free bound = best any partition allows "
          "with free hand-offs")  # fmt: skip
    print(common.table(
        ["K", "ratio/K", "split", "balance", "pipeline", "plan bound", "free bound"], eff_rows
    ))  # fmt: skip
    for r in per_k[1:]:
        print(r["analysis"]["explanation"])

    single = None
    if singles and all("throughput_ips" in s for s in singles):
        ordered = sorted(singles, key=lambda s: s["throughput_ips"])
        single = ordered[len(ordered) // 2]
        print(
            f"\nplain single process in a {args.cpus}-CPU cgroup: "
            f"{single['throughput_ips']:.2f} img/s (CPU got {single['cpu_cores_obtained']:.2f}); "
            f"K=1 pipeline / single = {base_ips / single['throughput_ips']:.3f}"
        )
    elif singles:
        print(f"\nplain single process: {singles}")
    elapsed = time.perf_counter() - t_start
    print(f"took {elapsed:.0f} s")

    payload = {
        "benchmark": "scaling",
        "settings": {
            "model": args.model,
            "input_size": args.input_size,
            "batch_size": args.batch_size,
            "cpus_per_device": args.cpus,
            "torch_threads_per_worker": args.threads,
            "mechanism": mechanism,
            "links": "unshaped loopback",
            "batches": args.batches,
            "warmup_batches": "2*K+2 per K, same plan",
            "window": "2*K",
            "rounds": args.rounds,
            "partition_by": "balanced_ranges over unit times measured here (1 thread, same "
            "batch); hand-off cost: " + args.cut_cost,
            "unit_out_bytes_per_image": [u.out_bytes for u in ug.units],
            "cut_cost_ms": cut_ms,
            "unit_ms": unit_ms,
            "quick": args.quick,
        },
        "machine": facts,
        "definitions": {
            "throughput_steady_ips": "(results - 1) * batch / (last - first result arrival): "
            "the pipeline fill is excluded; the ratio uses this",
            "throughput_wall_ips": "images / (first upload -> last result)",
            "busy_ms_per_batch": "median compute + serialize of a stage (its compute thread)",
            "cpu_cores_obtained": "worker process CPU seconds / run wall time",
            "analysis": analyse.__doc__,
        },
        "baseline_k1_ips": base_ips,
        "single_process_cgroup": single,
        "single_process_runs": singles,
        "results": per_k,
        "all_rounds": [{str(k): r[k] for k in r} for r in rounds] if args.rounds > 1 else None,
        "elapsed_s": elapsed,
    }
    path = common.write_result(args.name, payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
