"""Serving: the highest Poisson QPS that meets p99 <= 250 ms, 3 emulated devices against 1
(issue #21), then a worker killed under load.

Each cluster is a real ``edgesplit serve`` process (MobileNetV2 at 224, onnxruntime fp32,
emulated devices at 0.5 CPU each, links shaped to gigabit as ``serve`` does by default) loaded
by :mod:`edgesplit.serve.loadgen` in this process with one Fashion-MNIST test image per request
(PNG; the server resizes it to 224). Both servers stay up; the offered QPS climbs in steps,
the two measured in turn at each level (so both see the same background load), each until it
missed the bound at two levels in a row; its best level is the highest one with p99 <= the bound
and no failed request. Then, on 3 devices at about half their best QPS, one worker (the
middle stage) is SIGKILLed 20 s into a 60 s run: failed requests and p99 before, around and
after.

    .venv/bin/python bench/serve.py            # ~15 min
    .venv/bin/python bench/serve.py --quick    # smoke run (writes serve-quick.json)
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _common as common

from edgesplit.metrics.summary import percentile
from edgesplit.serve import loadgen
from edgesplit.serve.images import encode_png
from edgesplit.serve.process import ServeProcess

P99_MS = 250.0
START_TIMEOUT_S = 900.0
LOADAVG: dict[str, list[float]] = {}
"""The host's 1-minute load average after each point, per cluster (2 cores here)."""


def start_server(devices: int, args: argparse.Namespace, cache: Path) -> ServeProcess:
    argv = [
        "--model", "mobilenet_v2", "--input-size", "224", "--random-weights",
        "--engine", "onnxruntime", "--devices", str(devices), "--cpus", "0.5",
        "--partition", args.partition, "--max-batch", str(args.max_batch),
        "--max-wait-ms", str(args.max_wait_ms), "--max-queue", "256",
        "--heartbeat-deadline", "1.0",
    ]  # fmt: skip
    env = {"EDGESPLIT_CACHE_DIR": str(cache)}
    return ServeProcess(argv, env=env, timeout_s=START_TIMEOUT_S)


def measure(
    server: ServeProcess, payloads: list[bytes], qps: float, duration_s: float
) -> loadgen.Point:
    spec = loadgen.LoadSpec(server.url, "poisson", (qps,), duration_s, timeout_s=60.0)
    (point,) = loadgen.sweep(spec, payloads)
    return point


def meets(point: loadgen.Point) -> bool:
    return point.failed == 0 and point.p99_ms is not None and point.p99_ms <= P99_MS


def climb(
    servers: dict[str, ServeProcess], payloads: list[bytes], levels: list[float], duration_s: float
) -> dict[str, list[loadgen.Point]]:
    """Every server at each level in turn (alternating which goes first, so both see the same
    background load), each until it missed the bound at two levels in a row."""
    points: dict[str, list[loadgen.Point]] = {name: [] for name in servers}
    misses = dict.fromkeys(servers, 0)
    for i, qps in enumerate(levels):
        names = [n for n in servers if misses[n] < 2]
        if not names:
            break
        for name in names if i % 2 == 0 else names[::-1]:
            point = measure(servers[name], payloads, qps, duration_s)
            points[name].append(point)
            load = os.getloadavg()[0]
            LOADAVG.setdefault(name, []).append(load)
            print(f"  {name}: {loadgen.point_line(point)} (load average {load:.1f})", flush=True)
            misses[name] = 0 if meets(point) else misses[name] + 1
            time.sleep(2.0)  # the last point's backlog drains
    return points


def window_p99(samples: list[loadgen.Sample], start: float, end: float) -> dict[str, Any]:
    inside = [s for s in samples if start <= s.t < end]
    ok = [s.latency_s * 1000 for s in inside if s.status == 200]
    return {
        "from_s": start,
        "to_s": end,
        "requests": len(inside),
        "failed": len(inside) - len(ok),
        "p50_ms": common.median(ok),
        "p99_ms": percentile(ok, 99),
        "max_ms": max(ok) if ok else None,
    }


