"""One inference job from start to run folder: model and weights, dataset, partition, cluster
(given, or emulated for the job), coordinator run, and the reductions written to disk.

This is the library behind ``edgesplit run``; the CLI only builds a :class:`RunConfig`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import torch
from torch import nn

from edgesplit.adapt.controller import Controller
from edgesplit.app.execution import choose_precision, execution_for, int8_gate
from edgesplit.app.staging import Costs, choose_ranges, replanner, stage_infos, unit_costs
from edgesplit.cluster.faults import Injection, Injector, parse_injections
from edgesplit.config import ClusterSpec, LinkSpec
from edgesplit.errors import ConfigError, ModelError, RunError
from edgesplit.metrics import manifest, resultlog, runfolder
from edgesplit.metrics.summary import RunFacts, run_events, summarise
from edgesplit.model import checkpoints, data, graph, models
from edgesplit.plan import autoplan, planner
from edgesplit.plan import precision as precision_auto
from edgesplit.plan.profile import Profile, ProfileSettings
from edgesplit.runconfig import RunConfig
from edgesplit.runtime.live import LiveCallback, LiveSnapshot
from edgesplit.shared.imagespec import ImageSpec
from edgesplit.shared.plan import Ranges, Stage, format_partition
from edgesplit.shared.runsummary import DeviceRow, RunSummary

if TYPE_CHECKING:
    from edgesplit.cluster.emulate import EmulatedCluster
    from edgesplit.engines import Execution
    from edgesplit.engines.onnx_units import CompiledModel
    from edgesplit.errors import RunAborted
    from edgesplit.runtime.coordinator import Coordinator
    from edgesplit.runtime.health import HealthPolicy
    from edgesplit.runtime.records import RunRecord
    from edgesplit.runtime.runner import Replan

log = logging.getLogger(__name__)

__all__ = ["RunConfig", "RunOutcome", "profile_job", "run_job"]


@dataclass
class ResolvedModel:
    model: nn.Module | None
    """None for a ``.onnx`` model (``compiled`` holds it)."""
    name: str
    input_size: int
    num_classes: int
    weights: str
    """Where the weights came from, for the record: a checkpoint path or "random"."""
    checkpoint_accuracy: float | None = None
    compiled: CompiledModel | None = None
    prep: ImageSpec | None = None
    """The preprocessing stage 0 starts with (the first hop carries uint8 images); None for a
    ``.onnx`` model, which takes the preprocessed floats."""

    def weights_sha256(self) -> str:
        """What identifies the weights: the state dict's digest, or the ONNX model's."""
        if self.compiled is not None:
            return self.compiled.sha256
        assert self.model is not None
        return models.state_dict_sha256(self.model)

    def unit_graph(self) -> graph.UnitGraph:
        """The model's units: traced with torch.fx, or found on the ONNX graph."""
        if self.compiled is not None:
            from edgesplit.engines.onnx_graph import OnnxUnitGraph

            return OnnxUnitGraph(self.compiled)  # type: ignore[return-value]
        assert self.model is not None
        return graph.trace(self.model, (3, self.input_size, self.input_size), self.prep)

    @property
    def raw_images(self) -> bool:
        """Whether the run feeds the dataset's uint8 images (stage 0 preprocesses them)."""
        return self.prep is not None


@dataclass
class RunOutcome:
    folder: Path
    summary: RunSummary
    rows: list[DeviceRow]
    notes: list[str] = field(default_factory=list)
    layer_counts: dict[str, int] = field(default_factory=dict)
    """Graph nodes (layers) of each device's stage in the final plan."""


def resolve_model(config: RunConfig, dataset: data.ImageSet) -> ResolvedModel:
    classes = dataset.info.classes
    if models.is_onnx_model(config.model):
        return onnx_model(config.model, config.input_size, classes)
    path = config.checkpoint
    if path is None and not config.random_weights and dataset.labels is not None:
        with contextlib.suppress(ModelError):
            path = checkpoints.shipped(config.model, dataset.name)
    if path is not None:
        model, info = checkpoints.load(path, model_name=config.model, num_classes=classes)
        if info.dataset != dataset.name:
            raise ModelError(
                f"checkpoint {path} was trained on {info.dataset}, the run uses {dataset.name}"
            )
        size = checked_input_size(config.input_size, info.input_size, path)
        prep = data.native_spec(dataset.info, size)
        return ResolvedModel(
            model, config.model, size, classes, str(path), info.test_accuracy, prep=prep
        )
    torch.manual_seed(config.seed)
    model = models.build(config.model, num_classes=classes)
    size = config.input_size or 224
    prep = data.native_spec(dataset.info, size)
    return ResolvedModel(model, config.model, size, classes, "random", prep=prep)


