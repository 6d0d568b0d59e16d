"""Check that src/edgesplit imports flow one way (issue #16).

Usage: ``python scripts/check_layering.py [PACKAGE_DIR]`` (default ``src/edgesplit``). Exit 0 when
clean, 1 with every finding printed, one per paragraph.

What counts as an import: every ``import`` / ``from ... import`` in a module's AST, at module
level, inside functions (lazy imports) and under ``if TYPE_CHECKING:`` alike: a lazy import is
still a dependency, it only moves the failure to run time. ``from pkg import name`` is an edge to
``pkg.name`` when that is a module of the tree, else to ``pkg``.

Checks:

1. **No module-level cycle**: the strongly connected components of the module graph must all be
   single modules (an allow-listed component, below, is reported but does not fail).
2. **No back edge between packages**: every top-level part of the package (a sub-package such as
   ``runtime`` or a loose module such as ``job``) has a layer in :data:`LAYERS`; a module may
   import its own part and parts of *lower* layers only. Parts in the same layer may not import
   each other. A part missing from :data:`LAYERS` is itself a finding, so a new folder must be
   placed in the order on purpose.
3. **A light bottom**: ``shared/`` and ``errors.py`` import none of :data:`HEAVY` at run time
   (``TYPE_CHECKING`` imports are fine here: they never run), so every layer can use them,
   a torch-free worker included.
4. **One exception tree**: every exception class is defined in ``errors.py``; nothing raises the
   base class ``EdgesplitError`` itself, and library code raises no bare ``ValueError`` (pydantic
   validators excepted: pydantic turns their ``ValueError`` into a ``ValidationError``).
5. **Short functions**: no function or method longer than :data:`MAX_FUNCTION_LINES` lines
   (generated ``*_pb2*`` modules excepted): a longer one is a phase or a helper waiting to be
   named (issue #16).

The layer order (:data:`LAYERS`), lowest first. Data flows model -> plan -> runtime -> metrics
with adapt feeding plans back; *imports* follow who drives whom: the profiler measures through
the runtime, so ``plan`` sits above ``runtime``; the summaries and the run folder read every
record, plan and setting of a run, so ``metrics`` sits above them; the runtime itself only
samples devices and emits live events, which live in ``runtime``.
"""

from __future__ import annotations

import ast
import builtins
import itertools
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "_version"),  # the exception tree and the version string: import nothing
    ("shared",),  # plain names, types (RunSummary) and defaults: no torch, no grpc
    ("config",),  # the cluster file (pydantic + yaml)
    ("model",),  # fx graph, partitions, zoo, checkpoints, datasets, training
    ("engines",),  # stage executors (onnxruntime, torch), ONNX export and quantization
    ("runtime",),  # coordinator, workers, wire format, health, sampling, the live feed
    ("cluster",),  # emulated devices, faults, certificates, doctor
    ("plan",),  # profile (schema, measurement, calibration, power fits), planner, precision
    ("adapt",),  # pure state and policy, the controller
    ("simulate",),  # the discrete-event simulator of plans and adaptation
    ("runconfig",),  # one run's settings
    ("metrics",),  # summaries, run folder, manifest, reports, Prometheus, dashboard
    ("app",),  # the run and profile jobs as phases, stage choice, execution settings, pilot
    ("serve",),  # the HTTP serving session
    ("_results",),  # the Python API's run result
    ("_data",),  # the Python API's plan, profile, split and simulation objects
    ("_api",),  # the Python API's functions
    ("__init__",),  # the package facade (edgesplit.run, ...)
    ("cli",),  # one module per command
    ("__main__",),  # python -m edgesplit
)
"""Lowest first. A part may import its own part and the parts of earlier layers only."""

ALLOWED_CYCLES: tuple[frozenset[str], ...] = ()
"""Module cycles reported but tolerated. Each entry must match a cycle's modules exactly."""

LIGHT_PARTS = ("errors", "_version", "shared")
HEAVY = frozenset({"torch", "torchvision", "grpc", "onnx", "onnxruntime", "numpy"})
"""Libraries the light parts may not import at run time."""
VALIDATOR_DECORATORS = frozenset({"field_validator", "model_validator", "validator"})
BUILTIN_EXCEPTIONS = frozenset(
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
)


