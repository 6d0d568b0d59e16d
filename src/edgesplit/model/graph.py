"""Tracing a model with torch.fx, finding its cut points, grouping nodes into Units, and building
stage modules for unit ranges.

A *cut point* is a node after which exactly one value is live, and that value is a tensor: the
rest of the model needs nothing but that tensor, so the model can be split there and the tensor
sent to the next device. Inside a residual block the block's input stays live until the add, so
there is no cut inside it. ``get_attr`` nodes (constants and parameters read directly) are not
live values: every stage that needs one reads it from the shared root module.

A *Unit* is the run of nodes from one kept cut point (exclusive) to the next (inclusive). A cut
point is kept only when the unit it closes contains a weighted operation (a convolution or a
linear layer); otherwise that run is merged into the unit before it, so a unit is a natural
"layer" (conv, norm, activation) rather than a lone ReLU.

A stage is the half-open unit range ``[start, end)``. Stage modules are built from the one traced
graph and share its parameters, so running ``stage(0, a)``, ``stage(a, b)``, ``stage(b, n)`` one
after another is the very same sequence of operations as the whole model (bit-identical outputs
for the same thread count).

Traced with an :class:`~edgesplit.shared.imagespec.ImageSpec`, the graph starts with the
preprocessing of :mod:`edgesplit.model.preprocessing` (uint8 images in, issue #19): its nodes are
never cut points, so they open unit 0 and the units (and ``--partition`` ranges) mean the same
layers as without.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from edgesplit.errors import GraphError
from edgesplit.shared.imagespec import ImageSpec

log = logging.getLogger(__name__)

_WEIGHTED_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_WEIGHTED_FUNCTIONS = {
    torch.conv1d,
    torch.conv2d,
    torch.conv3d,
    torch.nn.functional.conv1d,
    torch.nn.functional.conv2d,
    torch.nn.functional.conv3d,
    torch.nn.functional.linear,
    torch.matmul,
    torch.mm,
    torch.bmm,
}


@dataclass(frozen=True)
class Unit:
    """One indivisible piece of the model between two kept cut points.

    ``out_shape`` and ``out_bytes`` are per sample (batch dimension removed); ``macs`` counts
    multiply-accumulates of convolutions and linear layers per sample.
    """

    index: int
    nodes: tuple[str, ...]
    params: int
    macs: int
    out_shape: tuple[int, ...]
    out_bytes: int

    @property
    def first(self) -> str:
        return self.nodes[0]

    @property
    def last(self) -> str:
        return self.nodes[-1]

    def to_dict(self) -> dict[str, object]:
        return {
            "index": self.index,
            "nodes": list(self.nodes),
            "params": self.params,
            "macs": self.macs,
            "out_shape": list(self.out_shape),
            "out_bytes": self.out_bytes,
        }


class UnitGraph:
    """A traced model cut into Units; builds stage modules for unit ranges."""

    def __init__(
        self,
        module: fx.GraphModule,
        units: list[Unit],
        unit_nodes: list[list[fx.Node]],
        input_shape: tuple[int, ...],
        prep: ImageSpec | None = None,
    ) -> None:
        self.module = module
        self.units = units
        self._unit_nodes = unit_nodes
        self.input_shape = input_shape
        """Per-sample shape of what stage 0 receives (uint8 images when ``prep`` is set)."""
        self.prep = prep
        self.input_dtype = torch.uint8 if prep is not None else torch.float32
        self.model_input_shape = prep.model_shape if prep is not None else input_shape
        """Per-sample shape of the model's own (float) input."""

    @property
    def num_units(self) -> int:
        return len(self.units)

    @property
    def total_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def stage(self, start: int, end: int) -> fx.GraphModule:
        """A module computing units ``[start, end)`` (half-open): input is the tensor live before
        unit ``start`` (the model input when ``start == 0``), output the tensor after ``end-1``."""
        if not 0 <= start < end <= self.num_units:
            raise GraphError(
                f"unit range [{start}, {end}) is not inside [0, {self.num_units}) "
                "or is empty; expected 0 <= start < end <= number of units"
            )
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        if start == 0:
            source = next(n for n in self.module.graph.nodes if n.op == "placeholder")
        else:
            source = self._unit_nodes[start - 1][-1]
        env[source] = graph.placeholder("x")

        def lookup(node: fx.Node) -> fx.Node:
            if node not in env:
                if node.op != "get_attr":
                    raise GraphError(
                        f"stage [{start}, {end}) needs {node.name} from outside its range; "
                        "this is a bug in cut-point detection"
                    )
                env[node] = graph.node_copy(node, lookup)
            return env[node]

        for nodes in self._unit_nodes[start:end]:
            for node in nodes:
                env[node] = graph.node_copy(node, lookup)
        graph.output(env[self._unit_nodes[end - 1][-1]])
        graph.lint()
        return fx.GraphModule(self.module, graph, class_name=f"Stage_{start}_{end}")

    def with_boundaries(self) -> fx.GraphModule:
        """The whole model returning ``(output, after unit 0, ..., after unit n-2)``: the
        coordinator exports this to ONNX so the unit boundaries get names on the ONNX graph."""
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for node in self.module.graph.nodes:
            if node.op == "output":
                continue
            env[node] = graph.node_copy(node, lambda n: env[n])
        ends = [env[nodes[-1]] for nodes in self._unit_nodes]
        graph.output((ends[-1], *ends[:-1]))
        graph.lint()
        return fx.GraphModule(self.module, graph, class_name="WithBoundaries")

    def params_in(self, start: int, end: int) -> int:
        return sum(u.params for u in self.units[start:end])

    def macs_in(self, start: int, end: int) -> int:
        return sum(u.macs for u in self.units[start:end])


