"""``edgesplit split``: show a model's units, or check that a partition reproduces the model."""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch
from rich.console import Console
from rich.table import Table

from edgesplit.cli import main
from edgesplit.model import graph, models
from edgesplit.model.graph import check_partition
from edgesplit.shared.plan import parse_partition


def _human(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def units_table(name: str, ug: graph.UnitGraph) -> Table:
    table = Table(title=f"{name}: {ug.num_units} units (input {list(ug.input_shape)})")
    for column in ("unit", "first node", "last node", "params", "MACs", "out shape", "out KB"):
        table.add_column(
            column, justify="right" if column not in ("first node", "last node") else "left"
        )
    for u in ug.units:
        table.add_row(
            str(u.index),
            u.first,
            u.last,
            _human(u.params),
            _human(u.macs),
            "x".join(map(str, u.out_shape)),
            f"{u.out_bytes / 1024:.2f}",
        )
    return table


@main.command()
@click.option(
    "--model",
    "model_name",
    default=models.DEFAULT_MODEL,
    show_default=True,
    help=f"Model to split: one of {', '.join(models.known_models())}, "
    "path/to/file.py:callable (returning an nn.Module) or a .onnx file.",
)
@click.option(
    "--input-size",
    default=224,
    show_default=True,
    type=click.IntRange(min=16),
    help="Input image height and width in pixels.",
)
@click.option(
    "--num-classes",
    default=10,
    show_default=True,
    type=click.IntRange(min=1),
    help="Number of output classes (the classifier head is sized to it).",
)
@click.option(
    "--in-channels",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    help="Number of input channels.",
)
@click.option(
    "--partition",
    default=None,
    help='Half-open unit ranges, e.g. "0-7,7-15,15-" (last end may be open).',
)
@click.option(
    "--check",
    is_flag=True,
    help="Run a random batch through the whole model and the chained stages of "
    "--partition; exit non-zero unless the outputs are bit-identical.",
)
@click.option(
    "--batch-size",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="Batch size of the --check batch.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the unit table as JSON.")
def split(
    model_name: str,
    input_size: int,
    num_classes: int,
    in_channels: int,
    partition: str | None,
    check: bool,
    batch_size: int,
    as_json: bool,
) -> None:
    """Show a model's units (the pieces it can be cut into), or check a partition.

    A unit ends at a cut point: a place where exactly one tensor is live, so the model can be
    split there and that tensor sent to the next device.
    """
    model: torch.nn.Module | None = None
    if models.is_onnx_model(model_name):
        from edgesplit.engines.onnx_graph import OnnxUnitGraph, compile_file

        ug: graph.UnitGraph = OnnxUnitGraph(compile_file(Path(model_name)))  # type: ignore[assignment]
        input_size = int(ug.input_shape[-1])
    else:
        model = models.build(model_name, num_classes=num_classes, in_channels=in_channels)
        ug = graph.trace(model, (in_channels, input_size, input_size))
    ranges = parse_partition(partition, ug.num_units) if partition is not None else None
    if check and ranges is None:
        raise click.UsageError("--check needs --partition")
    if as_json:
        doc: dict[str, object] = {
            "model": model_name,
            "input_size": input_size,
            "units": [u.to_dict() for u in ug.units],
        }
        if ranges is not None:
            doc["partition"] = [list(r) for r in ranges]
        if check and ranges is not None:
            doc["max_abs_diff"] = check_partition(ug, model, ranges, batch_size)
        click.echo(json.dumps(doc, indent=2))
        return
    console = Console(width=None if Console().is_terminal else 140)
    console.print(units_table(model_name, ug))
    if ranges is not None:
        for i, (start, end) in enumerate(ranges):
            console.print(
                f"stage {i}: units [{start}, {end}) {ug.units[start].first} .. "
                f"{ug.units[end - 1].last}, params {_human(ug.params_in(start, end))}, "
                f"MACs {_human(ug.macs_in(start, end))}"
            )
    if check and ranges is not None:
        diff = check_partition(ug, model, ranges, batch_size)
        console.print(
            f"check: {len(ranges)} stages reproduce the model bit for bit (max |diff| = {diff:g})"
        )
