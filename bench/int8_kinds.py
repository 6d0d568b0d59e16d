"""int8 accuracy per CPU kind (issue #15): each shipped model's int8 drop on the CPU kind its
stages are built for, evaluated on a CPU of that kind.

The stages are built here, natively, exactly as a worker of that kind builds them
(``compiled_stage(..., kind=KIND)``: three stages, each calibrated on its own inputs from 256
seeded training images, the shipped test's setup), then the Fashion-MNIST test images run
through them in a second process that imports only numpy and onnxruntime. With ``--emulate
haswell`` that process runs under ``qemu-x86_64-static -cpu Haswell`` (AVX2, no AVX-512, no
VNNI: ONNX Runtime picks its non-VNNI kernels there) and the stages are built for
``x86-avx2``; otherwise it runs natively, for this machine's kind.

    python bench/int8_kinds.py                        # this CPU, all 10,000 test images
    python bench/int8_kinds.py --emulate haswell      # an x86 CPU without VNNI, emulated
    python bench/int8_kinds.py --kind x86-vnni --emulate haswell   # the old settings there

Writes bench/results/int8_kinds-<kind>[-on-<emulated>].json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x0_5", "squeezenet1_1",
          "efficientnet_b0")  # fmt: skip
CALIBRATION_IMAGES = 256
EMULATED = {"haswell": ("qemu-x86_64-static", "Haswell", "x86-avx2")}
RESULTS = Path(__file__).parent / "results"


def evaluate(
    folder: Path, images: int, precisions: tuple[str, ...] = ("int8", "fp32")
) -> dict[str, dict[str, float]]:
    """Accuracy of each model's stage chains in ``folder`` at ``precisions`` (numpy +
    onnxruntime only: this runs under emulation)."""
    import numpy as np
    import onnxruntime as ort

    x = np.load(folder / "x.npy")[:images]
    y = np.load(folder / "y.npy")[:images]
    out: dict[str, dict[str, float]] = {}
    for model in sorted(p for p in folder.iterdir() if p.is_dir()):
        out[model.name] = {}
        for precision in precisions:
            files = sorted(model.glob(f"{precision}-*.onnx"))
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.log_severity_level = 3
            sessions = [ort.InferenceSession(str(f), options) for f in files]
            right, t0 = 0, time.perf_counter()
            for i in range(0, len(x), 500):
                h = x[i : i + 500]
                for s in sessions:
                    h = s.run(None, {s.get_inputs()[0].name: h})[0]
                right += int((h.argmax(1) == y[i : i + 500]).sum())
            out[model.name][precision] = right / len(x)
            print(f"  {model.name} {precision}: {right / len(x):.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    return out


def build(folder: Path, kind: str, models: list[str]) -> dict[str, float]:
    """Write the test set and each model's fp32 and int8 stages for ``kind`` into ``folder``;
    returns each checkpoint's recorded test accuracy."""
    import numpy as np
    import torch

    from edgesplit.engines import EngineSpec
    from edgesplit.engines.onnx_engine import compiled_stage
    from edgesplit.model import checkpoints, data, graph

    test = data.load("fashion-mnist", "test")
    train = data.load("fashion-mnist", "train")
    index = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    picked = index[:CALIBRATION_IMAGES].sort().values
    recorded = {}
    for name in models:
        model, info = checkpoints.load(
            checkpoints.shipped(name, "fashion-mnist"), model_name=name, num_classes=10
        )
        size = info.input_size
        if not (folder / "x.npy").exists():
            x = data.preprocess(test.images, test.info, size, 3).numpy()
            np.save(folder / "x.npy", x)
            np.save(folder / "y.npy", np.asarray(test.labels))
        calibration = data.preprocess(train.images[picked], train.info, size, 3)
        ug = graph.trace(model, (3, size, size))
        bounds = [round(ug.num_units * k / 3) for k in range(4)]
        (folder / name).mkdir()
        for i, (a, b) in enumerate(itertools.pairwise(bounds)):
            for precision in ("fp32", "int8"):
                blob, _ = compiled_stage(
                    ug, a, b, EngineSpec("onnxruntime", precision), None, calibration,
                    folder / "cache", kind=kind,
                )  # fmt: skip
                (folder / name / f"{precision}-{i}.onnx").write_bytes(blob)
        assert info.test_accuracy is not None
        recorded[name] = info.test_accuracy
        print(f"  built {name} for {kind}", flush=True)
    return recorded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--emulate", choices=sorted(EMULATED), help="evaluate on an emulated CPU")
    parser.add_argument("--kind", help="build the stages for this CPU kind (default: the CPU "
                        "they are evaluated on)")  # fmt: skip
    parser.add_argument("--images", type=int, default=10_000, help="test images (default all)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated models")
    parser.add_argument("--evaluate", type=Path, help=argparse.SUPPRESS)  # the inner process
    parser.add_argument("--precisions", default="int8,fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.evaluate:
        print(json.dumps(evaluate(args.evaluate, args.images, tuple(args.precisions.split(",")))))
        return 0

    from edgesplit.engines import cpu, quantize

    emulator = None
    run_on = cpu.describe()
    kind = args.kind or cpu.cpu_kind()
    if args.emulate:
        binary, model, emulated_kind = EMULATED[args.emulate]
        emulator = shutil.which(binary)
        if emulator is None:
            print(f"{binary} not found: apt-get install qemu-user-static", file=sys.stderr)
            return 2
        kind = args.kind or emulated_kind
        run_on = f"{cpu.cpu_model()} under {binary} -cpu {model} ({emulated_kind})"
    print(f"int8 stages built for {kind} {quantize.settings(kind)}; evaluated on {run_on}")
    with tempfile.TemporaryDirectory(prefix="edgesplit-int8-") as tmp:
        folder = Path(tmp)
        recorded = build(folder, kind, args.models.split(","))
        command = [sys.executable, __file__, "--evaluate", str(folder), "--images",
                   str(args.images)]  # fmt: skip
        if emulator:
            # fp32 kernels do not saturate: fp32 runs natively, only int8 on the emulated CPU.
            command = [emulator, "-cpu", EMULATED[args.emulate][1], *command, "--precisions",
                       "int8"]  # fmt: skip
        t0 = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [ln for ln in result.stderr.splitlines() if "TCG doesn't support" not in ln]
        print(result.stdout.rsplit("\n", 2)[0])
        if result.returncode != 0:
            print("\n".join(lines[-20:]), file=sys.stderr)
            return 1
        accuracies = json.loads(result.stdout.strip().splitlines()[-1])
        if emulator:
            native = evaluate(folder, args.images, ("fp32",))
            accuracies = {m: {**acc, **native[m]} for m, acc in accuracies.items()}
    rows = []
    # The drop is against fp32 stages on the same images in the same process; over all
    # 10,000 test images that fp32 accuracy is the checkpoint's own.
    print(f"\n{'model':20} {'checkpoint':>10} {'fp32':>7} {'int8':>7} {'drop (points)':>14}")
    for name, acc in accuracies.items():
        drop = (acc["fp32"] - acc["int8"]) * 100
        rows.append({"model": name, "checkpoint": recorded[name], **acc, "drop_points": drop})
        print(f"{name:20} {recorded[name]:10.4f} {acc['fp32']:7.4f} {acc['int8']:7.4f} "
              f"{drop:+14.2f}")  # fmt: skip
    worst = max(r["drop_points"] for r in rows)
    print(f"worst drop {worst:+.2f} points over {args.images} images "
          f"(evaluation {time.perf_counter() - t0:.0f} s)")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    suffix = f"-on-{args.emulate}" if args.emulate else ""
    out = RESULTS / f"int8_kinds-{kind}{suffix}.json"
    out.write_text(json.dumps({
        "built_for": kind, "settings": quantize.settings(kind).as_dict(), "evaluated_on": run_on,
        "host_cpu": cpu.describe(), "images": args.images, "models": rows,
        "worst_drop_points": worst,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
