"""Units on an ONNX graph: where a model can be cut, and the stage ``[start, end)`` cut out of it.

This module needs ``onnx`` and numpy, never torch: a worker cuts its stages here.

A compiled edgesplit model is one ONNX model (fp32, dynamic batch dimension) whose metadata
entry :data:`META_KEY` names its units: the model input, the tensor after each unit but the
last (the *boundaries*), the model output, and each unit's per-sample output shape, parameter
count and multiply-accumulates. Unit ``i`` (of ``n``) reads the tensor before it (the input for
``i == 0``, else boundary ``i - 1``) and writes the tensor after it (the output for
``i == n - 1``); a stage is the half-open range ``[start, end)``, the same ranges as
:mod:`edgesplit.model.graph`.

For a model exported by the coordinator the boundaries are the tensors of ``graph.py``'s unit
boundaries (named at export, see :mod:`edgesplit.export`). For a ``.onnx`` file they are found
on the graph itself (:func:`find_cuts`): a node after which exactly one non-constant tensor is
live, kept only when the unit it closes holds a weighted operation (``Conv``, ``Gemm``, ...),
like ``graph.py`` does on the fx graph.

Metadata from the network is checked before use (:func:`read_units`): names must exist on the
graph, counts must agree, and :func:`cut` refuses a range that needs a tensor from outside it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

from edgesplit.errors import ModelError
from edgesplit.shared.imagespec import META_KEY as PREP_KEY
from edgesplit.shared.imagespec import ImageSpec

META_KEY = "edgesplit.units"
MAX_UNITS = 10_000
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "QLinearConv", "ConvInteger"})


@dataclass(frozen=True)
class ModelUnits:
    """The units of a compiled model (see the module doc); shapes are per sample."""

    input_name: str
    output_name: str
    input_shape: tuple[int, ...]
    boundaries: tuple[str, ...]
    """Tensor after unit ``i`` for ``i`` in ``[0, n - 1)``."""
    out_shapes: tuple[tuple[int, ...], ...]
    params: tuple[int, ...]
    macs: tuple[int, ...]
    input_dtype: str = "float32"
    """What the model input is: "float32", or "uint8" images when ``prep`` is set (taken from
    the graph by :func:`read_units`, never from the metadata)."""
    prep: ImageSpec | None = None
    """The preprocessing stage 0 starts with (:mod:`edgesplit.shared.imagespec`), if any."""

    def __post_init__(self) -> None:
        n = len(self.out_shapes)
        if not 1 <= n <= MAX_UNITS:
            raise ModelError(f"a model needs 1 to {MAX_UNITS} units, got {n}")
        if len(self.boundaries) != n - 1 or len(self.params) != n or len(self.macs) != n:
            raise ModelError(
                f"unit metadata disagrees: {n} units need {n - 1} boundaries and {n} params "
                f"and macs, got {len(self.boundaries)}, {len(self.params)}, {len(self.macs)}"
            )

    @property
    def num_units(self) -> int:
        return len(self.out_shapes)

    def tensor_before(self, start: int) -> str:
        return self.input_name if start == 0 else self.boundaries[start - 1]

    def tensor_after(self, unit: int) -> str:
        return self.output_name if unit == self.num_units - 1 else self.boundaries[unit]

    def in_shape(self, start: int) -> tuple[int, ...]:
        """Per-sample shape of the tensor entering unit ``start``."""
        return self.input_shape if start == 0 else self.out_shapes[start - 1]

    def in_dtype(self, start: int) -> str:
        """numpy name of the dtype entering unit ``start`` (uint8 images or float32)."""
        return self.input_dtype if start == 0 else "float32"

    def check_range(self, start: int, end: int) -> None:
        if not 0 <= start < end <= self.num_units:
            raise ModelError(
                f"unit range [{start}, {end}) must satisfy 0 <= start < end <= {self.num_units}"
            )

    def to_json(self) -> str:
        return json.dumps(
            {
                "input": self.input_name,
                "output": self.output_name,
                "input_shape": list(self.input_shape),
                "boundaries": list(self.boundaries),
                "out_shapes": [list(s) for s in self.out_shapes],
                "params": list(self.params),
                "macs": list(self.macs),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> ModelUnits:
        """Parse :meth:`to_json` output; anything else is a :class:`ModelError` saying what."""
        try:
            raw = json.loads(text)
            units = cls(
                input_name=_name(raw["input"]),
                output_name=_name(raw["output"]),
                input_shape=_shape(raw["input_shape"]),
                boundaries=tuple(_name(b) for b in raw["boundaries"]),
                out_shapes=tuple(_shape(s) for s in raw["out_shapes"]),
                params=tuple(_count(p) for p in raw["params"]),
                macs=tuple(_count(m) for m in raw["macs"]),
            )
        except (KeyError, TypeError, ValueError, ModelError) as exc:
            raise ModelError(
                f"the model's {META_KEY} metadata is malformed: {type(exc).__name__}: {exc}"
            ) from None
        return units


def _name(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > 1000:
        raise ModelError(f"a tensor name must be a non-empty string, got {value!r:.80}")
    return value


def _shape(value: object) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > 8:
        raise ModelError(f"a per-sample shape must be a list of at most 8 sizes, got {value!r:.80}")
    if not all(isinstance(d, int) and 0 < d <= 1 << 24 for d in value):
        raise ModelError(f"shape sizes must be positive integers, got {value!r:.80}")
    return tuple(value)


def _count(value: object) -> int:
    if not isinstance(value, int) or value < 0:
        raise ModelError(f"a count must be a non-negative integer, got {value!r:.80}")
    return value


# --- reading and writing the metadata -------------------------------------------------------


def parse_model(data: bytes) -> object:
    """An ``onnx.ModelProto`` from bytes; malformed bytes are a :class:`ModelError`."""
    import onnx
    from google.protobuf.message import DecodeError

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as exc:
        raise ModelError(f"the model is not a valid ONNX protobuf: {exc}") from None
    if not model.graph.node:
        raise ModelError("the ONNX model has no nodes")
    return model


def read_units(model: object) -> ModelUnits:
    """The units named in ``model``'s metadata, checked against its graph."""
    entries = {p.key: p.value for p in model.metadata_props}  # type: ignore[attr-defined]
    if META_KEY not in entries:
        raise ModelError(f"the ONNX model has no {META_KEY} metadata; the coordinator adds it")
    units = ModelUnits.from_json(entries[META_KEY])
    graph = model.graph  # type: ignore[attr-defined]
    produced = {name for node in graph.node for name in node.output}
    inputs = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if inputs != [units.input_name]:
        raise ModelError(f"the model's inputs are {inputs}; its metadata names {units.input_name}")
    outputs = [o.name for o in graph.output]
    if outputs != [units.output_name]:
        raise ModelError(
            f"the model's outputs are {outputs}; its metadata names {units.output_name}"
        )
    missing = [b for b in units.boundaries if b not in produced]
    if missing:
        raise ModelError(f"unit boundaries {missing[:3]} are not tensors of the model's graph")
    _refuse_external_data(graph)
    return _with_input(units, graph, entries.get(PREP_KEY))


