"""``edgesplit emulate``: run N real workers on this machine until Ctrl-C."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edgesplit.cli import main
from edgesplit.cluster.emulate import (
    EmulatedCluster,
    EmulatedDevice,
    cluster_table,
    default_worker_cmd,
    exit_on_sigterm,
    template_worker_cmd,
    uniform_devices,
)
from edgesplit.cluster.faults import Injector, parse_injections
from edgesplit.config import LinkSpec
from edgesplit.errors import ConfigError

MECHANISMS = ("auto", "cgroup-v2", "cgroup-v1", "affinity", "none")


def _overrides(devices: list[EmulatedDevice], items: tuple[str, ...]) -> list[EmulatedDevice]:
    cpus: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            cpus[name] = float(value) if sep else float("nan")
        except ValueError:
            cpus[name] = float("nan")
        if cpus[name] != cpus[name]:
            raise ConfigError(f"--device-cpus expects NAME=CPUS like pi2=0.25, got {item!r}")
    unknown = sorted(set(cpus) - {d.name for d in devices})
    if unknown:
        raise ConfigError(f"--device-cpus names unknown devices {unknown}")
    return [EmulatedDevice(d.name, cpus.get(d.name, d.cpus), d.threads) for d in devices]


@main.command()
@click.option(
    "--devices",
    "-n",
    "n",
    type=click.IntRange(1, 64),
    required=True,
    help="Number of emulated devices (named pi1..piN).",
)
@click.option(
    "--cpus",
    type=float,
    default=0.5,
    show_default=True,
    help="CPU share of each device in cores (0.5 = half of one core).",
)
@click.option(
    "--device-cpus",
    multiple=True,
    metavar="NAME=CPUS",
    help="Override one device's CPU share, e.g. pi3=0.25 (repeatable).",
)
@click.option(
    "--threads",
    type=click.IntRange(1),
    default=None,
    help="Worker threads per device [default: max(1, ceil(cpus))].",
)
@click.option(
    "--bandwidth-mbps",
    type=float,
    default=940.0,
    show_default=True,
    help="Default link bandwidth in Mbit/s (0 = unshaped).",
)
@click.option(
    "--latency-ms",
    type=float,
    default=0.2,
    show_default=True,
    help="Default link one-way latency in ms.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the cluster file here [default: cluster.yaml in the cluster folder].",
)
@click.option(
    "--folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for token, ready files and worker logs [default: a temporary one, "
    "removed on exit].",
)
@click.option(
    "--base-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="First worker port (pi1 gets it, pi2 the next...); 0 = any free port.",
)
@click.option(
    "--mechanism",
    type=click.Choice(MECHANISMS),
    default="auto",
    show_default=True,
    help="How CPU shares are enforced; auto picks cgroups when writable, else affinity.",
)
@click.option(
    "--ready-timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds to wait for every worker to report ready.",
)
@click.option("--worker-command", default=None, metavar="TEMPLATE",
              help="Run this instead of 'python -m edgesplit worker'; placeholders {name} "
              "{listen} {token_file} {threads} {ready_file}.")  # fmt: skip
@click.option(
    "--hosts",
    is_flag=True,
    help="Each device in its own network namespace with its own address on a bridge (the "
    "coordinator on the bridge's address), link bandwidth shaped by the kernel (tc htb), "
    "workers on port 50051 and the result service on 50052. Needs root and iproute2.",
)
@click.option(
    "--inject",
    multiple=True,
    metavar="SPEC",
    help='Fault injection, seconds after the cluster is up (repeatable): "pi3:kill@20s", '
    '"pi2:pause@15s+5s", "pi2:stress@10s", "link:pi1-pi2:bandwidth=50mbps@10s". '
    "Each firing is printed and appended to injected.jsonl in the cluster folder.",
)
def emulate(
    n: int,
    cpus: float,
    device_cpus: tuple[str, ...],
    threads: int | None,
    bandwidth_mbps: float,
    latency_ms: float,
    out: Path | None,
    folder: Path | None,
    base_port: int,
    mechanism: str,
    ready_timeout: float,
    worker_command: str | None,
    hosts: bool,
    inject: tuple[str, ...],
) -> None:
    """Start an emulated cluster of N real worker processes on this machine; Ctrl-C stops it."""
    devices = _overrides(uniform_devices(n, cpus, threads), device_cpus)
    injections = parse_injections(inject, [d.name for d in devices])
    if latency_ms < 0:
        raise ConfigError(f"--latency-ms must be >= 0, got {latency_ms}")
    link = LinkSpec(bandwidth_mbps=bandwidth_mbps if bandwidth_mbps > 0 else None,
                    latency_ms=latency_ms)  # fmt: skip
    if hosts:
        from edgesplit.cluster.emulate_hosts import check_available

        check_available()  # before anything starts
    worker_cmd = template_worker_cmd(worker_command) if worker_command else default_worker_cmd
    with exit_on_sigterm():
        cluster = EmulatedCluster.start(
            devices,
            link,
            worker_cmd=worker_cmd,
            folder=folder,
            base_port=base_port,
            mechanism=mechanism,  # type: ignore[arg-type]  # click.Choice checked it
            ready_timeout_s=ready_timeout,
            hosts=hosts,
        )
        with cluster:
            path = cluster.write_spec(out if out is not None else cluster.folder / "cluster.yaml")
            click.echo(cluster_table(cluster.spec))
            click.echo(_mode(cluster))
            click.echo(f"cluster file: {path}\nlogs: {cluster.folder}\nCtrl-C to stop.")
            injector = None
            if injections:
                injector = Injector(cluster, injections, _recorder(cluster.folder)).start()
            try:
                _watch(cluster)
            finally:
                if injector is not None:
                    injector.stop()


def _mode(cluster: EmulatedCluster) -> str:
    if cluster.network is None:
        return "network: loopback (bandwidth and latency added in the send path)"
    spec = cluster.spec
    return (
        f"network: emulated hosts, one network namespace each (ip netns: "
        f"{cluster.network.layout.tag}-NAME), coordinator_host {spec.coordinator_host}, "
        f"result_port {spec.result_port}; bandwidth shaped by the kernel (tc htb), latency "
        "added in the send path (no netem here)"
    )


def _recorder(folder: Path) -> Callable[[dict[str, Any]], None]:
    """Print each injection as it fires and append it to ``folder/injected.jsonl``."""
    path = folder / "injected.jsonl"

    def record(event: dict[str, Any]) -> None:
        with open(path, "a") as f:
            f.write(json.dumps(event) + "\n")
        error = f" FAILED: {event['error']}" if "error" in event else ""
        click.echo(f"injected {event['spec']} ({event['action']}){error}", err=True)

    return record


def _watch(cluster: EmulatedCluster) -> None:
    """Run until interrupted, saying once when a worker exits on its own."""
    reported: set[str] = set()
    try:
        while True:
            for name, code in cluster.poll().items():
                if code is not None and name not in reported:
                    reported.add(name)
                    click.echo(f"{name} exited with code {code}; see {cluster.log_path(name)}",
                               err=True)  # fmt: skip
            time.sleep(0.5)
    except KeyboardInterrupt:
        click.echo("stopping", err=True)
