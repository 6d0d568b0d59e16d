"""Run ONNX models over a batch of images and save their logits: the emulated side of
``scripts/arm/check_models.py``. It needs only numpy and onnxruntime, so it runs in the aarch64
root (``scripts/arm/run.sh scripts/arm/eval_onnx.py ...``) as well as natively.

    eval_onnx.py --images x.npy --batch-size 50 MODEL.onnx:OUT.npy [MODEL.onnx:OUT.npy ...]

Prints one JSON line at the end: the machine, onnxruntime's version, the CPU features the
kernel (or QEMU) reports to the process, and per model its images and seconds.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import sys
import time

import numpy as np
import onnxruntime as ort

AT_HWCAP, AT_HWCAP2 = 16, 26
# Linux's arm64 hwcap bits (arch/arm64/include/uapi/asm/hwcap.h) that change int8 kernels.
ARM_HWCAP = {"asimd": (AT_HWCAP, 1), "asimddp": (AT_HWCAP, 20), "i8mm": (AT_HWCAP2, 13)}


def cpu_features() -> dict[str, bool]:
    """On aarch64, the hwcaps the process sees (QEMU sets them from its ``-cpu`` model)."""
    if platform.machine() != "aarch64":
        return {}
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    libc.getauxval.argtypes = [ctypes.c_ulong]
    return {name: bool(libc.getauxval(at) >> bit & 1) for name, (at, bit) in ARM_HWCAP.items()}


def session(path: str, threads: int) -> ort.InferenceSession:
    """The options edgesplit's OnnxExecutor uses (engines/onnx_engine.py)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


PROGRESS_EVERY = 500
"""Images between two progress lines on stderr (emulation is slow)."""


def evaluate(path: str, images: np.ndarray, batch_size: int, threads: int) -> np.ndarray:
    s = session(path, threads)
    name, output = s.get_inputs()[0].name, s.get_outputs()[0].name
    chunks = []
    t0 = time.perf_counter()
    for i in range(0, len(images), batch_size):
        (y,) = s.run([output], {name: images[i : i + batch_size]})
        chunks.append(y)
        done = i + len(y)
        if done % PROGRESS_EVERY < batch_size and done < len(images):
            seconds = time.perf_counter() - t0
            print(f"  {path}: {done}/{len(images)} in {seconds:.0f} s", file=sys.stderr, flush=True)
    return np.concatenate(chunks)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--images", required=True, help="float32 .npy of shape (N, C, H, W)")
    p.add_argument("--batch-size", type=int, default=50, help="images per session run (50)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (1)")
    p.add_argument("pairs", nargs="+", metavar="MODEL.onnx:OUT.npy", help="model and output")
    args = p.parse_args(argv)
    images = np.load(args.images).astype(np.float32, copy=False)
    report: dict[str, object] = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "cpu_features": cpu_features(),
        "models": {},
    }
    for pair in args.pairs:
        model, _, out = pair.rpartition(":")
        if not model or not out:
            p.error(f"expected MODEL.onnx:OUT.npy, got {pair!r}")
        t0 = time.perf_counter()
        logits = evaluate(model, images, args.batch_size, args.threads)
        seconds = time.perf_counter() - t0
        np.save(out, logits)
        report["models"][model] = {"images": len(images), "seconds": round(seconds, 2)}  # type: ignore[index]
        print(f"  {model}: {len(images)} images in {seconds:.1f} s", file=sys.stderr, flush=True)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