def _with_input(units: ModelUnits, graph: object, prep_json: str | None) -> ModelUnits:
    """``units`` with the input's dtype (from the graph) and preprocessing (from the metadata),
    which must agree: uint8 images exactly when there is a preprocessing of that shape."""
    uint8 = 2  # onnx.TensorProto.UINT8
    (value,) = [i for i in graph.input if i.name == units.input_name]  # type: ignore[attr-defined]
    dtype = "uint8" if value.type.tensor_type.elem_type == uint8 else "float32"
    prep = ImageSpec.from_json(prep_json) if prep_json is not None else None
    if (prep is not None) != (dtype == "uint8") or (
        prep is not None and prep.in_shape != units.input_shape
    ):
        shape = None if prep is None else list(prep.in_shape)
        raise ModelError(
            f"the model's input is {dtype} {list(units.input_shape)}; its {PREP_KEY} metadata "
            f"needs uint8 images of shape {shape} (and none without it)"
        )
    return replace(units, input_dtype=dtype, prep=prep)


def write_prep(model: object, prep: ImageSpec) -> None:
    """Set ``model``'s :data:`~edgesplit.shared.imagespec.META_KEY` metadata."""
    props = model.metadata_props  # type: ignore[attr-defined]
    kept = [(p.key, p.value) for p in props if p.key != PREP_KEY]
    del props[:]
    for key, value in [*kept, (PREP_KEY, prep.to_json())]:
        entry = props.add()
        entry.key, entry.value = key, value


