"""The public functions: split, profile, plan, run, simulate, sweep and serve. Each builds the
internal config objects (:class:`~edgesplit.runconfig.RunConfig`, :class:`~edgesplit.plan.profile.
ProfileSettings`, ...) from a few named arguments and wraps what comes back."""

from __future__ import annotations

import itertools
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgesplit._data import Plan, Profile, Simulation, Split
from edgesplit._results import RunResult, frame
from edgesplit.cluster.handle import Cluster
from edgesplit.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from edgesplit.config import ClusterSpec
    from edgesplit.serve.server import Server

log = logging.getLogger(__name__)

DEFAULT_MODEL = "mobilenet_v2"


def split(
    model: str = DEFAULT_MODEL,
    *,
    input_size: int | None = None,
    num_classes: int = 10,
    partition: str | None = None,
    check: bool = False,
) -> Split:
    """Trace ``model`` (a zoo name, see ``edgesplit split --help``) at ``input_size`` pixels
    (default: its shipped checkpoint's size, else 224) into units; with ``partition`` (unit
    ranges like ``"0-9,9-"``) also its stages, and with ``check`` compare the chained stages
    with the whole model on a random batch.

    Example::

        >>> s = edgesplit.split("mobilenet_v2", input_size=32, partition="0-9,9-", check=True)
        >>> s.num_units, s.max_abs_diff
        (33, 0.0)
    """
    from edgesplit.app.job import default_input_size
    from edgesplit.model import graph, models
    from edgesplit.shared.plan import format_partition, parse_partition

    size = input_size or default_input_size(model, "fashion-mnist")
    module = models.build(model, num_classes=num_classes)
    ug = graph.trace(module, (3, size, size))
    ranges = parse_partition(partition, ug.num_units) if partition is not None else None
    if check and ranges is None:
        raise ConfigError("check=True needs a partition, e.g. partition='0-9,9-'")
    diff = graph.check_partition(ug, module, ranges, 2) if check and ranges is not None else None
    return Split(
        model=model,
        input_size=size,
        num_units=ug.num_units,
        partition=format_partition(ranges) if ranges is not None else None,
        max_abs_diff=diff,
        _graph=ug,
        _ranges=ranges,
    )


def profile(
    cluster: Cluster,
    model: str = DEFAULT_MODEL,
    *,
    batch_size: int = 16,
    input_size: int | None = None,
    dataset: str = "fashion-mnist",
    repeats: int = 7,
    warmup: int = 2,
    reprofile: bool = False,
    engine: str | None = None,
) -> Profile:
    """Time every unit of ``model`` on every device of ``cluster`` and probe its links (as
    ``edgesplit profile``). Device profiles are cached (``$EDGESPLIT_CACHE_DIR``) and reused
    unless ``reprofile``.

    Example::

        >>> with edgesplit.EmulatedCluster(cpus=[1, 0.5, 0.25]) as cluster:
        ...     prof = edgesplit.profile(cluster, "mobilenet_v2", batch_size=16)
    """
    from edgesplit.app.job import profile_job
    from edgesplit.plan.profile import ProfileSettings
    from edgesplit.runconfig import RunConfig

    config = RunConfig(model=model, dataset=dataset, input_size=input_size, batch_size=batch_size)
    settings = ProfileSettings(
        batch_size=batch_size, warmup=warmup, repeats=repeats, reprofile=reprofile, engine=engine
    )
    return Profile(profile_job(config, cluster.spec, settings, _phase))


def plan(
    profile: Profile,
    objective: str = "throughput",
    *,
    max_latency_ms: float | None = None,
    min_throughput_ips: float | None = None,
    devices: Sequence[str] | None = None,
) -> Plan:
    """The planner's best plan on ``profile`` for ``objective`` (``throughput``, ``latency``
    or ``energy``) under the optional bounds, on ``devices`` (default: any of them). Pure: no
    device is contacted.

    Example::

        >>> p = edgesplit.plan(prof, objective="latency", min_throughput_ips=20)
        >>> print(p)
    """
    from edgesplit.plan import autoplan

    request = autoplan.PlanRequest(
        objective,
        max_latency_ms,
        min_throughput_ips,
        devices=tuple(devices) if devices is not None else None,
    )
    return Plan(autoplan.plan(profile._profile, request))


