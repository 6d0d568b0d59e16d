"""The simulator (issue #23) against measured runs, its speed, and scaling curves.

Three parts, each selectable:

* ``--validate``: emulated clusters of bench/heterogeneous.py (CPU shares 1, 0.5, 0.25 and
  1, 0.5, 0.25, 0.25; 940 Mbit/s, 0.2 ms links) and of bench/scaling.py (K = 1..4 devices of
  0.5 CPU, unshaped links), MobileNetV2 at 224, batch 8, one `edgesplit run --partition auto
  --reprofile` each. The simulator then runs the same plan, window and image count on the
  profile that run measured (its run folder's profile.json) and is compared with the run's
  steady throughput ((results - 1) x batch / (last - first result)) and p50 latency; the
  planner's prediction is shown next to it. Targets: throughput within 10 %, p50 within 15 %.
* ``--speed``: a 64-device, 60-unit simulation of 10,000 images (target < 10 s) and the
  ``--target-ips`` search over 64 candidate devices (target < 30 s).
* ``--curves``: throughput and p50 latency against device count (1..64) for the five zoo
  models on a profiled 0.25-CPU emulated device kind with 940 Mbit/s links (profiles in
  bench/results/sim-profiles/, from ``edgesplit profile --devices 1 --cpus 0.25``), as JSON
  and PNG.

    .venv/bin/python bench/simulate.py                  # all three, ~15 min
    .venv/bin/python bench/simulate.py --speed --curves # no emulated runs, ~1 min
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import logging
import os
import statistics
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import _common as common
import psutil

from edgesplit.config import LinkSpec
from edgesplit.plan.planner import DeviceCost, LinkCost, Problem, UnitCost
from edgesplit.plan.profile import boundary_bytes, load_profile
from edgesplit.simulate import SimConfig, SimSpec, cluster_from, plan_by_kinds, simulate
from edgesplit.simulate.kinds import Kinds

HETEROGENEOUS = {"het-3": (1.0, 0.5, 0.25), "het-4": (1.0, 0.5, 0.25, 0.25)}
SCALING = {f"scaling-K{k}": (0.5,) * k for k in range(1, 5)}
MODELS = ("mobilenet_v2", "mobilenet_v3_small", "squeezenet1_1", "shufflenet_v2_x0_5",
          "efficientnet_b0")  # fmt: skip
PROFILES = common.RESULTS_DIR / "sim-profiles"
RUNS_SUFFIX = "-runs"
"""bench/results/NAME-runs/CLUSTER/ keeps each validation run's profile.json and run.json
(plan, window, what was measured), so the simulation can be compared again
(``--resimulate``) without measuring again."""
KEPT_FILES = ("profile.json", "requests.csv", "samples.csv")
"""What each kept run keeps of its run folder: the profile the simulation runs on, and the
per-request hop records and device samples that show where the run's time went."""
TARGET_THROUGHPUT = 0.10
TARGET_LATENCY = 0.15


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--validate", action="store_true", help="measured runs vs the simulator")
    p.add_argument("--speed", action="store_true", help="time the 64-device cases")
    p.add_argument("--curves", action="store_true", help="scaling curves of the zoo models")
    p.add_argument("--model", default="mobilenet_v2", help="model of --validate (mobilenet_v2)")
    p.add_argument("--batches", type=int, default=40, help="micro-batches per run (40)")
    p.add_argument("--batch-size", type=int, default=8, help="images per micro-batch (8)")
    p.add_argument("--resimulate", action="store_true",
                   help="compare the kept runs in bench/results/simulate-runs/ again")  # fmt: skip
    p.add_argument("--clusters", default=None, help="comma-separated subset of the clusters")
    p.add_argument("--name", default="simulate", help="results file bench/results/NAME.json")
    args = p.parse_args(argv)
    if args.resimulate:
        args.validate = True
    if not (args.validate or args.speed or args.curves):
        args.validate = args.speed = args.curves = True
    return args


# --- validation against measured runs ---------------------------------------------------------


