"""The shipped models on a Raspberry Pi 4B's CPU architecture, emulated (issue #17 item 4).

For each shipped checkpoint (``checkpoints/MANIFEST.json``), natively on this x86-64 host with
torch: the whole model ``[0, units)`` is exported to fp32 ONNX the way edgesplit exports its
stages (:func:`edgesplit.engines.onnx_engine.export_stage`) and quantized to int8 with the
settings edgesplit uses for the CPU kind the emulated Pi reports (``arm64-neon``, read by
:mod:`edgesplit.engines.cpu` under QEMU; :func:`edgesplit.engines.quantize.settings`),
calibrated on 256 seeded training images as ``tests/cluster/test_engines_shipped.py`` does;
the first ``--images`` Fashion-MNIST test images are preprocessed to a float32 ``.npy``; both
models run here in onnxruntime. Then both run over the same ``.npy`` under ``qemu-aarch64 -cpu
cortex-a72`` in the aarch64 root (``scripts/arm/run.sh scripts/arm/eval_onnx.py``, numpy and
onnxruntime only), and:

* **fp32 agreement** = share of images whose aarch64 fp32 argmax equals the x86 fp32 argmax
  (target >= 99.9 %);
* **int8 drop** = the checkpoint's test accuracy (all 10,000 images) minus the aarch64 int8
  accuracy on the images run (target <= 1.0 point). With fewer than 10,000 images the JSON also
  gives the aarch64 fp32 accuracy on the same images and the int8 drop against it.

Writes ``bench/results/aarch64.json`` (with the host's and the emulated CPU) and exits 1 when
a target is missed. Needs the root from ``scripts/arm/make_root.py``; ``make check-arm`` runs
both.

    .venv/bin/python scripts/arm/check_models.py                 # 2,000 images, ~10 min
    .venv/bin/python scripts/arm/check_models.py --images 10000  # all of them, ~45 min
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch

from edgesplit.engines import cpu, onnx_engine, onnx_units, quantize
from edgesplit.model import checkpoints, data, graph

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "scripts" / "arm" / "run.sh"
EVAL = REPO / "scripts" / "arm" / "eval_onnx.py"
EMULATED_CPU = "cortex-a72"
CALIBRATION_IMAGES = 256
MIN_FP32_AGREEMENT = 0.999
MAX_INT8_DROP = 0.01


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    # Smallest checkpoint first (a proxy for cost): a run cut short has checked the most models.
    entries = sorted(_manifest(), key=lambda e: e["size_bytes"])
    shipped = [e["model"] for e in entries if e["dataset"] == "fashion-mnist"]
    p.add_argument("--models", default=",".join(shipped), help="comma-separated (all shipped)")
    p.add_argument("--images", type=int, default=2000, help="test images, first N (2000)")
    p.add_argument("--batch-size", type=int, default=50, help="images per session run (50)")
    p.add_argument("--root", type=Path, default=None, help="aarch64 root (run.sh's default)")
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "results" / "aarch64.json",
        help="results file (bench/results/aarch64.json)",
    )
    args = p.parse_args(argv)
    if not 1 <= args.images <= 10000:
        p.error(f"--images must be between 1 and 10000, got {args.images}")
    return args


def _manifest() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(
        (checkpoints.SHIPPED_DIR / "MANIFEST.json").read_text()
    )["checkpoints"]
    return entries


def host_cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def host_cpu_features() -> dict[str, bool]:
    """The x86 features that change ONNX Runtime's int8 kernels (issue #15)."""
    flags: set[str] = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return {f: f in flags for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni")}


def qemu_version() -> str:
    out = subprocess.run(
        ["qemu-aarch64-static", "--version"], capture_output=True, text=True, check=False
    )
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


KIND_PROBE = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('cpu', sys.argv[1])\n"
    "cpu = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(cpu)\n"
    "print(cpu.cpu_kind())\n"
)
"""Prints the CPU kind edgesplit's own code (engines/cpu.py, loaded without the package, which
needs more than the root has) reads inside the emulator."""


def emulated_kind(root: Path | None) -> str:
    """The CPU kind an aarch64 worker under ``qemu -cpu cortex-a72`` reports."""
    cpu_py = REPO / "src" / "edgesplit" / "engines" / "cpu.py"
    result = subprocess.run(
        ["bash", str(RUN), "-c", KIND_PROBE, str(cpu_py)],
        capture_output=True,
        text=True,
        env=_env(root),
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"check_models: cannot run python under qemu: {result.stderr.strip()}")
    return result.stdout.strip().splitlines()[-1]


