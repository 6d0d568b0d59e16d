"""Fuzz and flood real worker processes (issue #18): every row of the issue's table, a
10,000-message malformed mix, and floods, against ``edgesplit worker`` processes on loopback.

For each engine (onnxruntime, torch) two worker processes serve a two-stage plan of
squeezenet1_1 at 32 px: A (the target, with ``--max-memory-mb``) hands its output to B, and B
to a real :class:`~edgesplit.runtime.coordinator.Coordinator`, whose Results and ReportFailure
services tell which accepted micro-batches arrived or were reported. Written to
``bench/results/fuzz.json``:

* ``attempts`` and ``statuses`` (gRPC code -> count) per row and in all;
* ``crashes``: worker processes that exited; ``hangs``: a Status call (30 s deadline) after a
  row that did not answer, or a call that outlived its deadline by more than 10 s;
* ``max_rss_mb`` of A against its budget (``rss_within_budget``: at most budget + 10 %);
* ``valid_flowing``: after each row, valid micro-batches still went through end to end;
* ``silent_drops``: micro-batches A answered OK that neither arrived nor were reported;
* ``sigterm_s``: how long A took to exit after SIGTERM with link probes in progress.

    .venv/bin/python bench/fuzz.py [--quick] [--engines onnxruntime,torch]   # ~10 min
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent import futures
from pathlib import Path
from typing import Any

import _common as common
import grpc
import numpy as np
import psutil
import torch

from edgesplit.config import parse_cluster
from edgesplit.engines import Execution
from edgesplit.errors import StreamBroken
from edgesplit.model import models
from edgesplit.runtime import codec, limits
from edgesplit.runtime.coordinator import Coordinator
from edgesplit.runtime.links import WORKER_LINK, LinkStream, ack_code
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.proto import edgesplit_pb2_grpc as pb_grpc
from edgesplit.runtime.runner import FailureEvent, ResultEvent
from edgesplit.runtime.transport import open_channel

TOKEN = "fuzz-bench-token"
MODEL, SIZE = "squeezenet1_1", 32
READY_TIMEOUT_S = 180.0
DELIVERY_TIMEOUT_S = 180.0
STATUS_TIMEOUT_S = 30.0
BUDGET_MB = {"onnxruntime": 768, "torch": 1536}
"""A's --max-memory-mb per engine: its idle RSS plus room for a few hundred MB of work."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer messages (writes fuzz-quick)")
    p.add_argument("--engines", default="onnxruntime,torch", help="comma-separated engines")
    p.add_argument("--malformed", type=int, default=10_000, help="malformed-mix messages")
    p.add_argument("--seed", type=int, default=18)
    return p.parse_args(argv)


class Proc:
    """An ``edgesplit worker`` process with its RSS watched."""

    def __init__(self, name: str, engine: str, budget_mb: int, workdir: Path) -> None:
        self.name = name
        ready = workdir / f"{name}.ready"
        self.log = workdir / f"{name}.log"
        self.cache = workdir / f"cache-{name}"
        env = {**os.environ, "EDGESPLIT_TOKEN": TOKEN, "EDGESPLIT_CACHE_DIR": str(self.cache)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgesplit", "worker", "--name", name, "--threads", "1",
             "--listen", "127.0.0.1:0", "--ready-file", str(ready), "--engine", engine,
             "--max-memory-mb", str(budget_mb), "--no-power-sensors"],
            env=env, stdout=subprocess.DEVNULL, stderr=self.log.open("wb"),
        )  # fmt: skip
        self.budget_mb = budget_mb
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {name} did not start; see {self.log}")
            time.sleep(0.05)
        self.address = ready.read_text().strip()
        self.max_rss = 0
        self._stop = threading.Event()
        self._ps = psutil.Process(self.proc.pid)
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.max_rss = max(self.max_rss, self._ps.memory_info().rss)
            except psutil.Error:
                return

    def rss(self) -> int:
        try:
            return int(self._ps.memory_info().rss)
        except psutil.Error:
            return 0

    def threads(self) -> int:
        try:
            return int(self._ps.num_threads())
        except psutil.Error:
            return 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self._stop.set()
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Ledger:
    """What the coordinator heard: results and failure reports by request id."""

    def __init__(self, c: Coordinator) -> None:
        self.c = c
        self.results: set[int] = set()
        self.failed: set[int] = set()
        self.lock = threading.Lock()
        self.accepted: set[int] = set()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            event = self.c.events.get()
            with self.lock:
                if isinstance(event, ResultEvent):
                    self.results.add(event.batch.request_id)
                elif isinstance(event, FailureEvent):
                    self.failed.add(event.report.request_id)

    def accept(self, request_id: int) -> None:
        with self.lock:
            self.accepted.add(request_id)

    def missing(self) -> set[int]:
        with self.lock:
            return self.accepted - self.results - self.failed

    def wait_all(self, timeout_s: float = DELIVERY_TIMEOUT_S) -> set[int]:
        deadline = time.monotonic() + timeout_s
        while self.missing() and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.missing()


