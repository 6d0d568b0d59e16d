"""``edgesplit simulate``: a discrete-event simulation of a plan on a profiled (or synthetic)
cluster; no processes, no sockets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from edgesplit.cli import main
from edgesplit.shared.plan import plan_text

if TYPE_CHECKING:
    from edgesplit.config import LinkSpec
    from edgesplit.plan.profile import Profile


@main.command("simulate")
@click.option(
    "--profile",
    "profile_path",
    type=click.Path(path_type=Path),
    default=Path("profile.json"),
    show_default=True,
    help="A profile written by edgesplit profile (or a run folder's profile.json).",
)
@click.option(
    "--devices",
    default=None,
    help="A synthetic cluster of the profile's device kinds, e.g. 16xpi1,4xpi2 (16 copies of "
    "the profile's pi1, 4 of pi2). Default: the profile's own devices.",
)
@click.option(
    "--links",
    "links_file",
    type=click.Path(path_type=Path),
    default=None,
    help="YAML with default_link and links as in a cluster file; with --devices, links "
    "name kinds (between: [pi1, pi2]) or coordinator.",
)
@click.option(
    "--bandwidth-mbps",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="The default link's bandwidth in Mbit/s (default: the profile's).",
)
@click.option(
    "--latency-ms",
    type=click.FloatRange(min=0),
    default=None,
    help="The default link's latency in ms (default: the profile's).",
)
@click.option(
    "--shared-medium",
    is_flag=True,
    help="All transfers share one medium (a hub, Wi-Fi), one at a time; default: each "
    "sender has its own link out (switched Ethernet).",
)
@click.option(
    "--partition",
    default="auto",
    show_default=True,
    help="auto (the planner's plan), a partition like 0-10,10- on the first devices, or a "
    "printed plan naming each stage's device, like pi2:0-10,pi1:10-.",
)
@click.option(
    "--objective",
    type=click.Choice(["throughput", "latency", "energy"]),
    default="throughput",
    show_default=True,
    help="What --partition auto optimises (latency and energy: at most 10 devices).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "int8"]),
    default="fp32",
    show_default=True,
    help="Use the profile's unit times at this precision.",
)
@click.option(
    "--images",
    default=2000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Images to simulate (rounded up to whole micro-batches).",
)
@click.option(
    "--window",
    default=None,
    type=click.IntRange(min=1),
    help="Micro-batches in flight (default: 2 x stages, as edgesplit run).",
)
@click.option(
    "--prepare-ms",
    default=None,
    type=click.FloatRange(min=0),
    help="The coordinator's time to prepare a micro-batch (default: the profile's).",
)
@click.option(
    "--spread",
    default=None,
    type=click.FloatRange(min=0),
    help="Relative standard deviation of every stage time (default: from the profile's "
    "unit spreads; 0 on CPU-share devices).",
)
@click.option(
    "--inject",
    multiple=True,
    help="A fault as in edgesplit run, at simulated time: pi2:kill@5s, pi2:stress@5s+10s, "
    "pi2:pause@5s+1s, link:pi1-pi2:bandwidth=50mbps@5s. Repeatable.",
)
@click.option(
    "--adaptive",
    is_flag=True,
    help="Run the adaptive policy (edgesplit run --adaptive) on the simulated observations "
    "(at most 10 devices).",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the result (JSON) to this file.",
)
def simulate_command(
    profile_path: Path,
    devices: str | None,
    links_file: Path | None,
    bandwidth_mbps: float | None,
    latency_ms: float | None,
    shared_medium: bool,
    partition: str,
    objective: str,
    precision: str,
    images: int,
    window: int | None,
    prepare_ms: float | None,
    spread: float | None,
    inject: tuple[str, ...],
    adaptive: bool,
    seed: int,
    as_json: bool,
    out: Path | None,
) -> None:
    """Simulate running a plan on a cluster described by profiles.

    Micro-batches flow through the stages with the coordinator's window, preparation and
    upload, each device's stage times (CPU shares, spread) and each link's latency and
    bandwidth. Prints throughput, the latency distribution, per-device utilisation and joules
    per image; with --inject, how the run recovers.
    """
    from edgesplit.adapt.policy import AdaptPolicy
    from edgesplit.cluster.faults import parse_injection
    from edgesplit.plan.profile import load_profile
    from edgesplit.simulate import (
        SimConfig,
        cluster_from,
        fixed_stages,
        plan_for,
        replanner,
        simulate,
    )
    from edgesplit.simulate.synthetic import load_links, parse_devices

    profile = load_profile(profile_path)
    default_link, links = load_links(links_file) if links_file else (None, [])
    default_link = _with_link_options(profile, default_link, bandwidth_mbps, latency_ms)
    cluster = cluster_from(
        profile,
        parse_devices(devices) if devices else None,
        default_link,
        links,
        precision,
        prepare_ms,
        spread,
        shared_medium,
    )
    if partition == "auto":
        stages = plan_for(cluster, objective).assignment()
    else:
        stages = fixed_stages(cluster, partition)
    config = SimConfig(
        images=images,
        window=window,
        seed=seed,
        injections=tuple(parse_injection(spec) for spec in inject),
        adaptive=AdaptPolicy() if adaptive else None,
    )
    result = simulate(cluster.spec, stages, config, replanner(cluster, stages, objective))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1))
        return
    click.echo(f"plan: {plan_text(stages)}")
    click.echo(result.table())


def _with_link_options(
    profile: Profile, link: LinkSpec | None, bandwidth_mbps: float | None, latency_ms: float | None
) -> LinkSpec | None:
    """The default link (of the links file, else the profile's) with --bandwidth-mbps and
    --latency-ms applied where given."""
    from edgesplit.config import LinkSpec

    if bandwidth_mbps is None and latency_ms is None:
        return link
    base = link or LinkSpec(
        bandwidth_mbps=profile.default_bandwidth_mbps, latency_ms=profile.default_latency_ms
    )
    return LinkSpec(
        bandwidth_mbps=bandwidth_mbps if bandwidth_mbps is not None else base.bandwidth_mbps,
        latency_ms=latency_ms if latency_ms is not None else base.latency_ms,
    )
