"""Options shared by several commands: the emulated cluster started when no cluster file is
given (``run``, ``profile``), and what a plan optimises (``run``, ``plan``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def parse_cpus(text: str) -> tuple[float, tuple[float, ...] | None]:
    """``"0.5"`` -> (0.5, None); ``"1,0.5,0.25"`` -> (1.0, (1.0, 0.5, 0.25)) (one per device)."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(
            f"expected a number of cores like 0.5, or one per device like 1,0.5,0.25; got {text!r}"
        ) from None
    if any(not v > 0 for v in values):
        raise click.BadParameter(f"CPU shares must be > 0, got {text!r}")
    return values[0], (values if len(values) > 1 else None)


def emulation_options(f: F) -> F:
    """--cluster, --devices, --cpus, --bandwidth-mbps, --latency-ms, --network."""
    options = [
        click.option(
            "--cluster",
            "cluster_file",
            type=click.Path(path_type=Path),
            default=None,
            help="Cluster file (YAML) of real or emulated devices. Without it, an emulated "
            "cluster of --devices workers is started and stopped after.",
        ),
        click.option(
            "--devices",
            default=3,
            show_default=True,
            type=click.IntRange(1, 64),
            help="Emulated devices to start when no --cluster is given.",
        ),
        click.option(
            "--cpus",
            default="0.5",
            show_default=True,
            help="CPU share of each emulated device in cores, or one share per device "
            "(e.g. 1,0.5,0.25: three devices, overrides --devices).",
        ),
        click.option(
            "--bandwidth-mbps",
            default=940.0,
            show_default=True,
            type=click.FloatRange(min=0),
            help="Emulated link bandwidth in Mbit/s (Gigabit Ethernet's goodput; 0 = unshaped).",
        ),
        click.option(
            "--latency-ms",
            default=0.2,
            show_default=True,
            type=click.FloatRange(min=0),
            help="Emulated one-way link latency in ms.",
        ),
        click.option(
            "--network",
            type=click.Choice(["auto", "hosts", "loopback"]),
            default="auto",
            show_default=True,
            help="Emulated cluster's network: hosts (each device in its own network namespace "
            "with its own address, bandwidth shaped by the kernel; needs root and iproute2), "
            "loopback (bandwidth shaped in the send path), or auto (hosts when possible).",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def objective_options(f: F) -> F:
    """--objective, --max-latency-ms, --min-throughput (the planner's objective and bounds)."""
    options = [
        click.option(
            "--objective",
            type=click.Choice(["throughput", "latency", "energy"]),
            default="throughput",
            show_default=True,
            help="What the plan minimises: the bottleneck stage (images/s), one micro-batch's "
            "end-to-end time, or joules per image.",
        ),
        click.option(
            "--max-latency-ms",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            help="With --objective energy: the plan's predicted latency must stay under this.",
        ),
        click.option(
            "--min-throughput",
            "min_throughput_ips",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            help="With --objective energy: the plan's predicted images/s must reach this.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f