def partition_devices(partition: str | None, spec: ClusterSpec, stages: int) -> list[str]:
    """The devices of a fixed partition's stages: those it names (``pi2:0-12,pi1:12-``), else
    the cluster's first ``stages`` devices in cluster order."""
    from edgesplit.shared.plan import split_devices

    _, named = split_devices(partition or "")
    if named is None:
        return [d.name for d in spec.devices[:stages]]
    known = [d.name for d in spec.devices]
    unknown = [d for d in named if d not in known]
    if unknown:
        raise ConfigError(
            f"--partition {partition!r} names {', '.join(unknown)}; the cluster's devices are "
            f"{', '.join(known)}"
        )
    return named


def checked_input_size(asked: int | None, trained: int, path: Path | str) -> int:
    """The checkpoint's input size; another one asked for is refused (issue #20): a model run
    at a size it was not trained at classifies at chance, and nothing else would say so."""
    if asked is None or asked == trained:
        return trained
    raise ConfigError(
        f"--input-size {asked}: the checkpoint {path} was trained at {trained} px, and at "
        f"another size it classifies at chance; leave --input-size out (or pass {trained}), or "
        f"pass --random-weights to measure speed at {asked} px"
    )


def onnx_model(path: str, input_size: int | None, classes: int) -> ResolvedModel:
    """A ``.onnx`` file as the run's model (its weights are in the file)."""
    from edgesplit.engines.onnx_graph import compile_file

    compiled = compile_file(Path(path))
    shape = compiled.units.input_shape
    if len(shape) != 3 or shape[0] != 3 or shape[1] != shape[2]:
        raise ModelError(f"{path} takes inputs of shape {list(shape)}; expected [3, S, S]")
    if input_size is not None and input_size != shape[-1]:
        raise ConfigError(f"--input-size {input_size}: {path} takes {shape[-1]}x{shape[-1]}")
    return ResolvedModel(None, path, shape[-1], classes, path, compiled=compiled)


@contextlib.contextmanager
def cluster_for(
    config: RunConfig, cluster: ClusterSpec | None
) -> Iterator[tuple[ClusterSpec, EmulatedCluster | None]]:
    """The given cluster, or an emulated one that lives for the ``with`` block (namespaced
    hosts or loopback, see :func:`emulation_mode`). ``config.result_port`` overrides the
    cluster's."""
    if cluster is not None:
        yield with_result_port(cluster, config.result_port), None
        return
    from edgesplit.cluster.emulate import EmulatedCluster, EmulatedDevice, uniform_devices

    link = LinkSpec(bandwidth_mbps=config.bandwidth_mbps, latency_ms=config.latency_ms)
    devices = uniform_devices(config.devices, cpus=config.cpus)
    if config.cpus_each:
        devices = [
            EmulatedDevice(f"pi{i}", cpus) for i, cpus in enumerate(config.cpus_each, start=1)
        ]
    hosts, _ = emulation_mode(config.network)
    with EmulatedCluster.start(devices, default_link=link, hosts=hosts) as emulated:
        yield with_result_port(emulated.spec, config.result_port), emulated


def with_result_port(cluster: ClusterSpec, port: int | None) -> ClusterSpec:
    return cluster if port is None else cluster.model_copy(update={"result_port": port})


def emulation_mode(network: str) -> tuple[bool, str]:
    """Whether an emulated cluster runs as namespaced hosts, and a note that says which mode
    it is and why. ``network``: ``hosts`` (ConfigError when this machine cannot), ``loopback``,
    or ``auto`` (hosts when root with iproute2, else loopback)."""
    from edgesplit.cluster.emulate_hosts import check_available, unavailable_reason

    if network not in ("auto", "hosts", "loopback"):
        raise ConfigError(f"network must be auto, hosts or loopback, got {network!r}")
    hosts_note = (
        "emulated hosts: each device in its own network namespace with its own address, "
        "bandwidth shaped by the kernel (tc htb), latency added in the send path"
    )
    if network == "hosts":
        check_available("--network hosts")
        return True, hosts_note
    if network == "loopback":
        return False, "emulated on loopback (--network loopback): links shaped in the send path"
    reason = unavailable_reason()
    if reason is None:
        return True, hosts_note
    return False, f"emulated on loopback, links shaped in the send path ({reason})"


def injections_for(config: RunConfig, cluster: ClusterSpec | None) -> list[Injection]:
    """The run's fault injections, checked before anything starts."""
    if not config.inject:
        return []
    if cluster is not None:
        raise ConfigError(
            "--inject needs an emulated cluster (run without --cluster, with --devices N); "
            "real devices cannot be killed or paused from here"
        )
    from edgesplit.cluster.emulate import uniform_devices

    count = len(config.cpus_each) if config.cpus_each else config.devices
    return parse_injections(config.inject, [d.name for d in uniform_devices(count)])


P = ParamSpec("P")
T = TypeVar("T")


