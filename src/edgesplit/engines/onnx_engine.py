"""The ``onnxruntime`` engine: a stage exported to ONNX and run by an ONNX Runtime session.

Export uses torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) on
the stage's ``torch.fx`` module, with the batch dimension marked dynamic. Measured here with
torch 2.14 on the five zoo models, both exporters give the same graphs within 4e-6, but the
``torch.export``-based one (the default since torch 2.9) needs 3-7 s per stage against
0.1-0.4 s, which matters when the profiler exports every unit on a Raspberry Pi; the
TorchScript exporter also exists in every torch the package accepts (>= 2.1). When a future
torch drops it, :data:`EXPORTER` switches to the ``torch.export`` path.

Compiled stages are cached under ``<user cache>/onnx`` by :class:`~edgesplit.engines.StageKey`
plus precision, calibration set and engine versions, so a plan change or a restart costs a
session creation, not an export or a quantization.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import warnings
from pathlib import Path

import torch

from edgesplit._version import __version__
from edgesplit.engines import EngineSpec, StageKey
from edgesplit.engines.onnx_units import CompiledModel
from edgesplit.engines.ort_session import OrtStage, read_cached, write_cached
from edgesplit.engines.torch_engine import TorchExecutor
from edgesplit.errors import ModelError
from edgesplit.model.graph import UnitGraph
from edgesplit.shared.cache import cache_root

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "x"
OUTPUT_NAME = "y"
EXPORT_BATCH = 2
"""Batch of the example input traced at export; the batch dimension is dynamic in the model."""


def _legacy_exporter_present() -> bool:
    try:
        from torch.onnx._internal.torchscript_exporter import utils  # noqa: F401
    except ImportError:
        return False
    return True


EXPORTER = "torchscript" if _legacy_exporter_present() else "dynamo"
"""Which torch exporter turns stages into ONNX (see the module doc)."""


def engine_version() -> str:
    """Everything that changes a compiled stage besides the stage itself (cache key part)."""
    import onnx
    import onnxruntime

    return (
        f"ort{onnxruntime.__version__}-onnx{onnx.__version__}-torch{torch.__version__}-"
        f"{EXPORTER}-opset{OPSET}-edgesplit{__version__}"
    )


def cache_dir() -> Path:
    """Where compiled stages live: beside the weights cache, in ``onnx/``."""
    return cache_root() / "onnx"


def stage_input_shape(ug: UnitGraph, start: int) -> tuple[int, ...]:
    """Per-sample shape of the tensor entering unit ``start``."""
    return tuple(ug.input_shape) if start == 0 else tuple(ug.units[start - 1].out_shape)


def example_input(ug: UnitGraph, start: int, batch: int = 2) -> torch.Tensor:
    """A seeded example of what enters unit ``start`` (uint8 images for unit 0 of a graph
    that starts with its preprocessing), to trace the export with."""
    generator = torch.Generator().manual_seed(0)
    shape = (batch, *stage_input_shape(ug, start))
    if start == 0 and getattr(ug, "input_dtype", torch.float32) == torch.uint8:
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    return torch.randn(shape, generator=generator)


_OP_PATTERNS = (
    re.compile(r"operator '([\w:.]+)'"),  # torch UnsupportedOperatorError
    re.compile(r"implementation for (\w+)\("),  # onnxruntime NOT_IMPLEMENTED
    re.compile(r"(aten::\w+|aten\.\w+)"),
)


def _operation(message: str) -> str | None:
    for pattern in _OP_PATTERNS:
        found = pattern.search(message)
        if found:
            return found.group(1)
    return None


def _failure(what: str, ug: UnitGraph, start: int, end: int, exc: BaseException) -> ModelError:
    message = str(exc).strip()
    op = _operation(message)
    first = message.splitlines()[0] if message else type(exc).__name__
    named = f"operation {op} is not supported" if op else f"{type(exc).__name__}: {first}"
    span = f"units [{start}, {end}) ({ug.units[start].first} .. {ug.units[end - 1].last})"
    return ModelError(
        f"cannot {what} {span} for onnxruntime: {named}; run with --engine torch "
        f"(detail: {first[:300]})"
    )


def export_stage(ug: UnitGraph, start: int, end: int) -> bytes:
    """Units ``[start, end)`` of ``ug`` as an fp32 ONNX model (input ``x``, output ``y``, both
    with a dynamic batch dimension). Raises :class:`ModelError` naming the operation that has
    no ONNX export. A graph read from a ``.onnx`` file is cut instead (nothing to export)."""
    if hasattr(ug, "stage_bytes"):  # edgesplit.engines.onnx_graph.OnnxUnitGraph
        return bytes(ug.stage_bytes(start, end))
    module = ug.stage(start, end)
    example = example_input(ug, start, EXPORT_BATCH)
    buffer = io.BytesIO()
    try:
        # Tracing for export records autograd state, so no inference_mode here.
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of torch.export (slower here, see
            # the module doc); its warnings are expected, so they do not reach the user.
            warnings.simplefilter("ignore")
            if EXPORTER == "torchscript":
                torch.onnx.export(
                    module,
                    (example,),
                    buffer,  # type: ignore[arg-type]  # the legacy exporter writes file objects
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                    opset_version=OPSET,
                    dynamo=False,
                )
            else:  # pragma: no cover - only when torch lacks the TorchScript exporter
                program = torch.onnx.export(
                    module,
                    (example,),
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                    opset_version=OPSET,
                    dynamo=True,
                    verbose=False,
                )
                assert program is not None
                buffer.write(program.model_proto.SerializeToString())
    except Exception as exc:  # the exporters raise many types; all mean "cannot export"
        raise _failure("export", ug, start, end, exc) from exc
    return buffer.getvalue()


def calibration_id(images: torch.Tensor) -> str:
    """sha256 of a calibration batch (dtype, shape and bytes): the cache key's calibration set."""
    t = images.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{t.dtype}{list(t.shape)}".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def stage_inputs(ug: UnitGraph, start: int, images: torch.Tensor) -> torch.Tensor:
    """This stage's inputs for model inputs ``images``: the torch prefix ``[0, start)``."""
    if start == 0:
        return images if images.dtype == torch.uint8 else images.to(torch.float32)
    prefix = TorchExecutor(ug, 0, start)
    return torch.cat([prefix.run(images[i : i + 64]) for i in range(0, len(images), 64)])


