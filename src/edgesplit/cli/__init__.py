"""The ``edgesplit`` command: one thin layer that parses, builds config objects, calls the library
and prints. Each subcommand lives in its own module and registers itself on :data:`main`.

Only :class:`~edgesplit.errors.EdgesplitError` is caught: it becomes one clear line on stderr and
exit code 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from edgesplit import __version__
from edgesplit.errors import EdgesplitError

SUBCOMMAND_MODULES = ("split", "train", "worker", "emulate", "run", "certs", "doctor")


class EdgesplitGroup(click.Group):
    """A click group that turns EdgesplitError into one line and a non-zero exit."""

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


for _name in SUBCOMMAND_MODULES:
    try:
        importlib.import_module(f"edgesplit.cli.{_name}")
    except ModuleNotFoundError as _exc:  # a subcommand module not written yet
        if _exc.name != f"edgesplit.cli.{_name}":
            raise
