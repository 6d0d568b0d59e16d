"""Copies of a tensor on one hand-off, in Python, before and after link frames (issue #19).

Times each step a float32 activation goes through on its way from the engine's output on one
worker to the engine's input on the next, for the unary path (the tensor's bytes inside a
protobuf MicroBatch) and for a link frame (a MicroBatch header followed by the bytes), in this
process, best of ``--repeats``. gRPC's own copies (into and out of its buffers) are the same
for both and not counted. A step that costs about as much as ``bytes(...)`` of the tensor is a
copy; the table says which steps the code path has.

    .venv/bin/python bench/copies.py    # ~10 s
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import _common as common
import numpy as np

from edgesplit.runtime import codec, wire
from edgesplit.runtime.proto import edgesplit_pb2 as pb


def best_us(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e6


def unary_steps(y: np.ndarray) -> dict[str, Callable[[], object]]:
    """The unary path: encode into the message, serialize; parse, read the bytes, decode."""
    msg = pb.MicroBatch(request_id=1, plan_epoch=1)
    codec.encode(y, out=msg.tensor)
    raw = msg.SerializeToString()
    parsed = pb.MicroBatch.FromString(raw)
    data = parsed.tensor.data
    return {
        "send: array.tobytes()": lambda: y.tobytes(),
        "send: bytes into the message": lambda: setattr(msg.tensor, "data", data),
        "send: SerializeToString": msg.SerializeToString,
        "receive: MicroBatch.FromString": lambda: pb.MicroBatch.FromString(raw),
        "receive: read tensor.data": lambda: parsed.tensor.data,
        "receive: decode (bytearray + frombuffer)": lambda: wire.decode_activation_array(
            parsed.tensor
        ),
    }


def frame_steps(y: np.ndarray) -> dict[str, Callable[[], object]]:
    """The link-frame path: header + the output's own bytes joined once; viewed in place."""
    batch = pb.MicroBatch(request_id=1, plan_epoch=1)
    payload = wire.activation_payload(y, "fp32", batch.tensor)
    frame = codec.pack(batch, payload)

    def receive() -> np.ndarray:
        header, data = codec.unpack(frame)
        return wire.decode_activation_array(header.tensor, data=data)

    return {
        "send: header + pack (one join)": lambda: codec.pack(
            batch, wire.activation_payload(y, "fp32", batch.tensor)
        ),
        "receive: unpack + view (no copy)": receive,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=30, help="timed repeats per step (30)")
    args = p.parse_args(argv)
    facts = common.machine_facts()
    results = {}
    rows = []
    for nbytes in (301_056, 8_000_000):  # MobileNetV2's 224-px hand-off at batch 1; 8 MB
        y = np.random.default_rng(0).standard_normal(nbytes // 4, dtype=np.float32)
        one_copy = best_us(lambda y=y: bytes(memoryview(y).cast("B")), args.repeats)
        paths = {"unary": unary_steps(y), "frame": frame_steps(y)}
        timed = {
            path: {name: best_us(fn, args.repeats) for name, fn in steps.items()}
            for path, steps in paths.items()
        }
        for path, steps in timed.items():
            for name, us in steps.items():
                rows.append([nbytes, path, name, round(us, 1), round(us / one_copy, 2)])
        results[str(nbytes)] = {
            "one_copy_us": one_copy,
            "steps_us": timed,
            "total_us": {path: sum(steps.values()) for path, steps in timed.items()},
            "total_in_copies": {
                path: sum(steps.values()) / one_copy for path, steps in timed.items()
            },
        }
    print(common.table(["bytes", "path", "step", "us (best)", "in copies"], rows))
    for nbytes, r in results.items():
        print(
            f"{nbytes} bytes: unary {r['total_us']['unary']:.0f} us "
            f"({r['total_in_copies']['unary']:.1f} copies), frame {r['total_us']['frame']:.0f} us "
            f"({r['total_in_copies']['frame']:.1f} copies) per hop, both sides, in Python"
        )
    path = common.write_result("copies", {"benchmark": "copies", "machine": facts, **results})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
