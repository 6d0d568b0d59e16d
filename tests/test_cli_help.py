"""Every command and every option explains itself in --help."""

from __future__ import annotations

import click
import pytest

from edgesplit.cli import main

COMMANDS = sorted(main.commands)


def test_the_commands_of_the_design_exist() -> None:
    assert {"split", "run", "worker", "emulate", "train", "eval"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_help(name: str) -> None:
    command = main.commands[name]
    assert command.help, f"{name} has no description"
    for param in command.params:
        if isinstance(param, click.Option) and param.name != "help":
            assert param.help, f"edgesplit {name} {param.opts[0]} has no help text"
