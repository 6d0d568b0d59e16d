"""The data plane's acceptance figures of issue #19, all from one invocation on this machine
(ratios within the run), written to bench/results/dataplane.json:

- ``cpu_tax``: MobileNetV2 224 px, batch 8, 2 stages (``--devices 2 --cpus 1``), onnxruntime
  fp32, auto plan: every process's CPU per image over one process running the whole model
  (the run's ``summary.json``; the reference is the profile's whole-model timing).
- ``--cpus 0.5`` scaling: the same model on K = 1, 2, 3 devices, throughput over K = 1's.
- hand-off CPU ms per MB per side, as the workers measure it (the profile's
  ``hop_cpu_ms_per_mb``, median over devices).
- the prediction's error: the default run (``edgesplit run``) ``--repeats`` times, and the
  224 px runs above.
- the pipeline overhead ratio, measured by bench/overhead.py (called, not copied).

Every run is a real ``edgesplit run`` (emulated cluster, real worker processes) in its own
process. The CPU model and the load average are printed and saved next to the figures.

    .venv/bin/python bench/dataplane.py            # ~10 min on 2 cores
    .venv/bin/python bench/dataplane.py --quick    # fewer images, no overhead bench
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as common

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"cpu_tax": 1.20, "k2_over_k1": 1.85, "k3_over_k1": 2.4, "overhead_ratio": 1.15,
           "hop_cpu_ms_per_mb": 1.0, "default_error": 0.15, "error_224": 0.10}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="default runs (3)")
    p.add_argument("--images-224", type=int, default=480, help="images per 224 px run (480)")
    p.add_argument("--quick", action="store_true", help="160 images at 224 px, 1 default run, "
                   "no overhead bench")  # fmt: skip
    p.add_argument("--no-overhead", action="store_true", help="skip bench/overhead.py")
    p.add_argument("--name", default="dataplane", help="results file bench/results/NAME.json")
    return p.parse_args(argv)


def edgesplit_run(out: Path, *options: str) -> dict[str, Any]:
    """One ``edgesplit run`` in its own process; its summary.json, the hand-off CPU of its
    profile, the printed comparison lines and the load average around it."""
    before = os.getloadavg()
    command = [sys.executable, "-m", "edgesplit", "run", "--out", str(out), "--no-dashboard",
               *options]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    profile = json.loads((out / "profile.json").read_text())
    hops = [d["hop_cpu_ms_per_mb"] for d in profile["devices"] if d.get("hop_cpu_ms_per_mb")]
    versus = summary.get("versus_plan") or {}
    quiet = without_background(out / "profile.json", summary)
    lines = [line for line in done.stdout.splitlines() if "against the prediction" in line]
    row = {
        "options": list(options),
        "throughput_ips": summary["throughput_ips"],
        "predicted_ips": (summary.get("predicted") or {}).get("throughput_ips"),
        "error": (versus.get("throughput_ips") or {}).get("error"),
        "predicted_ips_without_background": quiet,
        "error_without_background": summary["throughput_ips"] / quiet - 1 if quiet else None,
        "unloaded_latency": versus.get("latency_ms"),
        "energy": versus.get("energy_j_per_image"),
        "cpu": summary.get("cpu"),
        "cpu_tax": summary.get("cpu_tax"),
        "partition": summary["partition"],
        "hop_cpu_ms_per_mb": statistics.median(hops) if hops else None,
        "pilot": [n for n in summary["notes"] if n.startswith("pilot")],
        "printed": lines,
        "loadavg_before": list(before),
        "loadavg_after": list(os.getloadavg()),
        "elapsed_s": time.perf_counter() - t0,
    }
    print(
        f"  {' '.join(options) or '(default)'}: {row['throughput_ips']:.1f} img/s, predicted "
        f"{row['predicted_ips'] or float('nan'):.1f} (error {row['error'] or float('nan'):+.0%})"
        f", cpu_tax {row['cpu_tax'] or float('nan'):.2f}, load {before[0]:.1f}",
        flush=True,
    )
    return row


def without_background(path: Path, summary: dict[str, Any]) -> float | None:
    """The run's throughput prediction with the pilot's measured other work on the host left
    out (what a quiet host would see), from the run's own profile and plan."""
    import dataclasses

    from edgesplit.plan.planner import evaluate
    from edgesplit.plan.profile import load_profile, to_problem

    predicted = summary.get("predicted")
    if not predicted:
        return None
    profile = dataclasses.replace(load_profile(path), background_cpus=0.0)
    stages = [(s["device"], *s["units"]) for s in predicted["stages"]]
    problem = to_problem(profile, precision=summary["precision"])
    return evaluate(
        problem, stages, predicted["objective"], check_memory=False
    ).prediction.throughput_ips