def compiled_stage(
    ug: UnitGraph,
    start: int,
    end: int,
    spec: EngineSpec,
    key: StageKey | None,
    calibration: torch.Tensor | None,
    directory: Path | None,
    stage_calibration: torch.Tensor | None = None,
    kind: str | None = None,
) -> tuple[bytes, Path | None]:
    """The ONNX bytes of the stage at ``spec.precision`` and their cache path (None: not
    cached), exporting and quantizing only what the cache lacks. ``calibration`` holds model
    inputs, ``stage_calibration`` (if given instead) this stage's own inputs. int8 is built for
    CPU ``kind`` (default: this machine's) and cached per kind."""
    from edgesplit.engines import cpu, quantize

    kind = kind or cpu.cpu_kind()

    if spec.precision == "int8" and calibration is None and stage_calibration is None:
        raise ModelError("int8 stages need calibration images; none were given")
    directory = directory or cache_dir()
    version = engine_version()
    prep = getattr(ug, "prep", None)
    if prep is not None:  # the same raw images and units, but other floats in the graph
        version = f"{version}|{prep.to_json()}"
    fp32_path = int8_path = None
    if key is not None:
        stem = f"{key.model}-{start}-{end}"
        fp32_path = directory / f"{stem}-fp32-{key.digest('fp32', version)}.onnx"
        if calibration is not None or stage_calibration is not None:
            q = f"{kind}:{sorted(quantize.settings(kind).as_dict().items())}"
            if stage_calibration is not None:
                calibrated_on = "stage:" + calibration_id(stage_calibration)
            else:
                assert calibration is not None
                calibrated_on = calibration_id(calibration)
            digest = key.digest("int8", version, calibrated_on, q)
            int8_path = directory / f"{stem}-int8-{digest}.onnx"
    wanted = int8_path if spec.precision == "int8" else fp32_path
    if wanted is not None and (data := read_cached(wanted)) is not None:
        return data, wanted
    fp32 = read_cached(fp32_path) if fp32_path is not None else None
    if fp32 is None:
        fp32 = export_stage(ug, start, end)
        if fp32_path is not None:
            write_cached(fp32_path, fp32)
    if spec.precision == "fp32":
        return fp32, fp32_path
    if stage_calibration is None:
        assert calibration is not None
        stage_calibration = stage_inputs(ug, start, calibration)
    data = quantize.quantize_stage(fp32, stage_calibration, INPUT_NAME, kind)
    if int8_path is not None:
        write_cached(int8_path, data)
    return data, int8_path


