"""``edgesplit report``: plots and an HTML page (or tables) from one or more run folders."""

from __future__ import annotations

from pathlib import Path

import click

from edgesplit.cli import main
from edgesplit.metrics.report import FORMATS, export, write_report


@main.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--compare",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Another run folder to show side by side (repeatable).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder to write into. Default: RUN_DIR.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="html",
    show_default=True,
    help="html: report.html with embedded PNGs (and the PNGs beside it); csv, json, parquet: "
    "the report's tables (devices, stages, latency, runs) for other tools.",
)
def report_command(run_dir: Path, compare: tuple[Path, ...], out: Path | None, fmt: str) -> None:
    """Write an HTML report with plots (or export its tables) from a run folder.

    The pipeline timeline, per-device time series, latency CDF and per-stage time, all on the
    coordinator's clock, plus the per-device table; with --compare, runs side by side.
    """
    if fmt == "html":
        click.echo(f"report: {write_report(run_dir, compare, out)}")
    else:
        for path in export(run_dir, fmt, compare, out):
            click.echo(f"wrote {path}")