@dataclass(frozen=True)
class Import:
    """One import statement's edge: ``source`` imports ``target`` at ``line``."""

    source: str
    target: str
    line: int
    kind: str  # "module", "lazy" (inside a function) or "type-checking"


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module


def load(package_dir: Path) -> dict[str, Module]:
    """Every ``.py`` file under ``package_dir`` by dotted module name (packages by ``__init__``)."""
    root = package_dir.name
    modules: dict[str, Module] = {}
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir).with_suffix("")
        parts = [root, *rel.parts]
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        modules[name] = Module(name, path, ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, kind: str) -> Iterator[tuple[ast.AST, str]]:
    """Every node under ``node`` with the kind of import it would be."""
    for child in ast.iter_child_nodes(node):
        child_kind = kind
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            child_kind = "lazy" if kind == "module" else kind
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            yield child.test, kind
            for sub in child.body:
                yield sub, "type-checking"
                yield from _walk(sub, "type-checking")
            for sub in child.orelse:
                yield sub, kind
                yield from _walk(sub, kind)
            continue
        yield child, child_kind
        yield from _walk(child, child_kind)


def _resolve(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.name.split(".")
    is_package = module.path.name == "__init__.py"
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports(modules: dict[str, Module]) -> list[Import]:
    """Every import edge between modules of the tree (outside imports are ignored)."""
    edges: list[Import] = []
    for module in modules.values():
        for node, kind in _walk(module.tree, "module"):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, node)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in modules else base)
            for target in targets:
                while target and target not in modules:  # `import a.b.c` where c is a name
                    target = target.rpartition(".")[0]
                if target and target != module.name:
                    edges.append(Import(module.name, target, node.lineno, kind))
    return list(dict.fromkeys(edges))  # `from a import b, c` is one edge