class OnnxExecutor(OrtStage):
    """:class:`~edgesplit.engines.ort_session.OrtStage` with torch tensors in and out (the
    coordinator's and the reference's executor interface)."""

    def run(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.from_numpy(super().run(x.detach().contiguous().numpy()))

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "exporter": EXPORTER}


def build_onnx_executor(
    ug: UnitGraph,
    start: int,
    end: int,
    spec: EngineSpec,
    threads: int,
    key: StageKey | None,
    calibration: torch.Tensor | None,
    directory: Path | None,
    stage_calibration: torch.Tensor | None = None,
) -> OnnxExecutor:
    """See :func:`edgesplit.engines.build.build_executor`."""
    if threads < 1:
        raise ModelError(f"onnxruntime needs at least 1 intra-op thread, got {threads}")
    data, path = compiled_stage(
        ug, start, end, spec, key, calibration, directory, stage_calibration
    )
    try:
        return OnnxExecutor(data, start, end, spec.precision, threads, path)
    except Exception as exc:  # onnxruntime's pybind errors (NOT_IMPLEMENTED, INVALID_GRAPH)
        raise _failure("load", ug, start, end, exc) from exc


def _export_whole(ug: UnitGraph) -> bytes:
    """The whole model as ONNX with the unit boundaries as extra outputs ``u0 .. u{n-2}``."""
    module = ug.with_boundaries()
    n = ug.num_units
    names = [OUTPUT_NAME, *(f"u{i}" for i in range(n - 1))]
    example = example_input(ug, 0, EXPORT_BATCH)
    buffer = io.BytesIO()
    axes = {name: {0: "batch"} for name in [INPUT_NAME, *names]}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
            if EXPORTER == "torchscript":
                torch.onnx.export(
                    module, (example,), buffer,  # type: ignore[arg-type]
                    input_names=[INPUT_NAME], output_names=names, dynamic_axes=axes,
                    opset_version=OPSET, dynamo=False,
                )  # fmt: skip
            else:  # pragma: no cover - only when torch lacks the TorchScript exporter
                program = torch.onnx.export(
                    module, (example,), input_names=[INPUT_NAME], output_names=names,
                    dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=OPSET,
                    dynamo=True, verbose=False,
                )  # fmt: skip
                assert program is not None
                buffer.write(program.model_proto.SerializeToString())
    except Exception as exc:  # the exporters raise many types; all mean "cannot export"
        message = str(exc).strip()
        op = _operation(message)
        first = message.splitlines()[0] if message else type(exc).__name__
        named = f"operation {op} has no ONNX export" if op else f"{type(exc).__name__}: {first}"
        raise ModelError(
            f"cannot export the model to ONNX: {named}; workers run the exported model, so "
            f"replace that operation (detail: {first[:300]})"
        ) from exc
    return buffer.getvalue()