def run_summary(folder: Path, batch_size: int) -> dict[str, Any]:
    summary = json.loads((folder / "summary.json").read_text())
    with (folder / "requests.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    last_stage = max(int(r["stage"]) for r in rows)
    arrivals = sorted(float(r["end"]) for r in rows if int(r["stage"]) == last_stage)
    steady = (len(arrivals) - 1) * batch_size / (arrivals[-1] - arrivals[0])
    return {"summary": summary, "steady_ips": steady}


def steady_window(folder: Path) -> tuple[float, float]:
    """First and last result arrival of a run (coordinator clock, seconds)."""
    with (folder / "requests.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    last_stage = max(int(r["stage"]) for r in rows)
    arrivals = [float(r["end"]) for r in rows if int(r["stage"]) == last_stage]
    return min(arrivals), max(arrivals)


class LoadSampler:
    """Samples, every ``interval_s``, the host's busy CPU and ours (this process and its
    children, the emulated workers), and how many threads are runnable on the host and how
    many of them are ours, so that what other processes did can be taken over the run's steady
    window only (the job's whole time includes profiling and start-up)."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, float, float]] = []  # (time.time(), host, ours)
        self.coordinator: list[tuple[float, float]] = []  # (time.time(), this process's CPU)
        self.runnable: list[tuple[float, int]] = []  # (time.time(), others' runnable threads)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="load-sampler", daemon=True)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        me = psutil.Process()
        mine = me.cpu_times()
        self.coordinator.append((time.time(), mine.user + mine.system))
        ours, ours_running = 0.0, 0
        for p in (me, *me.children(recursive=True)):
            with contextlib.suppress(psutil.Error, OSError):
                t = p.cpu_times()
                ours += t.user + t.system
                ours_running += _running_threads(p.pid)
        now = time.time()
        self.samples.append((now, common.host_busy_s(), ours))
        self.runnable.append((now, max(0, _procs_running() - ours_running)))

    def _loop(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval_s):
                self._sample()
                return

    def coordinator_cores(self, start: float, end: float) -> float | None:
        """Cores this process (the coordinator, and this sampler) used in the window."""
        before = [s for s in self.coordinator if s[0] <= start]
        after = [s for s in self.coordinator if s[0] >= end]
        if not before or not after:
            return None
        (t0, cpu0), (t1, cpu1) = before[-1], after[0]
        return (cpu1 - cpu0) / (t1 - t0)

    def others_runnable(self, start: float, end: float) -> float | None:
        """Other processes' runnable threads between ``start`` and ``end``, on average."""
        inside = [n for t, n in self.runnable if start <= t <= end]
        return statistics.fmean(inside) if inside else None

    def others_cores(self, start: float, end: float) -> float | None:
        """Cores other processes used between ``start`` and ``end`` (the samples around)."""
        before = [s for s in self.samples if s[0] <= start]
        after = [s for s in self.samples if s[0] >= end]
        if not before or not after:
            return None
        (t0, host0, ours0), (t1, host1, ours1) = before[-1], after[0]
        # A worker that exited between samples takes its CPU out of ``ours``: never below 0.
        return max(0.0, (host1 - host0) - max(ours1 - ours0, 0.0)) / (t1 - t0)


def _procs_running() -> int:
    """Threads runnable on the host now (``procs_running`` of /proc/stat)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("procs_running "):
            return int(line.split()[1])
    return 0


def _running_threads(pid: int) -> int:
    """Threads of ``pid`` in state R now."""
    n = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            stat = (task / "stat").read_text()
            n += stat[stat.rindex(")") + 2] == "R"
    return n


def runs_dir(args: argparse.Namespace) -> Path:
    return common.RESULTS_DIR / f"{args.name}{RUNS_SUFFIX}"


def one_validation(args: argparse.Namespace, name: str, cpus: tuple[float, ...], tmp: Path,
                   unshaped: bool) -> dict[str, Any]:  # fmt: skip
    """Measure one run and keep what the simulation needs under :func:`runs_dir`."""
    from edgesplit.app.job import RunConfig, run_job

    config = RunConfig(
        model=args.model,
        dataset="synthetic",
        random_weights=True,
        input_size=224,
        batch_size=args.batch_size,
        limit=args.batches * args.batch_size,
        cpus_each=cpus if len(cpus) > 1 else None,
        devices=len(cpus),
        cpus=cpus[0],
        bandwidth_mbps=None if unshaped else 940.0,
        latency_ms=0.0 if unshaped else 0.2,
        partition="auto",
        reprofile=True,
        out=tmp / name,
    )
    t0, own0, host0 = time.perf_counter(), _own_cpu_s(), common.host_busy_s()
    with LoadSampler() as load:
        outcome = run_job(config)
    run_s = time.perf_counter() - t0
    # The workers are children that were waited for: their CPU is in os.times() by now.
    others_cores = max(0.0, common.host_busy_s() - host0 - (_own_cpu_s() - own0)) / run_s
    measured = run_summary(outcome.folder, args.batch_size)
    window = steady_window(outcome.folder)
    summary = measured["summary"]
    keep = runs_dir(args) / name
    keep.mkdir(parents=True, exist_ok=True)
    for kept in KEPT_FILES:
        (keep / kept).write_text((outcome.folder / kept).read_text())
    run = {
        "cluster": name,
        "cpus": list(cpus),
        "links": "unshaped" if unshaped else "940 Mbit/s, 0.2 ms",
        "precision": summary["precision"],
        "partition": summary["partition"],
        "stages": [[s["device"], *s["units"]] for s in summary["plan"]["stages"]],
        "window": summary["window"],
        "images": summary["images"],
        "batch_size": args.batch_size,
        "measured_steady_ips": measured["steady_ips"],
        "measured_p50_ms": summary["latency_ms"]["p50"],
        "measured_latency_ms": summary["latency_ms"],
        "predicted": summary["predicted"],
        "run_devices": summary.get("devices"),
        "other_processes_cores": others_cores,
        "other_processes_steady_cores": load.others_cores(*window),
        "other_runnable_threads": load.others_runnable(*window),
        "coordinator_cores": load.coordinator_cores(*window),
        "loadavg_after": list(os.getloadavg()),
        "run_s": run_s,
    }
    (keep / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    return compare(keep)


def compare(folder: Path) -> dict[str, Any]:
    """The simulation of a kept run (its profile, plan, window and images) against it."""
    run = json.loads((folder / "run.json").read_text())
    profile = load_profile(folder / "profile.json")
    cluster = cluster_from(profile, precision=run["precision"])
    if cluster.problem.host_cpus is not None:  # what other processes used during the run
        background = run.get("other_runnable_threads") or 0.0  # older runs: not measured
        used = run.get("other_processes_steady_cores")
        spec = dataclasses.replace(
            cluster.spec, background_threads=background, background_cores=used
        )
        cluster = dataclasses.replace(cluster, spec=spec)
    stages = tuple((d, a, b) for d, a, b in run["stages"])

    def sims(spec: SimSpec) -> list[Any]:
        return [
            simulate(spec, stages, SimConfig(images=run["images"], window=run["window"],
                     seed=seed))
            for seed in range(5)
        ]  # fmt: skip

    t0 = time.perf_counter()
    plain = sims(cluster.spec)
    sim_s = time.perf_counter() - t0
    sim_ips = statistics.median(r.steady_ips or r.throughput_ips for r in plain)
    sim_p50 = statistics.median(r.latency_ms["p50"] for r in plain)
    run_ips, run_p50 = run["measured_steady_ips"], run["measured_p50_ms"]
    predicted = run["predicted"] or {}
    return {
        **{k: v for k, v in run.items() if k not in ("predicted", "run_devices")},
        "devices": [d for d, _, _ in run["stages"]],
        "simulated_steady_ips": sim_ips,
        "simulated_p50_ms": sim_p50,
        "simulated_p90_ms": statistics.median(r.latency_ms["p90"] for r in plain),
        "planner_ips": predicted.get("throughput_ips"),
        "planner_latency_ms": predicted.get("latency_ms"),
        "throughput_error": (sim_ips - run_ips) / run_ips,
        "p50_error": (sim_p50 - run_p50) / run_p50,
        "planner_throughput_error": (
            (predicted["throughput_ips"] - run_ips) / run_ips if predicted else None
        ),
        "cpu_ms_per_batch": cpu_per_batch(run, cluster.problem, profile),
        "sim_device_utilisation": {d.name: d.utilisation for d in plain[0].devices},
        "run_devices": run.get("run_devices"),
        "prepare_ms": profile.prepare_ms,
        "simulate_s": sim_s,
    }


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def cpu_per_batch(run: dict[str, Any], problem: Problem, profile: Any) -> dict[str, Any]:
    """Per stage, the CPU its worker spent per micro-batch in the run (its process CPU % over
    the run, times the steady period) and what the simulator gives it (the stage's CPU and
    both hand-offs): where the cost model is off, independent of the host's load."""
    cuts = boundary_bytes(profile)
    period_ms = 1000.0 * _batch(run) / run["measured_steady_ips"]
    out = {}
    for d in run.get("run_devices") or []:
        if d.get("cpu_percent") is None:
            continue
        start, end = d["units"]
        cost = problem.device(d["name"])
        model = cost.stage_cpu_ms(start, end) + cost.hop_cpu_ms_per_mb / 1e6 * (
            cuts[start] + cuts[end]
        )
        out[d["name"]] = {"run": d["cpu_percent"] / 100.0 * period_ms, "model": model}
    if run.get("coordinator_cores") is not None:  # its loop, its RPCs, results, heartbeats
        first = problem.device(run["stages"][0][0])
        model = problem.prepare_ms + first.hop_cpu_ms_per_mb / 1e6 * problem.input_bytes
        out["coordinator"] = {"run": run["coordinator_cores"] * period_ms, "model": model}
    return out


def _batch(run: dict[str, Any]) -> int:
    return int(run.get("batch_size") or 8)


def validate(args: argparse.Namespace) -> list[dict[str, Any]]:
    from edgesplit.cluster.emulate import exit_on_sigterm

    clusters = {**{k: (v, False) for k, v in HETEROGENEOUS.items()},
                **{k: (v, True) for k, v in SCALING.items()}}  # fmt: skip
    if args.clusters:
        wanted = args.clusters.split(",")
        clusters = {k: v for k, v in clusters.items() if k in wanted}
    out = []
    if args.resimulate:
        kept = runs_dir(args)
        return [compare(kept / name) for name in clusters if (kept / name / "run.json").exists()]
    with exit_on_sigterm(), TemporaryDirectory(prefix="edgesplit-sim-") as tmp:
        for name, (cpus, unshaped) in clusters.items():
            print(f"measuring {name} ({', '.join(f'{c:g}' for c in cpus)} CPU)", flush=True)
            row = one_validation(args, name, cpus, Path(tmp), unshaped)
            out.append(row)
            print(
                f"  {row['partition']} on {','.join(row['devices'])}: measured "
                f"{row['measured_steady_ips']:.1f} img/s p50 {row['measured_p50_ms']:.0f} ms; "
                f"simulated {row['simulated_steady_ips']:.1f} img/s "
                f"({row['throughput_error']:+.1%}) p50 {row['simulated_p50_ms']:.0f} ms "
                f"({row['p50_error']:+.1%}); planner {row['planner_ips']:.1f} img/s; other "
                f"processes used {_others(row):.2f} cores",
                flush=True,
            )
    return out


# --- speed ------------------------------------------------------------------------------------


def uniform_problem(units: int, devices: int, batch_size: int = 8) -> tuple[Problem, Kinds]:
    """``devices`` identical devices (Pi-like power, a 0.25-CPU quota) and ``units`` units of
    uneven times (seeded), small tensors and 940 Mbit/s links, so that the best plan cuts
    the model into as many stages as it has units: the largest simulation of this size."""
    import random

    rng = random.Random(0)
    unit_ms = tuple(rng.uniform(20.0, 40.0) for _ in range(units))
    out_bytes = [rng.choice((5_000, 10_000, 20_000, 40_000)) for _ in range(units)]
    names = tuple(f"pi_{i}" for i in range(1, devices + 1))
    problem = Problem(
        units=tuple(UnitCost(b, 100_000, 2 * b, f"u{i}") for i, b in enumerate(out_bytes)),
        devices=tuple(
            DeviceCost(n, unit_ms, burst_unit_ms=tuple(t / 4 for t in unit_ms), quota_ms=25.0)
            for n in names
        ),
        batch_size=batch_size,
        input_bytes=batch_size * 3 * 32 * 32 * 4,
        default_link=LinkCost(940.0, 0.2),
        prepare_ms=2.0,
    )
    return problem, Kinds(("pi",), (names,))


def speed() -> dict[str, Any]:
    from edgesplit.simulate.target import smallest_cluster

    problem, kinds = uniform_problem(60, 64)
    t0 = time.perf_counter()
    plan = plan_by_kinds(problem, kinds)
    plan_s = time.perf_counter() - t0
    spec = SimSpec(problem, {n: 0.05 for n in problem.device_names})
    t0 = time.perf_counter()
    result = simulate(spec, plan.assignment(), SimConfig(images=10_000))
    sim_s = time.perf_counter() - t0
    print(
        f"64 devices, 60 units, 10,000 images: plan {plan_s:.2f} s ({len(plan.stages)} stages), "
        f"simulation {sim_s:.2f} s ({result.events} events); {result.steady_ips:.1f} img/s "
        f"simulated, {plan.prediction.throughput_ips:.1f} predicted"
    )
    profile = load_profile(PROFILES / "mobilenet_v2-0.25cpu.json")
    catalogue = cluster_from(profile, [(64, "pi1")], LinkSpec(bandwidth_mbps=940, latency_ms=0.2))
    t0 = time.perf_counter()
    answer = smallest_cluster(catalogue, target_ips=60.0, max_latency_ms=1000.0)
    target_s = time.perf_counter() - t0
    print(f"--target-ips 60 --max-latency-ms 1000 over 64 candidates: {target_s:.2f} s; "
          f"{answer.summary()}")  # fmt: skip
    mixed = None
    het = (
        common.RESULTS_DIR / f"simulate{RUNS_SUFFIX}" / "het-4" / "profile.json"
    )  # devices of 1, 0.5 and 0.25 CPU, profiled together
    if het.exists():
        kinds = [(16, "pi1"), (16, "pi2"), (32, "pi3")]
        catalogue = cluster_from(load_profile(het), kinds)
        t0 = time.perf_counter()
        got = smallest_cluster(catalogue, target_ips=100.0, max_latency_ms=600.0, by="watts")
        mixed_s = time.perf_counter() - t0
        print(f"--target-ips 100 --max-latency-ms 600 --by watts over 16 x 1 CPU, 16 x 0.5, "
              f"32 x 0.25: {mixed_s:.2f} s; {got.summary()}")  # fmt: skip
        mixed = {"catalogue": kinds, "seconds": mixed_s, "answer": got.to_dict()}
    return {
        "target_ips_3_kinds_64_candidates": mixed,
        "sim_64_devices_60_units_10000_images_s": sim_s,
        "plan_64_devices_60_units_s": plan_s,
        "stages": len(plan.stages),
        "events": result.events,
        "simulated_steady_ips": result.steady_ips,
        "predicted_ips": plan.prediction.throughput_ips,
        "target_ips_64_candidates_s": target_s,
        "target_answer": answer.to_dict(),
        "targets_s": {"simulation": 10.0, "target_ips": 30.0},
    }


# --- scaling curves ---------------------------------------------------------------------------


def curves(max_devices: int = 64) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in MODELS:
        path = PROFILES / f"{model}-0.25cpu.json"
        if not path.exists():
            print(f"  {model}: no profile {path}, skipped")
            continue
        profile = load_profile(path)
        kind = profile.devices[0].name
        rows = []
        for n in range(1, max_devices + 1):
            cluster = cluster_from(
                profile, [(n, kind)], LinkSpec(bandwidth_mbps=940.0, latency_ms=0.2)
            )
            plan = plan_by_kinds(cluster.problem, cluster.kinds)  # the same rule for every n
            r = simulate(cluster.spec, plan.assignment(), SimConfig(images=2000))
            rows.append({
                "devices": n,
                "stages": len(plan.stages),
                "partition": plan.partition(),
                "simulated_ips": r.steady_ips or r.throughput_ips,
                "simulated_p50_ms": r.latency_ms["p50"],
                "simulated_p50_window1_ms": simulate(
                    cluster.spec, plan.assignment(), SimConfig(images=400, window=1)
                ).latency_ms["p50"],
                "predicted_ips": plan.prediction.throughput_ips,
                "predicted_latency_ms": plan.prediction.latency_ms,
                "energy_j_per_image": r.energy_j_per_image,
            })  # fmt: skip
        out[model] = {"units": len(profile.units), "rows": rows}
        top = max(r["simulated_ips"] for r in rows)
        knee = next(r for r in rows if r["simulated_ips"] >= 0.99 * top)
        print(
            f"  {model}: 1 device {rows[0]['simulated_ips']:.1f} img/s; {top:.1f} img/s at "
            f"most, within 1 % of it from {knee['devices']} devices ({knee['stages']} stages "
            f"of {len(profile.units)} units)"
        )
    return out


def plot_curves(data: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for model, d in data.items():
        n = [r["devices"] for r in d["rows"]]
        ax1.plot(n, [r["simulated_ips"] for r in d["rows"]], label=model)
        ax2.plot(n, [r["simulated_p50_window1_ms"] for r in d["rows"]], label=model)
    ax1.set(xlabel="devices (0.25 CPU each, 940 Mbit/s)", ylabel="images/s (simulated, steady)",
            title="throughput, batch 8, window 2 x stages")  # fmt: skip
    ax2.set(xlabel="devices", ylabel="ms (simulated p50, window 1)",
            title="latency of one micro-batch of 8")  # fmt: skip
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.set_xscale("log", base=2)
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _others(row: dict[str, Any]) -> float:
    """Cores other processes used during the run's steady window (or its whole job)."""
    steady = row.get("other_processes_steady_cores")
    return float(row["other_processes_cores"] if steady is None else steady)


def _cpu_text(row: dict[str, Any]) -> str:
    items = row["cpu_ms_per_batch"].items()
    return ", ".join(f"{k} {v['run']:.0f}/{v['model']:.0f}" for k, v in items)


def _threads(row: dict[str, Any]) -> str:
    """Other processes' runnable threads (the simulator's background), if measured."""
    n = row.get("other_runnable_threads")
    return "-" if n is None else f"{n:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    payload: dict[str, Any] = {"benchmark": "simulate", "machine": common.machine_facts(),
                               "settings": vars(args)}  # fmt: skip
    if args.speed:
        payload["speed"] = speed()
    if args.curves:
        data = curves()
        path = common.RESULTS_DIR / "simulate-curves.json"
        notes = (
            "devices: copies of the profiled 0.25-CPU emulated device (bench/results/"
            "sim-profiles/), 940 Mbit/s 0.2 ms links, batch 8, the plan of the planner over "
            "kinds (least bottleneck, then fewest devices, then least latency); throughput is "
            "steady with window 2 x stages; latency is p50 with window 1. Latency moves in steps "
            "of the CFS period (100 ms): a stage needing a little more than its quota waits a "
            "period. Throughput stops growing when a single unit, or the upload of 8 fp32 "
            "images of 224 x 224 (4.8 MB, about 41 ms at 940 Mbit/s), is the bottleneck."
        )
        path.write_text(json.dumps({"machine": payload["machine"], "notes": notes,
                                    "curves": data}, indent=1))  # fmt: skip
        print(f"wrote {path} and {plot_curves(data, path.with_suffix('.png'))}")
    if args.validate:
        rows = validate(args)
        payload["validation"] = rows
        if args.resimulate:
            payload["validation_note"] = (
                f"runs measured earlier by --validate and kept in {runs_dir(args)} (each "
                "run.json has the load then); simulated again with this commit"
            )
        payload["machine"]["loadavg_at_end"] = list(os.getloadavg())
        print(f"\n{'cluster':<12} {'run img/s':>9} {'sim img/s':>9} {'err':>7} {'run p50':>8} "
              f"{'sim p50':>8} {'err':>7} {'planner':>8} {'err':>7} {'others':>6} "
              f"{'threads':>7}  cpu/batch run vs model")  # fmt: skip
        for r in rows:
            print(
                f"{r['cluster']:<12} {r['measured_steady_ips']:>9.1f} "
                f"{r['simulated_steady_ips']:>9.1f} {r['throughput_error']:>+7.1%} "
                f"{r['measured_p50_ms']:>8.0f} {r['simulated_p50_ms']:>8.0f} "
                f"{r['p50_error']:>+7.1%} {r['planner_ips']:>8.1f} "
                f"{_pct(r['planner_throughput_error']):>7} {_others(r):>6.2f} "
                f"{_threads(r):>7}  " + _cpu_text(r)
            )
        payload["targets"] = {"throughput": TARGET_THROUGHPUT, "p50": TARGET_LATENCY}
    if args.validate or args.speed:
        out = common.RESULTS_DIR / f"{args.name}.json"
        out.write_text(json.dumps(payload, indent=1, default=str) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
