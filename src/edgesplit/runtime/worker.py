"""The worker: holds the whole model, runs its stage of each plan epoch, forwards the result.

The model is the coordinator's compiled ONNX model, received once as a stream of chunks and
kept by its sha256 (:mod:`~edgesplit.runtime.model_store`); each epoch's stage is cut from it
(:mod:`~edgesplit.runtime.stages`). The onnxruntime path imports no torch: a worker needs
numpy, grpcio, protobuf, psutil, onnx and onnxruntime.

Three kinds of threads overlap so a stage is never idle waiting for the network:

* gRPC handler threads validate a micro-batch and enqueue it (``Forward`` returns at once);
* one compute thread runs the epoch's stage module and encodes the output;
* one :class:`~edgesplit.runtime.links.LinkSender` per next hop ships it (emulated link delay
  included).

Bad input never takes the worker down: every refusal is a gRPC status naming what was expected.
"""

from __future__ import annotations

import collections
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

from edgesplit import __version__
from edgesplit.config import TlsSpec
from edgesplit.engines import cpu
from edgesplit.engines.ort_session import release_memory
from edgesplit.errors import EdgesplitError, ModelError
from edgesplit.metrics.power import PowerSettings, choose_source, source_name
from edgesplit.metrics.sampler import DeviceSample, DeviceSampler
from edgesplit.runtime import PROTOCOL_VERSION, codec, profiling, wire
from edgesplit.runtime import samples as sample_codec
from edgesplit.runtime.links import COORDINATOR_HOP, LinkSender, LinkShape, Outgoing
from edgesplit.runtime.model_store import ModelStore
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.stages import (
    Epoch,
    LoadedModel,
    make_epoch,
    model_key,
    open_int8,
    open_model,
)
from edgesplit.runtime.transport import (
    Refused,
    bind,
    describe_rpc_error,
    make_server,
    open_channel,
    service_handler,
)
from edgesplit.runtime.weights import cached, check_sha256, store


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

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


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
    """Where this device's power is read (see :mod:`edgesplit.metrics.power`)."""