def strongly_connected(nodes: Iterable[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted, larger than one node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(nodes):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _one_cycle(component: Sequence[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first)."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for child in sorted(edges.get(node, ()) & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return [start]


def _describe(edge: Import) -> str:
    lazy = "" if edge.kind == "module" else f", {edge.kind}"
    return f"{edge.source} -> {edge.target} (line {edge.line}{lazy})"


def check_cycles(modules: dict[str, Module], edges: list[Import]) -> tuple[list[str], list[str]]:
    """(findings, notes): one finding per module cycle, a note per allow-listed one."""
    graph: dict[str, set[str]] = {}
    first: dict[tuple[str, str], Import] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
        first.setdefault((edge.source, edge.target), edge)
    findings: list[str] = []
    notes: list[str] = []
    for component in strongly_connected(modules, graph):
        cycle = _one_cycle(component, graph)
        steps = "\n".join(f"    {_describe(first[pair])}" for pair in itertools.pairwise(cycle))
        text = f"import cycle among {len(component)} modules: {', '.join(component)}\n{steps}"
        if frozenset(component) in ALLOWED_CYCLES:
            notes.append(f"allowed (see ALLOWED_CYCLES) {text}")
        else:
            findings.append(text)
    return findings, notes


def part_of(name: str) -> str:
    """The top-level part a module belongs to: ``edgesplit.runtime.worker`` -> ``runtime``."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def check_layers(
    modules: dict[str, Module], edges: list[Import], layers: Sequence[Sequence[str]] = LAYERS
) -> list[str]:
    """One finding per package-level back edge (or import between peers of one layer)."""
    rank = {part: i for i, layer in enumerate(layers) for part in layer}
    findings = [
        f"{part!r} has no layer: add it to LAYERS in scripts/check_layering.py"
        for part in sorted({part_of(name) for name in modules} - set(rank))
    ]
    for edge in edges:
        source, target = part_of(edge.source), part_of(edge.target)
        if source == target or source not in rank or target not in rank:
            continue
        if rank[target] > rank[source]:
            findings.append(
                f"back edge {source} -> {target}: layer {rank[source]} imports layer "
                f"{rank[target]}\n    {_describe(edge)}"
            )
        elif rank[target] == rank[source]:
            findings.append(
                f"peers of layer {rank[source]} import each other\n    {_describe(edge)}"
            )
    return findings


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is under it."""
    try:
        return path.resolve().relative_to(Path.cwd()).as_posix()
    except ValueError:
        return path.as_posix()


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _validator(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(_name(decorator) in VALIDATOR_DECORATORS for decorator in function.decorator_list)


def check_exceptions(modules: dict[str, Module]) -> list[str]:
    """Exception classes outside errors.py, raises of the base class, bare ValueErrors."""
    root = next(iter(modules)).split(".")[0]
    errors = modules.get(f"{root}.errors")
    ours = (
        {n.name for n in ast.walk(errors.tree) if isinstance(n, ast.ClassDef)} if errors else set()
    )
    exception_names = BUILTIN_EXCEPTIONS | ours
    findings: list[str] = []
    for module in modules.values():
        where = _shown(module.path)
        for node in ast.walk(module.tree):
            if isinstance(node, ast.ClassDef) and module is not errors:
                bases = {_name(base) for base in node.bases}
                if bases & exception_names or any(
                    b.endswith(("Error", "Exception")) for b in bases
                ):
                    findings.append(
                        f"exception class {node.name} defined outside errors.py\n"
                        f"    {where}:{node.lineno}"
                    )
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            in_validator = _validator(node)
            for inner in ast.walk(node):
                if not isinstance(inner, ast.Raise) or inner.exc is None:
                    continue
                raised = _name(inner.exc)
                if raised == "EdgesplitError":
                    findings.append(
                        f"raise of the base class EdgesplitError (use a precise subclass)\n"
                        f"    {where}:{inner.lineno}"
                    )
                elif raised == "ValueError" and not in_validator:
                    findings.append(
                        f"bare ValueError from library code (use an errors.py class)\n"
                        f"    {where}:{inner.lineno}"
                    )
    return sorted(set(findings))


def check_light(modules: dict[str, Module]) -> list[str]:
    """Run-time imports of heavy libraries from the light parts (errors, shared)."""
    findings = []
    for module in modules.values():
        if part_of(module.name) not in LIGHT_PARTS:
            continue
        for node, kind in _walk(module.tree, "module"):
            if kind == "type-checking":
                continue
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in HEAVY:
                    findings.append(
                        f"{part_of(module.name)} must stay light, but imports {name}\n"
                        f"    {_shown(module.path)}:{node.lineno}"
                    )
    return findings


MAX_FUNCTION_LINES = 80


def check_lengths(modules: dict[str, Module]) -> list[str]:
    """Functions longer than :data:`MAX_FUNCTION_LINES` (decorators and docstring included)."""
    findings = []
    for module in modules.values():
        if module.path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        for node in ast.walk(module.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                end = node.end_lineno or node.lineno
                lines = end - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    findings.append(
                        f"{node.name} is {lines} lines; at most {MAX_FUNCTION_LINES}\n"
                        f"    {_shown(module.path)}:{node.lineno}"
                    )
    return findings


def check(package_dir: Path) -> tuple[list[str], list[str]]:
    """(findings, notes) for the package at ``package_dir``."""
    modules = load(package_dir)
    edges = imports(modules)
    cycles, notes = check_cycles(modules, edges)
    layers = check_layers(modules, edges)
    found = [*cycles, *layers, *check_light(modules), *check_exceptions(modules)]
    return [*found, *check_lengths(modules)], notes


def main(argv: Sequence[str]) -> int:
    default = Path(__file__).resolve().parent.parent / "src" / "edgesplit"
    package_dir = Path(argv[0]) if argv else default
    if not (package_dir / "__init__.py").is_file():
        print(f"check_layering: expected a package directory with __init__.py, got {package_dir}")
        return 2
    findings, notes = check(package_dir)
    for note in notes:
        print(f"note: {note}\n")
    for finding in findings:
        print(f"{finding}\n")
    verdict = f"{len(findings)} finding(s)" if findings else "clean"
    print(f"check_layering: {package_dir}: {verdict}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
