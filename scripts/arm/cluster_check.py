"""One aarch64 worker under QEMU as a device of a cluster next to x86 workers (issue #17 item 4).

Starts two x86 workers (this venv's ``edgesplit worker``) and one aarch64 worker
(``scripts/arm/run.sh -m edgesplit worker``: the torch-free worker in the aarch64 root, under
``qemu-aarch64 -cpu cortex-a72``) on loopback, writes their cluster file with the aarch64 worker
in the middle (``x86-1, pi-arm, x86-2``), and runs ``edgesplit run --cluster`` over the first
``--images`` Fashion-MNIST test images at each precision. The reference is the same run (model,
partition, precision, images) on an emulated cluster of three x86 workers (``--devices 3``).

* **argmax agreement** = share of images whose prediction through the mixed cluster equals
  the all-x86 cluster's (fp32 target >= 99.9 %; the coordinator quantizes the model for each
  CPU kind in the cluster and the aarch64 worker cuts its int8 stage from the arm64 one, so
  int8 may differ slightly and its accuracy is what counts);
* **accuracy** against the checkpoint's (int8 target: at most 1.0 point lower).

The results go into ``bench/results/aarch64.json`` under ``"cluster"`` (the rest of that file
is ``check_models.py``'s). Exits 1 when a run fails or a target is missed.

    .venv/bin/python scripts/arm/cluster_check.py --images 256
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "scripts" / "arm" / "run.sh"
RESULTS = REPO / "bench" / "results" / "aarch64.json"
ARM_DEVICE = "pi-arm"
READY_TIMEOUT_S = 300.0
"""Generous: an emulated worker imports numpy, onnxruntime, grpc and pydantic at a tenth of the
host's speed, and this host is shared."""
RUN_TIMEOUT_S = 3600.0
MIN_FP32_AGREEMENT = 0.999
MAX_INT8_DROP = 0.01


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="mobilenet_v2", help="shipped model (mobilenet_v2)")
    p.add_argument("--images", type=int, default=256, help="first N test images (256)")
    p.add_argument("--batch-size", type=int, default=8, help="images per micro-batch (8)")
    p.add_argument("--partition", default="equal", help="edgesplit run --partition (equal)")
    p.add_argument("--precisions", default="fp32,int8", help="comma-separated (fp32,int8)")
    p.add_argument("--root", type=Path, default=None, help="aarch64 root (run.sh's default)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results file (aarch64.json)")
    return p.parse_args(argv)


def start_worker(
    cmd: list[str], name: str, tmp: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    ready, log = tmp / f"{name}.ready", tmp / f"{name}.log"
    cmd = [*cmd, "worker", "--listen", "127.0.0.1:0", "--name", name, "--threads", "1",
           "--token-file", str(tmp / "token"), "--ready-file", str(ready)]  # fmt: skip
    worker_env = {**env, "EDGESPLIT_CACHE_DIR": str(tmp / f"cache-{name}")}
    with log.open("wb") as out:
        return subprocess.Popen(cmd, env=worker_env, stdout=out, stderr=subprocess.STDOUT)


class WorkerNeedsTorch(Exception):
    """This checkout's ``edgesplit worker`` imports torch, which the aarch64 root lacks."""


def wait_ready(process: subprocess.Popen[bytes], name: str, tmp: Path) -> str:
    ready, log = tmp / f"{name}.ready", tmp / f"{name}.log"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if ready.exists() and ready.read_text().strip():
            return ready.read_text().strip()
        if process.poll() is not None:
            text = log.read_text()
            if "No module named 'torch'" in text:
                raise WorkerNeedsTorch(text.strip().splitlines()[-1])
            raise SystemExit(f"worker {name} exited with {process.returncode}:\n{text}")
        time.sleep(0.2)
    raise SystemExit(f"worker {name} not ready after {READY_TIMEOUT_S:.0f} s:\n{log.read_text()}")


def edgesplit_run(
    args: argparse.Namespace, precision: str, out: Path, where: list[str]
) -> dict[str, Any]:
    """``edgesplit run`` on ``where`` (``--cluster FILE`` or ``--devices 3``); its summary and
    predictions, or the error it printed."""
    cmd = [sys.executable, "-m", "edgesplit", "run", *where, "--model", args.model,
           "--partition", args.partition, "--limit", str(args.images),
           "--batch-size", str(args.batch_size), "--engine", "onnxruntime",
           "--precision", precision, "--out", str(out), "--json", "--no-dashboard"]  # fmt: skip
    env = {**os.environ, "EDGESPLIT_CACHE_DIR": str(out.parent / "cache-coordinator")}
    t0 = time.perf_counter()
    result = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S, check=False
    )
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {result.returncode}", "seconds": seconds}
    summary = json.loads((out / "summary.json").read_text())
    with (out / "predictions.csv").open() as f:
        predictions = [int(r["prediction"]) if r["prediction"] else -1 for r in csv.DictReader(f)]
    return {"summary": summary, "predictions": predictions, "seconds": seconds}


