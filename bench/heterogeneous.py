"""Heterogeneous devices: the planner's partition against an equal-units split and the best
single device, and the planner's prediction against what the run measured.

Emulated devices with CPU shares 1.0, 0.5, 0.25 (and 0.25 again for the 4-device case), one
torch thread each, MobileNetV2 at 224,
batch 8, random weights, synthetic images, Gigabit-shaped links (940 Mbit/s, 0.2 ms). For each
cluster, all measured in the same run through the same `edgesplit run` library path:

* **auto**: `--partition auto --objective throughput` (profile with --reprofile, then plan);
* **equal**: the same number of units on every device, in cluster order;
* **single**: the whole model on the fastest device (pi1, 1.0 CPU).

Throughput is steady state ((results - 1) * batch / (last - first result arrival)), so
pipeline fill is not counted. Latency is measured in a second auto run with one micro-batch in
flight (window 1), because the planner predicts unloaded latency; the loaded p50 (window 2K)
is reported too. Targets (issue #4): auto >= 1.3x equal; prediction within 15 %.

    .venv/bin/python bench/heterogeneous.py           # ~4 min
    .venv/bin/python bench/heterogeneous.py --quick   # smoke run
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import _common as common

from edgesplit.app.job import RunConfig, run_job
from edgesplit.cluster.emulate import exit_on_sigterm

CLUSTERS = {"3 devices": (1.0, 0.5, 0.25), "4 devices": (1.0, 0.5, 0.25, 0.25)}
TARGET_VS_EQUAL = 1.3
TARGET_PREDICTION_ERROR = 0.15


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="mobilenet_v2", help="model name (mobilenet_v2)")
    p.add_argument("--input-size", type=int, default=224, help="input height = width (224)")
    p.add_argument("--batch-size", type=int, default=8, help="images per micro-batch (8)")
    p.add_argument("--batches", type=int, default=40, help="micro-batches per run (40)")
    p.add_argument("--quick", action="store_true", help="smoke run: 12 batches, 3 devices")
    p.add_argument("--name", default="heterogeneous", help="results file bench/results/NAME.json")
    args = p.parse_args(argv)
    if args.quick:
        args.batches = 12
        if args.name == "heterogeneous":
            args.name = "heterogeneous-quick"
    return args


def steady_ips(folder: Path, batch_size: int) -> float | None:
    """Steady-state throughput from the run folder's per-hop records (last stage arrivals)."""
    with (folder / "requests.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    last_stage = max(int(r["stage"]) for r in rows)
    arrivals = sorted(float(r["end"]) for r in rows if int(r["stage"]) == last_stage)
    if len(arrivals) < 2 or arrivals[-1] <= arrivals[0]:
        return None
    return (len(arrivals) - 1) * batch_size / (arrivals[-1] - arrivals[0])


def one_run(
    args: argparse.Namespace, cpus: tuple[float, ...], partition: str, out: Path, **extra: Any
) -> dict[str, Any]:
    config = RunConfig(
        model=args.model,
        dataset="synthetic",
        random_weights=True,
        input_size=args.input_size,
        batch_size=args.batch_size,
        limit=args.batches * args.batch_size,
        cpus_each=cpus,
        bandwidth_mbps=940.0,
        latency_ms=0.2,
        partition=partition,
        out=out,
        **extra,
    )
    t0 = time.perf_counter()
    outcome = run_job(config)
    summary = outcome.summary
    return {
        "partition_method": partition,
        "partition": summary.partition,
        "devices": list(summary.stage_devices),
        "throughput_steady_ips": steady_ips(outcome.folder, args.batch_size),
        "throughput_wall_ips": summary.throughput_ips,
        "latency_p50_ms": summary.latency_ms.p50,
        "energy_j_per_image": summary.energy_j_per_image,
        "predicted": summary.predicted.model_dump(mode="json") if summary.predicted else None,
        "seconds": time.perf_counter() - t0,
    }


def error(measured: float | None, predicted: float | None) -> float | None:
    if measured is None or not predicted:
        return None
    return (measured - predicted) / predicted


def one_cluster(args: argparse.Namespace, cpus: tuple[float, ...], tmp: Path) -> dict[str, Any]:
    tag = "-".join(f"{c:g}" for c in cpus)
    # The two runs compared with a prediction come right after the profile they are predicted
    # from: this machine's speed drifts over minutes (a window-1 run at the end of the cluster
    # once measured 43 % above its prediction while the single-device run before it was 30 %
    # slower than usual).
    auto = one_run(args, cpus, "auto", tmp / f"auto-{tag}", reprofile=True)
    unloaded = one_run(args, cpus, "auto", tmp / f"latency-{tag}", window=1)
    equal = one_run(args, cpus, "equal", tmp / f"equal-{tag}")
    single = one_run(args, cpus, "0-", tmp / f"single-{tag}")
    predicted = auto["predicted"]
    result = {
        "cpus": list(cpus),
        "auto": auto,
        "equal": equal,
        "single": single,
        "auto_window_1": unloaded,
        "ratio_auto_vs_equal": _ratio(auto, equal),
        "ratio_auto_vs_single": _ratio(auto, single),
        "throughput_prediction_error": error(
            auto["throughput_steady_ips"], predicted["throughput_ips"]
        ),
        "latency_prediction_error": error(
            unloaded["latency_p50_ms"], unloaded["predicted"]["latency_ms"]
        ),
    }
    return result


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    x, y = a["throughput_steady_ips"], b["throughput_steady_ips"]
    return x / y if x and y else None


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: dict[str, Any]) -> None:
    for name, r in results.items():
        print(f"\n{name}: CPU shares {r['cpus']}")
        print(f"{'method':<8} {'partition':<22} {'devices':<20} {'img/s':>7} {'J/img':>7}")
        for key in ("auto", "equal", "single"):
            m = r[key]
            print(
                f"{key:<8} {m['partition']:<22} {','.join(m['devices']):<20} "
                f"{_fmt(m['throughput_steady_ips'], '.1f'):>7} "
                f"{_fmt(m['energy_j_per_image'], '.3f'):>7}"
            )
        p = r["auto"]["predicted"]
        print(
            f"auto / equal = {_fmt(r['ratio_auto_vs_equal'])} (target >= {TARGET_VS_EQUAL}); "
            f"auto / single = {_fmt(r['ratio_auto_vs_single'])}"
        )
        print(
            f"throughput: predicted {p['throughput_ips']:.1f}, measured "
            f"{_fmt(r['auto']['throughput_steady_ips'], '.1f')} img/s "
            f"(error {_fmt(r['throughput_prediction_error'], '+.1%')}); "
            f"latency (window 1): predicted {r['auto_window_1']['predicted']['latency_ms']:.1f}, "
            f"measured p50 {_fmt(r['auto_window_1']['latency_p50_ms'], '.1f')} ms "
            f"(error {_fmt(r['latency_prediction_error'], '+.1%')})"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    facts = common.machine_facts()
    clusters = {"3 devices": CLUSTERS["3 devices"]} if args.quick else CLUSTERS
    results: dict[str, Any] = {}
    with exit_on_sigterm(), TemporaryDirectory(prefix="edgesplit-bench-") as tmp:
        for name, cpus in clusters.items():
            print(f"measuring {name} ({', '.join(f'{c:g}' for c in cpus)} CPU)", flush=True)
            results[name] = one_cluster(args, cpus, Path(tmp))
    print_table(results)
    errors = [
        abs(e)
        for r in results.values()
        for e in (r["throughput_prediction_error"], r["latency_prediction_error"])
        if e is not None
    ]
    out = {
        "benchmark": "heterogeneous",
        "settings": vars(args),
        "machine": facts,
        "results": results,
        "max_abs_prediction_error": max(errors) if errors else None,
        "mean_abs_prediction_error": statistics.fmean(errors) if errors else None,
        "targets": {
            "auto_vs_equal": TARGET_VS_EQUAL,
            "prediction_error": TARGET_PREDICTION_ERROR,
        },
    }
    path = common.RESULTS_DIR / f"{args.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
