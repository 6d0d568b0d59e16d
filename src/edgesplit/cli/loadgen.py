"""``edgesplit loadgen``: load an ``edgesplit serve`` server and measure latency against load."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgesplit.cli import main
from edgesplit.errors import ConfigError


@main.command("loadgen")
@click.option(
    "--url", default="http://127.0.0.1:8000", show_default=True, help="The server to load."
)
@click.option(
    "--mode",
    type=click.Choice(["poisson", "closed"]),
    default="poisson",
    show_default=True,
    help="poisson: open loop, requests arrive as a Poisson process at each --qps level "
    "(MLPerf's server scenario); closed: --clients clients each send the next request when "
    "the last is answered.",
)
@click.option(
    "--qps",
    default="10",
    show_default=True,
    help="Open-loop load levels in requests/s: one (10), a list (5,10,20) or a range "
    "start:stop:step (10:100:10).",
)
@click.option(
    "--clients",
    default="4",
    show_default=True,
    help="Closed-loop client counts, as --qps (e.g. 1,2,4,8).",
)
@click.option(
    "--duration",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds per load level.",
)
@click.option(
    "--images-per-request",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Images in each request.",
)
@click.option(
    "--dataset",
    default="fashion-mnist",
    show_default=True,
    help="Send the first test images of this dataset (as PNG).",
)
@click.option(
    "--image",
    "image_files",
    multiple=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Send these JPEG/PNG files instead of dataset images (repeatable).",
)
@click.option(
    "--p99-ms",
    default=250.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="The latency bound: the highest level whose p99 meets it with no failed request is "
    "reported.",
)
@click.option(
    "--timeout", default=30.0, show_default=True, type=float, help="Client timeout per request (s)."
)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write results as JSON.")
@click.option(
    "--plot",
    "plot_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Write a PNG of p50/p99 latency against load.",
)
@click.option(
    "--samples", is_flag=True, help="With --out: every request's start, latency and status too."
)
def loadgen_command(
    url: str,
    mode: str,
    qps: str,
    clients: str,
    duration: float,
    images_per_request: int,
    dataset: str,
    image_files: tuple[Path, ...],
    p99_ms: float,
    timeout: float,
    out: Path | None,
    plot_file: Path | None,
    samples: bool,
) -> None:
    """Load an edgesplit server (Poisson or N clients); latency vs load.

    Sends requests at one or more load levels; prints a table of p50/p99 latency against load
    and the highest load that meets --p99-ms."""
    from edgesplit.serve import loadgen

    levels = loadgen.parse_levels(qps if mode == "poisson" else clients)
    if mode == "closed" and any(level != int(level) for level in levels):
        raise ConfigError(f"--clients must be whole numbers, got {clients!r}")
    server = loadgen.wait_until_up(url, timeout_s=10.0)
    if image_files:
        payloads = [path.read_bytes() for path in image_files]
    else:
        payloads = loadgen.dataset_payloads(dataset, 256)
    spec = loadgen.LoadSpec(url, mode, tuple(levels), duration, images_per_request, timeout)
    say = lambda text: click.echo(text, err=True)  # noqa: E731
    points = loadgen.sweep(spec, payloads, say)
    click.echo(loadgen.table(points))
    best = loadgen.best_qps(points, p99_ms)
    if best is None:
        click.echo(f"no level met p99 <= {p99_ms:g} ms with no failed request")
    else:
        click.echo(f"highest load meeting p99 <= {p99_ms:g} ms: {round(best, 1):g} requests/s")
    if plot_file is not None:
        loadgen.plot({"": points}, plot_file, p99_ms, title=f"{server.get('model')} at {url}")
        click.echo(f"plot: {plot_file}")
    if out is not None:
        result = {
            "url": url,
            "mode": mode,
            "duration_s": duration,
            "images_per_request": images_per_request,
            "p99_ms_bound": p99_ms,
            "best_qps": best,
            "points": [p.to_dict(with_samples=samples) for p in points],
            "server": {k: server.get(k) for k in ("model", "engine", "input_size", "plan")},
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        click.echo(f"results: {out}")