def compare(mixed: dict[str, Any], reference: dict[str, Any], precision: str) -> dict[str, Any]:
    row: dict[str, Any] = {"wall_s": round(mixed["seconds"], 1)}
    if "error" in mixed or "error" in reference:
        row["error"] = mixed.get("error") or f"reference run: {reference.get('error')}"
        row["passed"] = False
        return row
    summary = mixed["summary"]
    a, b = mixed["predictions"], reference["predictions"]
    agreement = sum(x == y >= 0 for x, y in zip(a, b, strict=True)) / len(a)
    checkpoint = summary["checkpoint_accuracy"]
    drop = checkpoint - summary["accuracy"] if checkpoint is not None else None
    arm_stage = next(s for s in summary["plan"]["stages"] if s["device"] == ARM_DEVICE)
    row.update(
        {
            "images": summary["images"],
            "completed_images": summary["completed_images"],
            "partition": summary["partition"],
            "arm_units": arm_stage["units"],
            "argmax_agreement_vs_all_x86": agreement,
            "accuracy": summary["accuracy"],
            "accuracy_all_x86": reference["summary"]["accuracy"],
            "checkpoint_accuracy": checkpoint,
            "drop_points_vs_checkpoint": None if drop is None else round(drop * 100, 3),
            "throughput_ips": summary["throughput_ips"],
            "devices": {
                d["name"]: {k: d.get(k) for k in ("rss_mb", "cpu_percent", "compute_ms_per_image")}
                for d in summary["devices"]
            },
        }
    )
    if precision == "fp32":
        row["passed"] = agreement >= MIN_FP32_AGREEMENT
    else:
        row["passed"] = drop is not None and drop <= MAX_INT8_DROP
    return row


def code_version() -> str:
    """The commit whose ``src/`` ran (with ``+dirty`` when the checkout has changes)."""
    out = subprocess.run(
        ["git", "describe", "--always", "--dirty=+dirty"], capture_output=True, text=True, cwd=REPO
    )
    return out.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    code = code_version()  # before the run: a commit made meanwhile is not what ran
    env = dict(os.environ)
    if args.root is not None:
        env["EDGESPLIT_ARM_ROOT"] = str(args.root)
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgesplit-arm-cluster-") as name:
        tmp = Path(name)
        (tmp / "token").write_text(os.urandom(16).hex() + "\n")
        commands = {
            "x86-1": [sys.executable, "-m", "edgesplit"],
            ARM_DEVICE: ["bash", str(RUN), "-m", "edgesplit"],
            "x86-2": [sys.executable, "-m", "edgesplit"],
        }
        workers = {n: start_worker(c, n, tmp, env) for n, c in commands.items()}
        try:
            try:
                addresses = {n: wait_ready(p, n, tmp) for n, p in workers.items()}
            except WorkerNeedsTorch as exc:
                print(
                    f"cluster check SKIPPED: this checkout's `edgesplit worker` imports torch "
                    f"({exc}); it needs the torch-free worker of issue #17 item 2",
                    flush=True,
                )
                return 0
            devices = "\n".join(f"  - {{name: {n}, address: '{a}'}}" for n, a in addresses.items())
            (tmp / "cluster.yaml").write_text(f"token_file: {tmp / 'token'}\ndevices:\n{devices}\n")
            print(f"cluster: {addresses}", flush=True)
            cluster = ["--cluster", str(tmp / "cluster.yaml")]
            for precision in args.precisions.split(","):
                print(f"[{precision}] mixed cluster (x86-1, {ARM_DEVICE}, x86-2)", flush=True)
                mixed = edgesplit_run(args, precision, tmp / f"mixed-{precision}", cluster)
                print(f"[{precision}] all-x86 reference (--devices 3)", flush=True)
                reference = edgesplit_run(
                    args, precision, tmp / f"x86-{precision}", ["--devices", "3"]
                )
                rows[precision] = compare(mixed, reference, precision)
                print(f"[{precision}] {json.dumps(rows[precision])}", flush=True)
        finally:
            for process in workers.values():
                if process.poll() is None:
                    process.terminate()
            for process in workers.values():
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
            arm_log = (tmp / f"{ARM_DEVICE}.log").read_text()
    passed = bool(rows) and all(r["passed"] for r in rows.values())
    cluster = {
        "what": f"{args.model}: one aarch64 worker under qemu between two x86 workers vs all-x86",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "devices": list(commands),
        "code": code,
        "settings": {k: v for k, v in vars(args).items() if k not in ("root", "out")},
        "targets": {
            "min_fp32_argmax_agreement": MIN_FP32_AGREEMENT,
            "max_int8_drop_points_vs_checkpoint": MAX_INT8_DROP * 100,
        },
        "precisions": rows,
        "arm_worker_log_tail": arm_log.strip().splitlines()[-5:],
        "passed": passed,
    }
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["cluster"] = cluster
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {args.out} (cluster: {'passed' if passed else 'FAILED'})")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