def overhead_ratio(quick: bool) -> dict[str, Any] | None:
    """bench/overhead.py's measurement (its own results file), or None when it failed."""
    import overhead

    name = "dataplane-overhead"
    if overhead.main(["--name", name, *(["--quick"] if quick else [])]) != 0:
        return None
    got = json.loads((common.RESULTS_DIR / f"{name}.json").read_text())
    return {"ratio_p50": got["ratio_p50"], "ratio_mean": got["ratio_mean"], "file": f"{name}.json"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    facts = common.machine_facts()
    print(f"CPU: {facts['cpu_model']} ({facts['nproc']} cores), load {facts['loadavg_at_start']}")
    images = 160 if args.quick else args.images_224
    repeats = 1 if args.quick else args.repeats
    at224 = ["--model", "mobilenet_v2", "--input-size", "224", "--random-weights",
             "--batch-size", "8", "--engine", "onnxruntime", "--precision", "fp32",
             "--limit", str(images)]  # fmt: skip
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dataplane-") as tmp:
        folder = Path(tmp)
        print("default run (edgesplit run):")
        default = [edgesplit_run(folder / f"default-{i}") for i in range(repeats)]
        print("MobileNetV2 224 px batch 8, onnxruntime fp32:")
        two = edgesplit_run(folder / "two", *at224, "--devices", "2", "--cpus", "1")
        scaling = {
            k: edgesplit_run(folder / f"k{k}", *at224, "--devices", str(k), "--cpus", "0.5")
            for k in (1, 2, 3)
        }
    over = None if args.quick or args.no_overhead else overhead_ratio(quick=False)
    k1 = scaling[1]["throughput_ips"]
    hops = [r["hop_cpu_ms_per_mb"] for r in [two, *scaling.values()] if r["hop_cpu_ms_per_mb"]]
    errors_224 = [r["error"] for r in [two, *scaling.values()] if r["error"] is not None]
    default_errors = [r["error"] for r in default if r["error"] is not None]
    figures = {
        "cpu_tax": two["cpu_tax"],
        "k2_over_k1": scaling[2]["throughput_ips"] / k1,
        "k3_over_k1": scaling[3]["throughput_ips"] / k1,
        "hop_cpu_ms_per_mb": statistics.median(hops) if hops else None,
        "default_errors": default_errors,
        "default_within_15pct": sum(abs(e) <= TARGETS["default_error"] for e in default_errors),
        "errors_224": errors_224,
        "overhead_ratio": over["ratio_p50"] if over else None,
    }
    print(json.dumps(figures, indent=1))
    payload = {
        "benchmark": "dataplane",
        "machine": facts,
        "loadavg_at_end": list(os.getloadavg()),
        "figures": figures,
        "targets": TARGETS,
        "runs": {
            "default": default,
            "two_stages_cpus_1": two,
            "cpus_0_5": {str(k): v for k, v in scaling.items()},
        },
        "overhead": over,
        "definitions": {
            "cpu_tax": "summary.json cpu_tax: coordinator CPU (process time around the run) + "
            "each worker's (its samples) per image, over the profile's whole-model CPU per image "
            "on the same engine and precision",
            "error": "(measured - predicted) / predicted throughput, as the run prints it",
            "hop_cpu_ms_per_mb": "profile: one side of a hand-off, CPU ms per MB (1e6 bytes), "
            "measured by each worker (runtime.profiling.hop_cpu_ms_per_mb), median",
        },
        "elapsed_s": time.perf_counter() - t0,
    }
    path = common.write_result(args.name, payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
