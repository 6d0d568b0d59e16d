"""``edgesplit plan``: the best partition for an objective, from a profile."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgesplit.cli import main
from edgesplit.cli._cluster_options import objective_options


@main.command("plan")
@click.option(
    "--profile",
    "profile_path",
    type=click.Path(path_type=Path),
    default=Path("profile.json"),
    show_default=True,
    help="A profile written by edgesplit profile.",
)
@objective_options
@click.option(
    "--devices",
    default=None,
    help="Comma-separated device names the plan may use (default: all in the profile).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "int8"]),
    default="fp32",
    show_default=True,
    help="Plan with the profile's unit times at this precision (int8 needs a profile "
    "made with edgesplit profile --precision int8).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan_command(
    profile_path: Path,
    objective: str,
    devices: str | None,
    max_latency_ms: float | None,
    min_throughput_ips: float | None,
    precision: str,
    as_json: bool,
) -> None:
    """The best partition for an objective, from a profile.

    Prints the stages (device, unit range, first and last layer, predicted compute, transfer,
    memory and energy) and the predicted bottleneck, throughput, latency and joules per
    image. Use the printed partition with edgesplit run --partition, or let
    edgesplit run --partition auto profile and plan in one go.
    """
    from edgesplit.autoplan import PlanRequest, plan
    from edgesplit.profiler import load_profile

    profile = load_profile(profile_path)
    names = tuple(n.strip() for n in devices.split(",") if n.strip()) if devices else None
    for name in names or ():
        profile.device(name)  # a clear error for an unknown name
    request = PlanRequest(objective, max_latency_ms, min_throughput_ips, names, precision)
    chosen = plan(profile, request)
    if as_json:
        click.echo(json.dumps(chosen.to_dict(), indent=2))
        return
    click.echo(chosen.table())  # includes the plan's notes
    click.echo(
        f"partition: {chosen.partition()}  (devices: {', '.join(s.device for s in chosen.stages)})"
    )
