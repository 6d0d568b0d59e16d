"""``edgesplit serve``: keep a planned pipeline warm and classify images over HTTP."""

from __future__ import annotations

import socket
from typing import Any

import click

from edgesplit.adapt import AdaptPolicy
from edgesplit.cli import main
from edgesplit.cli._cluster_options import (
    emulation_options,
    model_options,
    objective_options,
    run_config,
)
from edgesplit.config import load_cluster
from edgesplit.errors import ConfigError


@main.command("serve")
@emulation_options
@model_options(
    dataset_help="The label set: class names, channels and normalisation of this dataset (no "
    "test set is read).",
    input_size_help="Input size in pixels (images are resized to it). Default: the "
    "checkpoint's, or 224.",
)
@click.option(
    "--partition",
    default=None,
    help='Unit ranges like "0-7,7-14,14-", or auto (profile, then plan; the default), '
    "balanced or equal (as edgesplit run).",
)
@objective_options
@click.option(
    "--adaptive",
    is_flag=True,
    help="Re-plan while serving when observed device speeds or links make another plan "
    "predictably better (needs --partition auto).",
)
@click.option(
    "--engine",
    type=click.Choice(["torch", "onnxruntime"]),
    default=None,
    help="Stage executor. Default: onnxruntime when installed.",
)
@click.option(
    "--window",
    default=None,
    type=click.IntRange(min=1),
    help="Micro-batches in flight at most. Default: 2 x stages.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free port; the line 'serving on http://...' names it).",
)
@click.option(
    "--max-batch",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="Images per micro-batch at most (dynamic batching packs requests up to it).",
)
@click.option(
    "--max-wait-ms",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="How long the oldest waiting image may wait for a fuller micro-batch.",
)
@click.option(
    "--max-queue",
    default=64,
    show_default=True,
    type=click.IntRange(min=1),
    help="Requests waiting for the batcher at most; one more gets 429 with Retry-After.",
)
@click.option(
    "--max-images",
    default=256,
    show_default=True,
    type=click.IntRange(min=1),
    help="Images in one request at most (more: 413).",
)
@click.option(
    "--heartbeat-deadline",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds without a heartbeat before a device is lost and the plan moves around it.",
)
def serve_command(**options: Any) -> None:
    """Serve a model over HTTP from a warm pipeline (dynamic batching).

    POST /v1/classify, GET /v1/cluster, /metrics, and a live page at /. Starts an emulated
    cluster unless --cluster is given; Ctrl-C stops it."""
    import torch
    import uvicorn

    from edgesplit.cluster.emulate import exit_on_sigterm
    from edgesplit.serve.app import create_app
    from edgesplit.serve.batcher import BatchPolicy
    from edgesplit.serve.images import ImageLimits
    from edgesplit.serve.session import ServeConfig, Session

    max_batch, host, port = options["max_batch"], options["host"], options["port"]
    run = run_config(options, batch_size=max_batch, adapt_policy=AdaptPolicy())
    config = ServeConfig(
        run=run,
        policy=BatchPolicy(max_batch, options["max_wait_ms"] / 1000.0, options["max_queue"]),
        limits=ImageLimits(max_images=options["max_images"]),
    )
    cluster = load_cluster(options["cluster_file"]) if options["cluster_file"] else None
    try:
        sock = socket.create_server((host, port))
    except OSError as exc:
        raise ConfigError(f"--host {host} --port {port}: cannot listen: {exc}") from None
    torch.set_num_threads(1)  # the server's torch work is small; see job.one_torch_thread
    say = lambda text: click.echo(text, err=True)  # noqa: E731
    with exit_on_sigterm(), sock, Session(config, cluster, phase=say) as session:
        for note in session.notes:
            say(f"note: {note}")
        bound_host, bound_port = sock.getsockname()[:2]
        server = uvicorn.Server(
            uvicorn.Config(create_app(session), log_level="warning", timeout_graceful_shutdown=5)
        )
        click.echo(f"serving on http://{bound_host}:{bound_port}/ (Ctrl-C stops)", err=True)
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn stopped on Ctrl-C, then raised it again
            say("stopping: answering what is in flight, then stopping the cluster")