def one_torch_thread(fn: Callable[P, T]) -> Callable[P, T]:
    """Run ``fn`` with one torch thread in this process, then restore the count.

    The coordinator's own torch work (preprocessing, argmax) is small, and on a host whose cores
    the workers keep busy a second OpenMP thread makes it ~10x slower (measured here: 16.4 vs
    1.6 ms per batch of 16 Fashion-MNIST images at 32 px), which starves the pipeline."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    return wrapper


@dataclass(frozen=True)
class Prepared:
    """What the run needs before any device is touched (phase 1, :func:`prepare`); every
    check that can fail without the cluster has failed by then."""

    config: RunConfig
    dataset: data.ImageSet
    resolved: ResolvedModel
    ug: graph.UnitGraph
    total: int
    """Images the run covers (earlier ones of a resumed run included)."""
    request: autoplan.PlanRequest
    auto: bool
    """The planner chooses the plan (``--partition auto``, the default)."""
    folder: Path
    earlier: list[resultlog.LoggedResult]
    """What the interrupted run being resumed logged (empty otherwise)."""
    injections: list[Injection]
    costs: Costs | None
    """Unit costs measured here, for a fixed partition and its re-plans."""
    ranges: Ranges | None
    """A fixed partition's unit ranges; None when the planner chooses them."""
    execution: Execution
    notes: list[str]
    resume: bool


@dataclass(frozen=True)
class Connected:
    """The cluster with the model loaded on every device (:func:`bootstrap`)."""

    spec: ClusterSpec
    emulated: EmulatedCluster | None
    coordinator: Coordinator


@dataclass(frozen=True)
class Chosen:
    """The plan the run starts with, and how it was chosen (phase 2, :func:`choose_plan`)."""

    initial: list[Stage]
    execution: Execution
    request: autoplan.PlanRequest
    profile: Profile | None
    plan: planner.Plan | None
    """The planner's plan (``auto``), or a given partition evaluated with the same cost model;
    None when the devices could not be profiled."""
    choice: precision_auto.PrecisionChoice | None
    gate: precision_auto.ClusterGate | None
    given: Profile | None = None
    """A given partition's profile: only for its prediction (re-plans use the unit costs)."""
    measured: Profile | None = None
    """The profile with the pilot's per-call and coordinator costs (:func:`measure_overheads`),
    for the prediction and the run folder's profile.json."""

    @property
    def ranges(self) -> Ranges:
        return tuple((a, b) for _, a, b in self.initial)


@dataclass(frozen=True)
class Ran:
    """What phase 3 (:func:`execute`) did."""

    record: RunRecord
    aborted: RunAborted | None
    starts: list[int]
    """Request id -> the index of its micro-batch's first image."""
    window: int
    epoch: int
    injector: Injector | None
    controller: Controller | None
    coordinator_cpu_s: float
    """The coordinator's CPU over the run (the summary's ``cpu``)."""


@dataclass(frozen=True)
class Hooks:
    """The caller's callbacks (see :func:`run_job`)."""

    on_progress: Callable[[int, int, float], None] | None = None
    on_live: LiveCallback | None = None
    command: list[str] | None = None


