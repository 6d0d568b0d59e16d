"""The worker: holds the whole model, runs its stage of each plan epoch, forwards the result.

The model is the coordinator's compiled ONNX model, received once as a stream of chunks and
kept by its sha256 (:mod:`~edgesplit.runtime.model_store`); each epoch's stage is cut from it
(:mod:`~edgesplit.runtime.stages`). The onnxruntime path imports no torch: a worker needs
numpy, grpcio, protobuf, psutil, onnx and onnxruntime.

Three kinds of threads overlap so a stage is never idle waiting for the network:

* gRPC handler threads validate a micro-batch and enqueue it: one thread per ``Link`` stream
  from the previous hop, answering each frame with an acknowledgement (``Forward``, the same
  check for one message, returns at once too);
* one compute thread runs the epoch's stage module and encodes the output;
* one :class:`~edgesplit.runtime.links.LinkSender` per next hop ships it (emulated link delay
  included).

Bad input never takes the worker down: every refusal is a gRPC status naming what was expected.
Nothing a caller sends can wedge or exhaust it either (issue #18): every number is checked
against :mod:`~edgesplit.runtime.limits`; accepted work is held against the worker's memory
budget (:mod:`~edgesplit.runtime.budget`, RESOURCE_EXHAUSTED past it); epochs, senders, link
overrides and report channels are bounded; a micro-batch that was accepted is delivered or
reported to the coordinator as a failure, never dropped in silence; long handlers honour
their caller's deadline.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import platform
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import numpy as np
from google.protobuf import __version__ as protobuf_version

from edgesplit._version import __version__
from edgesplit.config import TlsSpec
from edgesplit.engines import cpu
from edgesplit.engines.ort_session import release_memory
from edgesplit.errors import ConfigError, EdgesplitError, ModelError
from edgesplit.runtime import MAX_MESSAGE_BYTES, PROTOCOL_VERSION, codec, limits, profiling, wire
from edgesplit.runtime import samples as sample_codec
from edgesplit.runtime.budget import Budget, Reservation, default_budget_bytes
from edgesplit.runtime.links import LinkSender, LinkShape, Outgoing
from edgesplit.runtime.model_store import ModelStore
from edgesplit.runtime.power import PowerSettings, choose_source, source_name
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.sampler import DeviceSample, DeviceSampler
from edgesplit.runtime.stages import (
    BUILD_FACTOR,
    Epoch,
    LoadedModel,
    build_bytes,
    check_install,
    make_epoch,
    model_key,
    open_int8,
    open_model,
    work_bytes,
)
from edgesplit.runtime.transport import (
    Call,
    Refused,
    StreamSlots,
    bind,
    describe_rpc_error,
    make_server,
    open_channel,
    service_handler,
)
from edgesplit.runtime.weights import cached, check_sha256, store
from edgesplit.shared.names import COORDINATOR
from edgesplit.shared.timeouts import TIMEOUTS


def _default_threads() -> int:
    """The CPUs this process may run on (its affinity), what a stage's session uses by
    default."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - platforms without sched_getaffinity
        return max(1, os.cpu_count() or 1)


def _version(module: str) -> str:
    """``module.__version__`` if it is imported already (never imports it)."""
    loaded = sys.modules.get(module)
    return str(getattr(loaded, "__version__", "")) if loaded is not None else ""


log = logging.getLogger(__name__)


@contextlib.contextmanager
def _slot(slots: threading.BoundedSemaphore, busy: str) -> Iterator[None]:
    """One of ``slots`` for the ``with`` block, or RESOURCE_EXHAUSTED saying ``busy``."""
    if not slots.acquire(blocking=False):
        raise Refused(EXHAUSTED, f"{busy}; retry later")
    try:
        yield
    finally:
        slots.release()


INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
MAX_REPORT_CHANNELS = 8
"""Coordinators a worker keeps a failure-report channel open to (the oldest is closed)."""
MAX_FAILURE_CHARS = 500
"""Characters of one failure message kept for Status."""
OUTPUT_HEADROOM_BYTES = 1 << 20
"""Room left in a message for the hop timings around an output tensor."""
PROFILE_WAIT_S = TIMEOUTS.profile_wait_s
"""How long a Profile waits for the one running before it answers RESOURCE_EXHAUSTED."""


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker runs. ``token`` is also what it sends to peers unless a plan names another."""

    name: str
    token: str | None
    threads: int | None = None
    engine: str | None = None
    """Engine for plans that name none; None: onnxruntime when installed, else torch."""
    tls: TlsSpec | None = None
    max_elements: int = codec.DEFAULT_MAX_ELEMENTS
    max_queue: int = 256
    """Micro-batches waiting for compute before Forward answers RESOURCE_EXHAUSTED."""
    sample_interval_s: float = 0.2
    store: ModelStore | None = None
    """Where received models are kept; None: the user cache's ``models/``."""
    power: PowerSettings = field(default_factory=PowerSettings)
    """Where this device's power is read (see :mod:`edgesplit.runtime.power`)."""
    max_memory_bytes: int | None = None
    """The worker's memory budget (see :mod:`~edgesplit.runtime.budget`); None: half the
    device's RAM."""
    memory_counts_process: bool = True
    """Whether the budget counts the process's RSS; False for workers that share a process
    (in-process tests), where only their reservations are theirs."""


@dataclass(frozen=True)
class Job:
    batch: pb.MicroBatch
    """The received message; its tensor is decoded into ``x`` already."""
    x: np.ndarray
    epoch: Epoch
    received: float
    work: Reservation | None = None
    """The decoded input and the stage's working memory; released once computed."""
    output: Reservation | None = None
    """The output's bytes; released once it is sent or reported."""

    def release(self) -> None:
        for held in (self.work, self.output):
            if held is not None:
                held.release()