class Bench:
    def __init__(self, engine: str, args: argparse.Namespace, workdir: Path) -> None:
        self.engine = engine
        self.args = args
        self.rng = random.Random(args.seed)
        self.a = Proc("A", engine, BUDGET_MB[engine], workdir)
        self.b = Proc("B", engine, 4096, workdir)
        cluster = parse_cluster(
            {"token": TOKEN, "devices": [
                {"name": "A", "address": self.a.address},
                {"name": "B", "address": self.b.address},
            ]}
        )  # fmt: skip
        self.c = Coordinator(cluster)
        torch.manual_seed(0)
        self.model = models.build(MODEL, num_classes=10)
        self.n = self.c.load_model(MODEL, 10, 3, SIZE, self.model)
        self.execution = Execution(engine=engine)
        self.reinstall()
        self.ledger = Ledger(self.c)
        self.stub = pb_grpc.WorkerStub(open_channel(self.a.address, TOKEN))
        self.raw = open_channel(self.a.address, TOKEN)
        self.next_id = 1
        self.id_lock = threading.Lock()
        self.rows: dict[str, dict[str, Any]] = {}
        self.hangs = 0

    # --- calls -------------------------------------------------------------------------------

    def new_id(self) -> int:
        with self.id_lock:
            self.next_id += 1
            return self.next_id

    def call(self, method: Callable[..., Any], request: Any, timeout: float = 30.0) -> str:
        t0 = time.monotonic()
        try:
            method(request, timeout=timeout)
            code = "OK"
        except grpc.RpcError as exc:
            code = exc.code().name
        if time.monotonic() - t0 > timeout + 10:
            self.hangs += 1
        return code

    def forward(self, x: np.ndarray | None = None, msg: pb.MicroBatch | None = None) -> str:
        if msg is None:
            msg = pb.MicroBatch(plan_epoch=self.epoch)
            codec.encode(x, out=msg.tensor)
        msg.request_id = self.new_id()
        code = self.call(self.stub.Forward, msg, timeout=60)
        if code == "OK":
            self.ledger.accept(msg.request_id)
        return code

    def valid_x(self, n: int = 2) -> np.ndarray:
        return np.random.default_rng(self.rng.randrange(2**32)).standard_normal(
            (n, 3, SIZE, SIZE), dtype=np.float32
        )

    # --- rows --------------------------------------------------------------------------------

    def row(self, name: str, statuses: Iterable[str], **extra: Any) -> None:
        counts = Counter(statuses)
        status_ok = self.status_answers()
        flowing = self.valid_flows()
        self.rows[name] = {
            "attempts": sum(counts.values()),
            "statuses": dict(counts),
            "status_answered": status_ok,
            "valid_flowing": flowing,
            "rss_mb": round(self.a.rss() / 2**20, 1),
            **extra,
        }
        print(f"[{self.engine}] {name}: {dict(counts)} valid_flowing={flowing} {extra}")

    def status_answers(self) -> bool:
        try:
            self.stub.Status(pb.StatusRequest(), timeout=STATUS_TIMEOUT_S)
            return True
        except grpc.RpcError:
            self.hangs += 1
            return False

    def valid_flows(self) -> bool:
        ids = []
        for _ in range(3):
            deadline = time.monotonic() + 60
            while True:
                msg = pb.MicroBatch(plan_epoch=self.epoch)
                codec.encode(self.valid_x(), out=msg.tensor)
                code = self.forward(msg=msg)
                if code == "OK":
                    ids.append(msg.request_id)
                    break
                if code != "RESOURCE_EXHAUSTED" or time.monotonic() > deadline:
                    return False
                time.sleep(0.1)
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        while time.monotonic() < deadline:
            with self.ledger.lock:
                if set(ids) <= self.ledger.results:
                    return True
            time.sleep(0.05)
        return False

    def row1_links(self) -> None:
        to = self.b.address
        requests = [
            pb.SetLinkRequest(to=to, latency_ms=1e300),
            pb.SetLinkRequest(to=to, latency_ms=float("inf")),
            pb.SetLinkRequest(to=to, latency_ms=float("nan")),
            pb.SetLinkRequest(to=to, bandwidth_mbps=1e-300),
        ]
        codes = [self.call(self.stub.SetLink, r) for r in requests]
        install = pb.InstallPlanRequest(
            epoch=self.epoch + 1000, stage=0, start=0, end=1, next_hop=to,
            coordinator=self.c.result_address(), latency_ms=float("inf"),
        )  # fmt: skip
        codes.append(self.call(self.stub.InstallPlan, install, timeout=120))
        self.row("1_link_numbers", codes)

    def row2_probes(self) -> None:
        huge = pb.ProbeLinkRequest(address=self.b.address, sizes=[10], repeats=1, latency_ms=1e7)
        slow = pb.ProbeLinkRequest(
            address=self.b.address, sizes=[10], repeats=50, latency_ms=limits.MAX_LATENCY_MS
        )
        codes: list[str] = []
        lock = threading.Lock()

        def probe(request: pb.ProbeLinkRequest) -> None:
            code = self.call(self.stub.ProbeLink, request, timeout=3.0)
            with lock:
                codes.append(code)

        threads = [threading.Thread(target=probe, args=(r,)) for r in [huge] * 8 + [slow] * 8]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.row("2_probe_deadlines", codes)

    def row3_stalled_link(self, count: int) -> None:
        self.call(self.stub.SetLink, pb.SetLinkRequest(to=self.b.address, latency_ms=250.0))
        x = self.valid_x(256)  # 3 MB
        codes = [self.forward(x) for _ in range(count)]
        self.call(self.stub.SetLink, pb.SetLinkRequest(to=self.b.address, clear=True))
        self.row("3_stalled_link_3MB", codes, max_rss_mb=round(self.a.max_rss / 2**20, 1))

    def row4_fp16(self, count: int) -> None:
        """fp16 Forwards that decode to twice their size: 32 MiB ones (their output, 68 MB,
        could never be sent on) and 16 MiB ones (decoded, computed and queued, they fill the
        budget)."""
        big = np.zeros((5461, 3, SIZE, SIZE), np.float16)  # 32 MiB on the wire, 64 MiB decoded
        half = np.zeros((2730, 3, SIZE, SIZE), np.float16)  # 16 MiB, 32 MiB decoded
        codes = [self.forward(x) for x in [big] * count + [half] * count]
        self.row("4_fp16_32MiB_16MiB", codes, max_rss_mb=round(self.a.max_rss / 2**20, 1))

    def row5_bookkeeping(self, hops: int, epochs: int, targets: int) -> None:
        before = self.a.threads()
        coordinator = self.c.result_address()
        codes = []
        for i in range(max(hops, epochs)):
            request = pb.InstallPlanRequest(
                epoch=10_000 + i, stage=0, start=self.n - 1, end=self.n,
                next_hop=f"127.0.0.1:{20_000 + i % hops}", coordinator=coordinator,
            )  # fmt: skip
            codes.append(self.call(self.stub.InstallPlan, request, timeout=120))
        installed = len(self.stub.Status(pb.StatusRequest(), timeout=30).epochs)
        for i in range(max(hops, epochs)):
            self.call(self.stub.DropEpoch, pb.DropEpochRequest(epoch=10_000 + i))
        set_codes = [
            self.call(self.stub.SetLink, pb.SetLinkRequest(to=f"10.9.{i // 250}.{i % 250}:9",
                                                           latency_ms=1.0))
            for i in range(targets)
        ]  # fmt: skip
        for i in range(targets):
            self.call(self.stub.SetLink, pb.SetLinkRequest(to=f"10.9.{i // 250}.{i % 250}:9",
                                                           clear=True))  # fmt: skip
        after = self.a.threads()
        # The flood of installs evicted the oldest epochs, the bench's own among them (its
        # uploads would now be FAILED_PRECONDITION): install the plan again.
        self.reinstall()
        self.row(
            "5_bookkeeping",
            codes + set_codes,
            epochs_installed_at_most=installed,
            threads_before=before,
            threads_after=after,
        )

    def row5_weights(self, sets: int) -> None:
        """Distinct weight sets through the torch engine; the cache keeps at most 4 files."""
        codes = []
        for seed in range(1, sets + 1):
            torch.manual_seed(seed)
            other = models.build(MODEL, num_classes=10)
            try:
                self.c.load_model(MODEL, 10, 3, SIZE, other)
                self.c.ensure_torch_reference()
                codes.append("OK")
            except Exception as exc:  # the bench records, it does not stop
                codes.append(type(exc).__name__)
        files = len(list((self.a.cache / "weights").glob("*.safetensors")))
        self.reset_model()
        self.row("5_weight_sets", codes, cached_weight_files=files)

    def row6_shapes(self) -> None:
        codes = []
        for shape in ([0, 2**40, 2**40], [0, 3, 2**40, 2**40], [2**62, 0, 1, 1]):
            for _ in range(10):
                msg = pb.MicroBatch(plan_epoch=self.epoch)
                msg.tensor.dtype = "float32"
                msg.tensor.shape.extend(shape)
                codes.append(self.forward(msg=msg))
        self.row("6_huge_empty_shapes", codes)

    def reset_model(self) -> None:
        """The bench's model and two-stage plan again (after a row loaded another)."""
        self.n = self.c.load_model(MODEL, 10, 3, SIZE, self.model)
        self.reinstall()

    def reinstall(self) -> None:
        """A runs unit 0 alone: its output (3.2 MB per 256 images) is as big as its input,
        so a slow link fills its send queue."""
        self.epoch = self.c.install_plan([("A", 0, 1), ("B", 1, self.n)], execution=self.execution)

    def row7_models(self) -> None:
        status = self.stub.Status(pb.StatusRequest(), timeout=30)
        load = pb.LoadModelRequest(
            model=MODEL, num_classes=10, in_channels=3, input_size=4096,
            weights_sha256=status.weights_sha256 or "0" * 64, model_sha256=status.model_sha256,
            torch_reference=True,
        )  # fmt: skip
        codes = [self.call(self.stub.LoadModel, load, timeout=120)]
        # The zoo model at a 2048-px input: a torch reference of it, or profiling it at batch
        # 2 or 256, would take gigabytes; the budget refuses them before anything is built.
        loaded = "OK"
        try:
            self.c.load_model(MODEL, 10, 3, 2048, self.model)
        except Exception as exc:  # recorded: a refusal is an answer too
            loaded = f"{type(exc).__name__}: {str(exc)[:160]}"
        for batch in (2, 256):
            codes.append(
                self.call(self.stub.Profile, pb.ProfileRequest(batch_size=batch, repeats=1), 120)
            )
        self.reset_model()
        self.row("7_model_and_profile_sizes", codes, model_at_2048_px=loaded)

    def row8_strings(self, unauthenticated: int) -> None:
        msg = pb.MicroBatch(plan_epoch=self.epoch)
        msg.tensor.dtype = "f" * 10_000
        details = ""
        try:
            self.stub.Forward(msg, timeout=30)
        except grpc.RpcError as exc:
            details = exc.details() or ""
        codes = ["OK" if not details else "INVALID_ARGUMENT"]
        digest = pb.LoadModelRequest(model=MODEL, model_sha256="a" * 64 + "\n")
        codes.append(self.call(self.stub.LoadModel, digest))
        log_before = self._reject_lines()
        bad = pb_grpc.WorkerStub(open_channel(self.a.address, "wrong-token"))
        for _ in range(unauthenticated):
            codes.append(self.call(bad.Probe, pb.ProbeRequest(), timeout=10))
        time.sleep(0.5)  # let the worker's log reach its file
        self.row(
            "8_strings_digests_auth_log",
            codes,
            echoed_chars=len(details),
            reject_log_lines=self._reject_lines() - log_before,
        )

    def _reject_lines(self) -> int:
        text = self.a.log.read_text(errors="replace")
        return text.count("with a bad or missing token")

    def row9_probe_sizes(self) -> None:
        t0 = time.monotonic()
        codes = [
            self.call(
                self.stub.ProbeLink,
                pb.ProbeLinkRequest(address=self.b.address, sizes=[10], repeats=1,
                                    latency_ms=float("inf")),
            ),
            self.call(
                self.stub.ProbeLink,
                pb.ProbeLinkRequest(address=self.b.address, sizes=[1000] * 100_000, repeats=1),
            ),
        ]  # fmt: skip
        self.row("9_probe_sizes", codes, seconds=round(time.monotonic() - t0, 2))

    # --- the malformed mix and floods -----------------------------------------------------

    def malformed(self, count: int) -> None:
        """Systematic, random and mutated Forward messages, from 4 threads at once."""
        valid = pb.MicroBatch(plan_epoch=self.epoch)
        codec.encode(self.valid_x(1), out=valid.tensor)
        raw = self.raw.unary_unary("/edgesplit.v1.Worker/Forward")
        dtypes = [*codec.ITEMSIZE, "", "float", "x" * 300, "complex64", "object"]
        counts: Counter[str] = Counter()
        lock = threading.Lock()

        def one(rng: random.Random) -> str:
            kind = rng.randrange(4)
            if kind == 0:  # a well-formed message with wrong fields
                msg = pb.MicroBatch(plan_epoch=rng.choice([self.epoch, 0, 2**63]))
                msg.tensor.dtype = rng.choice(dtypes)
                rank = rng.randrange(0, 10)
                msg.tensor.shape.extend(
                    rng.choice([0, 1, 2, 3, 32, -1, 2**31, 2**40, -(2**63)]) for _ in range(rank)
                )
                msg.tensor.data = rng.randbytes(rng.choice([0, 4, 12288, 24576, 100]))
                if rng.random() < 0.3:
                    msg.tensor.scale = rng.choice([float("nan"), float("inf"), -1.0, 0.0, 1e-3])
                    msg.tensor.zero_point = rng.randrange(-1000, 1000)
                msg.request_id = self.new_id()
                code = self.call(self.stub.Forward, msg, timeout=60)
                if code == "OK":
                    self.ledger.accept(msg.request_id)
                return code
            if kind == 1:  # random bytes
                payload = rng.randbytes(rng.randrange(0, 2048))
            else:  # a valid message (its own request id) with bytes flipped, or cut short
                mutated = pb.MicroBatch()
                mutated.CopyFrom(valid)
                mutated.request_id = self.new_id()
                data = bytearray(mutated.SerializeToString())
                for _ in range(rng.randrange(1, 8)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
                payload = bytes(data[: rng.randrange(len(data) + 1)]) if kind == 3 else bytes(data)
            code = self.call(raw, payload, timeout=60)
            if code == "OK":  # the id the worker parsed: what must arrive or be reported
                self.ledger.accept(pb.MicroBatch.FromString(payload).request_id)
            return code

        def worker(seed: int, n: int) -> None:
            rng = random.Random(seed)
            for _ in range(n):
                code = one(rng)
                with lock:
                    counts[code] += 1

        threads = [
            threading.Thread(target=worker, args=(self.args.seed * 100 + i, count // 4))
            for i in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.row("malformed_mix", counts.elements())

    def link_frames(self, count: int) -> None:
        """Random, mutated and valid frames on Link streams from 6 threads, each on its own
        stream: more streams than a worker keeps (the oldest are ended and reopened)."""
        valid = pb.MicroBatch(plan_epoch=self.epoch)
        payload = codec.encode_header(self.valid_x(1), valid.tensor)
        counts: Counter[str] = Counter()
        lock = threading.Lock()

        def one(rng: random.Random, stream: LinkStream) -> str:
            kind = rng.randrange(3)
            if kind == 0:  # random bytes
                frame = rng.randbytes(rng.randrange(0, 2048))
            else:  # a valid frame (its own request id), its header mutated or cut (kind 1)
                batch = pb.MicroBatch()
                batch.CopyFrom(valid)
                batch.request_id = self.new_id()
                data = bytearray(codec.pack(batch, payload))
                if kind == 1:
                    for _ in range(rng.randrange(1, 5)):
                        data[rng.randrange(64)] = rng.randrange(256)
                    if rng.random() < 0.5:
                        data = data[: rng.randrange(len(data) + 1)]
                frame = bytes(data)
            t0 = time.monotonic()
            try:
                ack = stream.send(frame).result(timeout=60)
            except StreamBroken as exc:
                return f"STREAM_{exc.code.name if exc.code else 'ENDED'}"
            except futures.TimeoutError:
                self.hangs += 1
                return "NO_ACK"
            if time.monotonic() - t0 > 70:
                self.hangs += 1
            code = ack_code(ack).name
            if code == "OK":  # the id the worker parsed: what must arrive or be reported
                self.ledger.accept(ack.request_id)
            return code

        def worker(seed: int, n: int) -> None:
            rng = random.Random(seed)
            stream: LinkStream | None = None
            for _ in range(n):
                if stream is None or stream.broken:
                    stream = LinkStream(self.raw, WORKER_LINK, "A")
                code = one(rng, stream)
                with lock:
                    counts[code] += 1
            if stream is not None:
                stream.close()

        threads = [
            threading.Thread(target=worker, args=(self.args.seed * 200 + i, count // 6))
            for i in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.row("link_frames", counts.elements())

    def flood(self, count: int) -> None:
        """Valid micro-batches as fast as 8 threads can send them: accepted or busy."""
        codes: list[str] = []
        lock = threading.Lock()
        x = self.valid_x(16)

        def worker(n: int) -> None:
            for _ in range(n):
                code = self.forward(x)
                with lock:
                    codes.append(code)

        threads = [threading.Thread(target=worker, args=(count // 8,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.row("flood_valid", codes)

    def sigterm(self) -> float:
        """Seconds from SIGTERM to exit with link probes in progress."""
        slow = pb.ProbeLinkRequest(
            address=self.b.address, sizes=[10], repeats=50, latency_ms=limits.MAX_LATENCY_MS
        )
        for _ in range(limits.MAX_CONCURRENT_PROBES):
            threading.Thread(
                target=self.call, args=(self.stub.ProbeLink, slow, 600.0), daemon=True
            ).start()
        time.sleep(1.0)
        t0 = time.monotonic()
        self.a.proc.send_signal(signal.SIGTERM)
        try:
            self.a.proc.wait(60)
        except subprocess.TimeoutExpired:
            return float("inf")
        return time.monotonic() - t0

    def run(self) -> dict[str, Any]:
        quick = self.args.quick
        self.row("baseline", [])
        self.row1_links()
        self.row2_probes()
        self.row3_stalled_link(60 if quick else 600)
        self.row4_fp16(8 if quick else 40)
        self.row5_bookkeeping(hops=30 if quick else 300, epochs=30 if quick else 300,
                              targets=500 if quick else 10_000)  # fmt: skip
        if self.engine == "torch":
            self.row5_weights(2 if quick else 5)
        self.row6_shapes()
        self.row7_models()
        self.row8_strings(100 if quick else 1000)
        self.row9_probe_sizes()
        self.malformed(self.args.malformed // (10 if quick else 1))
        self.link_frames(self.args.malformed // (10 if quick else 1))
        self.flood(400 if quick else 2000)
        missing = self.ledger.wait_all()
        crashes = sum(not p.alive() for p in (self.a, self.b))
        sigterm_s = self.sigterm()
        total: Counter[str] = Counter()
        for row in self.rows.values():
            total.update(row["statuses"])
        budget = self.a.budget_mb
        max_rss_mb = self.a.max_rss / 2**20
        return {
            "engine": self.engine,
            "budget_mb": budget,
            "max_rss_mb": round(max_rss_mb, 1),
            "rss_within_budget": max_rss_mb <= budget * 1.10,
            "attempts": sum(total.values()),
            "statuses": dict(total),
            "crashes": crashes,
            "hangs": self.hangs,
            "accepted": len(self.ledger.accepted),
            "delivered": len(self.ledger.accepted & self.ledger.results),
            "reported": len(self.ledger.accepted & self.ledger.failed - self.ledger.results),
            "silent_drops": len(missing),
            "valid_flowing": all(r["valid_flowing"] for r in self.rows.values()),
            "sigterm_s": round(sigterm_s, 2),
            "rows": self.rows,
        }

    def close(self) -> None:
        self.c.close()
        for p in (self.a, self.b):
            p.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    facts = common.machine_facts()
    results = []
    for engine in args.engines.split(","):
        with tempfile.TemporaryDirectory(prefix="es-fuzz-") as tmp:
            bench = Bench(engine, args, Path(tmp))
            try:
                results.append(bench.run())
            finally:
                bench.close()
    ok = all(
        r["crashes"] == 0 and r["hangs"] == 0 and r["silent_drops"] == 0
        and r["rss_within_budget"] and r["valid_flowing"]
        for r in results
    )  # fmt: skip
    out = {"machine": facts, "quick": args.quick, "acceptance_met": ok, "engines": results}
    name = "fuzz-quick" if args.quick else "fuzz"
    path = common.RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    for r in results:
        print(
            f"{r['engine']:<12} attempts {r['attempts']:>6}  crashes {r['crashes']}  hangs "
            f"{r['hangs']}  silent drops {r['silent_drops']}  max RSS {r['max_rss_mb']:.0f} MB "
            f"of {r['budget_mb']} MB  valid flowing {r['valid_flowing']}  SIGTERM "
            f"{r['sigterm_s']} s"
        )
    print(f"wrote {path}; acceptance met: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