def _refuse_external_data(graph: object) -> None:
    """A model from the network must carry its weights: external data names files on the
    worker's disk, which a stage must never read."""
    external = 1  # onnx.TensorProto.EXTERNAL
    tensors = list(graph.initializer)  # type: ignore[attr-defined]
    for node in graph.node:  # type: ignore[attr-defined]
        tensors.extend(a.t for a in node.attribute if a.HasField("t"))
    named = [t.name for t in tensors if t.data_location == external or t.external_data]
    if named:
        raise ModelError(
            f"the model keeps tensors {named[:3]} in external files; edgesplit ships models "
            "whole (save the ONNX file without external data)"
        )


def write_units(model: object, units: ModelUnits) -> None:
    """Set (or replace) ``model``'s :data:`META_KEY` metadata."""
    props = model.metadata_props  # type: ignore[attr-defined]
    kept = [(p.key, p.value) for p in props if p.key != META_KEY]
    del props[:]
    for key, value in [*kept, (META_KEY, units.to_json())]:
        entry = props.add()
        entry.key, entry.value = key, value


# --- cutting a stage ------------------------------------------------------------------------


def _subgraph_inputs(node: object) -> set[str]:
    """Names read inside the node's graph attributes (If, Loop, Scan): outer-scope values."""
    names: set[str] = set()
    for attr in node.attribute:  # type: ignore[attr-defined]
        graphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for g in graphs:
            for inner in g.node:
                names.update(i for i in inner.input if i)
                names |= _subgraph_inputs(inner)
    return names


def _needed_nodes(graph: object, source: str, target: str) -> list[int]:
    """Indices (in graph order) of the nodes computing ``target`` from ``source`` and
    constants; :class:`ModelError` when ``target`` needs another non-constant value."""
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.node):  # type: ignore[attr-defined]
        for name in node.output:
            producer[name] = i
    initializers = {t.name for t in graph.initializer}  # type: ignore[attr-defined]
    graph_inputs = {i.name for i in graph.input} - initializers  # type: ignore[attr-defined]
    needed: set[int] = set()
    stack = [target]
    seen = {source}
    while stack:
        name = stack.pop()
        if name in seen or not name or name in initializers:
            continue
        seen.add(name)
        if name in graph_inputs or name not in producer:
            raise ModelError(
                f"the range from {source} to {target} needs {name} from outside it; "
                "a stage must start where exactly one tensor is live"
            )
        index = producer[name]
        if index in needed:
            continue
        needed.add(index)
        node = graph.node[index]  # type: ignore[attr-defined]
        stack.extend(node.input)
        stack.extend(_subgraph_inputs(node))
    return sorted(needed)


def cut_between(
    model: object,
    source: str,
    target: str,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...] | None,
) -> bytes:
    """An ONNX model computing tensor ``target`` from tensor ``source`` (float32, or the model's
    own input type when ``source`` is the model input, with a leading dynamic batch dimension
    and the given per-sample shapes), as bytes."""
    import onnx
    from onnx import TensorProto, helper

    graph = model.graph  # type: ignore[attr-defined]
    indices = _needed_nodes(graph, source, target)
    nodes = [graph.node[i] for i in indices]
    used = {name for node in nodes for name in node.input} | {
        name for node in nodes for name in _subgraph_inputs(node)
    }
    initializers = [t for t in graph.initializer if t.name in used]
    stage = onnx.ModelProto()
    stage.ir_version = model.ir_version  # type: ignore[attr-defined]
    stage.opset_import.extend(model.opset_import)  # type: ignore[attr-defined]
    stage.functions.extend(model.functions)  # type: ignore[attr-defined]
    stage.producer_name = "edgesplit"
    g = stage.graph
    g.name = f"stage_{source}_{target}"
    g.node.extend(nodes)
    g.initializer.extend(initializers)
    in_dims: list[str | int | None] = ["batch", *in_shape]
    out_dims: list[str | int | None] | None = (
        ["batch", *out_shape] if out_shape is not None else None
    )
    in_type = next(
        (i.type.tensor_type.elem_type for i in graph.input if i.name == source), TensorProto.FLOAT
    )
    g.input.append(helper.make_tensor_value_info(source, in_type, in_dims))
    g.output.append(helper.make_tensor_value_info(target, TensorProto.FLOAT, out_dims))
    return stage.SerializeToString()