def run(
    model: str = DEFAULT_MODEL,
    cluster: Cluster | None = None,
    partition: str | Plan = "auto",
    *,
    objective: str = "throughput",
    batch_size: int = 16,
    limit: int | None = None,
    dataset: str = "fashion-mnist",
    input_size: int | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    random_weights: bool = False,
    window: int | None = None,
    engine: str | None = None,
    precision: str = "fp32",
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
) -> RunResult:
    """Run ``model`` over ``dataset`` (its first ``limit`` images) on ``cluster`` in
    micro-batches of ``batch_size`` and return the result (as ``edgesplit run``).

    ``partition``: unit ranges for the cluster's devices in order (``"0-11,11-22,22-"``),
    ``"auto"`` (profile and plan for ``objective``), ``"balanced"``, ``"equal"``, or a
    :class:`Plan`, whose stages go to the devices it names. Without a cluster an emulated one
    of three devices at half a core runs for this call only. ``out``: the run folder (must not
    hold a run); default a new temporary folder (keep it with :meth:`RunResult.save`).

    Example::

        >>> with edgesplit.EmulatedCluster(cpus=[1, 0.5, 0.25]) as cluster:
        ...     result = edgesplit.run(model="mobilenet_v2", cluster=cluster,
        ...                            partition="0-11,11-22,22-", limit=256)
        >>> result.throughput_ips
    """
    from edgesplit.app.job import run_job
    from edgesplit.runconfig import RunConfig

    spec = cluster.spec if cluster is not None else None
    partition_text = partition if isinstance(partition, str) else partition.partition
    if isinstance(partition, Plan):
        spec = _ordered_for(partition, spec)
    folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="edgesplit-run-"))
    config = RunConfig(
        model=model,
        dataset=dataset,
        checkpoint=Path(checkpoint) if checkpoint is not None else None,
        random_weights=random_weights,
        input_size=input_size,
        partition=partition_text,
        objective=objective,
        batch_size=batch_size,
        limit=limit,
        window=window,
        engine=engine,
        precision=precision,
        seed=seed,
        data_dir=Path(data_dir) if data_dir is not None else None,
        out=folder,
    )
    outcome = run_job(config, spec, on_phase=_phase, command=["edgesplit.run", model])
    return RunResult.from_summary(outcome.folder, outcome.summary)


def _ordered_for(chosen: Plan, spec: ClusterSpec | None) -> ClusterSpec:
    """``spec`` with the plan's devices first, in stage order: a fixed partition's stages go
    to the cluster's first devices."""
    if spec is None:
        raise ConfigError("running a Plan needs the cluster it was planned for: pass cluster=")
    names = [d.name for d in spec.devices]
    unknown = [n for n in chosen.devices if n not in names]
    if unknown:
        raise ConfigError(f"the plan names devices {unknown} the cluster lacks (it has {names})")
    first = [spec.device(n) for n in chosen.devices]
    rest = [d for d in spec.devices if d.name not in chosen.devices]
    return spec.model_copy(update={"devices": [*first, *rest]})


def simulate(
    profile: Profile,
    partition: str | Plan = "auto",
    *,
    objective: str = "throughput",
    images: int = 2000,
    window: int | None = None,
    seed: int = 0,
    devices: str | None = None,
    bandwidth_mbps: float | None = None,
    latency_ms: float | None = None,
    inject: Sequence[str] = (),
) -> Simulation:
    """Simulate a run of ``partition`` (``"auto"``: the planner's plan for ``objective``;
    unit ranges on the first devices; a plan's text naming each stage's device,
    ``"pi2:0-10,pi1:10-"``; or a :class:`Plan`) on the cluster ``profile``
    describes, or with ``devices`` (like ``"16xpi1,4xpi2"``) on a synthetic cluster of its
    device kinds (as ``edgesplit simulate``). ``inject``: faults as in ``edgesplit run
    --inject``, at simulated times.

    Example::

        >>> sim = edgesplit.simulate(prof, devices="8xpi1", images=4000)
        >>> sim.throughput_ips
    """
    from edgesplit.cluster.faults import parse_injection
    from edgesplit.config import LinkSpec
    from edgesplit.simulate import (
        SimConfig,
        cluster_from,
        fixed_stages,
        plan_for,
        replanner,
    )
    from edgesplit.simulate import simulate as simulate_stages
    from edgesplit.simulate.synthetic import parse_devices

    p = profile._profile
    link = None
    if bandwidth_mbps is not None or latency_ms is not None:
        link = LinkSpec(
            bandwidth_mbps=bandwidth_mbps or p.default_bandwidth_mbps,
            latency_ms=latency_ms if latency_ms is not None else p.default_latency_ms,
        )
    cluster = cluster_from(p, parse_devices(devices) if devices else None, link)
    if isinstance(partition, Plan):
        stages = partition._plan.assignment()
    elif partition == "auto":
        stages = plan_for(cluster, objective).assignment()
    else:
        stages = fixed_stages(cluster, partition)
    config = SimConfig(
        images=images,
        window=window,
        seed=seed,
        injections=tuple(parse_injection(spec) for spec in inject),
    )
    r = simulate_stages(cluster.spec, stages, config, replanner(cluster, stages, objective))
    return Simulation(
        stages=tuple(r.stages),
        images=r.images,
        batch_size=r.batch_size,
        wall_s=r.wall_s,
        throughput_ips=r.throughput_ips,
        steady_ips=r.steady_ips,
        latency_ms=dict(r.latency_ms),
        energy_j_per_image=r.energy_j_per_image,
        _result=r,
    )


