"""The coordinator: checks devices, ships the model, installs plan epochs, drives runs.

A sync facade over sync gRPC with threads (the CLI is sync). Channels come from an injectable
``channel_factory`` so tests and the emulator can swap the transport. Every remote call has a
deadline, and gRPC errors are translated into :class:`WorkerError` / :class:`RunError` lines
that name the device and its address.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import torch
from torch import nn

from edgesplit._version import __version__
from edgesplit.config import ClusterSpec, DeviceSpec, LinkSpec
from edgesplit.engines import Execution
from edgesplit.engines.onnx_units import CompiledModel
from edgesplit.errors import ConfigError, EdgesplitError, InstallFailed, PlanError, WorkerError
from edgesplit.model.models import KNOWN_MODELS, state_dict_sha256
from edgesplit.runtime import PROTOCOL_VERSION, codec, model_store, wire
from edgesplit.runtime import health as hl
from edgesplit.runtime.links import WORKER_LINK, LinkStream
from edgesplit.runtime.live import LiveCallback, LiveObserver
from edgesplit.runtime.ports import Event, FailureEvent, History, ResultEvent
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.proto import edgesplit_pb2_grpc as pb_grpc
from edgesplit.runtime.records import PlanChange, RunRecord, Transition, best_offset
from edgesplit.runtime.runner import Replan, Run
from edgesplit.runtime.transport import (
    DEFAULT_LINK_STREAMS,
    Refused,
    StreamSlots,
    bind,
    describe_rpc_error,
    make_server,
    open_channel,
    service_handler,
)
from edgesplit.runtime.weights import to_bytes
from edgesplit.shared.imagespec import ImageSpec
from edgesplit.shared.names import COORDINATOR
from edgesplit.shared.plan import Stage, Stages, as_plan, plan_text
from edgesplit.shared.timeouts import TIMEOUTS

__all__ = ["ChannelFactory", "Coordinator", "DeviceInfo", "Stage", "bind_result_port"]

log = logging.getLogger(__name__)

ChannelFactory = Callable[[DeviceSpec], grpc.Channel]
"""Opens the channel to one device (token and TLS included)."""

CHECK_TIMEOUT_S = TIMEOUTS.check_s
LOAD_TIMEOUT_S = TIMEOUTS.load_s
ENGINE_INSTALL_S = TIMEOUTS.engine_install_s
"""InstallPlan deadline for onnxruntime stages: the first install cuts the stage from the
model; later ones load it from the worker's cache."""
INT8_INSTALL_S = 600.0
"""InstallPlan deadline for int8 stages quantized by the worker itself (a request without
``int8_model_sha256``, which this coordinator no longer sends: kept for the fallback's tests):
that took over 60 s on an emulated Cortex-A72 (``make check-arm``)."""
CLOCK_PROBES = 5


@dataclass(frozen=True)
class DeviceInfo:
    """What ``check()`` learned about one device."""

    name: str
    address: str
    protocol_version: int
    edgesplit_version: str
    torch_version: str
    grpc_version: str
    python_version: str
    threads: int
    clock_offset_ms: float
    rtt_ms: float
    cpu_kind: str = ""
    """What the device's int8 stages are built for (:mod:`edgesplit.engines.cpu`)."""
    cpu_model: str = ""
    onnxruntime_version: str = ""
    cores: int = 0
    """Logical CPUs of the device's host (0: not reported)."""