def cut(model: object, units: ModelUnits, start: int, end: int) -> bytes:
    """Units ``[start, end)`` (half-open) of ``model`` as a standalone ONNX model."""
    units.check_range(start, end)
    return cut_between(
        model,
        units.tensor_before(start),
        units.tensor_after(end - 1),
        units.in_shape(start),
        units.out_shapes[end - 1],
    )


# --- finding cut points on a plain ONNX graph -----------------------------------------------


def _constant_values(graph: object) -> set[str]:
    """Initializers and every value computed from constants alone (not live activations)."""
    const = {t.name for t in graph.initializer}  # type: ignore[attr-defined]
    for node in graph.node:  # type: ignore[attr-defined]
        inputs = [i for i in node.input if i] + sorted(_subgraph_inputs(node))
        if all(i in const for i in inputs):
            const.update(node.output)
    return const


def cut_candidates(graph: object) -> list[tuple[int, str]]:
    """(node index, tensor) for every node after which exactly one non-constant tensor is
    live; the graph must be in topological order (ONNX requires it)."""
    const = _constant_values(graph)
    nodes = list(graph.node)  # type: ignore[attr-defined]
    last_use: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for name in [*node.input, *_subgraph_inputs(node)]:
            if name and name not in const:
                last_use[name] = i
    for out in graph.output:  # type: ignore[attr-defined]
        last_use[out.name] = len(nodes)
    inputs = [i.name for i in graph.input if i.name not in const]  # type: ignore[attr-defined]
    live = set(inputs)
    found = []
    for i, node in enumerate(nodes):
        live.update(o for o in node.output if o and o not in const)
        live = {name for name in live if last_use.get(name, -1) > i}
        if len(live) == 1 and i + 1 < len(nodes):
            (name,) = live
            found.append((i, name))
    return found