Progress = Callable[[int, int, dict[str, Any]], None]
"""``progress(done, total, row)`` after each run of a sweep."""


def sweep(
    cluster: Cluster,
    *,
    models: Sequence[str] = (DEFAULT_MODEL,),
    partitions: Sequence[str] = ("auto",),
    objectives: Sequence[str] = ("throughput",),
    batch_sizes: Sequence[int] = (16,),
    limit: int | None = 256,
    progress: bool | Progress = True,
    out: str | os.PathLike[str] | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Run the grid models x partitions x batch sizes on one running ``cluster`` and return
    one DataFrame, a row per run (:meth:`RunResult.row`: throughput, latency, accuracy,
    energy, the run folder). ``objectives`` multiply the ``"auto"`` partitions only (a fixed
    partition does not depend on them). ``progress``: True prints a line per run to stderr;
    or a callable ``progress(done, total, row)``. ``out``: a folder for the run folders
    (``run-001`` ...), default temporary ones. Other keyword arguments go to
    :func:`edgesplit.run`.

    Example::

        >>> with edgesplit.EmulatedCluster(cpus=[1, 0.5, 0.25]) as cluster:
        ...     df = edgesplit.sweep(cluster, partitions=["0-11,11-22,22-", "equal", "auto"],
        ...                          batch_sizes=[8, 16], limit=256)
        >>> df[["partition", "batch_size", "throughput_ips"]]
    """
    if "partition" in options or "cluster" in options or "model" in options:
        raise ConfigError("sweep takes models=, partitions= (lists), and the cluster itself")
    cells = grid(models, partitions, objectives, batch_sizes)
    report = _print_progress if progress is True else progress or None
    rows = []
    for i, (model, part, objective, batch) in enumerate(cells, start=1):
        folder = Path(out) / f"run-{i:03d}" if out is not None else None
        result = run(
            model,
            cluster,
            part,
            objective=objective,
            batch_size=batch,
            limit=limit,
            out=folder,
            **options,
        )
        row = {"asked": part, "objective": objective, **result.row()}
        rows.append(row)
        if report is not None:
            report(i, len(cells), row)
    return frame(rows)


def grid(
    models: Sequence[str],
    partitions: Sequence[str],
    objectives: Sequence[str],
    batch_sizes: Sequence[int],
) -> list[tuple[str, str, str, int]]:
    """The sweep's runs as ``(model, partition, objective, batch_size)``, in order: objectives
    multiply ``auto`` partitions only (a fixed one runs once, under the first objective)."""
    cells = [
        (model, part, objective, batch)
        for model, part, batch in itertools.product(models, partitions, batch_sizes)
        for objective in (objectives if part == "auto" else objectives[:1])
    ]
    if not cells:
        raise ConfigError("the sweep's grid is empty: give at least one model, partition and size")
    return cells


def _print_progress(done: int, total: int, row: dict[str, Any]) -> None:
    ips = row["throughput_ips"]
    speed = f"{ips:.1f} img/s" if ips is not None else "no throughput"
    print(
        f"sweep {done}/{total}: {row['model']} {row['asked']} ({row['partition']}) "
        f"{row['objective']} batch {row['batch_size']}: {speed}",
        file=sys.stderr,
        flush=True,
    )


def _phase(text: str) -> None:
    log.info("%s", text)


def serve(
    model: str = DEFAULT_MODEL,
    cluster: Cluster | None = None,
    partition: str = "auto",
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    max_queue: int = 64,
    dataset: str = "fashion-mnist",
    input_size: int | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    random_weights: bool = False,
    objective: str = "throughput",
    adaptive: bool = False,
    engine: str | None = None,
) -> Server:
    """Serve ``model`` over HTTP from this process (as ``edgesplit serve``) and return the
    running server: ``.url``, ``.classify(images)``, ``.cluster()``; ``with`` (or
    ``.close()``) stops it. ``port=0`` takes a free port. Without a cluster an emulated one of
    three devices at half a core runs until the server stops.

    Example::

        >>> with edgesplit.serve("mobilenet_v2", partition="equal") as server:
        ...     print(server.url)
        ...     server.classify(["boot.png"], top_k=2)
        http://127.0.0.1:41234
        [{'label': 9, 'class': 'Ankle boot', 'top': [...]}]
    """
    from edgesplit.runconfig import RunConfig
    from edgesplit.serve.batcher import BatchPolicy
    from edgesplit.serve.server import Server
    from edgesplit.serve.session import ServeConfig

    config = ServeConfig(
        run=RunConfig(
            model=model,
            dataset=dataset,
            checkpoint=Path(checkpoint) if checkpoint is not None else None,
            random_weights=random_weights,
            input_size=input_size,
            partition=partition,
            objective=objective,
            batch_size=max_batch,
            engine=engine,
            adaptive=adaptive,
        ),
        policy=BatchPolicy(max_batch, max_wait_ms / 1000.0, max_queue),
    )
    return Server(config, cluster.spec if cluster is not None else None, host, port)
