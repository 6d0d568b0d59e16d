"""``edgesplit report``: plots and an HTML page (or tables) from one or more run folders."""

from __future__ import annotations

from pathlib import Path

import click

from edgesplit.cli import main
from edgesplit.errors import ConfigError
from edgesplit.metrics import manifest, resultlog
from edgesplit.metrics.report import (
    FORMATS,
    completion_line,
    export,
    write_partial_report,
)
from edgesplit.shared import runsummary


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
    coordinator's clock, plus the per-device table; with --compare, runs side by side and
    where their configurations differ (manifest.json). A run that did not finish says how many
    images completed; one whose coordinator was killed gets a page from its manifest and
    results.jsonl.
    """
    written_at_end = ("summary.json", "devices.csv", "requests.csv")
    if (run_dir / resultlog.FILE).exists() and not any(
        (run_dir / name).exists() for name in written_at_end
    ):
        # The coordinator was killed: the manifest and the result log are all there is.
        click.echo(completion_line(run_dir, None))
        if fmt != "html":
            raise ConfigError(f"{run_dir} has no summary.json: only --format html can be written")
        click.echo(f"report: {write_partial_report(run_dir, out)}")
        return
    if fmt == "html":
        from edgesplit.metrics.plots import write_report  # matplotlib: only when drawing

        click.echo(f"report: {write_report(run_dir, compare, out)}")
    else:
        for path in export(run_dir, fmt, compare, out):
            click.echo(f"wrote {path}")
    if line := completion_line(run_dir, runsummary.read(run_dir)):
        click.echo(line)
    for other in compare:
        _print_differences(run_dir, other)


def _print_differences(a: Path, b: Path) -> None:
    """Where the two runs' configurations and environments differ (their manifests)."""
    if not (a / manifest.FILE).exists() or not (b / manifest.FILE).exists():
        click.echo(f"{a} or {b} has no {manifest.FILE}: configurations not compared")
        return
    lines = manifest.differences(manifest.read(a), manifest.read(b))
    click.echo(f"configuration {a} -> {b}: " + ("the same" if not lines else ""))
    for line in lines:
        click.echo(f"  {line}")
