"""One inference job from start to run folder: model and weights, dataset, partition, cluster
(given, or emulated for the job), coordinator run, and the reductions written to disk.

This is the library behind ``edgesplit run``; the CLI only builds a :class:`RunConfig`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import torch
from torch import nn

from edgesplit import autoplan, checkpoints, data, engines, graph, models, planner
from edgesplit import precision as precision_auto
from edgesplit.adapt.controller import Controller
from edgesplit.adapt.policy import AdaptPolicy
from edgesplit.config import ClusterSpec, LinkSpec
from edgesplit.errors import ConfigError, ModelError, RunError
from edgesplit.faults import Injection, Injector, parse_injections, relative
from edgesplit.metrics import runfolder
from edgesplit.metrics.energy import device_energy, energy_summary
from edgesplit.metrics.live import LiveCallback, LiveSnapshot
from edgesplit.metrics.summary import (
    DeviceRow,
    StageInfo,
    device_rows,
    latency_summary,
    request_latencies_ms,
)
from edgesplit.partition import Ranges, balanced_ranges, format_partition, parse_partition
from edgesplit.profiler import Profile, ProfileSettings
from edgesplit.runtime.records import RunRecord

if TYPE_CHECKING:
    from edgesplit.emulate import EmulatedCluster

log = logging.getLogger(__name__)

ASSUMED_BANDWIDTH_MBPS = 940.0
"""Gigabit Ethernet's TCP goodput, assumed for unshaped links when balancing stages."""

NAMED = {
    "auto": "profile the devices and links, then plan for --objective (the default)",
    "balanced": "one stage per device, balanced by unit times measured on this machine",
    "equal": "one stage per device, the same number of units each",
}
"""Partitions chosen by name instead of unit ranges."""


@dataclass(frozen=True)
class RunConfig:
    """What ``edgesplit run`` was asked to do. ``None`` means "choose for me" (see each field)."""

    model: str = models.DEFAULT_MODEL
    dataset: str = "fashion-mnist"
    checkpoint: Path | None = None
    """None: the shipped checkpoint for (model, dataset) if there is one, else random weights."""
    random_weights: bool = False
    input_size: int | None = None
    """None: the checkpoint's input size, else 224."""
    partition: str | None = None
    """Unit ranges like "0-7,7-" for the devices in cluster order, or one of :data:`NAMED`;
    None means "auto"."""
    objective: str = "throughput"
    """What ``auto`` optimises: throughput, latency or energy (see :mod:`edgesplit.planner`)."""
    max_latency_ms: float | None = None
    min_throughput_ips: float | None = None
    reprofile: bool = False
    """Measure the devices again even if a cached profile fits."""
    batch_size: int = 16
    limit: int | None = None
    window: int | None = None
    """Micro-batches in flight; None: twice the number of stages."""
    devices: int = 3
    """Emulated devices started for the run when no cluster is given."""
    cpus: float = 0.5
    cpus_each: tuple[float, ...] | None = None
    """CPU share of each emulated device (overrides ``devices`` and ``cpus``)."""
    bandwidth_mbps: float | None = 940.0
    """Emulated links (None = unshaped); 940 Mbit/s is Gigabit Ethernet's goodput."""
    latency_ms: float = 0.2
    data_dir: Path | None = None
    out: Path | None = None
    seed: int = 0
    inject: tuple[str, ...] = ()
    """Fault injection specs (see :mod:`edgesplit.faults`); only with an emulated cluster."""
    heartbeat_deadline_s: float = 2.0
    """A device silent for this long is LOST (see :mod:`edgesplit.runtime.health`)."""
    probation_s: float = 3.0
    """A lost device that answers again takes work after this long without a missed beat."""
    engine: str | None = None
    """Stage executor; None: onnxruntime when installed, else torch (with a note)."""
    precision: str = "fp32"
    """fp32, int8, or auto: int8 where the planner predicts a gain and the measured accuracy
    drop stays inside ``max_accuracy_drop`` (see :mod:`edgesplit.precision`; needs auto)."""
    max_accuracy_drop: float = precision_auto.DEFAULT_MAX_ACCURACY_DROP
    """Accuracy points int8 may cost under ``precision="auto"``."""
    wire: str = "fp32"
    """Activation format between stages (a link's own ``wire`` in the cluster file wins)."""
    calibration_images: int = engines.DEFAULT_CALIBRATION_IMAGES
    """Training images that calibrate int8 stages."""
    adaptive: bool = False
    """Re-plan while the run goes from observed speeds and links (needs ``auto``)."""
    adapt_policy: AdaptPolicy = field(default_factory=AdaptPolicy)


