"""``edgesplit certs``: the cluster CA and the certificates of its devices, for mTLS."""

from __future__ import annotations

from pathlib import Path

import click

from edgesplit.cli import main
from edgesplit.cluster import certs

_DIR = click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
_FORCE = click.option("--force", is_flag=True, help="Replace existing files.")


@main.group("certs")
def certs_group() -> None:
    """Create a cluster CA and sign device certificates for mutual TLS.

    Every end (workers and the coordinator) gets a certificate from the same CA."""


@certs_group.command("init")
@_DIR
@_FORCE
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=certs.CA_DAYS,
    show_default=True,
    help="How long the CA is valid, in days.",
)
def init(directory: Path, force: bool, days: int) -> None:
    """Create the cluster CA in DIRECTORY: ca.pem (share it) and ca.key (keep it; mode 0600)."""
    made = certs.init_ca(directory, force=force, days=days)
    click.echo(f"CA certificate: {made.cert} (valid until {made.not_after:%Y-%m-%d})")
    click.echo(f"CA key:         {made.key} (0600; keep it off the devices)")
    click.echo(f"next: edgesplit certs issue {directory} NAME --host ADDRESS, once per device")


@certs_group.command("issue")
@_DIR
@click.argument("name")
@click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="HOST",
    help="Hostname or IP the device is dialled at (repeatable); NAME, localhost and "
    "127.0.0.1 are always included.",
)
@_FORCE
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=certs.LEAF_DAYS,
    show_default=True,
    help="How long the certificate is valid, in days (at most as long as the CA).",
)
def issue(directory: Path, name: str, hosts: tuple[str, ...], force: bool, days: int) -> None:
    """Sign a certificate for device NAME (or 'coordinator') with the CA in DIRECTORY.

    Writes DIRECTORY/NAME.pem and DIRECTORY/NAME.key (0600). The same pair serves the worker and
    identifies it to its next hop."""
    made = certs.issue(directory, name, hosts, force=force, days=days)
    click.echo(f"certificate: {made.cert} (valid until {made.not_after:%Y-%m-%d})")
    click.echo(f"key:         {made.key} (0600)")
    click.echo(f"names:       {', '.join(made.hosts)}")
    ca = Path(directory) / certs.CA_CERT
    if name == "coordinator":  # the coordinator's files go into the cluster file, not flags
        click.echo(f"cluster file: tls: {{ca: {ca}, cert: {made.cert}, key: {made.key}}}")
    else:
        click.echo(f"worker:      --tls-cert {made.cert} --tls-key {made.key} --tls-ca {ca}")
