"""Engines on one device: images per second of the whole model on each stage executor, one
thread, for every zoo model (issue #9 item 5).

For each model (random weights, 10 classes, 3 x 224 x 224 input, batch 8) the whole model
``[0, units)`` runs on the executors edgesplit's stages use (:func:`edgesplit.engines.build.
build_executor`): ``torch fp32`` (the traced fx module, eager), ``onnxruntime fp32`` and
``onnxruntime int8`` (static QDQ quantization calibrated on a small batch of random images;
speed does not depend on what the calibration batch shows). One torch thread in this process
and one ONNX Runtime intra-op thread. The engines take turns in rounds, so drift of this noisy
machine hits all of them alike.

* **img/s** = batch / median batch time; the mean-based figure is in the JSON.
* **ratio** = img/s against torch fp32 of the same model, measured in the same run.
* ``build_s`` is what compiling the model cost (export; export + calibration + quantization).
* ``max_abs_diff_vs_torch`` checks that every engine computed the same function (int8's
  difference is quantization error on random weights, so only its size is telling).

    .venv/bin/python bench/engines.py            # ~3-5 min
    .venv/bin/python bench/engines.py --quick    # smoke run
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

from edgesplit.engines import EngineSpec, Executor
from edgesplit.engines.build import build_executor
from edgesplit.model import graph, models

VARIANTS = (("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--models",
        default=",".join(models.known_models()),
        help="comma-separated zoo models (default: all five)",
    )
    p.add_argument("--input-size", type=int, default=224, help="input height = width (224)")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (8)")
    p.add_argument("--threads", type=int, default=1, help="torch / onnxruntime threads (1)")
    p.add_argument("--batches", type=int, default=24, help="measured batches per engine (24)")
    p.add_argument("--rounds", type=int, default=3, help="rounds the engines alternate in (3)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up batches per engine (2)")
    p.add_argument(
        "--calibration", type=int, default=32, help="random images calibrating int8 (32)"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 4 batches, 1 round")
    p.add_argument("--name", default="engines", help="results file bench/results/NAME.json")
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.rounds, args.warmup = 4, 1, 1
        if args.name == "engines":
            args.name = "engines-quick"
    args.rounds = max(1, min(args.rounds, args.batches))
    return args


def batch_times_ms(executor: Executor, xs: list[torch.Tensor]) -> list[float]:
    out = []
    for x in xs:
        t0 = time.perf_counter()
        executor.run(x)
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def build_all(
    ug: graph.UnitGraph, args: argparse.Namespace, calibration: torch.Tensor
) -> tuple[dict[str, Executor], dict[str, float], dict[str, str]]:
    """One executor per variant (whole model), the seconds each took to build, and the
    variants that could not be built with the reason."""
    executors: dict[str, Executor] = {}
    build_s: dict[str, float] = {}
    failed: dict[str, str] = {}
    for engine, precision in VARIANTS:
        label = f"{engine} {precision}"
        t0 = time.perf_counter()
        try:
            executors[label] = build_executor(
                ug,
                0,
                ug.num_units,
                EngineSpec(engine, precision),
                threads=args.threads,
                calibration=calibration if precision == "int8" else None,
            )
        except Exception as exc:  # a benchmark reports a failed variant and goes on
            failed[label] = f"{type(exc).__name__}: {exc}"
            continue
        build_s[label] = time.perf_counter() - t0
    return executors, build_s, failed


def measure_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    model = models.build(name, num_classes=10).eval()
    shape = (3, args.input_size, args.input_size)
    ug = graph.trace(model, shape)
    generator = torch.Generator().manual_seed(1)
    calibration = torch.randn(args.calibration, *shape, generator=generator)
    xs = [torch.randn(args.batch_size, *shape, generator=generator) for _ in range(args.batches)]
    executors, build_s, failed = build_all(ug, args, calibration)

    with torch.inference_mode():
        reference = model(xs[0])
    diffs = {
        label: float((ex.run(xs[0]) - reference).abs().max().item())
        for label, ex in executors.items()
    }
    for ex in executors.values():
        batch_times_ms(ex, xs[: args.warmup])

    times: dict[str, list[float]] = {label: [] for label in executors}
    meter = common.CpuMeter([os.getpid()])
    chunk = -(-len(xs) // args.rounds)
    for r in range(args.rounds):
        part = xs[r * chunk : (r + 1) * chunk]
        order = list(executors)
        order = order[r % len(order) :] + order[: r % len(order)]
        for label in order:
            times[label] += batch_times_ms(executors[label], part)
    host = meter.stop()

    rows: dict[str, dict[str, Any]] = {}
    for label, values in times.items():
        med, avg = common.median(values), common.mean(values)
        assert med is not None and avg is not None
        rows[label] = {
            "batch_ms_median": med,
            "batch_ms_mean": avg,
            "batch_ms_min": min(values),
            "throughput_ips": args.batch_size * 1000.0 / med,
            "throughput_mean_ips": args.batch_size * 1000.0 / avg,
            "batches": len(values),
            "build_s": build_s[label],
            "max_abs_diff_vs_torch": diffs[label],
        }
    base = rows.get("torch fp32", {}).get("throughput_ips")
    for row in rows.values():
        row["ratio_vs_torch_fp32"] = row["throughput_ips"] / base if base else None
    return {
        "model": name,
        "units": ug.num_units,
        "engines": rows,
        "failed": failed,
        "host_cpu_during_measurement": host,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    t_start = time.perf_counter()
    facts = common.machine_facts()
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    print(
        f"whole model on one device, {args.input_size} px, batch {args.batch_size}, "
        f"{args.threads} thread(s), {args.batches} batches per engine in {args.rounds} rounds"
    )
    results = []
    for name in names:
        res = measure_model(name, args)
        results.append(res)
        got = ", ".join(f"{k} {v['throughput_ips']:.1f}" for k, v in res["engines"].items())
        others = res["host_cpu_during_measurement"]["other_processes_cores"]
        print(f"  {name}: {got} img/s; others used {others:.2f} cores")

    labels = [f"{e} {p}" for e, p in VARIANTS]
    rows = []
    for res in results:
        row: list[object] = [res["model"]]
        for label in labels:
            got = res["engines"].get(label)
            row.append(got["throughput_ips"] if got else None)
        for label in labels[1:]:
            got = res["engines"].get(label)
            row.append(got["ratio_vs_torch_fp32"] if got else None)
        row.append(res["host_cpu_during_measurement"]["other_processes_cores"])
        rows.append(row)
    header = ["model", *(f"{label} img/s" for label in labels),
              *(f"{label} / torch" for label in labels[1:]), "others CPU"]  # fmt: skip
    print()
    print(common.table(header, rows))
    failures = {r["model"]: r["failed"] for r in results if r["failed"]}
    if failures:
        print(f"\nnot built: {failures}")
    elapsed = time.perf_counter() - t_start
    print(f"took {elapsed:.0f} s")

    payload = {
        "benchmark": "engines",
        "settings": {
            "models": names,
            "input_size": args.input_size,
            "batch_size": args.batch_size,
            "threads": args.threads,
            "weights": "random (torch.manual_seed(0)), 10 classes",
            "inputs": "random normal",
            "int8": f"onnxruntime static QDQ, calibrated on {args.calibration} random images",
            "batches_per_engine": args.batches,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "quick": args.quick,
        },
        "machine": facts,
        "results": results,
        "definitions": {
            "throughput_ips": "batch_size / median batch time (executor.run on a ready tensor)",
            "ratio_vs_torch_fp32": "throughput_ips / torch fp32 throughput_ips, same model, "
            "same run",
            "other_processes_cores": "CPU cores other processes used while this model was "
            "measured (the host has nproc cores)",
        },
        "elapsed_s": elapsed,
    }
    path = common.write_result(args.name, payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