class Worker:
    """The Worker service's state and handlers; :func:`serve` puts it behind a server."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._profile_lock = threading.Lock()
        self._model: LoadedModel | None = None
        self.store = config.store or ModelStore()
        self.threads = config.threads or _default_threads()
        self._epochs: dict[int, Epoch] = {}
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self.budget = Budget(
            config.max_memory_bytes or default_budget_bytes(), config.memory_counts_process
        )
        self._probes = threading.BoundedSemaphore(limits.MAX_CONCURRENT_PROBES)
        self._probe_streams = threading.BoundedSemaphore(limits.MAX_CONCURRENT_PROBE_STREAMS)
        self._senders: dict[str, LinkSender] = {}
        self._failures: collections.deque[str] = collections.deque(maxlen=50)
        self._samples: collections.deque[pb.DeviceSample] = collections.deque(maxlen=3000)
        self._processed = 0
        self.refused_for_memory = 0
        """Forwards answered RESOURCE_EXHAUSTED by the memory budget since start."""
        self._compute = threading.Thread(target=self._compute_loop, name="compute", daemon=True)
        self._sampler = _start_sampler(config.name, config.sample_interval_s, config.power)
        self._report_channels: collections.OrderedDict[str, grpc.Channel] = (
            collections.OrderedDict()
        )
        self.link_streams = StreamSlots(limits.MAX_LINK_STREAMS)
        self._link_overrides: dict[str, pb.SetLinkRequest] = {}
        """Emulated network changes by next hop (address or "coordinator"); see SetLink."""
        self.on_computed: Callable[[int, int, float, int], None] | None = None
        """Called by the compute thread after each micro-batch with (stage, images,
        compute_s, bytes_out); set by ``edgesplit worker --metrics-port``."""
        self._compute.start()

    # --- service -------------------------------------------------------------------------------

    def handler(self) -> grpc.GenericRpcHandler:
        return service_handler(
            "edgesplit.v1.Worker",
            {
                "Status": (pb.StatusRequest, self.status),
                "LoadModel": (pb.LoadModelRequest, self.load_model),
                "InstallPlan": (pb.InstallPlanRequest, self.install_plan),
                "Forward": (pb.MicroBatch, self.forward),
                "DropEpoch": (pb.DropEpochRequest, self.drop_epoch),
                "Probe": (pb.ProbeRequest, lambda request: pb.Ack()),
                "SetLink": (pb.SetLinkRequest, self.set_link),
            },
            streams={"PutModel": (pb.ModelChunk, self.put_model)},
            calls={
                "Profile": (pb.ProfileRequest, self.profile),
                "ProbeLink": (pb.ProbeLinkRequest, self.probe_link),
            },
            links={"Link": self.link},
            slots=self.link_streams,
            stream_calls={"ProbeStream": (pb.ProbeChunk, self.probe_stream)},
        )

    def status(self, request: pb.StatusRequest) -> pb.StatusReply:
        with self._lock:
            model, epochs = self._model, sorted(self._epochs.values(), key=lambda e: e.epoch)
            failures = list(self._failures)
            processed = self._processed
            samples = self._collect_samples(request.since_t)
        return pb.StatusReply(
            name=self.config.name,
            protocol_version=PROTOCOL_VERSION,
            edgesplit_version=__version__,
            torch_version=_version("torch"),
            grpc_version=grpc.__version__,
            protobuf_version=protobuf_version,
            python_version=platform.python_version(),
            clock=time.time(),
            model=model.key.model if model else "",
            weights_sha256=model.key.weights_sha256 if model else "",
            model_sha256=model.key.model_sha256 if model else "",
            model_bytes_received=self.store.received_bytes,
            stored_models=self.store.digests(),
            num_units=model.num_units if model else 0,
            epochs=[
                pb.EpochInfo(
                    epoch=e.epoch,
                    stage=e.stage,
                    start=e.start,
                    end=e.end,
                    next_hop=e.next_hop,
                    engine=e.executor.engine,
                    precision=e.executor.precision,
                    wire=e.wire,
                )
                for e in epochs
            ],
            queue_depth=self._jobs.qsize(),
            send_queue_depth=sum(s.depth() for s in list(self._senders.values())),
            processed=processed,
            samples=samples,
            failures=failures,
            threads=self.threads,
            cpu_kind=cpu.cpu_kind(),
            cpu_model=cpu.cpu_model(),
            onnxruntime_version=cpu.package_version("onnxruntime"),
            cpu_count=os.cpu_count() or 0,
            memory_budget_bytes=self.budget.limit_bytes,
            memory_reserved_bytes=self.budget.reserved_bytes,
            rss_bytes=self.budget.rss_bytes(),
        )

    def load_model(self, request: pb.LoadModelRequest) -> pb.LoadModelReply:
        key = model_key(request)
        with self._lock:
            current = self._model
        if (
            current is not None
            and current.key == key
            and (current.torch_graph is not None or not self._wants_torch(request))
        ):
            return pb.LoadModelReply(loaded=True, num_units=current.num_units)
        path = self.store.find(key.model_sha256)
        if path is None:
            return pb.LoadModelReply(need_model=True)
        held = self._reserve_file(path, "parsing the model")
        try:
            loaded = open_model(key, path)
            if self._wants_torch(request):
                _check_reference_shape(loaded)
                data = request.weights or (
                    cached(key.weights_sha256) if key.weights_sha256 else None
                )
                if not data:
                    return pb.LoadModelReply(need_weights=True)
                loaded = self._with_torch(loaded, data)
                if request.weights:
                    store(key.weights_sha256, request.weights)
        finally:
            held.release()
            release_memory()
        with self._lock:
            if self._model is None or self._model.key != key:
                self._epochs.clear()  # epochs index units of the previous model
            self._model = loaded
        log.info("[%s] loaded %s (%d units)", self.config.name, key.model, loaded.num_units)
        return pb.LoadModelReply(loaded=True, num_units=loaded.num_units)

    def _wants_torch(self, request: pb.LoadModelRequest) -> bool:
        return request.torch_reference or self.config.engine == "torch"

    def _with_torch(self, loaded: LoadedModel, weights: bytes) -> LoadedModel:
        """``loaded`` plus its torch reference (imports torch: only for the torch engine)."""
        key = loaded.key
        if not key.weights_sha256:
            raise Refused(INVALID, "the torch engine needs weights_sha256 and a zoo model name")
        _check_reference_shape(loaded)
        held = self.budget.reserve(
            len(weights) * BUILD_FACTOR + work_bytes(loaded.units, 0, loaded.num_units),
            "building the torch reference",
        )
        try:
            from edgesplit.runtime import torch_reference
        except ImportError as exc:
            raise Refused(
                PRECONDITION, f"the torch engine is not installed on this worker ({exc})"
            ) from None
        try:
            ug = torch_reference.build(
                key.model, key.num_classes, key.in_channels, key.input_size,
                key.weights_sha256, weights, loaded.units.prep,
            )  # fmt: skip
        except EdgesplitError as exc:
            raise Refused(INVALID, str(exc)) from None
        finally:
            held.release()
        if ug.num_units != loaded.num_units:
            raise Refused(
                INVALID,
                f"the torch reference has {ug.num_units} units, the ONNX model "
                f"{loaded.num_units}; they must be the same model",
            )
        torch_reference.set_threads(self.threads)
        return LoadedModel(key=key, units=loaded.units, path=loaded.path, torch_graph=ug)

    def put_model(self, chunks: Iterator[pb.ModelChunk]) -> pb.PutModelReply:
        """Store a model streamed in chunks (verified by its sha256 before it is kept)."""
        try:
            path = self.store.receive(chunks)
        except ModelError as exc:
            raise Refused(INVALID, str(exc)) from None
        return pb.PutModelReply(stored_bytes=path.stat().st_size)

    def _reserve_file(self, path: os.PathLike[str], what: str) -> Reservation:
        try:
            size = os.stat(path).st_size
        except OSError:
            size = 0
        return self.budget.reserve(BUILD_FACTOR * size, what)

    def install_plan(self, request: pb.InstallPlanRequest) -> pb.Ack:
        with self._lock:
            model = self._model
        if model is None:
            raise Refused(PRECONDITION, "no model loaded; call LoadModel before InstallPlan")
        check_install(model, request)  # before anything is reserved or built
        int8 = self._int8_model(model, request.int8_model_sha256)
        held = self.budget.reserve(
            build_bytes(model) + 2 * len(request.calibration.data), "building a stage"
        )
        try:
            epoch = make_epoch(model, request, self.threads, self.config.engine, int8)
        finally:
            held.release()
            release_memory()  # the parsed whole model and the cut copies are gone now
        with self._lock:
            if self._model is not model:
                raise Refused(PRECONDITION, "the model changed while installing the plan")
            self._epochs[epoch.epoch] = epoch
            evicted = self._evict_epochs()
        if evicted:
            log.warning(
                "[%s] more than %d epochs installed: dropped the oldest %s",
                self.config.name, limits.MAX_EPOCHS, evicted,
            )  # fmt: skip
        self._prune_senders()
        self.budget.refresh_fixed(force=True)  # the new stage's session is part of it now
        log.info(
            "[%s] epoch %d: stage %d units [%d, %d) on %s %s -> %s (%s wire)",
            self.config.name, epoch.epoch, epoch.stage, epoch.start, epoch.end,
            epoch.executor.engine, epoch.executor.precision, epoch.next_hop, epoch.wire,
        )  # fmt: skip
        return pb.Ack()

    def _int8_model(self, model: LoadedModel, sha256: str) -> LoadedModel | None:
        """The coordinator's int8 model named by a request (None when it names none)."""
        if not sha256:
            return None
        try:
            digest = check_sha256(sha256)
        except EdgesplitError as exc:
            raise Refused(INVALID, f"int8_model_sha256: {exc}") from None
        return open_int8(model, digest, self.store.find(digest))

    def profile(self, request: pb.ProfileRequest, call: Call | None = None) -> pb.ProfileReply:
        call = call or Call()
        with self._lock:
            model = self._model
        if model is None:
            raise Refused(PRECONDITION, "no model loaded; call LoadModel before Profile")
        if self._jobs.qsize():
            raise Refused(PRECONDITION, "a run is active on this worker; profile when it is idle")
        # Checked before anything is allocated: batch 256 of a large input once asked for 48 GiB.
        held = self.budget.reserve(profiling.profile_bytes(model, request), "this profile")
        try:
            # One profile at a time, or they would time each other.
            if not self._profile_lock.acquire(timeout=call.timeout_s(PROFILE_WAIT_S)):
                raise Refused(EXHAUSTED, "another profile is running on this worker; retry later")
            try:
                int8 = self._int8_model(model, request.int8_model_sha256)
                return profiling.profile_units(
                    model, request, self.threads, self.config.engine, int8, call
                )
            finally:
                self._profile_lock.release()
                release_memory()  # a session per unit was built and dropped
        finally:
            held.release()

    def probe_link(
        self, request: pb.ProbeLinkRequest, call: Call | None = None
    ) -> pb.ProbeLinkReply:
        profiling.check_probe(request)
        busy = f"{limits.MAX_CONCURRENT_PROBES} link probes are running on this worker"
        with _slot(self._probes, busy):
            return profiling.probe_link(
                request, self.config.token, self.config.tls, self._link_shape, call
            )

    def probe_stream(self, chunks: Iterator[pb.ProbeChunk], call: Call) -> pb.ProbeStreamReply:
        """Receive a link probe's payload (see :func:`profiling.receive_probe`)."""
        busy = f"{limits.MAX_CONCURRENT_PROBE_STREAMS} probe streams are open on this worker"
        with _slot(self._probe_streams, busy):
            return profiling.receive_probe(chunks, call)

    def drop_epoch(self, request: pb.DropEpochRequest) -> pb.Ack:
        # Queued jobs keep their Epoch object, so in-flight work of a dropped epoch completes.
        with self._lock:
            dropped = self._epochs.pop(request.epoch, None)
        if dropped is not None:
            del dropped
            self._prune_senders()
            release_memory()  # the stage's session and arena go back to the OS
            self.budget.refresh_fixed(force=True)
        return pb.Ack()

    def _evict_epochs(self) -> list[int]:
        """Drop the oldest epochs past :data:`limits.MAX_EPOCHS` (call with the lock held).
        Their queued work still completes; a later Forward for them is refused, which the
        sender reports, so nothing is lost in silence."""
        evicted = []
        while len(self._epochs) > limits.MAX_EPOCHS:
            oldest = min(self._epochs)
            del self._epochs[oldest]
            evicted.append(oldest)
        return evicted

    def set_link(self, request: pb.SetLinkRequest) -> pb.Ack:
        limits.check_address("to", request.to, allow_coordinator=True)
        limits.check_link(
            request.latency_ms if request.HasField("latency_ms") else None,
            request.bandwidth_mbps if request.HasField("bandwidth_mbps") else None,
        )
        with self._lock:
            if request.clear:
                self._link_overrides.pop(request.to, None)
            else:
                known = request.to in self._link_overrides
                if not known and len(self._link_overrides) >= limits.MAX_LINK_OVERRIDES:
                    raise Refused(
                        EXHAUSTED,
                        f"{limits.MAX_LINK_OVERRIDES} link overrides are set; clear some first",
                    )
                self._link_overrides[request.to] = request
        log.info("[%s] link to %s: %s", self.config.name, request.to, str(request).split())
        return pb.Ack()

    def _link_shape(self, to: str, planned: LinkShape) -> LinkShape:
        with self._lock:
            override = self._link_overrides.get(to)
        if override is None:
            return planned
        return LinkShape(
            bandwidth_mbps=override.bandwidth_mbps
            if override.HasField("bandwidth_mbps")
            else planned.bandwidth_mbps,
            latency_ms=override.latency_ms
            if override.HasField("latency_ms")
            else planned.latency_ms,
        )

    def forward(self, request: pb.MicroBatch) -> pb.Ack:
        """One micro-batch in one call (its bytes in the message)."""
        self.accept(request, None)
        return pb.Ack()

    def link(self, batch: pb.MicroBatch, data: memoryview) -> None:
        """One micro-batch of a link stream (its bytes after the header, viewed in place)."""
        self.accept(batch, data)

    def accept(self, request: pb.MicroBatch, data: memoryview | None) -> None:
        """Check a micro-batch against its epoch and limits, hold its memory and queue it for
        compute; :class:`Refused` saying what was expected otherwise. ``data``: the tensor's
        bytes when they came outside the message."""
        received = time.time()
        with self._lock:
            model = self._model
            epoch = self._epochs.get(request.plan_epoch)
            known = sorted(self._epochs)
        if model is None:
            raise Refused(PRECONDITION, "no model loaded; call LoadModel and InstallPlan first")
        if epoch is None:
            raise Refused(
                PRECONDITION, f"unknown plan epoch {request.plan_epoch}; installed: {known}"
            )
        if not request.HasField("tensor"):
            raise Refused(INVALID, "Forward needs a tensor")
        try:
            shape = codec.check(request.tensor, self.config.max_elements, data=data)
        except codec.CodecError as exc:
            raise Refused(INVALID, f"stage {epoch.stage}: {exc}") from None
        if len(shape) != len(epoch.in_shape) + 1 or tuple(shape[1:]) != epoch.in_shape:
            raise Refused(
                INVALID,
                f"stage {epoch.stage} (units [{epoch.start}, {epoch.end})) expects input "
                f"[N, {', '.join(map(str, epoch.in_shape))}], got {list(shape)}",
            )
        if shape[0] < 1:
            raise Refused(INVALID, f"stage {epoch.stage} expects a batch of at least 1, got 0")
        out_bytes = shape[0] * epoch.out_bytes_per_sample
        if out_bytes > MAX_MESSAGE_BYTES - OUTPUT_HEADROOM_BYTES:
            # It could never be sent on: refuse now rather than compute it and report later.
            raise Refused(
                INVALID,
                f"stage {epoch.stage}'s output for {shape[0]} samples would be {out_bytes} "
                f"bytes, over the {MAX_MESSAGE_BYTES}-byte message limit; use smaller "
                "micro-batches",
            )
        if self._jobs.qsize() >= self.config.max_queue:
            raise Refused(
                EXHAUSTED,
                f"{self._jobs.qsize()} micro-batches queued; at most {self.config.max_queue}",
            )
        job = self._admit(request, data, shape, epoch, received)
        self._ensure_compute()
        self._jobs.put(job)

    def _admit(
        self,
        request: pb.MicroBatch,
        data: memoryview | None,
        shape: tuple[int, ...],
        epoch: Epoch,
        received: float,
    ) -> Job:
        """Reserve a micro-batch's memory (decoded input, the stage's work, its output), then
        decode it: RESOURCE_EXHAUSTED before anything is allocated when it does not fit."""
        n = shape[0]
        numel = 1
        for d in shape:
            numel *= d
        try:
            work = self.budget.reserve(4 * numel + n * epoch.work_bytes_per_sample, "a micro-batch")
            try:
                output = self.budget.reserve(n * epoch.out_bytes_per_sample, "its output")
            except Refused:
                work.release()
                raise
        except Refused:
            with self._lock:
                self.refused_for_memory += 1
            raise
        try:
            # fp32 from a link frame: a view of the received bytes, the engine's input as is.
            x = wire.decode_activation_array(request.tensor, self.config.max_elements, data)
        except codec.CodecError as exc:
            work.release()
            output.release()
            raise Refused(INVALID, f"stage {epoch.stage}: {exc}") from None
        request.ClearField("tensor")  # the decoded copy is all we need
        return Job(request, x, epoch, received, work, output)

    def _ensure_compute(self) -> None:
        """Restart the compute thread if it ever died (it catches every error per batch, so
        this is a last line of defence: a dead thread would drop every batch it was given)."""
        with self._lock:
            if self._compute.is_alive():
                return
            log.error("[%s] the compute thread had stopped; restarting it", self.config.name)
            self._failures.append(f"[{self.config.name}] compute thread restarted")
            self._compute = threading.Thread(target=self._compute_loop, name="compute", daemon=True)
            self._compute.start()

    # --- compute and send ----------------------------------------------------------------------

    def _compute_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._run(job)
            except Exception as exc:  # one bad batch must not stop the pipeline
                job.release()
                log.exception("[%s] request %s failed", self.config.name, job.batch.request_id)
                self._fail(
                    job.batch.request_id,
                    job.epoch,
                    f"[{self.config.name}] stage {job.epoch.stage} failed on request "
                    f"{job.batch.request_id}: {type(exc).__name__}: {str(exc)[:200]}",
                )

    def _run(self, job: Job) -> None:
        epoch = job.epoch
        compute_start = time.time()
        y = epoch.executor.run(job.x)
        compute_end = time.time()
        if job.work is not None:
            job.work.release()  # the input and the stage's working memory are done with
        out = pb.MicroBatch(request_id=job.batch.request_id, plan_epoch=job.batch.plan_epoch)
        out.hops.extend(job.batch.hops)
        payload = wire.activation_payload(y, epoch.wire, out.tensor)  # fp32: y itself
        out.hops.add(
            device=self.config.name,
            stage=epoch.stage,
            received=job.received,
            compute_start=compute_start,
            compute_end=compute_end,
            serialize_end=time.time(),
            bytes_out=payload.nbytes,
            batch_size=int(job.x.shape[0]),
        )
        with self._lock:
            self._processed += 1
        if self.on_computed is not None:
            images, seconds = int(job.x.shape[0]), compute_end - compute_start
            self.on_computed(epoch.stage, images, seconds, payload.nbytes)
        to_coordinator = epoch.next_hop == COORDINATOR
        address = epoch.coordinator if to_coordinator else epoch.next_hop
        token = self.config.token if to_coordinator else (epoch.next_token or self.config.token)
        shape = self._link_shape(COORDINATOR if to_coordinator else address, epoch.shape)
        on_done = job.output.release if job.output is not None else None
        item = Outgoing(out, shape, to_coordinator, epoch.coordinator, on_done, payload)
        self._sender(address, token).put(item)

    def _sender(self, address: str, token: str | None) -> LinkSender:
        """The sender to ``address``; a sender whose thread died is replaced, and what it
        still held is reported as not delivered."""
        dead = None
        with self._lock:
            sender = self._senders.get(address)
            if sender is not None and not sender.alive():
                dead, sender = sender, None
            if sender is None:
                sender = LinkSender(self.config.name, address, token, self.config.tls, self._report)
                self._senders[address] = sender
        if dead is not None:
            log.error("[%s] the sender to %s had stopped; restarted", self.config.name, address)
            for item in dead.drain():
                dead.report(item, "the sender thread had stopped")
                if item.on_done is not None:
                    item.on_done()
        return sender

    def _prune_senders(self) -> None:
        """Close the senders no installed epoch sends through and that hold nothing (a next
        hop of a dropped epoch keeps no thread; issue #18, row 5). With at most
        :data:`limits.MAX_EPOCHS` epochs, senders are bounded by that plus those still
        sending."""
        with self._lock:
            used = set()
            for e in self._epochs.values():
                used.add(e.coordinator if e.next_hop == COORDINATOR else e.next_hop)
            idle = [a for a, s in self._senders.items() if a not in used and not s.depth()]
            closing = [self._senders.pop(a) for a in idle]
        for sender in closing:
            sender.close(timeout_s=0.5)

    def _fail(self, request_id: int, epoch: Epoch, message: str) -> None:
        report = pb.FailureReport(
            device=self.config.name,
            plan_epoch=epoch.epoch,
            request_id=request_id,
            next_hop=epoch.next_hop,
            message=message,
        )
        try:
            self._report(report, epoch.coordinator)
        except Exception:  # reporting is best effort; the compute loop must go on
            log.exception("[%s] cannot report a failure", self.config.name)

    def _report(self, report: pb.FailureReport, coordinator: str) -> None:
        """Record a failure and tell the coordinator, best effort (it may be the one down)."""
        stale = None
        with self._lock:
            self._failures.append(report.message[:MAX_FAILURE_CHARS])
            channel = self._report_channels.get(coordinator)
            if channel is None:
                channel = open_channel(coordinator, self.config.token, self.config.tls)
                self._report_channels[coordinator] = channel
                if len(self._report_channels) > MAX_REPORT_CHANNELS:
                    _, stale = self._report_channels.popitem(last=False)
            else:
                self._report_channels.move_to_end(coordinator)
        if stale is not None:
            stale.close()
        call = channel.unary_unary(
            "/edgesplit.v1.Coordinator/ReportFailure",
            request_serializer=pb.FailureReport.SerializeToString,
            response_deserializer=pb.Ack.FromString,
        )
        try:
            call(report, timeout=TIMEOUTS.report_s)
        except grpc.RpcError as exc:
            log.warning(
                "[%s] cannot report failure to %s: %s",
                self.config.name, coordinator, describe_rpc_error(exc),
            )  # fmt: skip

    def latest_sample(self) -> DeviceSample | None:
        """The device sampler's newest reading (None without a sampler or before the first)."""
        return self._sampler.latest() if self._sampler is not None else None

    def queue_depths(self) -> tuple[int, int]:
        """(micro-batches waiting for compute, outputs waiting for a link)."""
        with self._lock:
            senders = list(self._senders.values())
        return self._jobs.qsize(), sum(s.depth() for s in senders)

    def _collect_samples(self, since_t: float) -> list[pb.DeviceSample]:
        if self._sampler is not None:
            self._samples.extend(sample_codec.to_proto(s) for s in self._sampler.drain())
        return [s for s in self._samples if s.t > since_t]

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop the compute thread, the senders and the sampler (the server is stopped first)
        within about ``timeout_s``: a stage still computing is left to its daemon thread."""
        deadline = time.monotonic() + timeout_s
        self._jobs.put(None)
        self._compute.join(timeout_s / 2)
        with self._lock:
            senders = list(self._senders.values())
            self._senders.clear()
            channels = list(self._report_channels.values())
        for sender in senders:
            sender.close(timeout_s=max(0.05, (deadline - time.monotonic()) / 2))
        for channel in channels:
            channel.close()
        if self._sampler is not None:
            self._sampler.stop()


def _check_reference_shape(loaded: LoadedModel) -> None:
    """The torch reference is traced at ``[in_channels, input_size, input_size]``: that must be
    the ONNX model's own input (a 100-byte LoadModel naming input_size 4096 once built a
    3.4 GB trace; issue #18, row 7)."""
    key = loaded.key
    expected = (key.in_channels, key.input_size, key.input_size)
    prep = loaded.units.prep
    model_shape = prep.model_shape if prep is not None else loaded.units.input_shape
    if model_shape != expected:
        raise Refused(
            INVALID,
            f"in_channels and input_size must match the model's input "
            f"{list(model_shape)}, got {list(expected)}",
        )


