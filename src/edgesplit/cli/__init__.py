"""The ``edgesplit`` command: one thin layer that parses, builds config objects, calls the library
and prints. Each subcommand lives in its own module and registers itself on :data:`main`; a
module is imported only when its command runs (torch takes seconds to import, and ``doctor`` must
work even where the installed torch crashes on import).

Only :class:`~edgesplit.errors.EdgesplitError` is caught: it becomes one clear line on stderr and
exit code 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

import click

from edgesplit._version import __version__
from edgesplit.errors import EdgesplitError

# gRPC's fork handlers print "Other threads are currently calling into gRPC, skipping fork()
# handlers" to the terminal whenever a process with live gRPC threads starts a subprocess (the
# emulated workers, the CPU hogs). edgesplit never uses gRPC in a forked child (children exec),
# so the handlers have nothing to do. Read by gRPC when it initialises: set before any command
# module imports it (issue #20).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

COMMANDS: dict[str, tuple[str, str]] = {
    "split": (
        "split",
        "Show a model's units (the pieces it can be cut into), or check a partition.",
    ),
    "run": ("run", "Run a model as a pipeline across devices and measure every device."),
    "profile": ("profile", "Time every unit on every device and probe the links."),
    "plan": ("plan", "The best partition for an objective, from a profile."),
    "simulate": ("simulate", "Simulate running a plan on a cluster described by profiles."),
    "emulate": ("emulate", "Start an emulated cluster of N real worker processes."),
    "worker": ("worker", "Serve this device's stages of a split model."),
    "train": ("train", "Train a model on a dataset and write a checkpoint."),
    "eval": ("train", "Single-device test accuracy of a checkpoint."),
    "certs": ("certs", "Create a cluster CA and sign device certificates for mutual TLS."),
    "doctor": ("doctor", "Check this machine (and a cluster) and print OK / WARN / FAIL."),
    "report": (
        "report",
        "Write an HTML report with plots (or export its tables) from a run folder.",
    ),
    "serve": ("serve", "Serve a model over HTTP from a warm pipeline (dynamic batching)."),
    "loadgen": ("loadgen", "Load an edgesplit server (Poisson or N clients); latency vs load."),
}
"""Command name -> (module under edgesplit.cli, one-line summary shown by ``edgesplit --help``)."""


class EdgesplitGroup(click.Group):
    """A click group that loads subcommands on demand and turns EdgesplitError into one line
    and a non-zero exit."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(f"edgesplit.cli.{COMMANDS[cmd_name][0]}")
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, summary) for name, (_, summary) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgesplitError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=EdgesplitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgesplit")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """edgesplit: cut a DNN into layer ranges and run it as a pipeline across small devices
    (Raspberry Pi 4B clusters, or an emulated cluster on this machine)."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
