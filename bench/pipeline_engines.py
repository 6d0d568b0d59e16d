"""Pipelines on the fast engine: throughput and latency of K = 2 and 3 emulated devices running
onnxruntime stages, against the same engine and precision on one device (issue #9 item 5).

Emulated devices with no CPU cap (``mechanism="none"``), one thread each (ONNX Runtime intra-op
threads = 1), unshaped loopback links, MobileNetV2 at 224, batch 8, random weights, random
images, window 2*K. For each precision (fp32, int8) and K = 1, 2, 3, measured in the same run:

* **K = 1** is one device running the whole model through the same pipeline (the baseline
  of the ratio); **single** is a plain process (this one) running the whole model on the same
  executor with one thread, no gRPC; **best single** is the fastest of torch fp32,
  onnxruntime fp32 and onnxruntime int8 in a plain process (the issue's "best single-device
  engine running the whole model with one thread").
* Stages are balanced by unit times measured here on the same engine and precision (one
  thread, same batch; int8 units are quantized one by one, calibrated on their own inputs,
  and scaled to sum to the whole quantized model, as ``edgesplit profile`` does),
  plus each hand-off's tensor at the gigabit rate ``edgesplit run`` assumes, like
  bench/scaling.py.
* **throughput** is steady state: (results - 1) * batch / (last - first result arrival).
* **ratio** = throughput(K) / throughput(K = 1, same engine and precision); target >= 0.85 * K.
* **latency**: p50 of upload start -> result arrival per micro-batch, loaded (window 2*K, the
  throughput run) and unloaded (window 1, a short extra run).

The host has 2 cores: with K = 3 one-thread workers plus the coordinator, the processes
compete for cores, and anything else running (see "others CPU") takes from them too.

    .venv/bin/python bench/pipeline_engines.py            # ~3-5 min
    .venv/bin/python bench/pipeline_engines.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any

import _common as common
import torch

from edgesplit.cluster.emulate import EmulatedCluster, exit_on_sigterm, uniform_devices
from edgesplit.config import LinkSpec
from edgesplit.engines import EngineSpec, Execution, Executor
from edgesplit.engines.build import build_executor
from edgesplit.metrics.summary import percentile, request_latencies_ms
from edgesplit.model import graph, models
from edgesplit.model.partition import Ranges, balanced_ranges
from edgesplit.runtime.coordinator import Coordinator

ENGINE = "onnxruntime"
TARGET_PER_DEVICE = 0.85
SINGLE_VARIANTS = (("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="mobilenet_v2", help="model name (default mobilenet_v2)")
    p.add_argument("--input-size", type=int, default=224, help="input height = width (224)")
    p.add_argument("--batch-size", type=int, default=8, help="images per micro-batch (8)")
    p.add_argument("--max-devices", type=int, default=3, help="K runs from 1 to this (3)")
    p.add_argument(
        "--precisions", default="fp32,int8", help="comma-separated precisions (fp32,int8)"
    )
    p.add_argument("--batches", type=int, default=48, help="measured micro-batches per K (48)")
    p.add_argument(
        "--latency-batches", type=int, default=10, help="window-1 micro-batches per K (10)"
    )
    p.add_argument("--rounds", type=int, default=2, help="repeat everything this often (2)")
    p.add_argument(
        "--calibration", type=int, default=32, help="random images calibrating int8 (32)"
    )
    p.add_argument(
        "--cut-cost",
        choices=["gigabit", "none"],
        default="gigabit",
        help="hand-off cost added when balancing: 'gigabit' = tensor bytes at the assumed "
        "940 Mbit/s, as edgesplit run does (default); 'none' = unit times only",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 10 batches, 1 round")
    p.add_argument(
        "--name", default="pipeline_engines", help="results file bench/results/NAME.json"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.latency_batches, args.rounds = 10, 4, 1
        if args.name == "pipeline_engines":
            args.name = "pipeline_engines-quick"
    return args


# --- partitions and the plain single process ------------------------------------------------


def unit_ms_on(
    ug: graph.UnitGraph, spec: EngineSpec, x: torch.Tensor, calibration: torch.Tensor
) -> list[float]:
    """Median time of every unit on ``spec`` with one thread, each on its real input; int8
    times scaled to sum to the whole model quantized as one, as the worker's profile does."""
    executors = [
        build_executor(ug, i, i + 1, spec, threads=1, calibration=calibration)
        for i in range(ug.num_units)
    ]
    samples: list[list[float]] = [[] for _ in executors]
    for rep in range(6):
        h = x
        for i, ex in enumerate(executors):
            t0 = time.perf_counter()
            h = ex.run(h)
            if rep >= 1:
                samples[i].append((time.perf_counter() - t0) * 1000.0)
    unit_ms = [float(common.median(s) or 0.0) for s in samples]
    if spec.precision != "int8":
        return unit_ms
    whole = build_executor(ug, 0, ug.num_units, spec, threads=1, calibration=calibration)
    whole_ms = single_process(whole, [x] * 6, int(x.shape[0]))["batch_ms_p50"]
    return [t * whole_ms / sum(unit_ms) for t in unit_ms]