def _start_sampler(name: str, interval_s: float, settings: PowerSettings) -> DeviceSampler | None:
    """The device sampler, or None where psutil cannot read this platform. A power setting
    that names no sensor is a :class:`ConfigError` (raised, not logged)."""
    # The command runs once per sample; the margin keeps a slightly early sample from
    # getting the previous reading.
    source = choose_source(settings, min_interval_s=0.9 * interval_s)
    log.info("[%s] power source: %s", name, source_name(source))
    try:
        return DeviceSampler(interval_s=interval_s, power_source=source).start()
    except Exception as exc:  # psutil on an exotic platform; metrics are optional here
        log.warning("device sampler unavailable: %s", exc)
        return None


class RunningWorker:
    """A worker behind a started gRPC server."""

    def __init__(self, worker: Worker, server: grpc.Server, host: str, port: int) -> None:
        self.worker = worker
        self.server = server
        self.address = f"{host}:{port}"
        self.port = port

    def stop(self, grace_s: float = 1.0) -> None:
        """Stop serving (calls in progress get ``grace_s``, then are cancelled, which ends the
        handlers that wait) and the worker's threads: about ``2 * grace_s`` in all."""
        self.server.stop(grace_s).wait(grace_s + 0.2)
        self.worker.close(timeout_s=grace_s)

    def wait(self) -> None:
        self.server.wait_for_termination()


def serve(config: WorkerConfig, listen: str, insecure_no_token: bool = False) -> RunningWorker:
    """Start a worker listening on ``listen`` (``HOST:0`` picks a free port).

    Without a token the worker refuses to start unless ``insecure_no_token`` says so.
    """
    if not config.token and not insecure_no_token:
        raise ConfigError(
            f"worker {config.name} has no token; give --token-file or EDGESPLIT_TOKEN "
            "(or --insecure-no-token on a trusted network)"
        )
    worker = Worker(config)
    # Link streams hold a handler thread each (at most limits.MAX_LINK_STREAMS of them).
    server = make_server(
        [worker.handler()],
        [config.token] if config.token else None,
        max_workers=8 + limits.MAX_LINK_STREAMS,
    )
    try:
        port = bind(server, listen, config.tls)
    except EdgesplitError:
        worker.close()
        raise
    server.start()
    host = listen.rpartition(":")[0]
    if host in ("0.0.0.0", "[::]", "::", ""):
        host = "127.0.0.1"
    log.info("[%s] serving on %s:%d", config.name, host, port)
    return RunningWorker(worker, server, host, port)
