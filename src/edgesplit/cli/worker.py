"""``edgesplit worker``: serve one device's Worker until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path
from types import FrameType

import click

from edgesplit.cli import main
from edgesplit.config import TlsSpec, env_token, load_cluster, read_token_file
from edgesplit.engines import resolve_engine
from edgesplit.engines.ort_session import lean_allocator
from edgesplit.errors import ConfigError
from edgesplit.runtime.power import COMMAND_TIMEOUT_S, PowerSettings
from edgesplit.runtime.worker import RunningWorker, WorkerConfig, serve
from edgesplit.shared.timeouts import TIMEOUTS

log = logging.getLogger(__name__)


def _write_atomically(path: Path, text: str) -> None:
    """Launchers poll for this file, so it must never be seen half-written."""
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text + "\n")
    os.replace(tmp, path)


def _tls(cert: Path | None, key: Path | None, ca: Path | None) -> TlsSpec | None:
    given = [p for p in (cert, key, ca) if p is not None]
    if not given:
        return None
    if len(given) != 3:
        raise ConfigError("mTLS needs all of --tls-cert, --tls-key and --tls-ca")
    assert cert is not None and key is not None and ca is not None
    return TlsSpec(ca=ca, cert=cert, key=key)


def _power_settings(
    cluster_file: Path | None,
    name: str,
    command: str | None,
    channels: tuple[str, ...],
    timeout_s: float | None,
    sensors: bool,
) -> PowerSettings:
    """This device's entry of the cluster file (if given), with the flags winning."""
    settings = PowerSettings(sensors=sensors)
    if cluster_file is not None:
        device = load_cluster(cluster_file).device(name)
        settings = PowerSettings(
            device.power_command, tuple(device.power_channels), device.power_timeout_s, sensors
        )
    return PowerSettings(
        command or settings.command,
        channels or settings.channels,
        timeout_s or settings.timeout_s,
        sensors,
    )


def _serve_metrics(running: RunningWorker, name: str, port: int, addr: str) -> None:
    from edgesplit.metrics import worker_prometheus

    metrics = worker_prometheus.WorkerMetrics(name, running.worker)
    try:
        worker_prometheus.serve(metrics, port, addr)
    except OSError as exc:
        raise ConfigError(f"--metrics-port {port}: cannot listen on {addr}: {exc}") from None
    running.worker.on_computed = metrics.on_computed
    click.echo(f"worker {name} metrics on http://{addr}:{port}/metrics", err=True)


@main.command()
@click.option(
    "--listen",
    default="0.0.0.0:50051",
    show_default=True,
    help="HOST:PORT to serve on; port 0 picks a free port (see --ready-file).",
)
@click.option("--name", required=True, help="This device's name, as in the cluster file.")
@click.option(
    "--token-file",
    type=click.Path(path_type=Path),
    help="File holding the cluster token (default: $EDGESPLIT_TOKEN).",
)
@click.option(
    "--insecure-no-token",
    is_flag=True,
    help="Serve without token auth (only on a trusted, isolated network).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="Intra-op threads for stage compute (default: the CPUs this process may run on).",
)
@click.option(
    "--engine",
    type=click.Choice(["torch", "onnxruntime"]),
    default=None,
    help="Stage executor when a plan names none. Default: onnxruntime when installed, else torch.",
)
@click.option(
    "--tls-cert",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="PEM certificate of this worker (mTLS; needs --tls-key and --tls-ca).",
)
@click.option(
    "--tls-key",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="PEM private key of this worker.",
)
@click.option(
    "--tls-ca",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="PEM CA that signs the cluster's certificates; clients must present one.",
)
@click.option(
    "--ready-file",
    type=click.Path(path_type=Path),
    help="Write the bound HOST:PORT here (atomically) once serving.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve this device's Prometheus metrics (sampler, queues, stage counters) on "
    "--metrics-addr:PORT/metrics.",
)
@click.option(
    "--metrics-addr",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics server binds to; 0.0.0.0 exposes it to the network (no auth).",
)
@click.option(
    "--cluster",
    "cluster_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Read this device's power_command / power_channels from its entry (--name) of this "
    "cluster file.",
)
@click.option(
    "--power-command",
    help="A program that prints this device's power in watts; used when no hwmon sensor or "
    "Pi 5 PMIC is found (overrides the cluster file's power_command).",
)
@click.option(
    "--power-channel",
    "power_channels",
    multiple=True,
    help="hwmon channel that counts toward this device's power, CHIP or CHIP:CHANNEL "
    "(e.g. ina3221:1); repeatable. Default: the first INA power monitor, all channels.",
)
@click.option(
    "--power-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help=f"Seconds before --power-command is killed (default {COMMAND_TIMEOUT_S:g}).",
)
@click.option(
    "--max-memory-mb",
    type=click.IntRange(min=64),
    default=None,
    help="Memory budget of this worker in MB: work that would pass it is refused with "
    "RESOURCE_EXHAUSTED (retried by the coordinator). Default: half the device's RAM.",
)
@click.option(
    "--power-sensors/--no-power-sensors",
    default=True,
    show_default=True,
    help="Look for hwmon power monitors and the Pi 5 PMIC (emulated devices do not: the host's "
    "meter is not theirs).",
)
def worker(
    listen: str,
    name: str,
    token_file: Path | None,
    insecure_no_token: bool,
    threads: int | None,
    engine: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
    ready_file: Path | None,
    metrics_port: int | None,
    metrics_addr: str,
    cluster_file: Path | None,
    power_command: str | None,
    power_channels: tuple[str, ...],
    power_timeout: float | None,
    max_memory_mb: int | None,
    power_sensors: bool,
) -> None:
    """Serve this device's stages of a split model until SIGTERM or SIGINT."""
    lean_allocator()  # before any thread starts (see its doc)
    token = read_token_file(token_file) if token_file is not None else env_token()
    engine, note = resolve_engine(engine)
    if note:
        click.echo(f"note: {note}", err=True)
    config = WorkerConfig(
        name=name,
        token=token,
        threads=threads,
        engine=engine,
        tls=_tls(tls_cert, tls_key, tls_ca),
        power=_power_settings(
            cluster_file, name, power_command, power_channels, power_timeout, power_sensors
        ),
        max_memory_bytes=max_memory_mb * 2**20 if max_memory_mb is not None else None,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("[%s] got signal %d, shutting down", name, signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    running = serve(config, listen, insecure_no_token=insecure_no_token)
    try:
        if metrics_port is not None:
            _serve_metrics(running, name, metrics_port, metrics_addr)
        if ready_file is not None:
            _write_atomically(ready_file, running.address)
        click.echo(f"worker {name} serving on {running.address}", err=True)
        while not stop.wait(0.5):
            pass
    finally:
        running.stop(grace_s=STOP_GRACE_S)
    if stop.is_set():
        _exit_now(name)


STOP_GRACE_S = TIMEOUTS.worker_stop_grace_s
"""Grace for calls in progress at SIGTERM; the whole stop takes under 2 s (issue #18)."""


def _exit_now(name: str) -> None:
    """After a signal and the bounded stop, exit without waiting for threads: Python would
    otherwise join gRPC's handler threads at exit, and one inside a long engine call (a
    Profile) held a worker for a minute. A worker must stop within 2 s of SIGTERM whatever it
    is doing (issue #18); everything it owns was closed by the stop."""
    log.info("[%s] stopped", name)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