@one_torch_thread
def run_job(
    config: RunConfig,
    cluster: ClusterSpec | None = None,
    on_progress: Callable[[int, int, float], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    on_live: LiveCallback | None = None,
    resume: bool = False,
    command: list[str] | None = None,
) -> RunOutcome:
    """Run ``config`` on ``cluster`` (or on an emulated cluster) and write the run folder.

    ``on_progress(images_done, images_total, elapsed_s)`` is called after each result;
    ``on_phase(text)`` when the job moves on (starting the cluster, loading, running);
    ``on_live(snapshot)`` while it runs (see :class:`edgesplit.runtime.live.LiveFeed`).

    The folder gets ``manifest.json`` before the first image runs and every result in
    ``results.jsonl`` as it arrives (:mod:`edgesplit.metrics.resultlog`); Ctrl-C or SIGTERM
    write the folder for what finished (``"complete": false``) and then stop the process.
    ``resume``: ``config.out`` holds an interrupted run of the same configuration; only the
    images its log lacks run, and the folder is completed. ``command`` is the command line
    for the manifest (default ``sys.argv``).

    The phases: :func:`prepare` -> (:func:`bootstrap`) -> :func:`choose_plan` ->
    :func:`install` -> :func:`measure_overheads` -> :func:`execute` -> :func:`summarise_run`
    -> :func:`write_run`."""
    from edgesplit.runtime.health import HealthPolicy

    phase = on_phase or (lambda text: log.info("%s", text))
    prep = prepare(config, cluster, resume, phase)
    with contextlib.ExitStack() as stack:
        policy = HealthPolicy(config.heartbeat_deadline_s, config.probation_s)
        connected = bootstrap(config, cluster, prep.resolved, prep.ug, stack, phase, policy)
        if connected.emulated is not None:
            prep.notes.append(emulation_mode(config.network)[1])
        chosen = choose_plan(prep, connected, phase)
        epoch = install(prep, connected, chosen, phase)
        chosen = measure_overheads(prep, connected, chosen, phase)
        hooks = Hooks(on_progress, on_live, command)
        ran = execute(prep, connected, chosen, stack, hooks, phase, epoch)
    summary, predictions, layer_counts = summarise_run(prep, connected, chosen, ran)
    return write_run(prep, connected, chosen, ran, summary, predictions, layer_counts)


def prepare(
    config: RunConfig, cluster: ClusterSpec | None, resume: bool, phase: Callable[[str], None]
) -> Prepared:
    """Phase 1: dataset, model, plan request, run folder and fixed partition, all checked
    before the cluster starts (a bad partition fails in a second, not after workers load)."""
    injections = injections_for(config, cluster)  # a bad spec fails before anything starts
    if cluster is None:
        emulation_mode(config.network)  # so does --network hosts where it cannot work
    notes: list[str] = []
    phase(f"loading dataset {config.dataset}")
    if config.dataset == "synthetic":
        dataset = data.synthetic(config.limit or 256)
        notes.append("synthetic dataset: random images without labels, accuracy is undefined")
    else:
        dataset = data.load(config.dataset, "test", data_dir=config.data_dir)
    resolved = resolve_model(config, dataset)
    if resolved.weights == "random" and dataset.labels is not None:
        notes.append(f"{config.model} has random weights: the accuracy is meaningless")
    ug = resolved.unit_graph()
    total = len(dataset) if config.limit is None else min(config.limit, len(dataset))
    if total == 0:
        raise ConfigError("--limit selects no images; expected at least 1")
    request = autoplan.PlanRequest(
        config.objective, config.max_latency_ms, config.min_throughput_ips, window=config.window
    )  # checks the objective before anything starts
    auto = config.planned
    _check_needs_auto(config, auto)
    folder = config.out or runfolder.default_folder(config.model)
    if resume:
        manifest.read(folder)  # a folder that is no run fails here, before the cluster starts
    else:
        runfolder.refuse_existing(folder)
    earlier = resultlog.read(folder) if resume else []
    count = len(config.cpus_each) if config.cpus_each else config.devices
    # Measured here for a fixed partition and its re-plans after a device loss; ``auto`` plans
    # (and re-plans) from the devices' own profile instead.
    costs = None if auto else unit_costs(config, ug)
    ranges = choose_ranges(config, ug, len(cluster.devices) if cluster else count, costs)
    execution = execution_for(config, dataset, resolved.input_size, notes, resolved.raw_images)
    return Prepared(
        config, dataset, resolved, ug, total, request, auto, folder, earlier, injections,
        costs, ranges, execution, notes, resume,
    )  # fmt: skip


def _check_needs_auto(config: RunConfig, auto: bool) -> None:
    """``--precision auto`` and ``--adaptive`` plan with the planner: refuse a fixed partition."""
    if config.precision == "auto" and not auto:
        raise ConfigError(
            f"--precision auto compares the planner's fp32 and int8 plans: it needs "
            f"--partition auto, got {config.partition!r}"
        )
    if config.adaptive and not auto:
        raise ConfigError(
            f"--adaptive plans from the devices' profile: it needs --partition auto, "
            f"got {config.partition!r}"
        )


def bootstrap(
    config: RunConfig,
    cluster: ClusterSpec | None,
    resolved: ResolvedModel,
    ug: graph.UnitGraph,
    stack: contextlib.ExitStack,
    phase: Callable[[str], None],
    policy: HealthPolicy | None = None,
) -> Connected:
    """Start (or connect to) the cluster for the ``stack``'s lifetime, check every device and
    load the model on all of them (shared by :func:`run_job` and :func:`profile_job`)."""
    from edgesplit.runtime.coordinator import Coordinator

    phase("starting the cluster" if cluster is None else "connecting to the cluster")
    spec, emulated = stack.enter_context(cluster_for(config, cluster))
    coordinator = stack.enter_context(Coordinator(spec, health_policy=policy))
    coordinator.check()
    phase(f"loading {config.model} on {len(spec.devices)} devices")
    num_units = coordinator.load_model(
        resolved.name, resolved.num_classes, 3, resolved.input_size, resolved.model,
        resolved.compiled, resolved.prep,
    )  # fmt: skip
    if num_units != ug.num_units:
        raise ModelError(
            f"devices traced {config.model} into {num_units} units, this machine into "
            f"{ug.num_units}; check that edgesplit and torch versions match"
        )
    return Connected(spec, emulated, coordinator)


def choose_plan(prep: Prepared, connected: Connected, phase: Callable[[str], None]) -> Chosen:
    """Phase 2, the one place a run's first plan is chosen: the fixed partition on its
    devices (evaluated with the planner's cost model for its prediction), or the planner's plan
    from the devices' profile (and, with ``--precision auto``, the better of its fp32 and int8
    plans); the int8 accuracy gate checks it."""
    config, coordinator, size = prep.config, connected.coordinator, prep.resolved.input_size
    execution, raw = prep.execution, prep.resolved.raw_images
    model_id = f"{prep.resolved.name}:{prep.resolved.weights_sha256()}:{size}"
    gate = int8_gate(config, coordinator, prep.ug, model_id, execution, size, prep.notes, raw)
    settings = ProfileSettings(
        batch_size=config.batch_size,
        reprofile=config.reprofile,
        engine=execution.engine,
        precisions=("fp32", execution.precision),
        calibration=execution.calibration,
    )
    prepare_ms = preparation_ms(prep.dataset, config.batch_size, size, raw)
    request = replace(prep.request, precision=execution.precision)
    profile: Profile | None = None
    given: Profile | None = None
    choice: precision_auto.PrecisionChoice | None = None
    if prep.ranges is None:
        phase("profiling the devices and links")
        profile, plan = autoplan.profile_and_plan(
            coordinator, prep.ug, config.model, prep.resolved.num_classes, request, settings,
            phase, prepare_ms=prepare_ms,
        )  # fmt: skip
        if config.precision == "auto":
            plan, choice, execution = choose_precision(
                config, profile, request, execution, gate, phase
            )
            request = replace(request, precision=choice.precision)
            prep.notes.append(f"--precision auto chose {choice.precision}: {choice.reason}")
        prep.notes.extend(plan.notes)
        initial = list(plan.assignment())
    else:
        names = partition_devices(config.partition, connected.spec, len(prep.ranges))
        initial = [Stage(name, a, b) for name, (a, b) in zip(names, prep.ranges, strict=True)]
        phase("profiling the devices and links for the given partition's prediction")
        given, plan = autoplan.profile_and_evaluate(
            coordinator, prep.ug, config.model, prep.resolved.num_classes, request, settings,
            phase, initial, prepare_ms=prepare_ms,
        )  # fmt: skip
    if gate is not None and config.precision == "int8":
        phase("measuring the int8 accuracy drop on the plan's devices")
        precision_auto.check_int8(gate.measure(tuple(initial)), config.max_accuracy_drop)
    if gate is not None and gate.last is not None:
        prep.notes.append(gate.last.describe())
    return Chosen(initial, execution, request, profile, plan, choice, gate, given=given)


def install(
    prep: Prepared, connected: Connected, chosen: Chosen, phase: Callable[[str], None]
) -> int:
    """Phase 3: install the first plan on its devices; its epoch."""
    execution = chosen.execution
    phase(f"installing {len(chosen.initial)} stages ({execution.engine} {execution.precision})")
    return connected.coordinator.install_plan(chosen.initial, execution=execution)


def measure_overheads(
    prep: Prepared, connected: Connected, chosen: Chosen, phase: Callable[[str], None]
) -> Chosen:
    """Phase 4: the installed plan's prediction with the per-call and coordinator costs a
    pilot run measures (:mod:`edgesplit.app.pilot`)."""
    measured = chosen.profile or chosen.given
    if chosen.plan is None or measured is None:
        return chosen
    config, size = prep.config, prep.resolved.input_size
    source = pilot_source(
        prep.dataset, config.batch_size, size, config.limit, prep.resolved.raw_images
    )
    measured, plan = predict_with_pilot(
        connected.coordinator, chosen.initial, source, measured, chosen.request, chosen.plan,
        phase, prep.notes,
    )  # fmt: skip
    return replace(chosen, plan=plan, measured=measured)


def execute(
    prep: Prepared,
    connected: Connected,
    chosen: Chosen,
    stack: contextlib.ExitStack,
    hooks: Hooks,
    phase: Callable[[str], None],
    epoch: int,
) -> Ran:
    """Phase 3: install the plan, open the run folder's log, run every image not logged yet
    (with the fault injector, the re-planner and the adaptive controller around the run)."""
    from edgesplit.errors import RunAborted

    config, coordinator = prep.config, connected.coordinator
    window = run_window(config.window, len(chosen.initial))
    results = _open_log(prep, connected, hooks.command, stack)
    finished = {r.start for r in prep.earlier}
    starts: list[int] = []

    def batches() -> Iterator[tuple[int, torch.Tensor]]:
        size = prep.resolved.input_size
        raw = prep.resolved.raw_images
        for start, x, _ in prep.dataset.batches(config.batch_size, size, 3, config.limit, raw=raw):
            if start in finished:
                continue
            starts.append(start)
            yield len(starts) - 1, x

    done = sum(len(r.predictions) for r in prep.earlier)
    t0 = time.perf_counter()
    controller: Controller | None = None

    def on_result(request_id: int, output: torch.Tensor) -> None:
        nonlocal done
        done += int(output.shape[0])
        results.append(starts[request_id], output.argmax(1).tolist())
        if done >= prep.total and controller is not None:
            controller.halt()  # a switch now would change no image, only the record
        if hooks.on_progress is not None:
            hooks.on_progress(done, prep.total, time.perf_counter() - t0)

    phase(f"running {prep.total} images through {len(chosen.initial)} stages")
    injector: Injector | None = None
    if connected.emulated is not None and prep.injections:
        injector = Injector(connected.emulated, prep.injections).start()
        stack.callback(injector.stop)  # before the cluster closes
    replan, controller, on_live = _replanning(prep, connected, chosen, hooks.on_live)
    aborted: RunAborted | None = None
    cpu0 = time.process_time()
    try:
        record = coordinator.run(
            batches(), window=window, on_result=on_result, replan=replan, on_live=on_live,
            observer=controller.observe if controller else None,
        )  # fmt: skip
    except RunAborted as exc:
        aborted, record = exc, exc.record
    finally:
        coordinator_cpu_s = time.process_time() - cpu0
        if controller is not None:
            controller.stop()  # no switch after the last result
    return Ran(record, aborted, starts, window, epoch, injector, controller, coordinator_cpu_s)


def _open_log(
    prep: Prepared, connected: Connected, command: list[str] | None, stack: contextlib.ExitStack
) -> resultlog.ResultLog:
    """Write the manifest (merged with the earlier one when resuming) and open the result log
    for the ``stack``'s lifetime."""
    made = manifest.build(
        prep.config, connected.coordinator.device_infos, prep.dataset, command,
        emulated=connected.emulated is not None,
    )  # fmt: skip
    if prep.resume:
        made = manifest.resumed(manifest.read(prep.folder), made)
    manifest.write(prep.folder, made)
    results = stack.enter_context(resultlog.ResultLog(prep.folder))
    if prep.resume:
        results.mark_resumed(sum(len(r.predictions) for r in prep.earlier))
        prep.notes.append(f"resumed: {len(prep.earlier)} micro-batches came from the earlier run")
    return results


def _replanning(
    prep: Prepared, connected: Connected, chosen: Chosen, on_live: LiveCallback | None
) -> tuple[Replan, Controller | None, LiveCallback | None]:
    """The plan after a device loss (from the profile for ``auto``, else from the unit costs),
    and with ``--adaptive`` the controller that also switches plans while the run goes."""
    if chosen.profile is None:
        costs = prep.costs or unit_costs(prep.config, prep.ug)
        return replanner(chosen.initial, costs), None, on_live
    if not prep.config.adaptive:
        return autoplan.replanner(chosen.profile, chosen.request, chosen.initial), None, on_live
    controller = Controller(
        connected.coordinator, chosen.profile, chosen.request, prep.config.adapt_policy
    ).start()
    return controller.replan, controller, with_adaptive_line(on_live, controller)


def summarise_run(
    prep: Prepared, connected: Connected, chosen: Chosen, ran: Ran
) -> tuple[RunSummary, torch.Tensor, dict[str, int]]:
    """Phase 4: the run's summary, its predictions by image (-1: not run) and the graph nodes
    of each device's stage in the final plan."""
    record, ug, total, injector = ran.record, prep.ug, prep.total, ran.injector
    predictions = torch.full((total,), -1, dtype=torch.int64)
    for earlier_result in prep.earlier:
        n = len(earlier_result.predictions)
        predictions[earlier_result.start : earlier_result.start + n] = torch.tensor(
            earlier_result.predictions
        )
    for request_id, output in record.outputs.items():
        start = ran.starts[request_id]
        predictions[start : start + output.shape[0]] = output.argmax(1)
    not_fired = injector.not_fired() if injector else []
    for f in not_fired:
        prep.notes.append(
            f"injection {f['spec']} ({f['action']} due at {f['at_s']:g} s) did not fire: the run "
            f"ended after {record.wall_s:.1f} s; run more images (--limit) or inject earlier"
        )
    # The table and devices.csv show the plan the run ended with (issue #20); summary.json's
    # "plan" stays the first one, "final_plan" is the last when it changed.
    initial = tuple(chosen.initial)
    final = record.plan_changes[-1].stages if record.plan_changes else initial
    changed = final != initial
    final_stages = stage_infos(ug, tuple((a, b) for _, a, b in final), [d for d, _, _ in final])
    layer_counts = {
        d: sum(len(ug.units[i].nodes) for i in range(a, b)) for d, a, b in final
    }  # fmt: skip
    facts = _facts(prep, connected, chosen, ran, predictions, not_fired)
    facts = replace(
        facts,
        final_stages=final_stages if changed else None,
        final_epoch=record.plan_changes[-1].epoch if changed else None,
        layer_counts=layer_counts,
    )
    return summarise(facts), predictions, layer_counts


def _facts(
    prep: Prepared,
    connected: Connected,
    chosen: Chosen,
    ran: Ran,
    predictions: torch.Tensor,
    not_fired: list[dict[str, Any]],
) -> RunFacts:
    """Everything :func:`~edgesplit.metrics.summary.summarise` reads, from the phases."""
    record, execution, gate = ran.record, chosen.execution, chosen.gate
    labels = prep.dataset.labels
    names = [d for d, _, _ in chosen.initial]
    reference_ms, reference_source = (
        autoplan.reference_cpu(chosen.measured, names, execution.precision)
        if chosen.measured
        else (None, None)
    )
    return RunFacts(
        config=prep.config,
        dataset=prep.dataset.name,
        weights=prep.resolved.weights,
        checkpoint_accuracy=prep.resolved.checkpoint_accuracy,
        input_size=prep.resolved.input_size,
        window=ran.window,
        engine=execution.engine,
        precision=execution.precision,
        images=prep.total,
        predictions=predictions.tolist(),
        labels=labels[: prep.total].tolist() if labels is not None else None,
        ran_images=sum(int(output.shape[0]) for output in record.outputs.values()),
        record=record,
        stages=stage_infos(prep.ug, chosen.ranges, names),
        epoch=ran.epoch,
        spec=connected.spec,
        params_total=prep.ug.total_params,
        partition=format_partition(chosen.ranges),
        resumed_images=sum(len(r.predictions) for r in prep.earlier),
        predicted=(
            autoplan.prediction_dict(
                chosen.plan, chosen.profile or chosen.given, execution.precision
            )
            if chosen.plan
            else None
        ),
        coordinator_cpu_s=ran.coordinator_cpu_s,
        reference_cpu_ms_per_image=reference_ms,
        reference_cpu=reference_source,
        injected=ran.injector.events if ran.injector else (),
        adaptive=ran.controller.summary(until=record.finished) if ran.controller else None,
        precision_choice=chosen.choice.to_dict() if chosen.choice else None,
        int8_gate=gate.last.to_dict() if gate is not None and gate.last else None,
        cpu_kinds={n: info.cpu_kind for n, info in connected.coordinator.device_infos.items()},
        notes=prep.notes,
        error=str(ran.aborted) if ran.aborted is not None else None,
        not_fired=not_fired,
    )


def write_run(
    prep: Prepared,
    connected: Connected,
    chosen: Chosen,
    ran: Ran,
    summary: RunSummary,
    predictions: torch.Tensor,
    layer_counts: dict[str, int],
) -> RunOutcome:
    """Phase 5: the run folder. An interrupted run then stops the process (Ctrl-C or SIGTERM
    again); an aborted one raises :class:`RunError` naming the folder."""
    from edgesplit.errors import RunInterrupted

    record, aborted, folder = ran.record, ran.aborted, prep.folder
    events = run_events(record, ran.injector.events if ran.injector else [])
    if prep.resume:
        events = [
            *runfolder.earlier_events(folder),
            {"event": "resumed", "time_s": 0.0, "images_done_before": summary.resumed_images},
            *events,
        ]
    interrupted = aborted if isinstance(aborted, RunInterrupted) else None
    if interrupted is not None:
        events.append(
            {
                "event": "interrupted",
                "time_s": round(record.wall_s, 3),
                "reason": str(interrupted),
                "completed_images": summary.completed_images,
            }
        )
    folder = runfolder.write(
        folder, summary=summary, rows=summary.device_rows, record=record, spec=connected.spec,
        predictions=predictions, labels=prep.dataset.labels, units=prep.ug.units, events=events,
    )  # fmt: skip
    if chosen.measured is not None:
        chosen.measured.save(folder / "profile.json")
    if chosen.plan is not None:
        (folder / "plan.txt").write_text(chosen.plan.table() + "\n")
    if ran.controller is not None:
        ran.controller.write_plans(folder, record.started, until=record.finished)
    if interrupted is not None:
        log.warning(
            "interrupted after %d of %d images; the run folder %s has them (resume with "
            "edgesplit run --resume %s)", summary.completed_images, prep.total, folder, folder,
        )  # fmt: skip
        raise interrupted.interruption
    if aborted is not None:
        raise RunError(f"{aborted} (run folder with the completed images: {folder})")
    return RunOutcome(folder, summary, summary.device_rows, list(summary.notes), layer_counts)


def run_window(window: int | None, stages: int) -> int:
    """Micro-batches a run keeps in flight: ``--window``, or two per stage."""
    return window or 2 * stages


def pilot_source(
    dataset: data.ImageSet, batch_size: int, input_size: int, limit: int | None, raw: bool
) -> Iterator[torch.Tensor]:
    """The run's micro-batches, prepared as the run prepares them, over and over."""
    while True:
        empty = True
        for _, x, _ in dataset.batches(batch_size, input_size, 3, limit, raw=raw):
            empty = False
            yield x
        if empty:
            return


def predict_with_pilot(
    coordinator: Coordinator,
    initial: list[Stage],
    source: Iterator[torch.Tensor],
    profile: Profile,
    request: autoplan.PlanRequest,
    chosen: planner.Plan,
    say: Callable[[str], None],
    notes: list[str],
) -> tuple[Profile, planner.Plan]:
    """The installed plan's prediction with the per-call and coordinator costs a pilot run
    measures (:mod:`edgesplit.app.pilot`), and the profile with them. The plan itself stays (those
    costs are much the same on every device), and so does the profile re-plans and the
    adaptive controller use."""
    from edgesplit.app import pilot
    from edgesplit.errors import RunAborted
    from edgesplit.plan.profile import to_problem

    say("pilot: measuring what a micro-batch costs each process besides its compute")
    try:
        overheads = pilot.measure(
            coordinator, initial, source, profile, request.precision,
            run_window(request.window, len(initial)),
        )  # fmt: skip
    except RunAborted as exc:
        notes.append(f"the pilot run failed ({exc}): the prediction lacks per-call costs")
        return profile, chosen
    notes.append(overheads.describe())
    profile = pilot.with_overheads(profile, overheads)
    problem = to_problem(profile, precision=request.precision, window=request.window)
    chosen = planner.evaluate(
        problem, initial, chosen.objective, check_memory=False, notes=chosen.notes
    )
    p = chosen.prediction
    say(
        f"{overheads.describe()}; predicted {p.throughput_ips:.1f} img/s, "
        f"{p.latency_ms:.1f} ms per micro-batch"
    )
    return profile, chosen


def with_adaptive_line(on_live: LiveCallback | None, controller: Controller) -> LiveCallback | None:
    """``on_live`` with the controller's last decision in every snapshot."""
    if on_live is None:
        return None
    show = on_live

    def shown(snapshot: LiveSnapshot) -> None:
        show(dataclasses.replace(snapshot, adaptive=controller.line()))

    return shown


def preparation_ms(
    dataset: data.ImageSet, batch_size: int, input_size: int, raw: bool = False
) -> float:
    """Median time the coordinator takes to prepare one micro-batch for upload, the way a run
    does it (load, resize, normalise, encode), over 3 micro-batches after a warm-up one.

    Each is the smaller of its wall and its process CPU time: on a host other processes load
    (an emulated cluster's), the wall time counts the wait for a core, which the planner and
    the simulator model from the CPU time (MobileNetV2 at 224, batch 8, on 2 cores: profiles
    taken under other engineers' load had 32 to 40 ms of wall where quiet ones had 4 to 7;
    with the CPU time, loaded ones had 5 to 10)."""
    from edgesplit.runtime import codec
    from edgesplit.runtime.proto import edgesplit_pb2 as pb

    times = []
    batches = dataset.batches(batch_size, input_size, 3, limit=4 * batch_size, raw=raw)
    while True:
        t0, cpu0 = time.perf_counter(), time.process_time()
        item = next(batches, None)
        if item is None:
            break
        codec.encode(item[1], out=pb.MicroBatch().tensor)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        times.append(min(wall, cpu) * 1000.0)
    return statistics.median(times[1:] or times) if times else 0.0


def default_input_size(model: str, dataset: str) -> int:
    """The shipped checkpoint's input size for (model, dataset), else 224."""
    with contextlib.suppress(ModelError):
        return checkpoints.read_info(checkpoints.shipped(model, dataset)).input_size
    return 224


def profile_job(
    config: RunConfig,
    cluster: ClusterSpec | None,
    settings: ProfileSettings,
    phase: Callable[[str], None],
) -> Profile:
    """Profile ``config.model`` on ``cluster`` (or on an emulated cluster started for it).

    Unit times do not depend on the weights' values, so the model gets random weights."""
    from edgesplit.plan.profile import profile_cluster

    classes = data.DATASETS[config.dataset].classes if config.dataset in data.DATASETS else 10
    size = config.input_size or default_input_size(config.model, config.dataset)
    torch.manual_seed(config.seed)
    if models.is_onnx_model(config.model):
        resolved = onnx_model(config.model, config.input_size, classes)
    else:
        model = models.build(config.model, num_classes=classes)
        prep = data.native_spec(data.info_for(config.dataset), size)
        resolved = ResolvedModel(model, config.model, size, classes, "random", prep=prep)
    ug = resolved.unit_graph()
    with contextlib.ExitStack() as stack:
        connected = bootstrap(config, cluster, resolved, ug, stack, phase)
        return profile_cluster(connected.coordinator, ug, config.model, classes, settings, phase)
