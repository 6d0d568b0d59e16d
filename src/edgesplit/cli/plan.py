"""``edgesplit plan``: the best partition for an objective, from a profile."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from edgesplit.cli import main
from edgesplit.cli._cluster_options import objective_options
from edgesplit.errors import ConfigError
from edgesplit.shared.plan import plan_text

if TYPE_CHECKING:
    from edgesplit.plan.profile import Profile


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
@click.option(
    "--target-ips",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Instead of a plan for the profile's cluster: the smallest cluster drawn from "
    "--catalogue that reaches this many images/s (with p50 latency under --max-latency-ms "
    "if given), planned and checked by the simulator.",
)
@click.option(
    "--catalogue",
    default=None,
    help="With --target-ips: the devices available, as COUNTxKIND of the profile's device "
    "names, e.g. 48xpi1,16xpi2 (default: the profile's devices, one of each).",
)
@click.option(
    "--by",
    type=click.Choice(["count", "watts"]),
    default="count",
    show_default=True,
    help="With --target-ips: smallest by device count, or by watts (the devices' power "
    "with all cores busy).",
)
@click.option(
    "--links",
    "links_file",
    type=click.Path(path_type=Path),
    default=None,
    help="With --target-ips: YAML with default_link and links between kinds, as in a "
    "cluster file (default: the profile's default link).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan_command(
    profile_path: Path,
    objective: str,
    devices: str | None,
    max_latency_ms: float | None,
    min_throughput_ips: float | None,
    precision: str,
    target_ips: float | None,
    catalogue: str | None,
    by: str,
    links_file: Path | None,
    as_json: bool,
) -> None:
    """The best partition for an objective, from a profile.

    Prints the stages (device, unit range, first and last layer, predicted compute, transfer,
    memory and energy) and the predicted bottleneck, throughput, latency and joules per
    image. Use the printed partition with edgesplit run --partition, or let
    edgesplit run --partition auto profile and plan in one go.

    With --target-ips: the smallest cluster from a device catalogue that meets the target
    (see edgesplit simulate).
    """
    from edgesplit.plan.autoplan import PlanRequest, plan
    from edgesplit.plan.profile import load_profile

    profile = load_profile(profile_path)
    if target_ips is not None:
        if objective != "throughput" or min_throughput_ips is not None or devices is not None:
            raise ConfigError(
                "--target-ips plans for throughput over --catalogue; --objective, "
                "--min-throughput and --devices do not apply"
            )
        _target(profile, target_ips, max_latency_ms, catalogue, by, links_file, precision, as_json)
        return
    if catalogue is not None or links_file is not None:
        raise ConfigError("--catalogue and --links go with --target-ips")
    names = tuple(n.strip() for n in devices.split(",") if n.strip()) if devices else None
    for name in names or ():
        profile.device(name)  # a clear error for an unknown name
    request = PlanRequest(objective, max_latency_ms, min_throughput_ips, names, precision)
    chosen = plan(profile, request)
    if as_json:
        click.echo(json.dumps(chosen.to_dict(), indent=2))
        return
    click.echo(chosen.table())  # includes the plan's notes
    click.echo(f"partition: {plan_text(chosen.assignment())}  (as --partition takes it)")


def _target(
    profile: Profile,
    target_ips: float,
    max_latency_ms: float | None,
    catalogue: str | None,
    by: str,
    links_file: Path | None,
    precision: str,
    as_json: bool,
) -> None:
    from edgesplit.simulate import cluster_from
    from edgesplit.simulate.synthetic import load_links, parse_devices
    from edgesplit.simulate.target import smallest_cluster

    kinds = parse_devices(catalogue) if catalogue else [(1, d.name) for d in profile.devices]
    default_link, links = load_links(links_file) if links_file else (None, [])
    cluster = cluster_from(profile, kinds, default_link, links, precision)
    answer = smallest_cluster(
        cluster,
        target_ips,
        max_latency_ms,
        by="watts" if by == "watts" else "count",
    )
    if as_json:
        click.echo(json.dumps(answer.to_dict(), indent=2))
        return
    click.echo(answer.summary())
    click.echo(f"plan: {plan_text(answer.stages)}")
