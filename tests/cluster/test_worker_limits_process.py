"""Issue #18, row 2, against a real ``edgesplit worker`` process: link probes that would hold
the worker's handlers for minutes stop at their callers' deadlines, the worker keeps
answering, and SIGTERM stops it promptly whatever it is doing (probe streams included)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from edgesplit.runtime import limits
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.proto import edgesplit_pb2_grpc as pb_grpc
from edgesplit.runtime.transport import open_channel

TOKEN = "limits-process-token"
READY_TIMEOUT_S = 120.0
EXIT_BOUND_S = 15.0
"""Generous: the worker stops in about 1.5 s; before #18 it did not stop in minutes."""


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    ready = tmp_path / "w.ready"
    env = {**os.environ, "EDGESPLIT_TOKEN": TOKEN, "EDGESPLIT_CACHE_DIR": str(tmp_path / "c")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgesplit", "worker", "--name", "w", "--threads", "1",
         "--listen", "127.0.0.1:0", "--ready-file", str(ready), "--max-memory-mb", "2048",
         "--engine", "onnxruntime", "--no-power-sensors"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the worker did not start (exit code {proc.poll()})")
        time.sleep(0.05)
    yield proc, ready.read_text().strip()
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def call_code(call: object, *args: object, **kwargs: object) -> grpc.StatusCode:
    try:
        call(*args, **kwargs)  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.slow
def test_row2_probes_end_at_their_deadline_and_sigterm_stops_a_busy_worker(
    worker: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, address = worker
    stub = pb_grpc.WorkerStub(open_channel(address, TOKEN))
    huge = pb.ProbeLinkRequest(address=address, sizes=[10], repeats=1, latency_ms=1e7)
    assert call_code(stub.ProbeLink, huge, timeout=30) == grpc.StatusCode.INVALID_ARGUMENT
    slow = pb.ProbeLinkRequest(
        address=address, sizes=[10], repeats=50, latency_ms=limits.MAX_LATENCY_MS
    )
    codes: list[grpc.StatusCode] = []
    threads = [
        threading.Thread(target=lambda: codes.append(call_code(stub.ProbeLink, slow, timeout=3)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # At most MAX_CONCURRENT_PROBES run (each until its deadline); the rest are refused.
    assert len(codes) == 8
    assert {c.name for c in codes} <= {"DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}
    assert stub.Status(pb.StatusRequest(), timeout=30).name == "w"
    # Now hold it busy with probes that have no deadline at all, and stop it: ProbeLinks
    # waiting out their link's latency, and probe streams whose sender stalls mid-payload.
    stalled = threading.Event()

    def stalled_stream() -> Iterator[pb.ProbeChunk]:
        yield pb.ProbeChunk(data=bytes(1024))
        stalled.wait(120)

    busy = [
        threading.Thread(target=call_code, args=(stub.ProbeLink, slow), daemon=True)
        for _ in range(limits.MAX_CONCURRENT_PROBES)
    ] + [
        threading.Thread(target=call_code, args=(stub.ProbeStream, stalled_stream()), daemon=True)
        for _ in range(limits.MAX_CONCURRENT_PROBE_STREAMS)
    ]
    for t in busy:
        t.start()
    time.sleep(0.5)  # let the probes start (not a timing assertion: they run for minutes)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(EXIT_BOUND_S)
    took = time.monotonic() - t0
    stalled.set()
    print(
        f"worker stopped {took:.2f} s after SIGTERM with {limits.MAX_CONCURRENT_PROBES} link "
        f"probes and {limits.MAX_CONCURRENT_PROBE_STREAMS} stalled probe streams in progress"
    )
    assert proc.returncode == 0