def _group(graph: object, candidates: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The cuts that close units, by graph.py's rule: a run of nodes up to a cut point is a new
    unit when it holds a weighted operation (or is the first), else it joins the unit before."""
    nodes = list(graph.node)  # type: ignore[attr-defined]
    kept: list[tuple[int, str]] = []
    weighted = False
    position = 0
    for index, name in candidates:
        while position <= index:
            weighted = weighted or nodes[position].op_type in WEIGHTED_OPS
            position += 1
        if weighted or not kept:
            kept.append((index, name))
        else:
            kept[-1] = (index, name)
        weighted = False
    # The nodes after the last cut end the model; without a weighted op they join the unit
    # before (the model's output is then that unit's output).
    tail = any(n.op_type in WEIGHTED_OPS for n in nodes[position:])
    if kept and not tail:
        kept.pop()
    return kept


def _dims(value_info: object) -> list[int | str]:
    dims: list[int | str] = []
    for d in value_info.type.tensor_type.shape.dim:  # type: ignore[attr-defined]
        dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?"))
    return dims


def find_units(model: object, input_shape: tuple[int, ...] | None = None) -> ModelUnits:
    """Units of a plain ONNX model with one float input (dynamic batch) and one output, cut
    where exactly one tensor is live (see the module doc). Shapes come from ONNX shape
    inference at batch 1; ``input_shape`` overrides the input's per-sample shape."""
    graph = model.graph  # type: ignore[attr-defined]
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ModelError(
            f"edgesplit splits ONNX models with one input and one output; this one has "
            f"{len(inputs)} inputs and {len(graph.output)} outputs"
        )
    dims = _dims(inputs[0])
    if len(dims) < 2:
        raise ModelError(f"the ONNX input {inputs[0].name} needs a batch dimension, got {dims}")
    if isinstance(dims[0], int) and dims[0] > 0:
        raise ModelError(
            f"the ONNX input {inputs[0].name} has a fixed batch size {dims[0]}; export it with "
            "a dynamic batch dimension (torch.onnx.export(..., dynamic_axes={name: {0: 'batch'}}))"
        )
    if input_shape is None:
        if not all(isinstance(d, int) and d > 0 for d in dims[1:]):
            raise ModelError(
                f"the ONNX input {inputs[0].name} has shape {dims}; give the per-sample shape"
            )
        input_shape = tuple(int(d) for d in dims[1:])
    shapes = _infer_shapes(model, inputs[0].name, input_shape)
    candidates = [(i, n) for i, n in _float_cuts(graph, cut_candidates(graph), shapes)]
    kept = _group(graph, candidates)
    boundaries = tuple(name for _, name in kept)
    output = graph.output[0].name
    if output not in shapes:
        raise ModelError(f"ONNX shape inference could not find the shape of output {output}")
    ends = [index for index, _ in kept] + [len(graph.node) - 1]
    out_shapes = tuple(shapes[name] for name in (*boundaries, output))
    params, macs = _costs(graph, ends, shapes)
    return ModelUnits(
        input_name=inputs[0].name,
        output_name=output,
        input_shape=input_shape,
        boundaries=boundaries,
        out_shapes=out_shapes,
        params=tuple(params),
        macs=tuple(macs),
    )


def _infer_shapes(
    model: object, input_name: str, input_shape: tuple[int, ...]
) -> dict[str, tuple[int, ...]]:
    """Per-sample shapes of every float tensor whose shape inference finds at batch 1."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # type: ignore[arg-type]
    for value in copy.graph.input:
        if value.name == input_name:
            shape = value.type.tensor_type.shape
            del shape.dim[:]
            for d in (1, *input_shape):
                shape.dim.add().dim_value = d
    try:
        inferred = onnx.shape_inference.infer_shapes(copy, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError and others
        raise ModelError(f"ONNX shape inference failed on the model: {exc}") from None
    out: dict[str, tuple[int, ...]] = {input_name: tuple(input_shape)}
    g = inferred.graph
    for value in [*g.value_info, *g.output]:
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            continue
        dims = _dims(value)
        if dims and all(isinstance(d, int) and d > 0 for d in dims) and dims[0] == 1:
            out[value.name] = tuple(int(d) for d in dims[1:])
    return out


def _float_cuts(graph: object, candidates: list[tuple[int, str]],
                shapes: dict[str, tuple[int, ...]]) -> list[tuple[int, str]]:  # fmt: skip
    """Candidates whose tensor is a float with a known shape (what a stage can send)."""
    return [(i, name) for i, name in candidates if name in shapes]


def _costs(graph: object, ends: list[int],
           shapes: dict[str, tuple[int, ...]]) -> tuple[list[int], list[int]]:  # fmt: skip
    """Per unit: parameters first used in it, and multiply-accumulates of its convolutions
    and matrix products per sample."""
    sizes = {t.name: math.prod(t.dims) for t in graph.initializer}  # type: ignore[attr-defined]
    dims = {t.name: tuple(t.dims) for t in graph.initializer}  # type: ignore[attr-defined]
    seen: set[str] = set()
    params: list[int] = []
    macs: list[int] = []
    begin = 0
    nodes = list(graph.node)  # type: ignore[attr-defined]
    for end in ends:
        p = m = 0
        for node in nodes[begin : end + 1]:
            for name in node.input:
                if name in sizes and name not in seen:
                    seen.add(name)
                    p += sizes[name]
            out = shapes.get(node.output[0]) if node.output else None
            if out is None or len(node.input) < 2:
                continue
            weight = dims.get(node.input[1])
            if node.op_type in ("Conv", "ConvTranspose") and weight and len(weight) >= 2:
                m += math.prod(out) * weight[1] * math.prod(weight[2:])
            elif node.op_type in ("Gemm", "MatMul") and weight:
                trans_b = any(a.name == "transB" and a.i for a in node.attribute)
                m += math.prod(out) * weight[-1 if trans_b else -2 if len(weight) > 1 else 0]
        params.append(p)
        macs.append(m)
        begin = end + 1
    return params, macs


@dataclass(frozen=True)
class CompiledModel:
    """A model as shipped to workers: its ONNX bytes, their sha256 and its units."""

    data: bytes
    sha256: str
    units: ModelUnits

    @property
    def num_units(self) -> int:
        return self.units.num_units

    @classmethod
    def from_bytes(cls, data: bytes) -> CompiledModel:
        """Parse and check ``data`` (an ONNX model with :data:`META_KEY` metadata)."""
        import hashlib

        units = read_units(parse_model(data))
        return cls(data, hashlib.sha256(data).hexdigest(), units)