class Coordinator:
    """Drives a cluster of workers. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        cluster: ClusterSpec,
        channel_factory: ChannelFactory | None = None,
        rpc_timeout_s: float = 10.0,
        health_policy: hl.HealthPolicy | None = None,
    ) -> None:
        self.cluster = cluster
        self.rpc_timeout_s = rpc_timeout_s
        self.health_policy = health_policy or hl.HealthPolicy()
        self._factory = channel_factory or self._default_channel
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, pb_grpc.WorkerStub] = {}
        self._links: dict[str, LinkStream] = {}
        """The upload stream to each device (opened again when it broke)."""
        self._lock = threading.Lock()
        self._install_lock = threading.Lock()
        """One plan install at a time (the run loop and the adaptive controller both install)."""
        self._server: grpc.Server | None = None
        self._address: str | None = None
        self.events: queue.Queue[Event] = queue.Queue()
        self._epoch = 0
        self._plan: Stages = ()
        self._execution = Execution()
        self._num_units: int | None = None
        self._compiled: CompiledModel | None = None
        self._torch_source: tuple[pb.LoadModelRequest, nn.Module | None] | None = None
        self._torch_loaded = False
        self._weights_blob: tuple[nn.Module, bytes] | None = None
        self._int8_models: dict[tuple[str, str, str], CompiledModel] = {}
        """The loaded model quantized per (model sha256, calibration id, CPU kind)."""
        self._int8_lock = threading.Lock()
        self._installed: dict[int, Stages] = {}
        """Epochs the workers hold, by epoch; an epoch leaves when it is dropped."""
        self.clock_offsets_ms: dict[str, float] = {}
        self.rtt_ms: dict[str, float] = {}
        self.device_infos: dict[str, DeviceInfo] = {}
        """What the last :meth:`check` learned, by device."""
        now = time.time()
        self._health = {d.name: hl.healthy(now) for d in cluster.devices}
        self.transitions: list[Transition] = []
        self.plan_changes: list[PlanChange] = []
        self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="drop-epoch")

    # --- plumbing ------------------------------------------------------------------------------

    def _default_channel(self, device: DeviceSpec) -> grpc.Channel:
        return open_channel(device.address, self.cluster.token_for(device.name), self.cluster.tls)

    def stub(self, name: str) -> pb_grpc.WorkerStub:
        with self._lock:
            stub = self._stubs.get(name)
            if stub is None:
                channel = self._factory(self.cluster.device(name))
                self._channels[name] = channel
                stub = self._stubs[name] = pb_grpc.WorkerStub(channel)
            return stub

    def link(self, name: str) -> LinkStream:
        """The upload stream to device ``name`` (over its channel), reopened if it broke."""
        self.stub(name)  # opens the channel
        with self._lock:
            stream = self._links.get(name)
            if stream is None or stream.broken:
                stream = self._links[name] = LinkStream(self._channels[name], WORKER_LINK, name)
            return stream

    def upload_link(self, name: str) -> LinkSpec:
        """The link our send path applies from the coordinator to device ``name``."""
        return self.cluster.sender_link(COORDINATOR, name)

    def clocks(self) -> tuple[dict[str, float], dict[str, float]]:
        """Copies of (clock offset, round trip) in ms, by device."""
        with self._lock:
            return dict(self.clock_offsets_ms), dict(self.rtt_ms)

    def history(self, transitions_from: int, changes_from: int) -> History:
        """Health transitions and plan changes recorded from those indexes on."""
        with self._lock:
            return History(
                transitions=self.transitions[transitions_from:],
                plan_changes=self.plan_changes[changes_from:],
                transitions_end=len(self.transitions),
                plan_changes_end=len(self.plan_changes),
            )

    def where(self, name: str) -> str:
        return f"device {name} at {self.cluster.device(name).address}"

    def worker_error(self, name: str, what: str, exc: grpc.RpcError) -> WorkerError:
        code = exc.code() if hasattr(exc, "code") else None
        if code == grpc.StatusCode.UNAUTHENTICATED:
            why = "rejected our token (check token/token_file in the cluster file)"
        elif code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            why = f"is unreachable ({describe_rpc_error(exc)})"
        else:
            why = f"failed: {describe_rpc_error(exc)}"
        return WorkerError(f"{what}: {self.where(name)} {why}")

    def _each(self, names: Iterable[str], fn: Callable[[str], Any]) -> dict[str, Any]:
        """Run ``fn`` per device in parallel; raise one WorkerError listing every failure."""
        names = list(names)
        results: dict[str, Any] = {}
        errors: list[str] = []
        with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
            futures = {name: pool.submit(fn, name) for name in names}
            for name, future in futures.items():
                try:
                    results[name] = future.result()
                except WorkerError as exc:
                    errors.append(str(exc))
        if errors:
            raise WorkerError("; ".join(errors))
        return results

    # --- health and clocks ---------------------------------------------------------------------

    def probe(
        self, name: str, since_t: float = 0.0, timeout_s: float = CHECK_TIMEOUT_S
    ) -> tuple[pb.StatusReply, float, float]:
        """One Status round trip: (reply, t_send, t_recv) on the coordinator clock."""
        t_send = time.time()
        reply = self.stub(name).Status(pb.StatusRequest(since_t=since_t), timeout=timeout_s)
        return reply, t_send, time.time()

    def _check_one(self, name: str) -> DeviceInfo:
        probes = []
        try:
            for _ in range(CLOCK_PROBES):
                reply, t_send, t_recv = self.probe(name)
                probes.append((t_send, reply.clock, t_recv))
        except grpc.RpcError as exc:
            raise self.worker_error(name, "health check", exc) from None
        if reply.name != name:
            log.warning("%s calls itself %r", self.where(name), reply.name)
        if reply.protocol_version != PROTOCOL_VERSION:
            raise WorkerError(
                f"{self.where(name)} speaks protocol {reply.protocol_version}, "
                f"this coordinator speaks {PROTOCOL_VERSION}; install the same edgesplit on both"
            )
        torch_differs = bool(reply.torch_version) and reply.torch_version != torch.__version__
        if reply.edgesplit_version != __version__ or torch_differs:
            log.warning(
                "%s runs edgesplit %s / torch %s, the coordinator %s / %s",
                self.where(name), reply.edgesplit_version, reply.torch_version,
                __version__, torch.__version__,
            )  # fmt: skip
        offset_ms, rtt_ms = best_offset(probes)
        self.update_clock(name, offset_ms, rtt_ms)
        return DeviceInfo(
            name=name,
            address=self.cluster.device(name).address,
            protocol_version=reply.protocol_version,
            edgesplit_version=reply.edgesplit_version,
            torch_version=reply.torch_version,
            grpc_version=reply.grpc_version,
            python_version=reply.python_version,
            threads=reply.threads,
            clock_offset_ms=offset_ms,
            rtt_ms=rtt_ms,
            cpu_kind=reply.cpu_kind or "unknown",
            cpu_model=reply.cpu_model,
            onnxruntime_version=reply.onnxruntime_version,
            cores=reply.cpu_count,
        )

    def update_clock(self, name: str, offset_ms: float, rtt_ms: float) -> None:
        """Keep the offset measured with the smallest round trip seen so far."""
        with self._lock:
            if name not in self.rtt_ms or rtt_ms < self.rtt_ms[name]:
                self.rtt_ms[name] = rtt_ms
                self.clock_offsets_ms[name] = offset_ms

    def check(self) -> dict[str, DeviceInfo]:
        """Health, versions and clock offset of every device; :class:`WorkerError` if any device
        is unreachable, rejects the token or speaks another protocol (within a few seconds).
        Every device that passes is HEALTHY from now on."""
        infos = self._each((d.name for d in self.cluster.devices), self._check_one)
        now = time.time()
        with self._lock:
            self._health = {name: hl.healthy(now) for name in infos}
            self.device_infos = dict(infos)
        return infos

    def observe(self, name: str, obs: hl.Observation) -> tuple[hl.DeviceHealth, hl.DeviceHealth]:
        """Feed one observation of device ``name`` to its state machine; returns (before,
        after) and records a :class:`Transition` when the state changed."""
        with self._lock:
            before = self._health[name]
            after = hl.step(before, obs, self.health_policy)
            self._health[name] = after
            if after.state is not before.state:
                self.transitions.append(
                    Transition(name, obs.t, before.state.value, after.state.value, after.reason)
                )
        if after.state is not before.state:
            log.warning(
                "[%s] %s -> %s%s", name, before.state.value, after.state.value,
                f" ({after.reason})" if after.reason else "",
            )  # fmt: skip
        return before, after

    def health(self) -> dict[str, hl.DeviceHealth]:
        """Every device's current health, in cluster order."""
        with self._lock:
            return {d.name: self._health[d.name] for d in self.cluster.devices}

    def usable_devices(self) -> list[str]:
        """Devices a plan may use now (HEALTHY or SUSPECT), in cluster order."""
        return [name for name, h in self.health().items() if h.usable]

    def device_at(self, address: str) -> str | None:
        """The name of the device listening at ``address``, if it is one of ours."""
        for device in self.cluster.devices:
            if device.address == address:
                return device.name
        return None

    # --- model and plan ------------------------------------------------------------------------

    def load_model(
        self,
        name: str,
        num_classes: int,
        in_channels: int,
        input_size: int,
        model: nn.Module | None,
        compiled: CompiledModel | None = None,
        prep: ImageSpec | None = None,
    ) -> int:
        """Make every device hold the compiled model (ONNX, sent only where its sha256 is not
        stored yet, in chunks); returns its number of units. ``compiled`` defaults to
        ``model`` exported here (:func:`~edgesplit.engines.onnx_engine.compile_model`), behind
        the preprocessing ``prep`` when given (stage 0 then takes uint8 images); a ``.onnx``
        model comes as ``compiled`` alone, with no torch reference."""
        sha = state_dict_sha256(model) if model is not None else ""
        if compiled is None:
            if model is None:
                raise PlanError("load_model needs a torch model or a compiled one")
            compiled = _compile(model, name, sha, in_channels, input_size, prep)
        template = pb.LoadModelRequest(
            model=name,
            num_classes=num_classes,
            in_channels=in_channels,
            input_size=input_size,
            weights_sha256=sha,
            model_sha256=compiled.sha256,
        )
        with self._lock:
            self._compiled = compiled
            zoo = model is not None and name in KNOWN_MODELS
            self._torch_source = (template, model) if zoo else None
            self._torch_loaded = False
        units = self._each(
            (d.name for d in self.cluster.devices), lambda d: self._load(d, template, False)
        )
        counts = sorted(set(units.values()))
        if len(counts) != 1:
            raise WorkerError(f"devices loaded {name} with different unit counts: {units}")
        with self._lock:
            self._num_units = counts[0]
            self._plan = ()
        return counts[0]

    def ensure_torch_reference(self) -> None:
        """Make every device hold the torch reference of the loaded zoo model too (weights sent
        where missing), so plans and profiles may use ``--engine torch``. Workers import torch
        only then."""
        with self._lock:
            source, loaded = self._torch_source, self._torch_loaded
        if loaded:
            return
        if source is None:
            raise PlanError(
                "--engine torch on workers needs a zoo model (workers never receive Python "
                "code); this model runs on --engine onnxruntime"
            )
        template = source[0]
        self._each((d.name for d in self.cluster.devices), lambda d: self._load(d, template, True))
        with self._lock:
            self._torch_loaded = True

    def _load(self, device: str, template: pb.LoadModelRequest, torch_reference: bool) -> int:
        with self._lock:
            compiled, source = self._compiled, self._torch_source
        assert compiled is not None
        request = pb.LoadModelRequest()
        request.CopyFrom(template)
        request.torch_reference = torch_reference
        name = request.model
        try:
            reply = self.stub(device).LoadModel(request, timeout=LOAD_TIMEOUT_S)
            if reply.need_model:
                log.info(
                    "sending %s (%.1f MB ONNX) to %s",
                    name, len(compiled.data) / 1e6, self.where(device),
                )  # fmt: skip
                self.stub(device).PutModel(
                    model_store.chunks(compiled.data, compiled.sha256), timeout=LOAD_TIMEOUT_S
                )
                reply = self.stub(device).LoadModel(request, timeout=LOAD_TIMEOUT_S)
            if reply.need_weights:
                if source is None or source[1] is None:
                    raise WorkerError(
                        f"{self.where(device)} runs the torch engine, which needs a zoo model's "
                        f"weights; {name} has none (start the worker with --engine onnxruntime)"
                    )
                log.info("sending %s weights to %s", name, self.where(device))
                request.weights = self._weights(source[1])
                reply = self.stub(device).LoadModel(request, timeout=LOAD_TIMEOUT_S)
        except grpc.RpcError as exc:
            raise self.worker_error(device, f"loading {name}", exc) from None
        if not reply.loaded:
            raise WorkerError(f"loading {name}: {self.where(device)} did not load it")
        return int(reply.num_units)

    def _weights(self, model: nn.Module) -> bytes:
        """The model's safetensors bytes, serialised once per model."""
        with self._lock:
            if self._weights_blob is None or self._weights_blob[0] is not model:
                self._weights_blob = (model, to_bytes(model))
            return self._weights_blob[1]

    def result_address(self) -> str:
        """Start the Coordinator service (once) and return the address workers reach it at."""
        with self._lock:
            if self._address is not None:
                return self._address
            tokens = [self.cluster.token_for(d.name) for d in self.cluster.devices]
            # One results stream per last stage (a plan change may make another device last).
            streams = max(DEFAULT_LINK_STREAMS, len(self.cluster.devices))
            handler = service_handler(
                "edgesplit.v1.Coordinator",
                {"ReportFailure": (pb.FailureReport, self._on_failure)},
                links={"Results": self._on_result},
                slots=StreamSlots(streams),
            )
            server = make_server([handler], tokens, max_workers=8 + streams)
            port = bind_result_port(server, self.cluster)
            server.start()
            self._server = server
            self._address = f"{self.cluster.coordinator_host}:{port}"
            log.info("coordinator service on %s", self._address)
            return self._address

    def _on_result(self, batch: pb.MicroBatch, data: memoryview) -> None:
        arrival = time.time()
        try:
            tensor = wire.decode_activation(batch.tensor, data=data)
        except codec.CodecError as exc:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"Results: {exc}") from None
        batch.ClearField("tensor")
        self.events.put(ResultEvent(batch, tensor, arrival))

    def _on_failure(self, report: pb.FailureReport) -> pb.Ack:
        log.warning("failure reported by %s: %s", report.device, report.message)
        self.events.put(FailureEvent(report, time.time()))
        return pb.Ack()

    def install_plan(
        self,
        stages: list[Stage],
        reason: str = "install",
        timeout_s: float | None = None,
        execution: Execution | None = None,
    ) -> int:
        """Install a new plan epoch: ``stages[i] = (device, start, end)`` covering units
        ``[0, num_units)`` in order, each a half-open range. Returns the new epoch.

        Earlier epochs stay installed (requests in flight finish under them) until
        :meth:`drop_epoch`. Raises :class:`InstallFailed` naming the device that did not take
        its stage; the epoch then does not become current.

        ``execution`` (engine, precision, wire) applies from this epoch on; None keeps the
        previous epoch's."""
        with self._install_lock:
            return self._install_plan(stages, reason, timeout_s, execution)

    def _install_plan(
        self,
        stages: list[Stage],
        reason: str,
        timeout_s: float | None,
        execution: Execution | None,
    ) -> int:
        with self._lock:
            if execution is not None:
                self._execution = execution
            num_units = self._num_units
        if num_units is None:
            raise PlanError("install_plan needs a model; call load_model first")
        if execution is not None and execution.engine == "torch":
            self.ensure_torch_reference()
        plan = as_plan(stages)
        _validate_plan(plan, num_units, {d.name for d in self.cluster.devices})
        coordinator = self.result_address()
        with self._lock:
            epoch = self._epoch + 1
        # Last stage first, so every stage's next hop is ready before data can reach it.
        for index in reversed(range(len(plan))):
            self._install_one(epoch, index, plan, coordinator, timeout_s or self.rpc_timeout_s)
        with self._lock:
            self._epoch, self._plan = epoch, plan
            self._installed[epoch] = plan
            self.plan_changes.append(PlanChange(epoch, time.time(), reason, plan))
        log.info("installed epoch %d (%s): %s", epoch, reason, plan_text(plan))
        return epoch

    def switch_plan(self, stages: list[Stage], reason: str = "switch") -> int:
        """Make ``stages`` the plan for new micro-batches, also in the middle of a run (from any
        thread): micro-batches already in flight finish under their epoch, and a running
        :class:`Run` drops that epoch on the workers once none of its requests is unfinished.
        Returns the new epoch."""
        return self.install_plan(stages, reason=reason)

    def _install_one(
        self, epoch: int, index: int, plan: Stages, coord: str, timeout_s: float
    ) -> None:
        stage = plan[index]
        last = index + 1 == len(plan)
        next_name = COORDINATOR if last else plan[index + 1].device
        link = self.cluster.sender_link(stage.device, next_name)
        request = pb.InstallPlanRequest(
            epoch=epoch,
            stage=index,
            start=stage.start,
            end=stage.end,
            next_hop=COORDINATOR if last else self.cluster.device(next_name).address,
            coordinator=coord,
            latency_ms=link.latency_ms,
        )
        self._fill_execution(request, link.wire, stage.device)
        if link.bandwidth_mbps is not None:
            request.bandwidth_mbps = link.bandwidth_mbps
        if not last:
            next_token = self.cluster.token_for(next_name)
            if next_token != self.cluster.token_for(stage.device):
                request.next_token = next_token
        # onnxruntime stages may be exported and quantized on first install: give them time.
        timeout = timeout_s if request.engine == "torch" else max(timeout_s, ENGINE_INSTALL_S)
        if request.precision == "int8" and not request.int8_model_sha256:
            timeout = max(timeout, INT8_INSTALL_S)
        try:
            self.stub(stage.device).InstallPlan(request, timeout=timeout)
        except grpc.RpcError as exc:
            error = self.worker_error(stage.device, f"installing epoch {epoch}", exc)
            raise InstallFailed(str(error), stage.device) from None

    def _fill_execution(
        self, request: pb.InstallPlanRequest, link_wire: str | None, device: str
    ) -> None:
        with self._lock:
            execution = self._execution
        request.engine = execution.engine or ""
        request.precision = execution.precision
        request.wire = link_wire or execution.wire
        if execution.precision == "int8":
            if execution.calibration is None:
                raise PlanError("int8 stages need calibration images; none were given")
            request.int8_model_sha256 = self.int8_model_for(device, execution.calibration)

    def int8_model_for(self, device: str, calibration: torch.Tensor) -> str:
        """sha256 of the loaded model quantized for ``device``'s CPU kind and calibrated on
        ``calibration`` (model inputs), made sure to be held by the device: built here once per
        kind (:func:`~edgesplit.engines.onnx_engine.compile_int8`) and sent where missing. The
        device cuts its int8 stages from it, so no device quantizes anything."""
        from edgesplit.engines.onnx_engine import calibration_id, compile_int8

        with self._lock:
            compiled = self._compiled
        if compiled is None:
            raise PlanError("int8 stages need a model; call load_model first")
        expected = compiled.units.input_shape
        if calibration.ndim != len(expected) + 1 or tuple(calibration.shape[1:]) != expected:
            raise PlanError(
                f"int8 calibration images must be [N, {', '.join(map(str, expected))}] (the "
                f"model's input), got {list(calibration.shape)}"
            )
        kind = self._cpu_kind(device)
        key = (compiled.sha256, calibration_id(calibration), kind)
        with self._int8_lock:  # one quantization per kind, however many devices ask
            model = self._int8_models.get(key)
            if model is None:
                log.info("quantizing %s to int8 for %s CPUs", key[0][:12], kind)
                model = compile_int8(compiled, calibration, kind)
                self._int8_models = {k: v for k, v in self._int8_models.items() if k[0] == key[0]}
                self._int8_models[key] = model
        self._ensure_held(device, model, f"the int8 model for {kind}")
        return model.sha256

    def _cpu_kind(self, device: str) -> str:
        with self._lock:
            info = self.device_infos.get(device)
        if info is not None and info.cpu_kind != "unknown":
            return info.cpu_kind
        try:
            reply = self.stub(device).Status(pb.StatusRequest(), timeout=CHECK_TIMEOUT_S)
        except grpc.RpcError as exc:
            raise self.worker_error(device, "asking its CPU kind", exc) from None
        return reply.cpu_kind or "unknown"

    def _ensure_held(self, device: str, model: CompiledModel, what: str) -> None:
        """Send ``model`` to ``device`` unless its store already holds those bytes."""
        try:
            status = self.stub(device).Status(pb.StatusRequest(), timeout=CHECK_TIMEOUT_S)
            if model.sha256 in status.stored_models:
                return
            log.info(
                "sending %s (%.1f MB ONNX) to %s", what, len(model.data) / 1e6, self.where(device)
            )
            self.stub(device).PutModel(
                model_store.chunks(model.data, model.sha256), timeout=LOAD_TIMEOUT_S
            )
        except grpc.RpcError as exc:
            raise self.worker_error(device, f"sending {what}", exc) from None

    def drop_epoch(self, epoch: int, devices: Iterable[str] | None = None) -> None:
        """Tell ``devices`` (default: every usable one) to forget ``epoch``; best effort per
        device, with the heartbeat deadline as timeout (a lost device must not hold us up)."""
        with self._lock:
            self._installed.pop(epoch, None)
        names = list(devices) if devices is not None else self.usable_devices()
        for name in names:
            try:
                self.stub(name).DropEpoch(
                    pb.DropEpochRequest(epoch=epoch), timeout=self.health_policy.deadline_s
                )
            except grpc.RpcError as exc:
                log.warning("dropping epoch %d on %s: %s", epoch, name, describe_rpc_error(exc))

    def drop_epoch_later(self, epoch: int, devices: Iterable[str] | None = None) -> None:
        """:meth:`drop_epoch` on a background thread (the caller is a run's loop)."""
        with self._lock:
            self._installed.pop(epoch, None)
        self._background.submit(self.drop_epoch, epoch, list(devices) if devices else None)

    def installed_epochs(self) -> dict[int, Stages]:
        """Epochs installed and not yet dropped, with their plans."""
        with self._lock:
            return dict(self._installed)

    def current(self) -> tuple[int, Stages]:
        """The current epoch and its plan, read together (another thread may install)."""
        with self._lock:
            return self._epoch, self._plan

    @property
    def epoch(self) -> int:
        with self._lock:
            return self._epoch

    @property
    def plan(self) -> Stages:
        with self._lock:
            return self._plan

    # --- runs ----------------------------------------------------------------------------------

    def run(
        self,
        batches: Iterable[tuple[int, torch.Tensor] | None],
        window: int = 4,
        on_result: Callable[[int, torch.Tensor], None] | None = None,
        stall_timeout_s: float = 30.0,
        status_interval_s: float = 0.5,
        replan: Replan | None = None,
        on_live: LiveCallback | None = None,
        observer: LiveObserver | None = None,
        keep_outputs: bool = True,
    ) -> RunRecord:
        """Stream ``(request_id, input batch)`` through the installed plan with at most
        ``window`` micro-batches in flight; see :class:`~edgesplit.runtime.runner.Run`.

        ``replan(usable_devices) -> [(device, start, end), ...]`` is called whenever the set of
        usable devices changes (a device is LOST, or re-admitted after probation); without it a
        lost device that holds a stage ends the run with :class:`RunAborted`.
        ``on_live(snapshot)`` gets the live view after every result and heartbeat, and
        ``observer(event)`` every live event (e.g. the adaptive controller).
        ``batches`` may be a feed (yields None while it has nothing; ``keep_outputs=False``
        for a long-lived one): see :mod:`edgesplit.runtime.runner`."""
        run = Run(
            self,
            window,
            on_result,
            stall_timeout_s,
            status_interval_s,
            replan,
            on_live,
            observer,
            keep_outputs,
        )
        return run.execute(batches)

    def close(self) -> None:
        with self._lock:
            server, self._server, self._address = self._server, None, None
            channels = list(self._channels.values())
            links = list(self._links.values())
            self._channels.clear()
            self._stubs.clear()
            self._links.clear()
        for stream in links:
            stream.close("the coordinator closed")
        self._background.shutdown(wait=False, cancel_futures=True)
        if server is not None:
            grace_s = TIMEOUTS.result_server_stop_s
            server.stop(grace_s).wait(2 * grace_s)
        for channel in channels:
            channel.close()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _compile(
    model: nn.Module, name: str, sha: str, in_channels: int, input_size: int,
    prep: ImageSpec | None = None,
) -> CompiledModel:  # fmt: skip
    """``model`` traced (behind ``prep``) and exported to ONNX (cached by weights, see
    compile_model)."""
    from edgesplit.engines.onnx_engine import compile_model
    from edgesplit.model import graph

    ug = graph.trace(model, (in_channels, input_size, input_size), prep)
    return compile_model(ug, name, sha)