@dataclass
class ResolvedModel:
    model: nn.Module
    name: str
    input_size: int
    num_classes: int
    weights: str
    """Where the weights came from, for the record: a checkpoint path or "random"."""
    checkpoint_accuracy: float | None = None


@dataclass
class RunOutcome:
    folder: Path
    summary: dict[str, object]
    rows: list[DeviceRow]
    notes: list[str] = field(default_factory=list)


def resolve_model(config: RunConfig, dataset: data.ImageSet) -> ResolvedModel:
    classes = dataset.info.classes
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
        size = config.input_size or info.input_size
        return ResolvedModel(model, config.model, size, classes, str(path), info.test_accuracy)
    torch.manual_seed(config.seed)
    model = models.build(config.model, num_classes=classes)
    return ResolvedModel(model, config.model, config.input_size or 224, classes, "random")


def unit_times_ms(ug: graph.UnitGraph, batch: torch.Tensor, repeats: int = 3) -> list[float]:
    """Median time of each unit on this machine for ``batch`` (used to balance stages)."""
    times = []
    x = batch
    with torch.inference_mode():
        for unit in ug.units:
            stage = ug.stage(unit.index, unit.index + 1)
            samples = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                y = stage(x)
                samples.append((time.perf_counter() - t0) * 1000.0)
            times.append(statistics.median(samples))
            x = y
    return times


def unit_costs(config: RunConfig, ug: graph.UnitGraph) -> tuple[list[float], list[float]]:
    """Per unit: compute ms measured here, and ms to hand its output over a link."""
    batch = torch.zeros(config.batch_size, *ug.input_shape)
    # A hand-off costs its transfer time over the link (gigabit when the link is unshaped), so
    # the balance avoids cutting where the tensor is large.
    mbps = config.bandwidth_mbps or ASSUMED_BANDWIDTH_MBPS
    transfer_ms = [u.out_bytes * config.batch_size * 8 / (mbps * 1e3) for u in ug.units]
    return unit_times_ms(ug, batch), transfer_ms


Costs = tuple[list[float], list[float]]
"""Per unit: compute ms, and ms to hand its output on (see :func:`unit_costs`)."""


def equal_ranges(num_units: int, stages: int) -> Ranges:
    """``stages`` contiguous ranges whose sizes differ by at most one unit."""
    bounds = [round(i * num_units / stages) for i in range(stages + 1)]
    return tuple((a, b) for a, b in itertools.pairwise(bounds))


def choose_ranges(
    config: RunConfig, ug: graph.UnitGraph, devices: int, costs: Costs | None = None
) -> Ranges | None:
    """The partition's unit ranges, or None when the planner chooses them (``auto``)."""
    name = config.partition or "auto"
    if name == "auto":
        return None
    stages = min(devices, ug.num_units)
    if name == "equal":
        return equal_ranges(ug.num_units, stages)
    if name != "balanced":
        ranges = parse_partition(name, ug.num_units)
        if len(ranges) > devices:
            raise ConfigError(
                f"partition {config.partition!r} has {len(ranges)} stages but the cluster has "
                f"{devices} devices; expected at most {devices} stages"
            )
        return ranges
    times, cuts = costs or unit_costs(config, ug)
    return balanced_ranges(times, stages, cuts)


def replanner(
    initial: list[tuple[str, int, int]], costs: Costs
) -> Callable[[list[str]], list[tuple[str, int, int]]]:
    """The plan when the usable devices change: the initial plan while all its devices are
    usable, else the same number of stages (at most one per usable device) balanced by
    ``costs`` (measured before the run, so a re-plan takes no time)."""
    times, cuts = costs

    def replan(usable: list[str]) -> list[tuple[str, int, int]]:
        if all(device in usable for device, _, _ in initial):
            return initial
        stages = min(len(initial), len(usable), len(times))
        ranges = balanced_ranges(times, stages, cuts)
        return [(device, a, b) for device, (a, b) in zip(usable, ranges, strict=False)]

    return replan


