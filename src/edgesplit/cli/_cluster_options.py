"""Options shared by several commands: the emulated cluster started when no cluster file is
given (``run``, ``profile``, ``serve``), the model (the same three), what a plan optimises
(``run``, ``plan``, ``serve``), and the one mapping of options onto a ``RunConfig``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from edgesplit.runconfig import RunConfig

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


def model_options(
    dataset_help: str, input_size_help: str, weights: bool = True
) -> Callable[[F], F]:
    """--model, --dataset, --input-size and (``weights``) --checkpoint, --random-weights; the
    help of --dataset and --input-size says what the command does with them."""
    from edgesplit.model import models

    options = [
        click.option(
            "--model",
            "model_name",
            default=models.DEFAULT_MODEL,
            show_default=True,
            help=f"Model: one of {', '.join(models.known_models())}, path/to/file.py:callable "
            "(returning an nn.Module) or a .onnx file.",
        ),
        click.option("--dataset", default="fashion-mnist", show_default=True, help=dataset_help),
        *(_weight_options() if weights else []),
        click.option(
            "--input-size", default=None, type=click.IntRange(min=16), help=input_size_help
        ),
    ]

    def decorate(f: F) -> F:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def _weight_options() -> list[Callable[[F], F]]:
    return [
        click.option(
            "--checkpoint",
            type=click.Path(path_type=Path),
            default=None,
            help="Weights (.safetensors + .json sidecar). Default: the shipped checkpoint "
            "for the model and dataset, if any, else random weights (with a note).",
        ),
        click.option(
            "--random-weights",
            is_flag=True,
            help="Use random weights even if a checkpoint is shipped (timing runs).",
        ),
    ]


RENAMED = {"model_name": "model", "heartbeat_deadline": "heartbeat_deadline_s"}
"""Options whose name is not the :class:`~edgesplit.runconfig.RunConfig` field's."""


def run_config(options: dict[str, Any], **fields: Any) -> RunConfig:
    """The one mapping from command-line options (click's parameter names) to a
    :class:`~edgesplit.runconfig.RunConfig`: options named like a field (or in
    :data:`RENAMED`) fill it, others are ignored; ``--cpus`` gives ``cpus`` and ``cpus_each``,
    ``--bandwidth-mbps 0`` means unshaped, ``--adapt-*`` make the adaptive policy.
    ``fields`` are set as given (they win over options)."""
    import dataclasses

    from edgesplit.adapt.policy import AdaptPolicy
    from edgesplit.runconfig import RunConfig

    known = {f.name for f in dataclasses.fields(RunConfig)}
    values = {RENAMED.get(k, k): v for k, v in options.items() if RENAMED.get(k, k) in known}
    if "cpus" in options:
        values["cpus"], values["cpus_each"] = parse_cpus(options["cpus"])
    if "bandwidth_mbps" in options:
        values["bandwidth_mbps"] = options["bandwidth_mbps"] or None
    if "adapt_threshold" in options:
        values["adapt_policy"] = AdaptPolicy(
            options["adapt_threshold"], options["adapt_hold"], options["adapt_interval"]
        )
    return RunConfig(**{**values, **fields})