def single_process(executor: Executor, xs: list[torch.Tensor], batch_size: int) -> dict[str, Any]:
    """The whole model on ``executor`` in this process: per-batch times, img/s."""
    for x in xs[:2]:
        executor.run(x)
    times = []
    for x in xs:
        t0 = time.perf_counter()
        executor.run(x)
        times.append((time.perf_counter() - t0) * 1000.0)
    med = common.median(times)
    assert med is not None
    return {"batch_ms_p50": med, "throughput_ips": batch_size * 1000.0 / med, "batches": len(xs)}


# --- one K ----------------------------------------------------------------------------------


def run_k(
    cluster: EmulatedCluster,
    coordinator: Coordinator,
    ranges: Ranges,
    execution: Execution,
    xs: list[torch.Tensor],
    args: argparse.Namespace,
) -> dict[str, Any]:
    k = len(ranges)
    names = cluster.names[:k]
    t0 = time.perf_counter()
    epoch = coordinator.install_plan(
        [(n, a, b) for n, (a, b) in zip(names, ranges, strict=True)], execution=execution
    )
    install_s = time.perf_counter() - t0
    window = 2 * k
    coordinator.run(enumerate(xs[: window + 2]), window=window)  # warm-up

    pids = {n: cluster.pid(n) for n in names}
    meter = common.CpuMeter([os.getpid(), *pids.values()])
    cpu_before = {n: common.process_cpu_s(p) for n, p in pids.items()}
    record = coordinator.run(enumerate(xs), window=window)
    host = meter.stop()
    cpu_s = {n: common.process_cpu_s(p) - cpu_before[n] for n, p in pids.items()}
    arrivals = sorted(h.end for h in record.hops if h.stage == k - 1)
    loaded = list(request_latencies_ms(record.hops, record.uploads).values())

    few = xs[: args.latency_batches]
    unloaded_record = coordinator.run(enumerate(few), window=1)
    unloaded = list(request_latencies_ms(unloaded_record.hops, unloaded_record.uploads).values())
    coordinator.drop_epoch(epoch)

    stages = common.stage_breakdown(record.hops, record.uploads)
    for row in stages:
        if row["stage"] >= 0:
            row["cpu_cores_obtained"] = cpu_s[row["device"]] / record.wall_s
    images = len(record.outputs) * args.batch_size
    steady = None
    if len(arrivals) >= 2 and arrivals[-1] > arrivals[0]:
        steady = (len(arrivals) - 1) * args.batch_size / (arrivals[-1] - arrivals[0])
    return {
        "k": k,
        "precision": execution.precision,
        "partition": common.describe_ranges(ranges),
        "window": window,
        "install_s": install_s,
        "batches": len(record.outputs),
        "throughput_steady_ips": steady,
        "throughput_wall_ips": images / record.wall_s,
        "latency_loaded_ms": {"p50": percentile(loaded, 50), "p95": percentile(loaded, 95)},
        "latency_unloaded_ms": {"p50": percentile(unloaded, 50), "n": len(unloaded)},
        "host_cpu": host,
        "stages": stages,
        "errors": record.errors,
        "failures": [f.to_dict() for f in record.failures],
    }


