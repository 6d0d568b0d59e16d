"""``edgesplit doctor``: check this machine and, with --cluster, every device of a cluster."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgesplit.cli import main
from edgesplit.cluster import doctor as checks
from edgesplit.config import load_cluster


@main.command("doctor")
@click.option(
    "--cluster",
    "cluster_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also check every device of this cluster file (reachable, token, TLS, versions, "
    "round trip and clock offset).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor_command(cluster_file: Path | None, as_json: bool) -> None:
    """Check this machine (and a cluster) and print OK / WARN / FAIL with a fix for each.

    Exits 1 if any check FAILs, 0 otherwise (WARN included)."""
    results = checks.local_checks()
    if cluster_file is not None:
        results += checks.cluster_checks(load_cluster(cluster_file))
    failed = any(c.status == "FAIL" for c in results)
    if as_json:
        doc = {"ok": not failed, "checks": [c.to_dict() for c in results]}
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(checks.table(results))
    if failed:
        sys.exit(1)