def _validate_plan(plan: Stages, num_units: int, devices: set[str]) -> None:
    if not plan:
        raise PlanError("a plan needs at least one stage")
    expected = 0
    for i, stage in enumerate(plan):
        if stage.device not in devices:
            raise PlanError(
                f"stage {i} names device {stage.device!r}; devices: {', '.join(sorted(devices))}"
            )
        if stage.start != expected or not stage.start < stage.end:
            raise PlanError(
                f"stage {i} covers units [{stage.start}, {stage.end}); expected a non-empty "
                f"range starting at {expected}"
            )
        expected = stage.end
    if expected != num_units:
        raise PlanError(f"the plan ends at unit {expected}; the model has {num_units} units")
    used = [s.device for s in plan]
    repeated = sorted({d for d in used if used.count(d) > 1})
    if repeated:
        raise PlanError(f"a device can run one stage per epoch; repeated: {repeated}")


def bind_result_port(server: grpc.Server, cluster: ClusterSpec) -> int:
    """Bind the result service to ``coordinator_host:result_port`` (a free port when the
    cluster file names none) and return the port. A taken or unreachable configured port is a
    ConfigError that names the cluster file's fields."""
    port = cluster.result_port or 0
    address = f"{cluster.coordinator_host}:{port}"
    try:
        return bind(server, address, cluster.tls)
    except EdgesplitError as exc:
        if not port:
            raise
        raise ConfigError(
            f"the coordinator's result service cannot listen on {address} (coordinator_host "
            f"and result_port of the cluster file, or --result-port): {exc}; expected a free "
            "port on an address of this machine"
        ) from None