def kill_run(
    server: ServeProcess, payloads: list[bytes], qps: float, duration_s: float, kill_at_s: float
) -> dict[str, Any]:
    spec = loadgen.LoadSpec(server.url, "poisson", (qps,), duration_s, timeout_s=60.0)
    points: list[loadgen.Point] = []
    runner = threading.Thread(target=lambda: points.extend(loadgen.sweep(spec, payloads)))
    started = time.monotonic()
    runner.start()
    time.sleep(kill_at_s)
    before = server.cluster()
    pid = next(d["pid"] for d in before["devices"] if d["name"] == "pi2")
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic() - started
    runner.join()
    after = server.cluster()
    (point,) = points
    return {
        "offered_qps": qps,
        "duration_s": duration_s,
        "killed": "pi2",
        "killed_at_s": round(killed_at, 2),
        "point": point.to_dict(),
        "windows": [
            window_p99(point.samples, 0.0, kill_at_s),
            window_p99(point.samples, kill_at_s, kill_at_s + 10.0),
            window_p99(point.samples, kill_at_s + 10.0, duration_s + 1.0),
        ],
        "plan_before": before["plan"],
        "plan_after": after["plan"],
        "health_after": {d["name"]: d["health"] for d in after["devices"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (short points)")
    parser.add_argument("--partition", default="auto", help="as edgesplit serve (default auto)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per level")
    parser.add_argument("--name", default="serve", help="results file name")
    args = parser.parse_args()
    duration = 5.0 if args.quick else args.duration
    name = f"{args.name}-quick" if args.quick else args.name
    cache = Path(tempfile.gettempdir()) / "edgesplit-bench-serve-cache"
    from edgesplit.model import data

    fashion = data.load("fashion-mnist", "test")
    payloads = [encode_png(fashion.images[i]) for i in range(256)]
    facts = common.machine_facts()
    busy0, t0 = common.host_busy_s(), time.monotonic()
    result: dict[str, Any] = {
        "settings": {
            "model": "mobilenet_v2", "input_size": 224, "engine": "onnxruntime",
            "precision": "fp32", "cpus_per_device": 0.5, "partition": args.partition,
            "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
            "p99_ms_bound": P99_MS, "seconds_per_level": duration,
            "images_per_request": 1, "links": "940 Mbit/s, 0.2 ms (serve's default)",
        },
        "machine": facts,
        "clusters": {},
    }  # fmt: skip
    levels = [5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0]
    levels += [100.0, 120.0, 140.0, 160.0, 180.0, 200.0]
    servers: dict[str, ServeProcess] = {}
    try:
        for devices in (1, 3):
            label = f"{devices} device{'s' if devices > 1 else ''}"
            print(f"{label}: starting edgesplit serve", flush=True)
            servers[label] = start_server(devices, args, cache)
            print(f"  plan: {servers[label].cluster()['plan']['stages']}", flush=True)
        series = climb(servers, payloads, levels, duration)
        for label, points in series.items():
            result["clusters"][label.split()[0]] = {
                "plan": servers[label].cluster()["plan"],
                "best_qps": loadgen.best_qps(points, P99_MS),
                "points": [p.to_dict() for p in points],
                "loadavg_after_each_point": LOADAVG.get(label, []),
            }
        best = result["clusters"]["3"]["best_qps"]
        servers.pop("1 device").stop()  # the kill run has the host to itself
        if best:
            print("3 devices: killing pi2 20 s into a 60 s run", flush=True)
            result["kill"] = kill_run(
                servers["3 devices"], payloads, round(best / 2), 20.0 if args.quick else 60.0,
                8.0 if args.quick else 20.0,
            )  # fmt: skip
    finally:
        for server in servers.values():
            server.stop()
    best1 = result["clusters"]["1"]["best_qps"]
    best3 = result["clusters"]["3"]["best_qps"]
    result["ratio_3_vs_1"] = best3 / best1 if best1 and best3 else None
    elapsed = time.monotonic() - t0
    result["host_busy_cores"] = (common.host_busy_s() - busy0) / elapsed
    result["loadavg_at_end"] = list(os.getloadavg())
    png = common.RESULTS_DIR / f"{name}.png"
    loadgen.plot(series, png, P99_MS, title="MobileNetV2 224 fp32, 0.5 CPU per device")
    path = common.write_result(name, result)
    rows = [
        [label, loadgen.best_qps(points, P99_MS), len(points)] for label, points in series.items()
    ]
    print(common.table(["cluster", "best QPS at p99<=250ms", "levels"], rows))
    print(f"ratio 3 vs 1: {result['ratio_3_vs_1']}")
    if "kill" in result:
        k = result["kill"]
        print(f"kill: {k['point']['failed']} failed of {k['point']['sent']}")
        print(common.table(
            ["window", "requests", "failed", "p50 ms", "p99 ms", "max ms"],
            [[f"{w['from_s']:.0f}-{w['to_s']:.0f} s", w["requests"], w["failed"], w["p50_ms"],
              w["p99_ms"], w["max_ms"]] for w in k["windows"]],
        ))  # fmt: skip
    print(f"wrote {path} and {png} ({facts['cpu_model']})")


if __name__ == "__main__":
    main()