def _env(root: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if root is not None:
        env["EDGESPLIT_ARM_ROOT"] = str(root)
    env["EDGESPLIT_ARM_CPU"] = EMULATED_CPU
    return env


def arm_int8(fp32: bytes, calibration: torch.Tensor, kind: str) -> bytes:
    """The int8 model edgesplit's coordinator builds for workers of CPU ``kind``
    (:func:`edgesplit.engines.onnx_engine.compile_int8` does the same on a compiled model),
    loadable by the root's older onnxruntime (see
    :func:`~edgesplit.engines.onnx_engine.keep_used_opsets`)."""
    int8 = quantize.quantize_stage(fp32, calibration, onnx_engine.INPUT_NAME, kind=kind)
    proto = onnx_units.parse_model(int8)
    onnx_engine.keep_used_opsets(proto)
    return proto.SerializeToString()  # type: ignore[attr-defined, no-any-return]


def native_logits(model: bytes, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, float]:
    session = onnx_engine.OnnxExecutor(model, 0, 1, "fp32", 1, None).session
    t0 = time.perf_counter()
    out = [
        session.run(None, {onnx_engine.INPUT_NAME: images[i : i + batch_size]})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out), time.perf_counter() - t0


def emulated(
    pairs: list[tuple[Path, Path]], images: Path, batch_size: int, root: Path | None
) -> dict[str, Any]:
    """Run ``eval_onnx.py`` under qemu over ``images`` for each (model, out) pair, one QEMU
    process per model side by side (each single-threaded, as the native runs are)."""
    base = ["bash", str(RUN), str(EVAL), "--images", str(images), "--batch-size", str(batch_size)]
    processes = [
        subprocess.Popen([*base, f"{m}:{o}"], stdout=subprocess.PIPE, text=True, env=_env(root))
        for m, o in pairs
    ]
    reports = []
    for process in processes:
        out, _ = process.communicate()
        if process.returncode != 0:
            for other in processes:
                if other.poll() is None:
                    other.kill()
            raise SystemExit(f"check_models: the emulated run failed (exit {process.returncode})")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    report: dict[str, Any] = reports[0]
    for other in reports[1:]:
        report["models"].update(other["models"])
    return report


def check_model(
    name: str,
    kind: str,
    test: data.ImageSet,
    train: data.ImageSet,
    args: argparse.Namespace,
    tmp: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    model, info = checkpoints.load(checkpoints.shipped(name), model_name=name)
    size = info.input_size
    assert test.labels is not None and info.test_accuracy is not None
    images = data.preprocess(test.images[: args.images], test.info, size, 3).numpy()
    labels = test.labels[: args.images].numpy()
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    calibration = data.preprocess(
        train.images[index[:CALIBRATION_IMAGES].sort().values], train.info, size, 3
    )
    ug = graph.trace(model, (3, size, size))
    t0 = time.perf_counter()
    fp32 = onnx_engine.export_stage(ug, 0, ug.num_units)
    t1 = time.perf_counter()
    int8 = arm_int8(fp32, calibration, kind)
    t2 = time.perf_counter()
    paths = {p: tmp / f"{name}-{p}.onnx" for p in ("fp32", "int8")}
    paths["fp32"].write_bytes(fp32)
    paths["int8"].write_bytes(int8)
    np.save(tmp / f"{name}-x.npy", images)
    x86 = {
        p: native_logits(m, images, args.batch_size) for p, m in (("fp32", fp32), ("int8", int8))
    }
    print(
        f"[{name}] exported {t1 - t0:.1f} s, int8 {t2 - t1:.1f} s; running under qemu", flush=True
    )
    outs = {p: tmp / f"{name}-{p}-aarch64.npy" for p in ("fp32", "int8")}
    report = emulated(
        [(paths[p], outs[p]) for p in ("fp32", "int8")],
        tmp / f"{name}-x.npy",
        args.batch_size,
        args.root,
    )
    arm = {p: np.load(outs[p]) for p in outs}
    seconds = {p: report["models"][str(paths[p])]["seconds"] for p in outs}

    def accuracy(logits: np.ndarray) -> float:
        return float((logits.argmax(1) == labels).mean())

    agreement = float((arm["fp32"].argmax(1) == x86["fp32"][0].argmax(1)).mean())
    drop = info.test_accuracy - accuracy(arm["int8"])
    row = {
        "input_size": size,
        "images": len(images),
        "checkpoint_accuracy": info.test_accuracy,
        "fp32_argmax_agreement_aarch64_vs_x86": agreement,
        "fp32_max_abs_logit_diff_aarch64_vs_x86": float(np.abs(arm["fp32"] - x86["fp32"][0]).max()),
        "accuracy": {
            "x86_fp32": accuracy(x86["fp32"][0]),
            "aarch64_fp32": accuracy(arm["fp32"]),
            "x86_int8_arm_settings": accuracy(x86["int8"][0]),
            "aarch64_int8": accuracy(arm["int8"]),
        },
        "int8_drop_points_vs_checkpoint": round(drop * 100, 3),
        "int8_drop_points_vs_aarch64_fp32_same_images": round(
            (accuracy(arm["fp32"]) - accuracy(arm["int8"])) * 100, 3
        ),
        "int8_argmax_agreement_aarch64_vs_x86": float(
            (arm["int8"].argmax(1) == x86["int8"][0].argmax(1)).mean()
        ),
        "emulated_ms_per_image": {p: round(seconds[p] * 1000 / len(images), 2) for p in outs},
        "x86_ms_per_image": {p: round(x86[p][1] * 1000 / len(images), 3) for p in outs},
        "export_s": round(t1 - t0, 2),
        "quantize_s": round(t2 - t1, 2),
        "int8_bytes": len(int8),
        "fp32_bytes": len(fp32),
        "passed": agreement >= MIN_FP32_AGREEMENT and drop <= MAX_INT8_DROP,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
    }
    report.pop("models", None)
    return row, report


def table(rows: dict[str, dict[str, Any]]) -> str:
    head = (
        f"{'model':<20} {'images':>6} {'fp32 agree':>10} {'ckpt acc':>8} {'arm fp32':>8} "
        f"{'arm int8':>8} {'drop pts':>8} {'ms/img fp32':>11} {'ms/img int8':>11}  ok"
    )
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        a = r["accuracy"]
        agree = r["fp32_argmax_agreement_aarch64_vs_x86"] * 100
        ms = r["emulated_ms_per_image"]
        lines.append(
            f"{name:<20} {r['images']:>6} {agree:>9.2f}% {r['checkpoint_accuracy']:>8.4f} "
            f"{a['aarch64_fp32']:>8.4f} {a['aarch64_int8']:>8.4f} "
            f"{r['int8_drop_points_vs_checkpoint']:>+8.2f} {ms['fp32']:>11.1f} {ms['int8']:>11.1f}"
            f"  {'yes' if r['passed'] else 'NO'}"
        )
    return "\n".join(lines)


def previous_rows(path: Path) -> dict[str, dict[str, Any]]:
    """The per-model rows of an earlier results file (a run may check a subset of the models,
    e.g. the costliest one with fewer images; each row says its images, date and commit)."""
    try:
        rows: dict[str, dict[str, Any]] = json.loads(path.read_text())["models"]
    except (OSError, ValueError, KeyError):
        return {}
    return rows


@functools.cache
def git_commit() -> str:
    """The commit this run started from (asked once: later commits do not change the code
    already imported)."""
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    )
    return out.stdout.strip()


def results(
    rows: dict[str, dict[str, Any]], emulation: dict[str, Any], kind: str, args: argparse.Namespace
) -> dict[str, Any]:
    return {
        "what": "shipped models, fp32 and int8 (ARM settings), under qemu-aarch64 vs x86",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host_cpu": host_cpu(),
        "host_machine": platform.machine(),
        "host_cpu_features": host_cpu_features(),
        "host_cpu_kind": cpu.cpu_kind(),
        "host_onnxruntime": onnxruntime.__version__,
        "emulated_cpu": f"qemu-aarch64 -cpu {EMULATED_CPU} (Raspberry Pi 4B's core)",
        "emulated_cpu_kind": kind,
        "qemu": qemu_version(),
        "emulation": emulation,
        "int8_settings": quantize.settings(kind).as_dict(),
        "targets": {
            "min_fp32_argmax_agreement": MIN_FP32_AGREEMENT,
            "max_int8_drop_points_vs_checkpoint": MAX_INT8_DROP * 100,
        },
        "settings": {
            "first_images_of": "fashion-mnist test (each model's row says how many)",
            "calibration_images": CALIBRATION_IMAGES,
            "batch_size": args.batch_size,
            "threads": 1,
        },
        "models": rows,
        "passed": all(r["passed"] for r in rows.values()),
    }


def write(path: Path, result: dict[str, Any]) -> None:
    """Write ``result``, keeping what other scripts put in the same file (``cluster``)."""
    try:
        kept = {k: v for k, v in json.loads(path.read_text()).items() if k not in result}
    except (OSError, ValueError):
        kept = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**result, **kept}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    test = data.load("fashion-mnist", "test")
    train = data.load("fashion-mnist", "train")
    git_commit()
    kind = emulated_kind(args.root)
    print(f"the emulated worker's CPU kind: {kind}", flush=True)
    rows = previous_rows(args.out)
    checked: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="edgesplit-arm-") as tmp:
        for name in args.models.split(","):
            checked[name], emulation = check_model(name, kind, test, train, args, Path(tmp))
            rows[name] = r = checked[name]
            write(args.out, results(rows, emulation, kind, args))  # a cut-short run keeps it
            print(
                f"[{name}] fp32 agreement {r['fp32_argmax_agreement_aarch64_vs_x86'] * 100:.2f} %, "
                f"int8 {r['accuracy']['aarch64_int8']:.4f} vs checkpoint "
                f"{r['checkpoint_accuracy']:.4f} ({r['int8_drop_points_vs_checkpoint']:+.2f} pts)",
                flush=True,
            )
    print(table(rows))
    print(f"host {host_cpu()} ({cpu.cpu_kind()}); emulated qemu-aarch64 -cpu {EMULATED_CPU} "
          f"({kind}); wrote {args.out}")  # fmt: skip
    if not all(r["passed"] for r in checked.values()):
        print("check_models: a target was missed (see the table)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
