"""Lean workers (issue #17): memory, start-up and a torch-free worker's predictions.

Four measurements, each with real ``edgesplit worker`` processes on loopback:

* ``ready``: seconds from starting ``edgesplit worker`` to its ``--ready-file`` (median and max
  of several starts), from the torch-free venv;
* ``rss_224``: worker RSS in ``edgesplit run --model mobilenet_v2 --input-size 224
  --batch-size 8 --devices 2`` at onnxruntime fp32 (from summary.json);
* ``make_run``: worker RSS in the default ``edgesplit run`` (what ``make run`` runs);
* ``lean_run``: two workers started from a venv without torch serve a 2-device run of the
  shipped MobileNetV2 checkpoint on the Fashion-MNIST test set; its predictions against the
  single-process torch argmax, libtorch in the workers' ``/proc/<pid>/maps``, and the venv's
  site-packages size.

The torch-free venv is made with ``python3 -m venv DIR && DIR/bin/pip install -c
constraints.txt .`` (``--make-venv`` does it).

    .venv/bin/python bench/lean_worker.py [--venv DIR] [--make-venv] [--limit N]   # ~5 min
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
import torch
import yaml

from edgesplit.app.job import resolve_model
from edgesplit.model import data
from edgesplit.runconfig import RunConfig

ROOT = Path(__file__).resolve().parent.parent
EDGESPLIT = [sys.executable, "-m", "edgesplit"]
TOKEN = "lean-bench-token"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--venv",
        type=Path,
        default=ROOT / ".venv-worker",
        help="the torch-free venv (default .venv-worker; made when missing, see the doc)",
    )
    p.add_argument("--make-venv", action="store_true", help="create/refresh --venv first")
    p.add_argument("--limit", type=int, default=None, help="test images of lean_run (all)")
    p.add_argument("--rss-limit", type=int, default=400, help="images of rss_224 (400)")
    p.add_argument("--starts", type=int, default=5, help="worker starts timed by ready (5)")
    p.add_argument("--name", default="lean_worker", help="results file bench/results/NAME.json")
    return p.parse_args(argv)


def make_venv(venv: Path) -> None:
    if not (venv / "bin" / "python").exists():
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q", "-c", str(ROOT / "constraints.txt")]
    subprocess.run([*pip, str(ROOT)], check=True)
    subprocess.run([*pip, "--no-deps", "--force-reinstall", str(ROOT)], check=True)


def site_packages_mb(venv: Path) -> float:
    found = list(venv.glob("lib/python*/site-packages"))
    total = sum(f.stat().st_size for f in found[0].rglob("*") if f.is_file())
    return total / 1e6


def has_torch(venv: Path) -> bool:
    code = "import importlib.util as u; print(u.find_spec('torch') is not None)"
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True)
    return out.stdout.strip() == "True"


def start_worker(venv: Path, name: str, folder: Path) -> tuple[subprocess.Popen[bytes], str, float]:
    """A worker from ``venv``; returns (process, address, seconds to its ready file)."""
    ready = folder / f"{name}.ready"
    ready.unlink(missing_ok=True)
    env = {**os.environ, "EDGESPLIT_TOKEN": TOKEN, "EDGESPLIT_CACHE_DIR": str(folder / name)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [
            str(venv / "bin" / "edgesplit"),
            "worker",
            "--name",
            name,
            "--listen",
            "127.0.0.1:0",
            "--ready-file",
            str(ready),
            "--threads",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while not ready.exists():
        if proc.poll() is not None:
            raise SystemExit(f"worker {name} exited with {proc.returncode}")
        if time.perf_counter() - t0 > 120:
            proc.kill()
            raise SystemExit(f"worker {name} not ready after 120 s")
        time.sleep(0.01)
    return proc, ready.read_text().strip(), time.perf_counter() - t0


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_cli(*args: str, folder: Path) -> dict[str, Any]:
    out = folder / "run"
    env = {**os.environ, "EDGESPLIT_CACHE_DIR": str(folder / "coordinator-cache")}
    done = subprocess.run(
        [*EDGESPLIT, "run", *args, "--json", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"edgesplit run {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    summary["_folder"] = str(out)
    return summary


def rss_of(summary: dict[str, Any]) -> dict[str, float]:
    return {d["name"]: round(float(d["rss_mb"]), 1) for d in summary["devices"]}


def measure_ready(venv: Path, starts: int) -> dict[str, Any]:
    times = []
    with tempfile.TemporaryDirectory(prefix="lean-ready-") as tmp:
        for i in range(starts):
            proc, _, seconds = start_worker(venv, f"r{i}", Path(tmp))
            times.append(seconds)
            stop([proc])
    return {
        "starts": starts,
        "median_s": round(statistics.median(times), 3),
        "max_s": round(max(times), 3),
        "all_s": [round(t, 3) for t in times],
    }


def measure_lean_run(venv: Path, limit: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lean-run-") as tmp:
        folder = Path(tmp)
        started = [start_worker(venv, f"pi{i + 1}", folder) for i in range(2)]
        procs = [p for p, _, _ in started]
        try:
            cluster = {
                "token": TOKEN,
                "devices": [
                    {"name": f"pi{i + 1}", "address": a} for i, (_, a, _) in enumerate(started)
                ],
            }
            (folder / "cluster.yaml").write_text(yaml.safe_dump(cluster))
            args = [
                "--cluster",
                str(folder / "cluster.yaml"),
                "--model",
                "mobilenet_v2",
                "--dataset",
                "fashion-mnist",
                "--engine",
                "onnxruntime",
                "--precision",
                "fp32",
            ]
            if limit is not None:
                args += ["--limit", str(limit)]
            summary = run_cli(*args, folder=folder)
            maps = [Path(f"/proc/{p.pid}/maps").read_text() for p in procs]
            libtorch = ["libtorch" in m or "libc10" in m for m in maps]
        finally:
            stop(procs)
        rows = (Path(summary["_folder"]) / "predictions.csv").read_text().splitlines()[1:]
        got = [int(r.split(",")[1]) for r in rows]
    config = RunConfig(model="mobilenet_v2", dataset="fashion-mnist")
    dataset = data.load("fashion-mnist", "test")
    resolved = resolve_model(config, dataset)
    assert resolved.model is not None
    reference: list[int] = []
    torch.set_num_threads(1)
    with torch.inference_mode():
        for _, x, _ in dataset.batches(64, resolved.input_size, 3, len(got)):
            reference.extend(resolved.model(x).argmax(1).tolist())
    same = sum(a == b for a, b in zip(got, reference, strict=True))
    return {
        "images": len(got),
        "input_size": resolved.input_size,
        "checkpoint": resolved.weights,
        "same_argmax": same,
        "all_equal": same == len(got),
        "accuracy": summary["accuracy"],
        "worker_rss_mb": rss_of(summary),
        "libtorch_mapped": libtorch,
        "workers_python": str(venv / "bin" / "python"),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.make_venv or not (args.venv / "bin" / "edgesplit").exists():
        make_venv(args.venv)
    if has_torch(args.venv):
        raise SystemExit(f"{args.venv} has torch installed; the lean run needs a venv without it")
    result: dict[str, Any] = {"machine": common.machine_facts()}
    result["venv"] = {
        "path": str(args.venv),
        "site_packages_mb": round(site_packages_mb(args.venv), 1),
    }
    result["ready"] = measure_ready(args.venv, args.starts)
    print("ready", result["ready"], flush=True)
    with tempfile.TemporaryDirectory(prefix="lean-rss-") as tmp:
        s224 = run_cli(
            "--model",
            "mobilenet_v2",
            "--input-size",
            "224",
            "--batch-size",
            "8",
            "--devices",
            "2",
            "--engine",
            "onnxruntime",
            "--precision",
            "fp32",
            "--random-weights",
            "--limit",
            str(args.rss_limit),
            folder=Path(tmp),
        )
        result["rss_224"] = {
            "worker_rss_mb": rss_of(s224),
            "images": s224["images"],
            "throughput_ips": s224["throughput_ips"],
        }
    print("rss_224", result["rss_224"], flush=True)
    with tempfile.TemporaryDirectory(prefix="lean-make-run-") as tmp:
        default = run_cli(folder=Path(tmp))
        result["make_run"] = {
            "worker_rss_mb": rss_of(default),
            "images": default["images"],
            "accuracy": default["accuracy"],
        }
    print("make_run", result["make_run"], flush=True)
    result["lean_run"] = measure_lean_run(args.venv, args.limit)
    print("lean_run", result["lean_run"], flush=True)
    path = common.write_result(args.name, result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
