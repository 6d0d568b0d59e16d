"""``edgesplit profile``: time every unit on every device and probe the links."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import torch
from rich.console import Console

from edgesplit.app.job import RunConfig, default_input_size, profile_job
from edgesplit.cli import main
from edgesplit.cli._cluster_options import emulation_options, model_options, run_config
from edgesplit.config import load_cluster
from edgesplit.plan.profile import Profile, ProfileSettings, boundary_bytes


@main.command("profile")
@emulation_options
@model_options(
    dataset_help="Dataset whose class count shapes the model's head (times barely depend on it).",
    input_size_help="Input size in pixels. Default: the shipped checkpoint's, or 224.",
    weights=False,
)
@click.option(
    "--batch-size",
    default=16,
    show_default=True,
    type=click.IntRange(1, 256),
    help="Images per micro-batch (profile at the batch size you will run).",
)
@click.option(
    "--repeats",
    default=7,
    show_default=True,
    type=click.IntRange(1, 50),
    help="Timed passes per device; the profile keeps the median and the spread.",
)
@click.option(
    "--warmup", default=2, show_default=True, type=click.IntRange(0, 50), help="Untimed passes."
)
@click.option(
    "--engine",
    type=click.Choice(["torch", "onnxruntime"]),
    default=None,
    help="Engine the units are timed on (fp32). Default: the workers' default "
    "(onnxruntime when installed).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "int8"]),
    default="fp32",
    show_default=True,
    help="int8: also time every unit quantized (onnxruntime; calibrated on random images, "
    "which does not change the speed), so edgesplit plan --precision int8 can use them.",
)
@click.option(
    "--reprofile", is_flag=True, help="Measure again even when a cached device profile fits."
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("profile.json"),
    show_default=True,
    help="Where to write the profile (JSON, input of edgesplit plan).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the profile JSON too.")
def profile_command(**options: Any) -> None:
    """Time every unit on every device and probe the links.

    Each device times each unit of the model for one micro-batch (warm-up passes, then the
    median and interquartile range of --repeats passes), reports its memory, and every link
    (coordinator to each device, each pair of devices) is probed with timed transfers of
    several sizes to fit its latency and bandwidth. Device profiles are cached and reused
    unless --reprofile. Without --cluster an emulated cluster is started for the profile.
    """
    cluster_file, precision, out = options["cluster_file"], options["precision"], options["out"]
    cluster = load_cluster(cluster_file) if cluster_file is not None else None
    # engine, precision, reprofile and out are the profile's, not a run's
    config = run_config(options, engine=None, precision="fp32", reprofile=False, out=None)
    settings = ProfileSettings(
        batch_size=options["batch_size"],
        warmup=options["warmup"],
        repeats=options["repeats"],
        reprofile=options["reprofile"],
        engine=options["engine"],
        precisions=("fp32", precision),
        calibration=random_calibration(config) if precision == "int8" else None,
    )
    console = Console(stderr=True)
    with console.status("profiling") as status:

        def phase(text: str) -> None:
            status.update(text)
            if not console.is_terminal:
                click.echo(f"edgesplit: {text}", err=True)

        profile = profile_job(config, cluster, settings, phase)
    profile.save(out)
    if options["as_json"]:
        click.echo(json.dumps(profile.to_dict(), indent=1))
    else:
        Console(width=None if console.is_terminal else 1000).print(profile_table(profile))
    click.echo(f"profile: {out}", err=True)


def random_calibration(config: RunConfig, images: int = 32) -> torch.Tensor:
    """Seeded random model inputs: int8 unit *times* do not depend on what calibrates them."""
    size = config.input_size or default_input_size(config.model, config.dataset)
    generator = torch.Generator().manual_seed(config.seed)
    return torch.randn(images, 3, size, size, generator=generator)


def profile_table(profile: Profile) -> str:
    """Devices (the whole model's compute as the planner sees it, the units' spread, memory)
    and links (latency, bandwidth) as text."""
    cuts = boundary_bytes(profile)
    n = len(profile.units)
    lines = [
        f"{profile.model} at {profile.input_size} px, batch {profile.batch_size}, {n} units; "
        "model ms: the whole model as one stage on the device, sustained (the planner's cost)",
        f"{'device':<12} {'model ms':>11} {'spread ms':>10} {'threads':>7} {'cpus':>5} "
        f"{'memory MB':>10} {'cached':>6} engine",
    ]
    for d in profile.devices:
        budget = f"{d.memory_budget_bytes / 2**20:.0f}" if d.memory_budget_bytes else "-"
        cpus = f"{d.cpus:g}" if d.cpus is not None else "-"
        lines.append(
            f"{d.name:<12} {d.stage_ms(0, n, cuts):>11.2f} {sum(d.unit_spread_ms):>10.2f} "
            f"{d.threads:>7} {cpus:>5} {budget:>10} {'yes' if d.cached else 'no':>6} {d.engine}"
        )
        for precision in d.precisions[1:]:
            ms = d.stage_ms(0, n, cuts, precision)
            lines.append(f"{'':<12} {ms:>11.2f}   at {precision}")
        if d.power_fit:
            fit = d.power_fit
            lines.append(
                f"{'':<12} power fitted to {fit['source']}: idle {fit['idle_w']:.2f} W, busy "
                f"{fit['busy_w']:.2f} W (residual {fit['residual_w']:.3f} W, "
                f"{fit['readings']} readings)"
            )
    lines.append(f"{'link':<24} {'latency ms':>10} {'Mbit/s':>9}")
    for k in profile.links:
        bw = f"{k.bandwidth_mbps:.0f}" if k.bandwidth_mbps else "unmeasurable"
        lines.append(f"{k.a + ' - ' + k.b:<24} {k.latency_ms:>10.3f} {bw:>9}")
    return "\n".join(lines)
