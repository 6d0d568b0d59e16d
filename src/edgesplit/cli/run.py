"""``edgesplit run``: run a model as a pipeline over a cluster and print the per-device table."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from edgesplit.cli import main
from edgesplit.cli._cluster_options import (
    emulation_options,
    model_options,
    objective_options,
    run_config,
)
from edgesplit.config import ClusterSpec, load_cluster
from edgesplit.errors import ConfigError
from edgesplit.shared.plan import plan_text

if TYPE_CHECKING:
    from edgesplit.app.job import RunOutcome
    from edgesplit.metrics.dashboard import PlainDashboard, TerminalDashboard
    from edgesplit.metrics.prometheus import RunMetrics
    from edgesplit.runconfig import RunConfig
    from edgesplit.runtime.live import LiveCallback, LiveSnapshot
    from edgesplit.shared.runsummary import RunSummary

DATASETS_HELP = "cifar10, cifar100, fashion-mnist, mnist, imagefolder:PATH, synthetic"
"""``edgesplit.model.data.known_datasets()``, written out: importing it takes torch, and
``run --help`` should take a moment, not seconds (issue #20; a test keeps the two equal)."""


def _on_live(show: LiveCallback | None, metrics: RunMetrics | None) -> LiveCallback | None:
    """One callback for the dashboard and the gauges (None when neither wants the live view)."""
    if metrics is None:
        return show
    if show is None:
        return metrics.on_live

    def both(snapshot: LiveSnapshot) -> None:
        metrics.on_live(snapshot)
        show(snapshot)

    return both


def _serve_metrics(port: int) -> RunMetrics:
    from edgesplit.metrics.prometheus import RunMetrics, serve

    metrics = RunMetrics()
    try:
        serve(metrics, port)
    except OSError as exc:
        raise ConfigError(f"--metrics-port {port}: cannot listen on 127.0.0.1: {exc}") from None
    return metrics


@main.command("run")
@emulation_options
@model_options(
    dataset_help=f"Test set to classify: one of {DATASETS_HELP}. 'synthetic' is random images "
    "without labels (timing only).",
    input_size_help="Input size in pixels. Default: the checkpoint's, or 224.",
)
@click.option(
    "--partition",
    default=None,
    help="Half-open unit ranges, one stage per device in cluster order, e.g. "
    '"0-7,7-14,14-"; or auto (profile, then plan for --objective; the default), '
    "balanced (unit times measured on this machine), equal (same number of units).",
)
@objective_options
@click.option(
    "--adaptive",
    is_flag=True,
    help="Re-plan while the run goes: switch plans when observed device speeds or link "
    "bandwidths make another plan predictably better (needs --partition auto).",
)
@click.option(
    "--adapt-threshold",
    default=0.15,
    show_default=True,
    type=click.FloatRange(min=0),
    help="With --adaptive: least predicted gain (0.15 = 15 %) worth a plan switch.",
)
@click.option(
    "--adapt-hold",
    default=3.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="With --adaptive: seconds the gain must hold before a switch.",
)
@click.option(
    "--adapt-interval",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="With --adaptive: least seconds between two switches.",
)
@click.option(
    "--reprofile",
    is_flag=True,
    help="Measure the devices again even when a cached profile fits.",
)
@click.option(
    "--batch-size",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="Images per micro-batch.",
)
@click.option(
    "--limit",
    default=None,
    type=click.IntRange(min=1),
    help="Only the first N images of the test set.",
)
@click.option(
    "--window",
    default=None,
    type=click.IntRange(min=1),
    help="Micro-batches in flight at most (backpressure). Default: 2 x stages.",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Look for the dataset here first.",
)
@click.option(
    "--download",
    is_flag=True,
    help="Download the dataset (mnist, fashion-mnist, cifar10, cifar100) into "
    "~/.cache/edgesplit/datasets if it is not found (nothing is downloaded without it).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Run folder. Default: runs/<date>-<time>-<model>.",
)
@click.option(
    "--resume",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Finish an interrupted run in this folder: its configuration comes from its "
    "manifest.json, every image with a result in its results.jsonl is skipped, the rest runs, "
    "and the folder is completed (a new emulated cluster, or --cluster, runs it).",
)
@click.option(
    "--from",
    "from_run",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Run again the configuration of this run folder (its manifest.json) into a new "
    "folder (--out, or the default).",
)
@click.option("--json", "as_json", is_flag=True, help="Print summary.json instead of the table.")
@click.option(
    "--report",
    "with_report",
    is_flag=True,
    help="Also write report.html and its plots into the run folder (as edgesplit report).",
)
@click.option(
    "--engine",
    type=click.Choice(["torch", "onnxruntime"]),
    default=None,
    help="Stage executor. Default: onnxruntime when installed (the fast engine), else torch "
    "with a note.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "int8", "auto"]),
    default="fp32",
    show_default=True,
    help="Stage precision; int8 is static quantization with onnxruntime, calibrated on "
    "training images; auto runs int8 when the planner predicts a gain and the accuracy drop "
    "measured on held-out training images stays within --max-accuracy-drop.",
)
@click.option(
    "--max-accuracy-drop",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="With --precision int8 or auto: accuracy points int8 may cost, measured on held-out "
    "training images through the stages as built for the plan's devices (their CPU kinds); "
    "int8 stops with an error above it, auto takes fp32.",
)
@click.option(
    "--wire",
    type=click.Choice(["fp32", "fp16", "int8"]),
    default="fp32",
    show_default=True,
    help="Activation format between stages (a link's `wire` in the cluster file wins).",
)
@click.option(
    "--calibration-images",
    default=256,
    show_default=True,
    type=click.IntRange(min=1),
    help="Training images that calibrate int8 stages.",
)
@click.option(
    "--metrics-port",
    default=None,
    type=click.IntRange(1, 65535),
    help="Serve live Prometheus metrics on 127.0.0.1:PORT/metrics while the run goes.",
)
@click.option(
    "--inject",
    multiple=True,
    metavar="SPEC",
    help='Fault injection on the emulated cluster (repeatable), e.g. "pi3:kill@20s", '
    '"pi2:pause@15s+5s", "pi2:stress@10s", "link:pi1-pi2:bandwidth=50mbps@10s". '
    "Not with --cluster.",
)
@click.option(
    "--heartbeat-deadline",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds without a heartbeat before a device is lost and the run re-plans around it.",
)
@click.option(
    "--result-port",
    default=None,
    type=click.IntRange(1, 65535),
    help="Port of the coordinator's result service (overrides the cluster file's "
    "result_port; default: the cluster file's, else a free port). Open it in the "
    "coordinator's firewall (docs/SETUP.md, Ports and firewall).",
)
@click.option(
    "--no-dashboard",
    is_flag=True,
    help="No live per-device dashboard (the table on a terminal, the periodic lines in a "
    "log); the progress bar or lines stay.",
)
@click.option(
    "--wide",
    is_flag=True,
    help="Also print each device's first and last layer, time per image, system CPU %, CPU "
    "MHz, memory % and temperature (wider than 120 columns; devices.csv has them all).",
)
def run_command(**options: Any) -> None:
    """Run a model as a pipeline across devices and measure every device.

    With no options: MobileNetV2 with its shipped Fashion-MNIST checkpoint over the whole
    Fashion-MNIST test set on an emulated 3-device cluster, with the partition the planner
    chooses from a profile of the devices and links (cached after the first run).
    """
    from edgesplit.app.job import run_job
    from edgesplit.cluster.emulate import exit_on_sigterm

    cluster_file, resume, from_run = options["cluster_file"], options["resume"], options["from_run"]
    cluster = load_cluster(cluster_file) if cluster_file is not None else None
    config = run_config(options)
    if resume is not None or from_run is not None:
        config, cluster = _config_of_earlier_run(resume, from_run, options["out"], cluster)
    if options["download"]:
        fetch_dataset(config.dataset, config.data_dir, int8=config.precision != "fp32")
    metrics = _serve_metrics(options["metrics_port"]) if options["metrics_port"] else None
    no_dashboard = options["no_dashboard"]
    dashboard = _dashboard(show_table=not no_dashboard)
    started = time.perf_counter()
    with exit_on_sigterm(), dashboard:
        outcome = run_job(
            config,
            cluster,
            metrics.wrap(dashboard.on_progress) if metrics else dashboard.on_progress,
            dashboard.on_phase,
            _on_live(None if no_dashboard else dashboard.on_live, metrics),
            resume=resume is not None,
        )
    if metrics:
        metrics.on_summary(outcome.summary)
    if options["with_report"]:
        from edgesplit.metrics.plots import write_report

        click.echo(f"report: {write_report(outcome.folder)}", err=True)
    if options["as_json"]:
        click.echo(outcome.summary.to_json(), nl=False)
    else:
        _print_outcome(outcome, options["wide"], time.perf_counter() - started)


def _dashboard(show_table: bool) -> TerminalDashboard | PlainDashboard:
    """The live dashboard on stderr: drawn in place on a terminal, else plain lines."""
    from edgesplit.metrics.dashboard import PlainDashboard, TerminalDashboard

    console = Console(stderr=True)
    if console.is_terminal:
        return TerminalDashboard(console, show_table=show_table)
    return PlainDashboard(lambda text: click.echo(text, err=True), show_table=show_table)


def _print_outcome(outcome: RunOutcome, wide: bool, took_s: float) -> None:
    """The per-device table, what happened, the notes, prediction and energy lines."""
    from edgesplit.metrics.table import device_table
    from edgesplit.plan.energy import comparison as energy_comparison

    # Not a terminal (a log, a pipe): the table at its natural width, nothing cut.
    out_console = Console(width=None if sys.stdout.isatty() else 1000)
    out_console.print(device_table(outcome.summary, outcome.rows, outcome.layer_counts, wide=wide))
    out_console.print(plan_line(outcome.summary), markup=False, highlight=False)
    for line in history_lines(outcome.summary):
        out_console.print(line, markup=False, highlight=False)
    for note in outcome.notes:
        out_console.print(f"note: {note}")
    for line in _prediction_lines(outcome.summary):
        out_console.print(line)
    metered = energy_comparison(outcome.summary)
    for line in metered.lines() if metered is not None else []:
        out_console.print(line, markup=False)
    out_console.print(f"run folder: {outcome.folder} ({took_s:.1f} s in all)")


_NOT_CONFIG = {"cluster_file", "out", "as_json", "with_report", "metrics_port", "no_dashboard",
               "resume", "from_run", "result_port", "wide", "download"}  # fmt: skip
"""Options that do not change what a run computes: allowed with --resume and --from."""


def _config_of_earlier_run(
    resume: Path | None, from_run: Path | None, out: Path | None, cluster: ClusterSpec | None
) -> tuple[RunConfig, ClusterSpec | None]:
    """The configuration ``--resume`` or ``--from`` reads from a run folder's manifest, with
    the options given next to them refused (they would change it)."""
    from dataclasses import replace

    from click.core import ParameterSource

    from edgesplit.metrics import manifest

    if resume is not None and from_run is not None:
        raise ConfigError("--resume and --from exclude each other: pass one run folder")
    flag, folder = ("--resume", resume) if resume is not None else ("--from", from_run)
    assert folder is not None
    ctx = click.get_current_context()
    given = sorted(
        f"--{name.replace('_', '-')}"
        for name in ctx.params
        if name not in _NOT_CONFIG and ctx.get_parameter_source(name) is not ParameterSource.DEFAULT
    )
    if resume is not None and out is not None:
        given.append("--out")
    if given:
        raise ConfigError(
            f"{flag} takes the configuration from {folder / manifest.FILE}; "
            f"{', '.join(given)} would change it (use --from FOLDER for a new run, or no option)"
        )
    made = manifest.read(folder)
    config = manifest.config_from_dict(made["config"])
    if cluster is None and not made.get("emulated", True):
        raise ConfigError(
            f"{folder} ran on a cluster file, not an emulated cluster: pass --cluster FILE"
        )
    return replace(config, out=folder if resume is not None else out), cluster


def _prediction_lines(summary: RunSummary) -> list[str]:
    """The prediction (of the planned, or the given, partition) next to what was measured, the
    planned objective first (issue #19)."""
    from edgesplit.metrics import versus

    predicted = summary.predicted
    if predicted is None:
        return []
    given = (summary.partition_method or "auto") != "auto"
    lines = [
        f"{'the given partition, evaluated' if given else 'planned'} for {predicted.objective}: "
        f"predicted {predicted.throughput_ips:.1f} img/s, {predicted.latency_ms:.1f} ms per "
        f"micro-batch unloaded, {predicted.energy_j_per_image:.4f} J/image"
    ]
    if summary.versus_plan is not None:
        lines += versus.lines(summary.versus_plan)
    return lines


def _stages(stages: list[tuple[str, tuple[int, int]]]) -> str:
    """The plan's text (``pi1:0-10,pi2:10-33``), as ``--partition`` takes it."""
    return plan_text((device, units[0], units[1]) for device, units in stages)


def plan_line(summary: RunSummary) -> str:
    """The plan the table shows, in the form ``--partition`` takes back."""
    shown = summary.final_plan or summary.plan
    return f"plan: {_stages([(s.device, s.units) for s in shown.stages])}"


def history_lines(summary: RunSummary) -> list[str]:
    """What happened during the run (issue #20): the plan history when the plan changed, every
    lost device with its replays and recovery, the adaptive controller's switches."""
    lines: list[str] = []
    changes, first = summary.plan_changes, summary.plan
    if summary.final_plan is not None and changes:
        first_stages = _stages([(x.device, x.units) for x in first.stages])
        lines.append(f"plan history ({len(changes) + 1} plans; the table shows the last):")
        lines.append(f"  {0.0:7.1f} s  epoch {first.epoch}: {first_stages} (first)")
        lines += [
            f"  {c.time_s:7.1f} s  epoch {c.epoch}: "
            f"{_stages([(x.device, x.units) for x in c.stages])} ({c.reason})"
            for c in changes
        ]
    for f in summary.failures:
        lines.append(
            f"lost {f.device} at {f.time_s:.1f} s ({f.reason}): {f.replayed} "
            f"micro-batches replayed, "
            + (
                "no result after it"
                if f.recovery_s is None
                else f"recovered in {f.recovery_s:.1f} s"
            )
        )
    if summary.replayed or summary.duplicates:
        lines.append(
            f"replayed {summary.replayed} micro-batches in all, "
            f"{summary.duplicates} duplicate results dropped"
        )
    if summary.adaptive is not None:
        a = summary.adaptive
        lines.append(
            f"adaptive: {a.switches} switches in {a.decisions} decisions; last: {a.last or '-'}"
        )
    return lines


def fetch_dataset(dataset: str, data_dir: Path | None, int8: bool) -> None:
    """``--download``: fetch the test split (and the training split, which int8 calibration
    draws from) into the user cache unless found; the run then finds it there."""
    from edgesplit.model import data

    if dataset in data.DATASETS:
        data.load(dataset, "test", data_dir=data_dir, download=True)
        if int8:
            data.load(dataset, "train", data_dir=data_dir, download=True)