@dataclass(frozen=True)
class Job:
    batch: pb.MicroBatch
    """The received message; its tensor is decoded into ``x`` already."""
    x: np.ndarray
    epoch: Epoch
    received: float


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
        self._senders: dict[str, LinkSender] = {}
        self._failures: collections.deque[str] = collections.deque(maxlen=50)
        self._samples: collections.deque[pb.DeviceSample] = collections.deque(maxlen=3000)
        self._processed = 0
        self._compute = threading.Thread(target=self._compute_loop, name="compute", daemon=True)
        self._sampler = _start_sampler(config.name, config.sample_interval_s, config.power)
        self._report_channels: dict[str, grpc.Channel] = {}
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
                "Profile": (pb.ProfileRequest, self.profile),
                "Probe": (pb.ProbeRequest, lambda request: pb.Ack()),
                "ProbeLink": (pb.ProbeLinkRequest, self.probe_link),
                "SetLink": (pb.SetLinkRequest, self.set_link),
            },
            streams={"PutModel": (pb.ModelChunk, self.put_model)},
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
        loaded = open_model(key, path)
        if self._wants_torch(request):
            data = request.weights or (cached(key.weights_sha256) if key.weights_sha256 else None)
            if not data:
                return pb.LoadModelReply(need_weights=True)
            loaded = self._with_torch(loaded, data)
            if request.weights:
                store(key.weights_sha256, request.weights)
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
        try:
            from edgesplit.runtime import torch_reference
        except ImportError as exc:
            raise Refused(
                PRECONDITION, f"the torch engine is not installed on this worker ({exc})"
            ) from None
        try:
            ug = torch_reference.build(
                key.model, key.num_classes, key.in_channels, key.input_size,
                key.weights_sha256, weights,
            )  # fmt: skip
        except EdgesplitError as exc:
            raise Refused(INVALID, str(exc)) from None
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

    def install_plan(self, request: pb.InstallPlanRequest) -> pb.Ack:
        with self._lock:
            model = self._model
        if model is None:
            raise Refused(PRECONDITION, "no model loaded; call LoadModel before InstallPlan")
        int8 = self._int8_model(model, request.int8_model_sha256)
        try:
            epoch = make_epoch(model, request, self.threads, self.config.engine, int8)
        finally:
            release_memory()  # the parsed whole model and the cut copies are gone now
        with self._lock:
            if self._model is not model:
                raise Refused(PRECONDITION, "the model changed while installing the plan")
            self._epochs[epoch.epoch] = epoch
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

    def profile(self, request: pb.ProfileRequest) -> pb.ProfileReply:
        with self._lock:
            model = self._model
        if model is None:
            raise Refused(PRECONDITION, "no model loaded; call LoadModel before Profile")
        if self._jobs.qsize():
            raise Refused(PRECONDITION, "a run is active on this worker; profile when it is idle")
        with self._profile_lock:  # one profile at a time, or they would time each other
            try:
                int8 = self._int8_model(model, request.int8_model_sha256)
                return profiling.profile_units(
                    model, request, self.threads, self.config.engine, int8
                )
            finally:
                release_memory()  # a session per unit was built and dropped

    def probe_link(self, request: pb.ProbeLinkRequest) -> pb.ProbeLinkReply:
        return profiling.probe_link(
            request, self.config.token, self.config.tls, shape_for=self._link_shape
        )

    def drop_epoch(self, request: pb.DropEpochRequest) -> pb.Ack:
        # Queued jobs keep their Epoch object, so in-flight work of a dropped epoch completes.
        with self._lock:
            self._epochs.pop(request.epoch, None)
        return pb.Ack()

    def set_link(self, request: pb.SetLinkRequest) -> pb.Ack:
        if not request.to:
            raise Refused(INVALID, 'SetLink needs "to": a next hop\'s host:port or "coordinator"')
        if request.HasField("bandwidth_mbps") and not request.bandwidth_mbps > 0:
            raise Refused(INVALID, f"bandwidth_mbps must be > 0, got {request.bandwidth_mbps}")
        if request.HasField("latency_ms") and not request.latency_ms >= 0:
            raise Refused(INVALID, f"latency_ms must be >= 0, got {request.latency_ms}")
        with self._lock:
            if request.clear:
                self._link_overrides.pop(request.to, None)
            else:
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
            x = wire.decode_activation_array(request.tensor, max_elements=self.config.max_elements)
        except codec.CodecError as exc:
            raise Refused(INVALID, f"stage {epoch.stage}: {exc}") from None
        if x.ndim != len(epoch.in_shape) + 1 or tuple(x.shape[1:]) != epoch.in_shape:
            raise Refused(
                INVALID,
                f"stage {epoch.stage} (units [{epoch.start}, {epoch.end})) expects input "
                f"[N, {', '.join(map(str, epoch.in_shape))}], got {list(x.shape)}",
            )
        if x.shape[0] < 1:
            raise Refused(INVALID, f"stage {epoch.stage} expects a batch of at least 1, got 0")
        if self._jobs.qsize() >= self.config.max_queue:
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self._jobs.qsize()} micro-batches queued; at most {self.config.max_queue}",
            )
        request.ClearField("tensor")  # the decoded copy is all we need
        self._jobs.put(Job(batch=request, x=x, epoch=epoch, received=received))
        return pb.Ack()

    # --- compute and send ----------------------------------------------------------------------

    def _compute_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._run(job)
            except Exception as exc:  # one bad batch must not stop the pipeline
                log.exception("[%s] request %s failed", self.config.name, job.batch.request_id)
                self._fail(
                    job.batch.request_id,
                    job.epoch,
                    f"[{self.config.name}] stage {job.epoch.stage} failed on request "
                    f"{job.batch.request_id}: {type(exc).__name__}: {exc}",
                )

    def _run(self, job: Job) -> None:
        epoch = job.epoch
        compute_start = time.time()
        y = epoch.executor.run(job.x)
        compute_end = time.time()
        out = pb.MicroBatch(request_id=job.batch.request_id, plan_epoch=job.batch.plan_epoch)
        out.hops.extend(job.batch.hops)
        wire.encode_activation(y, epoch.wire, out=out.tensor)
        out.hops.add(
            device=self.config.name,
            stage=epoch.stage,
            received=job.received,
            compute_start=compute_start,
            compute_end=compute_end,
            serialize_end=time.time(),
            bytes_out=len(out.tensor.data),
            batch_size=int(job.x.shape[0]),
        )
        with self._lock:
            self._processed += 1
        if self.on_computed is not None:
            images, seconds = int(job.x.shape[0]), compute_end - compute_start
            self.on_computed(epoch.stage, images, seconds, len(out.tensor.data))
        to_coordinator = epoch.next_hop == COORDINATOR_HOP
        address = epoch.coordinator if to_coordinator else epoch.next_hop
        token = self.config.token if to_coordinator else (epoch.next_token or self.config.token)
        shape = self._link_shape(COORDINATOR_HOP if to_coordinator else address, epoch.shape)
        self._sender(address, token).put(Outgoing(out, shape, to_coordinator, epoch.coordinator))

    def _sender(self, address: str, token: str | None) -> LinkSender:
        with self._lock:
            sender = self._senders.get(address)
            if sender is None:
                sender = LinkSender(self.config.name, address, token, self.config.tls, self._report)
                self._senders[address] = sender
            return sender

    def _fail(self, request_id: int, epoch: Epoch, message: str) -> None:
        report = pb.FailureReport(
            device=self.config.name,
            plan_epoch=epoch.epoch,
            request_id=request_id,
            next_hop=epoch.next_hop,
            message=message,
        )
        self._report(report, epoch.coordinator)

    def _report(self, report: pb.FailureReport, coordinator: str) -> None:
        """Record a failure and tell the coordinator, best effort (it may be the one down)."""
        with self._lock:
            self._failures.append(report.message)
            channel = self._report_channels.get(coordinator)
            if channel is None:
                channel = open_channel(coordinator, self.config.token, self.config.tls)
                self._report_channels[coordinator] = channel
        call = channel.unary_unary(
            "/edgesplit.v1.Coordinator/ReportFailure",
            request_serializer=pb.FailureReport.SerializeToString,
            response_deserializer=pb.Ack.FromString,
        )
        try:
            call(report, timeout=5.0)
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

    def close(self) -> None:
        """Stop the compute thread, the senders and the sampler (the server is stopped first)."""
        self._jobs.put(None)
        self._compute.join(5.0)
        with self._lock:
            senders = list(self._senders.values())
            self._senders.clear()
            channels = list(self._report_channels.values())
        for sender in senders:
            sender.close()
        for channel in channels:
            channel.close()
        if self._sampler is not None:
            self._sampler.stop()


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

    def stop(self, grace_s: float = 2.0) -> None:
        self.server.stop(grace_s).wait(grace_s + 1.0)
        self.worker.close()

    def wait(self) -> None:
        self.server.wait_for_termination()


def serve(config: WorkerConfig, listen: str, insecure_no_token: bool = False) -> RunningWorker:
    """Start a worker listening on ``listen`` (``HOST:0`` picks a free port).

    Without a token the worker refuses to start unless ``insecure_no_token`` says so.
    """
    if not config.token and not insecure_no_token:
        raise EdgesplitError(
            f"worker {config.name} has no token; give --token-file or EDGESPLIT_TOKEN "
            "(or --insecure-no-token on a trusted network)"
        )
    worker = Worker(config)
    server = make_server([worker.handler()], [config.token] if config.token else None)
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
