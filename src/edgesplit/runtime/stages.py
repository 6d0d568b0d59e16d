"""What a worker runs: the loaded model, and one stage per installed plan epoch.

The model is the coordinator's compiled ONNX model (held in the worker's
:class:`~edgesplit.runtime.model_store.ModelStore` by sha256); a stage is cut from it at unit
boundaries (:mod:`edgesplit.engines.onnx_units`) and run by ONNX Runtime, so a new plan epoch
costs a cut and a session, never a transfer. int8 stages are cut the same way from the whole
model quantized by the coordinator for this worker's CPU kind (:mod:`edgesplit.engines.cpu`),
which the worker holds in its store like the fp32 one (``int8_model_sha256``). A request
without it (an older coordinator) still gets its stage quantized here, calibrated on the
stage's own inputs, and cached on disk. Nothing here imports torch; the torch engine
(:mod:`edgesplit.runtime.torch_reference`) is loaded only when a plan asks for it.

Everything here validates requests from the network; a refusal is a :class:`Refused` with
the gRPC status and a message naming what was expected.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import grpc
import numpy as np

from edgesplit import engines
from edgesplit.engines import onnx_units
from edgesplit.engines.ort_session import OrtStage, read_cached, write_cached
from edgesplit.errors import EdgesplitError, ModelError, Refused
from edgesplit.runtime import codec, limits, wire
from edgesplit.runtime.links import LinkShape
from edgesplit.runtime.proto import edgesplit_pb2 as pb
from edgesplit.runtime.weights import check_sha256, trim_lru
from edgesplit.shared.cache import cache_root
from edgesplit.shared.names import DEFAULT_WIRE, check_wire

log = logging.getLogger(__name__)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
MAX_CACHED_STAGES = 64
MAX_CACHED_STAGE_BYTES = 1 << 30
"""The int8 stage cache keeps at most this many files and bytes (least recently used leave)."""
PREFIX_BATCH = 64
"""Calibration images per prefix run (bounded memory)."""
WORK_FACTOR = 4
"""A stage's working memory per sample, as a multiple of its largest unit's input plus output
(layers inside a unit may expand, e.g. MobileNetV2's x6; the engine keeps a few alive)."""
BUILD_FACTOR = 4
"""Memory to build a stage or a model's reference, as a multiple of the model file's size
(the file, its parsed protobuf, the cut copy and the session's own weights)."""


class StageRunner(Protocol):
    """Runs one stage: a float32 array ``[N, *in_shape]`` in (uint8 images for a stage 0
    that starts with their preprocessing), a float32 array out."""

    engine: str
    precision: str

    def run(self, x: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, object]: ...


class ModelKey(NamedTuple):
    """Identifies a loaded model: a LoadModel with the same key is a no-op."""

    model: str
    model_sha256: str
    weights_sha256: str
    num_classes: int
    in_channels: int
    input_size: int


@dataclass(frozen=True)
class LoadedModel:
    key: ModelKey
    units: onnx_units.ModelUnits
    path: Path
    """The verified ONNX file in the model store."""
    torch_graph: Any = None
    """The torch reference (an fx UnitGraph) when a plan may use the torch engine."""

    @property
    def num_units(self) -> int:
        return self.units.num_units

    def proto(self) -> Any:
        """The model's ``onnx.ModelProto``, parsed from the store each time it is cut (a worker
        keeps no copy of the whole model in memory)."""
        return onnx_units.parse_model(self.path.read_bytes())


@dataclass(frozen=True)
class Epoch:
    """This worker's part of one plan epoch: units ``[start, end)`` and where results go."""

    epoch: int
    stage: int
    start: int
    end: int
    executor: StageRunner
    wire: str
    """Format of this stage's output on the wire (runtime.wire)."""
    in_shape: tuple[int, ...]
    """Per-sample input shape; the batch dimension comes in front."""
    next_hop: str
    coordinator: str
    next_token: str | None
    shape: LinkShape
    work_bytes_per_sample: int = 0
    """Estimated working memory of one sample through this stage (see :func:`work_bytes`)."""
    out_bytes_per_sample: int = 0
    """Bytes of one sample's output on the wire."""


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= max(int(d), 1)
    return n


def prep_image_bytes(units: onnx_units.ModelUnits, start: int) -> int:
    """Bytes of the float image stage ``start``'s preprocessing makes of one uint8 image (0 for
    a stage without preprocessing): what the stage's sub-batches are counted in
    (:func:`edgesplit.engines.ort_session.sub_batch`)."""
    return 4 * _numel(units.prep.model_shape) if units.prep is not None and start == 0 else 0


def work_bytes(units: onnx_units.ModelUnits, start: int, end: int) -> int:
    """Estimated working memory (bytes, float32) of one sample through units ``[start, end)``:
    :data:`WORK_FACTOR` times its largest unit's input plus output. Unit 0 of a model that
    takes uint8 images counts the float image its preprocessing makes as its input."""
    prep = prep_image_bytes(units, start) // 4
    largest = max(
        max(_numel(units.in_shape(i)), prep if i == 0 else 0) + _numel(units.out_shapes[i])
        for i in range(start, end)
    )
    return 4 * WORK_FACTOR * largest


def build_bytes(model: LoadedModel) -> int:
    """Estimated memory to build a stage or reference of ``model`` (:data:`BUILD_FACTOR`)."""
    try:
        size = model.path.stat().st_size
    except OSError:
        size = 0
    return BUILD_FACTOR * size


def _check_range(what: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise Refused(INVALID, f"{what} must be in [{low}, {high}], got {value}")


def model_key(request: pb.LoadModelRequest) -> ModelKey:
    """Validate a LoadModel request's scalars (the digests name cache files)."""
    try:
        model_sha = check_sha256(request.model_sha256)
        weights_sha = check_sha256(request.weights_sha256) if request.weights_sha256 else ""
    except EdgesplitError as exc:
        raise Refused(INVALID, str(exc)) from None
    _check_range("num_classes", request.num_classes, 0, 100_000)
    _check_range("in_channels", request.in_channels, 0, 64)
    _check_range("input_size", request.input_size, 0, 4096)
    limits.check_text("model", request.model, limits.MAX_NAME_CHARS)
    return ModelKey(
        request.model, model_sha, weights_sha,
        request.num_classes, request.in_channels, request.input_size,
    )  # fmt: skip


def open_model(key: ModelKey, path: Path) -> LoadedModel:
    """The stored model at ``path`` with its units checked; a bad model is refused."""
    try:
        units = onnx_units.read_units(onnx_units.parse_model(path.read_bytes()))
    except (EdgesplitError, OSError) as exc:
        raise Refused(INVALID, f"model {key.model_sha256[:12]}: {exc}") from None
    return LoadedModel(key=key, units=units, path=path)


def open_int8(model: LoadedModel, sha256: str, path: Path | None) -> LoadedModel:
    """The coordinator's int8 model ``sha256`` (stored at ``path``) for the loaded ``model``;
    refused when the worker does not hold it or its units are not the loaded model's."""
    if path is None:
        raise Refused(
            PRECONDITION,
            f"int8 model {sha256[:12]} is not stored here; send it with PutModel first",
        )
    int8 = open_model(model.key._replace(model_sha256=sha256), path)
    if int8.units.out_shapes != model.units.out_shapes or (
        int8.units.input_shape != model.units.input_shape
    ):
        raise Refused(
            INVALID,
            f"int8 model {sha256[:12]} has other units than the loaded model "
            f"{model.key.model_sha256[:12]}; quantize the loaded model",
        )
    return int8


def _engine_spec(request: Any, default_engine: str | None) -> engines.EngineSpec:
    limits.check_text("engine", request.engine, 32)
    limits.check_text("precision", request.precision, 32)
    try:
        engine, _ = engines.resolve_engine(request.engine or default_engine)
        return engines.EngineSpec(engine, request.precision or "fp32")
    except EdgesplitError as exc:
        raise Refused(INVALID, str(exc)) from None


def calibration(
    model: LoadedModel, request: pb.InstallPlanRequest | pb.ProfileRequest
) -> np.ndarray | None:
    """The int8 calibration images of an InstallPlan or Profile request, checked like any
    input."""
    if not request.HasField("calibration"):
        return None
    try:
        images = codec.decode_array(request.calibration, expect_dtype=model.units.in_dtype(0))
    except codec.CodecError as exc:
        raise Refused(INVALID, f"calibration images: {exc}") from None
    expected = model.units.input_shape
    if images.ndim != len(expected) + 1 or tuple(images.shape[1:]) != expected:
        raise Refused(
            INVALID,
            f"calibration images must be [N, {', '.join(map(str, expected))}], "
            f"got {list(images.shape)}",
        )
    return images


def run_batched(stage: StageRunner, x: np.ndarray, batch: int = PREFIX_BATCH) -> np.ndarray:
    return np.concatenate([stage.run(x[i : i + batch]) for i in range(0, len(x), batch)])


def _int8_path(model: LoadedModel, start: int, end: int, calibrated_on: str, kind: str) -> Path:
    import onnxruntime

    from edgesplit.engines import quantize

    text = json.dumps(
        [model.key.model_sha256, start, end, calibrated_on, kind,
         str(sorted(quantize.settings(kind).as_dict().items())), onnxruntime.__version__],
    )  # fmt: skip
    digest = hashlib.sha256(text.encode()).hexdigest()[:24]
    return (
        cache_root() / "stages" / f"{model.key.model_sha256[:16]}-{start}-{end}-int8-{digest}.onnx"
    )


def stage_model(
    model: LoadedModel,
    start: int,
    end: int,
    precision: str,
    images: np.ndarray | None = None,
    stage_inputs: np.ndarray | None = None,
    proto: Any = None,
) -> tuple[bytes, Path | None]:
    """The ONNX bytes of units ``[start, end)`` at ``precision`` (and the cache path of an int8
    stage). int8 calibrates on ``stage_inputs`` (this stage's inputs) or, without them, on the
    model inputs ``images`` run through the fp32 prefix ``[0, start)``."""
    proto = proto if proto is not None else model.proto()
    fp32 = onnx_units.cut(proto, model.units, start, end)
    if precision == "fp32":
        return fp32, None
    from edgesplit.engines import cpu, quantize

    kind = cpu.cpu_kind()
    if stage_inputs is not None:
        calibrated_on = "stage:" + _array_id(stage_inputs)
    elif images is not None:
        calibrated_on = _array_id(images)
    else:
        raise ModelError("int8 stages need calibration images; none were given")
    path = _int8_path(model, start, end, calibrated_on, kind)
    if (data := read_cached(path)) is not None:
        _touch(path)
        return data, path
    if stage_inputs is None:
        assert images is not None
        stage_inputs = images.astype(model.units.in_dtype(0))
        if start > 0:
            prefix = OrtStage(onnx_units.cut(proto, model.units, 0, start), 0, start, "fp32", 1)
            stage_inputs = run_batched(prefix, stage_inputs)
    data = quantize.quantize_stage(fp32, stage_inputs, model.units.tensor_before(start), kind)
    write_cached(path, data)
    trim_lru(path.parent, "*.onnx", MAX_CACHED_STAGES, MAX_CACHED_STAGE_BYTES)
    return data, path


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):  # the LRU order is a hint
        path.touch()


def _array_id(a: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes (the int8 cache key's calibration set)."""
    digest = hashlib.sha256(f"{a.dtype}{list(a.shape)}".encode())
    digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


def build_runner(
    model: LoadedModel,
    start: int,
    end: int,
    spec: engines.EngineSpec,
    threads: int,
    images: np.ndarray | None = None,
    stage_inputs: np.ndarray | None = None,
    proto: Any = None,
    int8_model: LoadedModel | None = None,
) -> StageRunner:
    """The runner of units ``[start, end)`` on ``spec``; :class:`ModelError` when it cannot be
    built (the torch engine without its reference model, an operation ONNX Runtime lacks).
    An int8 stage is cut from ``int8_model`` when given (``proto`` is then that model's)."""
    if spec.engine == "torch":
        if model.torch_graph is None:
            raise ModelError(
                "the torch engine needs the model's torch reference on this worker (zoo models "
                "only; the coordinator loads it when a plan asks for --engine torch)"
            )
        from edgesplit.runtime.torch_reference import TorchStage

        return TorchStage(model.torch_graph, start, end)
    if threads < 1:
        raise ModelError(f"onnxruntime needs at least 1 intra-op thread, got {threads}")
    if spec.precision == "int8" and int8_model is not None:
        proto = proto if proto is not None else int8_model.proto()
        data, path = onnx_units.cut(proto, int8_model.units, start, end), None
    else:
        data, path = stage_model(model, start, end, spec.precision, images, stage_inputs, proto)
    try:
        return OrtStage(
            data, start, end, spec.precision, threads, path, prep_image_bytes(model.units, start)
        )
    except Exception as exc:  # onnxruntime's pybind errors (NOT_IMPLEMENTED, INVALID_GRAPH)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"onnxruntime cannot load units [{start}, {end}): {first[:300]}") from exc


def check_install(model: LoadedModel, request: pb.InstallPlanRequest) -> None:
    """Every number and name of an InstallPlan request against ``model`` and
    :mod:`~edgesplit.runtime.limits` (cheap: nothing is built)."""
    n = model.num_units
    limits.check_int("plan epoch", request.epoch, 1, limits.MAX_EPOCH)
    limits.check_int("stage", request.stage, 0, limits.MAX_STAGE)
    if not 0 <= request.start < request.end <= n:
        raise Refused(
            INVALID,
            f"unit range [{request.start}, {request.end}) must satisfy "
            f"0 <= start < end <= {n} for {model.key.model}",
        )
    limits.check_address("next_hop", request.next_hop, allow_coordinator=True)
    limits.check_address("coordinator", request.coordinator)
    limits.check_text("next_token", request.next_token, limits.MAX_TOKEN_CHARS)
    bandwidth = request.bandwidth_mbps if request.HasField("bandwidth_mbps") else None
    limits.check_link(request.latency_ms, bandwidth)
    limits.check_text("wire", request.wire, 32)
    try:
        check_wire(request.wire or DEFAULT_WIRE)
    except EdgesplitError as exc:
        raise Refused(INVALID, str(exc)) from None
    limits.check_text("engine", request.engine, 32)
    limits.check_text("precision", request.precision, 32)


def make_epoch(
    model: LoadedModel,
    request: pb.InstallPlanRequest,
    threads: int = 1,
    default_engine: str | None = None,
    int8_model: LoadedModel | None = None,
) -> Epoch:
    """Validate an InstallPlan request against ``model`` and build its stage with ``threads``
    intra-op threads (the request's engine, else ``default_engine``, else onnxruntime); an int8
    stage is cut from ``int8_model`` (see :func:`open_int8`) when given."""
    check_install(model, request)
    spec = _engine_spec(request, default_engine)
    images = calibration(model, request) if int8_model is None else None
    if spec.precision == "int8" and images is None and int8_model is None:
        raise Refused(
            INVALID, "precision int8 needs int8_model_sha256 (or calibration images) in the request"
        )
    try:
        executor = build_runner(
            model, request.start, request.end, spec, threads, images, int8_model=int8_model
        )
    except EdgesplitError as exc:
        raise Refused(INVALID, str(exc)) from None
    out_wire = request.wire or DEFAULT_WIRE
    bandwidth = request.bandwidth_mbps if request.HasField("bandwidth_mbps") else None
    return Epoch(
        epoch=request.epoch,
        stage=request.stage,
        start=request.start,
        end=request.end,
        executor=executor,
        wire=out_wire,
        in_shape=model.units.in_shape(request.start),
        next_hop=request.next_hop,
        coordinator=request.coordinator,
        next_token=request.next_token or None,
        shape=LinkShape(bandwidth_mbps=bandwidth, latency_ms=request.latency_ms),
        work_bytes_per_sample=work_bytes(model.units, request.start, request.end),
        out_bytes_per_sample=wire.wire_bytes_per_element(out_wire)
        * _numel(model.units.out_shapes[request.end - 1]),
    )