def _failing_user_frame(exc: BaseException) -> str:
    """The innermost traceback frame outside torch: the model's own line that failed."""
    torch_dir = str(Path(torch.__file__).parent)
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(torch_dir)
    ]
    if not frames:
        return ""
    frame = frames[-1]
    return f" at {frame.filename}:{frame.lineno} `{(frame.line or '').strip()}`"


def symbolic_trace(model: nn.Module) -> fx.GraphModule:
    """torch.fx symbolic trace, with untraceable models turned into a clear GraphError."""
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # torch.fx raises TraceError, TypeError, RuntimeError, ...
        raise GraphError(
            f"cannot trace {type(model).__name__} with torch.fx: {type(exc).__name__}: "
            f"{exc}{_failing_user_frame(exc)}; edgesplit needs an fx-traceable model "
            "(no data-dependent Python control flow on tensors)"
        ) from exc


def _is_weighted(node: fx.Node, module: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return isinstance(module.get_submodule(str(node.target)), _WEIGHTED_MODULES)
    if node.op == "call_function":
        return node.target in _WEIGHTED_FUNCTIONS
    return False


def _node_macs(node: fx.Node, module: fx.GraphModule) -> int:
    """Multiply-accumulates of one node for one sample (conv and linear layers only)."""
    if node.op != "call_module":
        return 0
    sub = module.get_submodule(str(node.target))
    meta = node.meta.get("tensor_meta")
    if not isinstance(meta, TensorMetadata):
        return 0
    out_numel = 1
    for d in meta.shape[1:]:
        out_numel *= int(d)
    if isinstance(sub, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        kernel = 1
        for k in sub.kernel_size:
            kernel *= int(k)
        return out_numel * (sub.in_channels // sub.groups) * kernel
    if isinstance(sub, nn.Linear):
        return out_numel * sub.in_features
    return 0


def _node_params(node: fx.Node, module: fx.GraphModule, seen: set[int]) -> int:
    """Parameters first used by ``node`` (shared tensors are counted once, where first used)."""
    tensors: list[torch.Tensor] = []
    if node.op == "call_module":
        tensors = list(module.get_submodule(str(node.target)).parameters())
    elif node.op == "get_attr":
        value = module
        for part in str(node.target).split("."):
            value = getattr(value, part)
        if isinstance(value, nn.Parameter):
            tensors = [value]
    total = 0
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel()
    return total


def _cut_after(nodes: list[fx.Node]) -> list[bool]:
    """For each compute node, whether it is a cut point: the only live value after it, a tensor."""
    position = {n: i for i, n in enumerate(nodes)}
    last_use: dict[fx.Node, int] = {}
    for i, node in enumerate(nodes):
        for user in node.users:
            j = position.get(user, len(nodes))  # the output node counts as "after everything"
            last_use[node] = max(last_use.get(node, i), j)
    cuts = []
    live: set[fx.Node] = set()
    for i, node in enumerate(nodes):
        live.add(node)
        live = {n for n in live if last_use.get(n, i) > i}
        meta = node.meta.get("tensor_meta")
        cuts.append(live == {node} and isinstance(meta, TensorMetadata))
    return cuts


def with_preprocessing(module: fx.GraphModule, prep: ImageSpec) -> tuple[fx.GraphModule, int]:
    """``module`` with the operations of :class:`~edgesplit.model.preprocessing.Preprocess` in front
    (the model's node names unchanged), and how many compute nodes they add."""
    from edgesplit.model.preprocessing import Preprocess

    front = fx.symbolic_trace(Preprocess(prep))
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    prepared: fx.Node | None = None
    added = 0
    for node in front.graph.nodes:
        if node.op == "output":
            prepared = env[node.args[0]]
            continue
        env[node] = graph.node_copy(node, lambda n: env[n])
        if node.op == "get_attr":
            target = f"edgesplit_prep_{node.target}"
            env[node].target = target
            module.register_buffer(target, getattr(front, str(node.target)))
        elif node.op != "placeholder":
            added += 1
    assert prepared is not None
    for node in module.graph.nodes:
        if node.op == "placeholder":
            env[node] = prepared
            continue
        env[node] = graph.node_copy(node, lambda n: env[n])
    graph.lint()
    return fx.GraphModule(module, graph, class_name=type(module).__name__), added


def _groups(
    compute: list[fx.Node], cuts: list[bool], module: fx.GraphModule
) -> list[list[fx.Node]]:
    """The nodes of each unit: a run up to a cut point closes a unit when it holds a weighted
    node (or is the first), else it joins the unit before (see the module doc)."""
    groups: list[list[fx.Node]] = []
    current: list[fx.Node] = []
    current_weighted = False
    for node, is_cut in zip(compute, cuts, strict=True):
        current.append(node)
        current_weighted = current_weighted or _is_weighted(node, module)
        if is_cut and (current_weighted or not groups):
            groups.append(current)
            current, current_weighted = [], False
        elif is_cut and groups:
            groups[-1].extend(current)
            current, current_weighted = [], False
    # The last compute node feeds the output, so it is always a cut point and `current` is empty.
    assert not current, "the node feeding the output must be a cut point"
    return groups


def trace(
    model: nn.Module, input_shape: tuple[int, ...] = (3, 224, 224), prep: ImageSpec | None = None
) -> UnitGraph:
    """Trace ``model`` (switched to eval mode) for per-sample input shape ``input_shape`` and
    cut it into Units. With ``prep`` the graph takes uint8 images ``[N, *prep.in_shape]`` and
    starts with their preprocessing (``input_shape`` must be ``prep.model_shape``)."""
    model = model.eval()
    module = symbolic_trace(model)
    placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise GraphError(
            f"edgesplit splits models with exactly one input; {type(model).__name__} "
            f"takes {len(placeholders)}: {[n.name for n in placeholders]}"
        )
    front = 0
    if prep is not None:
        if tuple(input_shape) != prep.model_shape:
            raise GraphError(
                f"the preprocessing makes {list(prep.model_shape)}; the model is traced at "
                f"{list(input_shape)}"
            )
        module, front = with_preprocessing(module, prep)
    nodes = list(module.graph.nodes)
    outputs = [n for n in nodes if n.op == "output"]
    if prep is None:
        example = torch.zeros(1, *input_shape)
    else:
        example = torch.zeros(1, *prep.in_shape, dtype=torch.uint8)
    try:
        with torch.inference_mode():
            ShapeProp(module).propagate(example)
    except Exception as exc:
        raise GraphError(
            f"running {type(model).__name__} on an input of shape {list(example.shape)} "
            f"failed: {exc}"
        ) from exc
    result = outputs[0].args[0]
    if not isinstance(result, fx.Node) or not isinstance(
        result.meta.get("tensor_meta"), TensorMetadata
    ):
        raise GraphError(
            f"edgesplit splits models that return one tensor; {type(model).__name__} "
            f"returns {result!r}"
        )
    compute = [n for n in nodes if n.op not in ("placeholder", "output", "get_attr")]
    cuts = _cut_after(compute)
    cuts[:front] = [False] * front  # the preprocessing opens unit 0 (see the module doc)

    groups = _groups(compute, cuts, module)
    seen: set[int] = set()
    units = []
    for index, group in enumerate(groups):
        params = 0
        for node in group:
            for arg in node.all_input_nodes:
                if arg.op == "get_attr":
                    params += _node_params(arg, module, seen)
            params += _node_params(node, module, seen)
        meta = group[-1].meta["tensor_meta"]
        out_shape = tuple(int(d) for d in meta.shape[1:])
        numel = 1
        for d in out_shape:
            numel *= d
        units.append(
            Unit(
                index=index,
                nodes=tuple(n.name for n in group),
                params=params,
                macs=sum(_node_macs(n, module) for n in group),
                out_shape=out_shape,
                out_bytes=numel * torch.empty((), dtype=meta.dtype).element_size(),
            )
        )
    log.debug("traced %s: %d nodes, %d units", type(model).__name__, len(compute), len(units))
    shape = tuple(input_shape) if prep is None else tuple(prep.in_shape)
    return UnitGraph(module, units, groups, shape, prep)


def check_partition(
    ug: UnitGraph,
    model: torch.nn.Module | None,
    ranges: tuple[tuple[int, int], ...],
    batch: int,
) -> float:
    """Max absolute difference between the whole model and the chained stages on a random batch;
    raises GraphError unless the outputs are bit-identical. A ``.onnx`` model (``model`` None)
    runs in ONNX Runtime, whose fusions differ per stage: there the bound is 1e-4 relative."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *ug.input_shape, generator=generator)
    with torch.inference_mode():
        reference = model(x) if model is not None else ug.stage(0, ug.num_units)(x)
        y = x
        for start, end in ranges:
            y = ug.stage(start, end)(y)
    diff = (reference - y).abs().max().item()
    exact = torch.equal(reference, y)
    if model is None:
        exact = diff <= 1e-4 * max(1.0, reference.abs().max().item())
    if not exact:
        raise GraphError(f"chained stages differ from the whole model: max |diff| = {diff:.3g}")
    return diff
