"""What a worker runs: the loaded model, and one stage module per installed plan epoch.

Everything here validates requests from the network; a refusal is a :class:`Refused` with
the gRPC status and a message naming what was expected.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import NamedTuple

import grpc
import torch

from edgesplit import engines, graph, models
from edgesplit.errors import EdgesplitError
from edgesplit.runtime import codec, wire
from edgesplit.runtime.links import LinkShape
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.transport import Refused
from edgesplit.runtime.weights import check_sha256, from_bytes

INVALID = grpc.StatusCode.INVALID_ARGUMENT

_FX_LOCK = threading.Lock()
"""torch.fx tracing patches module globals, so two workers in one process (tests, the
in-process emulator) must not trace or build stage modules at the same time."""


class ModelKey(NamedTuple):
    """Identifies a loaded model: a LoadModel with the same key is a no-op."""

    model: str
    num_classes: int
    in_channels: int
    input_size: int
    sha256: str


@dataclass(frozen=True)
class LoadedModel:
    key: ModelKey
    graph: graph.UnitGraph

    @property
    def num_units(self) -> int:
        return self.graph.num_units


@dataclass(frozen=True)
class Epoch:
    """This worker's part of one plan epoch: units ``[start, end)`` and where results go."""

    epoch: int
    stage: int
    start: int
    end: int
    executor: engines.Executor
    wire: str
    """Format of this stage's output on the wire (runtime.wire)."""
    in_shape: tuple[int, ...]
    """Per-sample input shape; the batch dimension comes in front."""
    next_hop: str
    coordinator: str
    next_token: str | None
    shape: LinkShape


def _check_range(what: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise Refused(INVALID, f"{what} must be in [{low}, {high}], got {value}")


def model_key(request: pb.LoadModelRequest) -> ModelKey:
    """Validate a LoadModel request's scalars (the sha256 names a cache file)."""
    try:
        sha = check_sha256(request.weights_sha256)
    except EdgesplitError as exc:
        raise Refused(INVALID, str(exc)) from None
    _check_range("num_classes", request.num_classes, 1, 100_000)
    _check_range("in_channels", request.in_channels, 1, 64)
    _check_range("input_size", request.input_size, 8, 4096)
    return ModelKey(
        request.model, request.num_classes, request.in_channels, request.input_size, sha
    )


def build_model(key: ModelKey, data: bytes) -> LoadedModel:
    """Build ``key.model``, load safetensors ``data`` (checked against ``key.sha256``), trace."""
    name, num_classes, in_channels, input_size, sha = key
    try:
        state = from_bytes(data)
        model = models.build(name, num_classes=num_classes, in_channels=in_channels)
    except EdgesplitError as exc:
        raise Refused(INVALID, str(exc)) from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise Refused(INVALID, f"weights do not fit {name}: {first}") from None
    actual = models.state_dict_sha256(model)
    if actual != sha:
        raise Refused(INVALID, f"weights digest mismatch: expected {sha}, got {actual}")
    try:
        with _FX_LOCK:
            unit_graph = graph.trace(model, (in_channels, input_size, input_size))
    except EdgesplitError as exc:
        raise Refused(INVALID, str(exc)) from None
    return LoadedModel(key=key, graph=unit_graph)


def _engine_spec(request: pb.InstallPlanRequest, default_engine: str | None) -> engines.EngineSpec:
    try:
        engine, _ = engines.resolve_engine(request.engine or default_engine)
        wire.check_wire(request.wire or wire.DEFAULT_WIRE)
        return engines.EngineSpec(engine, request.precision or "fp32")
    except EdgesplitError as exc:
        raise Refused(INVALID, str(exc)) from None


def _calibration(
    model: LoadedModel, request: pb.InstallPlanRequest | pb.ProfileRequest
) -> torch.Tensor | None:
    """The int8 calibration images of an InstallPlan or Profile request, checked like any
    input."""
    if not request.HasField("calibration"):
        return None
    try:
        images = codec.decode(request.calibration, expect_dtype=torch.float32)
    except codec.CodecError as exc:
        raise Refused(INVALID, f"calibration images: {exc}") from None
    expected = tuple(model.graph.input_shape)
    if images.dim() != len(expected) + 1 or tuple(images.shape[1:]) != expected:
        raise Refused(
            INVALID,
            f"calibration images must be [N, {', '.join(map(str, expected))}], "
            f"got {list(images.shape)}",
        )
    return images


def _executor(
    model: LoadedModel,
    request: pb.InstallPlanRequest,
    spec: engines.EngineSpec,
    threads: int,
) -> engines.Executor:
    calibration = _calibration(model, request)
    if spec.precision == "int8" and calibration is None:
        raise Refused(INVALID, "precision int8 needs calibration images in the InstallPlan")
    key = engines.StageKey(
        model=model.key.model,
        weights_sha256=model.key.sha256,
        input_shape=tuple(model.graph.input_shape),
        start=request.start,
        end=request.end,
    )
    try:
        # Export traces the fx stage module, so it holds the fx lock like building one does.
        with _FX_LOCK:
            return engines.build_executor(
                model.graph, request.start, request.end, spec, threads, key, calibration
            )
    except EdgesplitError as exc:
        raise Refused(INVALID, str(exc)) from None


def make_epoch(
    model: LoadedModel,
    request: pb.InstallPlanRequest,
    threads: int = 1,
    default_engine: str | None = None,
) -> Epoch:
    """Validate an InstallPlan request against ``model`` and build its stage executor with
    ``threads`` intra-op threads (the request's engine, else ``default_engine``, else the best
    installed one)."""
    n = model.num_units
    if request.epoch < 1:
        raise Refused(INVALID, f"plan epoch must be >= 1, got {request.epoch}")
    if not 0 <= request.start < request.end <= n:
        raise Refused(
            INVALID,
            f"unit range [{request.start}, {request.end}) must satisfy "
            f"0 <= start < end <= {n} for {model.key.model}",
        )
    if not request.next_hop or not request.coordinator:
        raise Refused(INVALID, "InstallPlan needs next_hop and coordinator addresses")
    if request.HasField("bandwidth_mbps") and not request.bandwidth_mbps > 0:
        raise Refused(INVALID, f"bandwidth_mbps must be > 0, got {request.bandwidth_mbps}")
    if not request.latency_ms >= 0:
        raise Refused(INVALID, f"latency_ms must be >= 0, got {request.latency_ms}")
    in_shape = (
        tuple(model.graph.input_shape)
        if request.start == 0
        else tuple(model.graph.units[request.start - 1].out_shape)
    )
    bandwidth = request.bandwidth_mbps if request.HasField("bandwidth_mbps") else None
    spec = _engine_spec(request, default_engine)
    executor = _executor(model, request, spec, threads)
    return Epoch(
        epoch=request.epoch,
        stage=request.stage,
        start=request.start,
        end=request.end,
        executor=executor,
        wire=request.wire or wire.DEFAULT_WIRE,
        in_shape=in_shape,
        next_hop=request.next_hop,
        coordinator=request.coordinator,
        next_token=request.next_token or None,
        shape=LinkShape(
            bandwidth_mbps=bandwidth,
            latency_ms=request.latency_ms,
        ),
    )