def median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: r[key] or 0.0)
    return ordered[len(ordered) // 2]


# --- the run --------------------------------------------------------------------------------


def measure(
    args: argparse.Namespace,
    model: torch.nn.Module,
    ug: graph.UnitGraph,
    plans: dict[str, dict[int, Ranges]],
    calibration: torch.Tensor,
    xs: list[torch.Tensor],
) -> tuple[dict[str, dict[int, list[dict[str, Any]]]], dict[str, list[dict[str, Any]]]]:
    """Every (precision, K) pipeline run and every plain single-process variant, ``rounds``
    times, alternating."""
    ks = list(range(1, args.max_devices + 1))
    precisions = list(plans)
    singles_ex = {
        f"{e} {p}": build_executor(
            ug, 0, ug.num_units, EngineSpec(e, p), threads=1,
            calibration=calibration if p == "int8" else None,
        )
        for e, p in SINGLE_VARIANTS
    }  # fmt: skip
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {p: {k: [] for k in ks} for p in precisions}
    singles: dict[str, list[dict[str, Any]]] = {label: [] for label in singles_ex}
    devices = uniform_devices(args.max_devices, cpus=1.0, threads=1)
    with exit_on_sigterm(), EmulatedCluster.start(
        devices, default_link=LinkSpec(), mechanism="none"
    ) as cluster, Coordinator(cluster.spec) as coordinator:  # fmt: skip
        coordinator.check()
        coordinator.load_model(args.model, 10, 3, args.input_size, model)
        for r in range(args.rounds):
            for label, ex in singles_ex.items():
                singles[label].append(single_process(ex, xs[:16], args.batch_size))
            order = precisions if r % 2 == 0 else precisions[::-1]
            for precision in order:
                execution = Execution(
                    engine=ENGINE,
                    precision=precision,
                    calibration=calibration if precision == "int8" else None,
                )
                for k in ks:
                    got = run_k(cluster, coordinator, plans[precision][k], execution, xs, args)
                    runs[precision][k].append(got)
                    print(
                        f"  round {r + 1} {precision} K={k} {got['partition']}: "
                        f"{got['throughput_steady_ips']:.1f} img/s, p50 "
                        f"{got['latency_loaded_ms']['p50']:.0f} ms loaded, "
                        f"{got['latency_unloaded_ms']['p50']:.0f} ms unloaded; others used "
                        f"{got['host_cpu']['other_processes_cores']:.2f} cores"
                    )
    return runs, singles


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    t_start = time.perf_counter()
    facts = common.machine_facts()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = models.build(args.model, num_classes=10).eval()
    shape = (3, args.input_size, args.input_size)
    ug = graph.trace(model, shape)
    generator = torch.Generator().manual_seed(1)
    calibration = torch.randn(args.calibration, *shape, generator=generator)
    xs = [torch.randn(args.batch_size, *shape, generator=generator) for _ in range(args.batches)]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    ks = list(range(1, args.max_devices + 1))
    cut_ms = common.gigabit_cut_ms(ug, args.batch_size) if args.cut_cost == "gigabit" else None
    unit_ms: dict[str, list[float]] = {}
    plans: dict[str, dict[int, Ranges]] = {}
    for precision in precisions:
        unit_ms[precision] = unit_ms_on(ug, EngineSpec(ENGINE, precision), xs[0], calibration)
        plans[precision] = {k: balanced_ranges(unit_ms[precision], k, cut_ms) for k in ks}
    print(
        f"{args.model} @ {args.input_size}, batch {args.batch_size}, {ENGINE} stages, one "
        f"thread per device, no CPU cap, {args.batches} batches per K, {args.rounds} round(s)"
    )
    runs, singles = measure(args, model, ug, plans, calibration, xs)

    single = {label: median_run(v, "throughput_ips") for label, v in singles.items()}
    best_label = max(single, key=lambda label: single[label]["throughput_ips"])
    best_ips = single[best_label]["throughput_ips"]
    rows, per_run = [], []
    for precision in precisions:
        chosen = {k: median_run(runs[precision][k], "throughput_steady_ips") for k in ks}
        base = chosen[1]["throughput_steady_ips"]
        plain = single[f"{ENGINE} {precision}"]
        for k in ks:
            res = chosen[k]
            ips = res["throughput_steady_ips"]
            ratio = ips / base if ips and base else None
            target = TARGET_PER_DEVICE * k
            met = None if k == 1 or ratio is None else ratio >= target
            res = {
                **res,
                "ratio_vs_k1": ratio,
                "target_ratio": target if k >= 2 else None,
                "target_met": met,
                "ratio_vs_single_same_engine": ips / plain["throughput_ips"] if ips else None,
                "ratio_vs_best_single": ips / best_ips if ips else None,
                "planned_stage_ms": common.stage_costs_ms(plans[precision][k], unit_ms[precision]),
                "all_rounds_steady_ips": [r["throughput_steady_ips"] for r in runs[precision][k]],
            }
            per_run.append(res)
            rows.append([
                f"{ENGINE} {precision}", k, res["partition"], ips, ratio,
                target if k >= 2 else None, {True: "yes", False: "NO", None: "-"}[met],
                res["ratio_vs_single_same_engine"], res["ratio_vs_best_single"],
                res["latency_loaded_ms"]["p50"], res["latency_unloaded_ms"]["p50"],
                res["host_cpu"]["other_processes_cores"],
            ])  # fmt: skip
    header = ["engine", "K", "partition", "img/s", "ratio vs K=1", "target", "met",
              "vs single", "vs best single", "p50 ms loaded", "p50 ms window 1",
              "others CPU"]  # fmt: skip
    print()
    print(common.table(header, rows))
    print("\nplain single process, whole model, one thread (median over rounds)")
    print(common.table(
        ["engine", "img/s", "batch ms p50"],
        [[label, s["throughput_ips"], s["batch_ms_p50"]] for label, s in single.items()],
    ))  # fmt: skip
    print(f"best single-device engine: {best_label} ({best_ips:.1f} img/s)")
    elapsed = time.perf_counter() - t_start
    print(f"took {elapsed:.0f} s")

    payload = {
        "benchmark": "pipeline_engines",
        "settings": {
            "model": args.model,
            "input_size": args.input_size,
            "batch_size": args.batch_size,
            "engine": ENGINE,
            "precisions": precisions,
            "threads_per_device": 1,
            "cluster": "emulated, mechanism none (no CPU cap), unshaped loopback links",
            "window": "2*K (throughput, loaded latency); 1 (unloaded latency)",
            "batches": args.batches,
            "latency_batches": args.latency_batches,
            "rounds": args.rounds,
            "partition_by": "balanced_ranges over unit times measured here on the same engine "
            "and precision (one thread); hand-off cost: " + args.cut_cost,
            "unit_ms": unit_ms,
            "int8": f"onnxruntime static QDQ, calibrated on {args.calibration} random images",
            "quick": args.quick,
        },
        "machine": facts,
        "runs": per_run,
        "single_process": single,
        "single_process_all_rounds": singles,
        "best_single": {"engine": best_label, "throughput_ips": best_ips},
        "target_per_device": TARGET_PER_DEVICE,
        "definitions": {
            "throughput_steady_ips": "(results - 1) * batch / (last - first result arrival)",
            "ratio_vs_k1": "throughput(K) / throughput(K=1 through the same pipeline, same "
            "engine and precision)",
            "ratio_vs_best_single": "throughput(K) / the fastest whole-model engine in a "
            "plain process with one thread",
            "latency_loaded_ms": "upload start -> result arrival per micro-batch, window 2*K",
            "latency_unloaded_ms": "the same with window 1",
        },
        "elapsed_s": elapsed,
    }
    path = common.write_result(args.name, payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