def compile_model(ug: UnitGraph, name: str, weights_sha256: str) -> CompiledModel:
    """The whole model as one fp32 ONNX model whose metadata names its units (see
    :mod:`edgesplit.engines.onnx_units`): what the coordinator ships to every worker.

    Cached under ``<user cache>/exports`` by model, weights, input shape and exporter versions,
    so the same model gives the same bytes (and digest) run after run: a worker that holds them
    is sent nothing. Raises :class:`ModelError` naming the operation that cannot be exported."""
    import onnx

    from edgesplit.engines import onnx_units

    key = StageKey(name, weights_sha256, tuple(ug.input_shape), 0, ug.num_units)
    prep = getattr(ug, "prep", None)
    digest = key.digest("model", engine_version(), prep.to_json() if prep else "")
    path = cache_dir().parent / "exports" / f"{name}-{digest}.onnx"
    data = read_cached(path)
    if data is None:
        model = onnx.load_from_string(_export_whole(ug))
        n = ug.num_units
        produced = {out for node in model.graph.node for out in node.output}
        boundaries = tuple(f"u{i}" for i in range(n - 1))
        missing = [b for b in boundaries if b not in produced]
        if missing:
            raise ModelError(f"the exported graph lost unit boundaries {missing[:3]}")
        keep = [o for o in model.graph.output if o.name == OUTPUT_NAME]
        del model.graph.output[:]
        model.graph.output.extend(keep)
        units = onnx_units.ModelUnits(
            input_name=INPUT_NAME,
            output_name=OUTPUT_NAME,
            input_shape=tuple(ug.input_shape),
            boundaries=boundaries,
            out_shapes=tuple(tuple(u.out_shape) for u in ug.units),
            params=tuple(u.params for u in ug.units),
            macs=tuple(u.macs for u in ug.units),
        )
        onnx_units.write_units(model, units)
        if prep is not None:
            onnx_units.write_prep(model, prep)
        data = model.SerializeToString()
        write_cached(path, data)
    return onnx_units.CompiledModel.from_bytes(data)


def compile_int8(compiled: CompiledModel, calibration: torch.Tensor, kind: str) -> CompiledModel:
    """``compiled`` quantized to int8 (QDQ) as one model for CPU ``kind``, calibrated on the model
    inputs ``calibration``, with the same units: what the coordinator ships to the workers of
    that kind, which cut their int8 stages from it as they cut fp32 ones (issue #17). A re-plan
    to any unit range then costs a cut, never a quantization on the device.

    Cut at a unit boundary, the whole quantized model gives the same numbers as itself run
    whole: the boundary tensor is the float output of its producer, and its quantize/dequantize
    pair goes with the consumer's stage. Only the opsets its nodes use are kept, so an older
    ONNX Runtime on a worker loads it (the quantizer stamps ``ai.onnx.ml`` 5 and more, which
    onnxruntime 1.17 on aarch64 rejects). Cached under ``<user cache>/exports``."""
    import onnxruntime

    from edgesplit.engines import onnx_units, quantize

    settings = str(sorted(quantize.settings(kind).as_dict().items()))
    text = "|".join(
        [compiled.sha256, calibration_id(calibration), kind, settings, onnxruntime.__version__]
    )
    digest = hashlib.sha256(text.encode()).hexdigest()[:24]
    path = cache_dir().parent / "exports" / f"int8-{compiled.sha256[:16]}-{kind}-{digest}.onnx"
    data = read_cached(path)
    if data is None:
        images = calibration.detach().contiguous().numpy()
        quantized = quantize.quantize_stage(compiled.data, images, compiled.units.input_name, kind)
        model = onnx_units.parse_model(quantized)
        onnx_units.write_units(model, compiled.units)
        if compiled.units.prep is not None:
            onnx_units.write_prep(model, compiled.units.prep)
        keep_used_opsets(model)
        data = model.SerializeToString()  # type: ignore[attr-defined]
        write_cached(path, data)
    return CompiledModel.from_bytes(data)


def keep_used_opsets(model: object) -> None:
    """Drop ``model``'s opset imports that none of its nodes uses (the default domain stays)."""
    graph = model.graph  # type: ignore[attr-defined]
    used = {node.domain or "" for node in graph.node}
    imports = model.opset_import  # type: ignore[attr-defined]
    kept = [(o.domain, o.version) for o in imports if (o.domain or "") in used or not o.domain]
    del imports[:]
    for domain, version in kept:
        entry = imports.add()
        entry.domain, entry.version = domain, version