MAX_CALIBRATION_BYTES = 32 * 1024 * 1024
"""Calibration images travel in each InstallPlan message, below the 64 MiB message limit."""


def calibration_images(
    config: RunConfig, dataset: data.ImageSet, size: int, notes: list[str]
) -> torch.Tensor:
    """Model inputs for int8 calibration: ``config.calibration_images`` images drawn (seeded)
    from the training split, or from the synthetic set itself."""
    wanted = config.calibration_images
    per_image = 4 * 3 * size * size
    if wanted * per_image > MAX_CALIBRATION_BYTES:
        wanted = max(1, MAX_CALIBRATION_BYTES // per_image)
        notes.append(
            f"int8 calibration uses {wanted} images: {config.calibration_images} at {size} px "
            f"would exceed the {MAX_CALIBRATION_BYTES >> 20} MiB message budget"
        )
    if dataset.name == "synthetic":
        source = dataset
        notes.append("synthetic dataset: int8 calibration uses the synthetic images")
    else:
        source = data.load(config.dataset, "train", data_dir=config.data_dir)
    generator = torch.Generator().manual_seed(config.seed)
    count = min(wanted, len(source))
    index = torch.randperm(len(source), generator=generator)[:count].sort().values
    return data.preprocess(source.images[index], source.info, size, 3)


def execution_for(
    config: RunConfig, dataset: data.ImageSet, size: int, notes: list[str]
) -> engines.Execution:
    """The engine, precision, wire format and calibration set the run's stages use."""
    engine, note = engines.resolve_engine(config.engine)
    if note:
        notes.append(note)
    # auto starts as int8 (profiled, calibrated) until the choice after profiling.
    precision = "int8" if config.precision == "auto" else config.precision
    engines.EngineSpec(engine, precision)  # int8 on torch fails here, before any work
    calibration = None
    if precision == "int8":
        calibration = calibration_images(config, dataset, size, notes)
    return engines.Execution(engine, precision, config.wire, calibration)


def held_out_images(config: RunConfig, size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Training images the int8 calibration does not use (the same seeded permutation, after
    the calibration's share), with labels; None for a dataset without labels."""
    if config.dataset == "synthetic":
        return None
    source = data.load(config.dataset, "train", data_dir=config.data_dir)
    if source.labels is None:
        return None
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(source), generator=generator)
    first = config.calibration_images
    index = order[first : first + precision_auto.HELD_OUT_IMAGES].sort().values
    return data.preprocess(source.images[index], source.info, size, 3), source.labels[index]


def choose_precision(
    config: RunConfig,
    ug: graph.UnitGraph,
    profile: Profile,
    planned: autoplan.PlanRequest,
    execution: engines.Execution,
    size: int,
    phase: Callable[[str], None],
) -> tuple[planner.Plan, precision_auto.PrecisionChoice, engines.Execution]:
    """``--precision auto`` after profiling both precisions: the plan, the choice and the
    execution to install (fp32 drops the calibration set)."""
    assert execution.calibration is not None
    phase("measuring the int8 accuracy drop on held-out training images")
    chosen, choice = precision_auto.auto(
        ug,
        lambda p: autoplan.plan(profile, replace(planned, precision=p)),
        execution.engine or "onnxruntime",
        execution.calibration,
        held_out_images(config, size),
        config.max_accuracy_drop,
    )
    if choice.precision == "fp32":
        execution = replace(execution, precision="fp32", calibration=None)
    return chosen, choice, execution


def stage_infos(ug: graph.UnitGraph, ranges: Ranges, names: list[str]) -> list[StageInfo]:
    return [
        StageInfo(
            device=name,
            start=a,
            end=b,
            first_layer=ug.units[a].first,
            last_layer=ug.units[b - 1].last,
            params=ug.params_in(a, b),
        )
        for name, (a, b) in zip(names, ranges, strict=False)
    ]


@contextlib.contextmanager
def cluster_for(
    config: RunConfig, cluster: ClusterSpec | None
) -> Iterator[tuple[ClusterSpec, EmulatedCluster | None]]:
    """The given cluster, or an emulated one that lives for the ``with`` block."""
    if cluster is not None:
        yield cluster, None
        return
    from edgesplit.emulate import EmulatedCluster, EmulatedDevice, uniform_devices

    link = LinkSpec(bandwidth_mbps=config.bandwidth_mbps, latency_ms=config.latency_ms)
    devices = uniform_devices(config.devices, cpus=config.cpus)
    if config.cpus_each:
        devices = [
            EmulatedDevice(f"pi{i}", cpus) for i, cpus in enumerate(config.cpus_each, start=1)
        ]
    with EmulatedCluster.start(devices, default_link=link) as emulated:
        yield emulated.spec, emulated


def injections_for(config: RunConfig, cluster: ClusterSpec | None) -> list[Injection]:
    """The run's fault injections, checked before anything starts."""
    if not config.inject:
        return []
    if cluster is not None:
        raise ConfigError(
            "--inject needs an emulated cluster (run without --cluster, with --devices N); "
            "real devices cannot be killed or paused from here"
        )
    from edgesplit.emulate import uniform_devices

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


@one_torch_thread
def run_job(
    config: RunConfig,
    cluster: ClusterSpec | None = None,
    on_progress: Callable[[int, int, float], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    on_live: LiveCallback | None = None,
) -> RunOutcome:
    """Run ``config`` on ``cluster`` (or on an emulated cluster) and write the run folder.

    ``on_progress(images_done, images_total, elapsed_s)`` is called after each result;
    ``on_phase(text)`` when the job moves on (starting the cluster, loading, running);
    ``on_live(snapshot)`` while it runs (see :class:`edgesplit.metrics.live.LiveFeed`)."""
    from edgesplit.runtime.coordinator import Coordinator
    from edgesplit.runtime.health import HealthPolicy
    from edgesplit.runtime.runner import RunAborted

    phase = on_phase or (lambda text: log.info("%s", text))
    injections = injections_for(config, cluster)  # a bad spec fails before anything starts
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
    size = resolved.input_size
    ug = graph.trace(resolved.model, (3, size, size))
    total = len(dataset) if config.limit is None else min(config.limit, len(dataset))
    if total == 0:
        raise ConfigError("--limit selects no images; expected at least 1")

    # Before the cluster starts: a bad partition fails in a second, not after the workers load.
    planned = autoplan.PlanRequest(
        config.objective, config.max_latency_ms, config.min_throughput_ips
    )  # checks the objective before anything starts
    if config.precision == "auto" and (config.partition or "auto") != "auto":
        raise ConfigError(
            f"--precision auto compares the planner's fp32 and int8 plans: it needs "
            f"--partition auto, got {config.partition!r}"
        )
    if config.adaptive and (config.partition or "auto") != "auto":
        raise ConfigError(
            f"--adaptive plans from the devices' profile: it needs --partition auto, "
            f"got {config.partition!r}"
        )
    count = len(config.cpus_each) if config.cpus_each else config.devices
    injector: Injector | None = None
    # Measured here for a fixed partition and its re-plans after a device loss; ``auto`` plans
    # (and re-plans) from the devices' own profile instead.
    costs = None if (config.partition or "auto") == "auto" else unit_costs(config, ug)
    ranges = choose_ranges(config, ug, len(cluster.devices) if cluster else count, costs)
    execution = execution_for(config, dataset, size, notes)
    profile: Profile | None = None
    chosen: planner.Plan | None = None
    choice: precision_auto.PrecisionChoice | None = None
    controller: Controller | None = None

    with contextlib.ExitStack() as stack:
        phase("starting the cluster" if cluster is None else "connecting to the cluster")
        spec, emulated = stack.enter_context(cluster_for(config, cluster))
        policy = HealthPolicy(config.heartbeat_deadline_s, config.probation_s)
        coordinator = stack.enter_context(Coordinator(spec, health_policy=policy))
        coordinator.check()
        phase(f"loading {config.model} on {len(spec.devices)} devices")
        num_units = coordinator.load_model(
            resolved.name, resolved.num_classes, 3, size, resolved.model
        )
        if num_units != ug.num_units:
            raise ModelError(
                f"devices traced {config.model} into {num_units} units, this machine into "
                f"{ug.num_units}; check that edgesplit and torch versions match"
            )
        if ranges is None:
            phase("profiling the devices and links")
            settings = ProfileSettings(
                batch_size=config.batch_size,
                reprofile=config.reprofile,
                engine=execution.engine,
                precisions=("fp32", execution.precision),
                calibration=execution.calibration,
            )
            planned = replace(planned, precision=execution.precision)
            profile, chosen = autoplan.profile_and_plan(
                coordinator, ug, config.model, resolved.num_classes, planned, settings, phase
            )
            if config.precision == "auto":
                chosen, choice, execution = choose_precision(
                    config, ug, profile, planned, execution, size, phase
                )
                planned = replace(planned, precision=choice.precision)
                notes.append(f"--precision auto chose {choice.precision}: {choice.reason}")
            notes.extend(chosen.notes)
            names = [s.device for s in chosen.stages]
            ranges = tuple((s.start, s.end) for s in chosen.stages)
        else:
            names = [d.name for d in spec.devices[: len(ranges)]]
        initial = [(name, a, b) for name, (a, b) in zip(names, ranges, strict=True)]
        phase(f"installing {len(ranges)} stages ({execution.engine} {execution.precision})")
        epoch = coordinator.install_plan(initial, execution=execution)
        window = config.window or 2 * len(ranges)
        starts: list[int] = []

        def batches() -> Iterator[tuple[int, torch.Tensor]]:
            for start, x, _ in dataset.batches(config.batch_size, size, 3, config.limit):
                starts.append(start)
                yield len(starts) - 1, x

        done = 0
        t0 = time.perf_counter()

        def on_result(request_id: int, output: torch.Tensor) -> None:
            nonlocal done
            done += int(output.shape[0])
            if on_progress is not None:
                on_progress(done, total, time.perf_counter() - t0)

        phase(f"running {total} images through {len(ranges)} stages")
        aborted: RunAborted | None = None
        if emulated is not None and injections:
            injector = Injector(emulated, injections).start()
            stack.callback(injector.stop)  # before the cluster closes
        replan = (
            autoplan.replanner(profile, planned, initial)
            if profile is not None
            else replanner(initial, costs or unit_costs(config, ug))
        )
        if config.adaptive and profile is not None:
            controller = Controller(coordinator, profile, planned, config.adapt_policy).start()
            replan, on_live = controller.replan, with_adaptive_line(on_live, controller)
        try:
            record = coordinator.run(
                batches(),
                window=window,
                on_result=on_result,
                replan=replan,
                on_live=on_live,
                observer=controller.observe if controller else None,
            )
        except RunAborted as exc:
            aborted, record = exc, exc.record
        finally:
            if controller is not None:
                controller.stop()  # no switch after the last result

    predictions = torch.full((total,), -1, dtype=torch.int64)
    for request_id, output in record.outputs.items():
        start = starts[request_id]
        predictions[start : start + output.shape[0]] = output.argmax(1)
    accuracy = None
    if dataset.labels is not None:
        accuracy = float((predictions == dataset.labels[:total]).sum()) / total
    stages = stage_infos(ug, ranges, names)
    rows = device_rows(stages, record.hops, record.samples, record.started, record.finished)
    latencies = list(request_latencies_ms(record.hops, record.uploads).values())
    total_params = ug.total_params
    energies = device_energy(spec, rows, record.wall_s, total)
    energy = energy_summary(energies)
    summary: dict[str, object] = {
        "model": config.model,
        "dataset": dataset.name,
        "weights": resolved.weights,
        "checkpoint_accuracy": resolved.checkpoint_accuracy,
        "input_size": size,
        "batch_size": config.batch_size,
        "window": window,
        "engine": execution.engine,
        "precision": execution.precision,
        "wire": config.wire,
        "images": total,
        "completed_images": int((predictions >= 0).sum()),
        "wall_s": record.wall_s,
        "throughput_ips": total / record.wall_s if record.wall_s > 0 else None,
        "latency_ms": latency_summary(latencies),
        "accuracy": accuracy,
        "params_total": total_params,
        "partition": format_partition(ranges),
        "partition_method": config.partition or "auto",
        "predicted": (
            autoplan.prediction_dict(chosen, profile, execution.precision) if chosen else None
        ),
        "energy": energy,
        "energy_j_per_image": energy["energy_j_per_image"],
        "plan": {
            "epoch": epoch,
            "stages": [
                {
                    "device": s.device,
                    "units": [s.start, s.end],
                    "first_layer": s.first_layer,
                    "last_layer": s.last_layer,
                    "params": s.params,
                }
                for s in stages
            ],
        },
        "devices": [row.to_dict() for row in rows],
        "clock_offsets_ms": record.clock_offsets_ms,
        "rtt_ms": record.rtt_ms,
        **fault_summary(record),
        "injected": relative(injector.events, record.started) if injector else [],
        "adaptive": controller.summary() if controller else None,
        "precision_choice": choice.to_dict() if choice else None,
        "notes": notes,
    }
    if aborted is not None:
        summary["error"] = str(aborted)
    folder = runfolder.write(
        config.out,
        summary=summary,
        rows=rows,
        record=record,
        spec=spec,
        predictions=predictions,
        labels=dataset.labels,
        units=ug.units,
        events=run_events(record, injector.events if injector else []),
    )
    if profile is not None:
        profile.save(folder / "profile.json")
    if chosen is not None:
        (folder / "plan.txt").write_text(chosen.table() + "\n")
    if controller is not None:
        controller.write_plans(folder, record.started)
    if aborted is not None:
        raise RunError(f"{aborted} (run folder with the completed images: {folder})")
    return RunOutcome(folder, summary, rows, notes)


def with_adaptive_line(on_live: LiveCallback | None, controller: Controller) -> LiveCallback | None:
    """``on_live`` with the controller's last decision in every snapshot."""
    if on_live is None:
        return None
    show = on_live

    def shown(snapshot: LiveSnapshot) -> None:
        show(dataclasses.replace(snapshot, adaptive=controller.line()))

    return shown


def fault_summary(record: RunRecord) -> dict[str, object]:
    """summary.json's fault keys; ``time_s`` is seconds since the run started."""
    return {
        "failures": [_timed(f.to_dict(), record.started) for f in record.failures],
        "replayed": record.replayed,
        "duplicates": record.duplicates,
        "plan_changes": [_timed(p.to_dict(), record.started) for p in record.plan_changes],
        "errors": record.errors[:100],
    }


def run_events(record: RunRecord, injected: list[dict[str, Any]]) -> list[dict[str, object]]:
    """events.jsonl: injected faults, device state transitions and plan changes, in time
    order."""
    events = relative(injected, record.started)
    events += [
        {"event": "state", **_timed(t.to_dict(), record.started)} for t in record.transitions
    ]
    events += [
        {"event": "plan", **_timed(p.to_dict(), record.started)} for p in record.plan_changes
    ]
    return sorted(events, key=lambda e: float(e["time_s"]))


def _timed(fields: dict[str, Any], started: float) -> dict[str, Any]:
    """``fields`` with its coordinator-clock ``t`` as ``time_s`` since ``started``."""
    t = fields.pop("t")
    return {"time_s": round(t - started, 3), **fields}


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
    from edgesplit.profiler import profile_cluster
    from edgesplit.runtime.coordinator import Coordinator

    classes = data.DATASETS[config.dataset].classes if config.dataset in data.DATASETS else 10
    size = config.input_size or default_input_size(config.model, config.dataset)
    torch.manual_seed(config.seed)
    model = models.build(config.model, num_classes=classes)
    ug = graph.trace(model, (3, size, size))
    with contextlib.ExitStack() as stack:
        phase("starting the cluster" if cluster is None else "connecting to the cluster")
        spec, _ = stack.enter_context(cluster_for(config, cluster))
        coordinator = stack.enter_context(Coordinator(spec))
        coordinator.check()
        phase(f"loading {config.model} on {len(spec.devices)} devices")
        coordinator.load_model(config.model, classes, 3, size, model)
        return profile_cluster(coordinator, ug, config.model, classes, settings, phase)
