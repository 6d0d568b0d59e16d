"""Every command and every option explains itself in --help."""

from __future__ import annotations

import click
import pytest

from edgesplit.cli import COMMANDS, main


def load(name: str) -> click.Command:
    command = main.get_command(click.Context(main), name)
    assert command is not None, f"edgesplit.cli.{COMMANDS[name][0]} does not define {name!r}"
    return command


def test_the_commands_of_the_design_exist() -> None:
    assert {"split", "run", "worker", "emulate", "train", "eval"} <= set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_listed_summary_is_the_commands_own(name: str) -> None:
    command = load(name)
    assert command.help, f"{name} has no description"
    first_line = command.help.strip().split("\n\n")[0].replace("\n", " ")
    assert first_line.startswith(COMMANDS[name][1].rstrip(".")), (first_line, COMMANDS[name][1])


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help(name: str) -> None:
    command = load(name)
    if isinstance(command, click.Group):
        subcommands = [command.get_command(click.Context(command), n) for n in command.commands]
        params = [p for sub in subcommands if sub is not None for p in sub.params]
    else:
        params = list(command.params)
    for param in params:
        if isinstance(param, click.Option) and param.name != "help":
            assert param.help, f"edgesplit {name} {param.opts[0]} has no help text"


def test_top_level_help_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from click.testing import CliRunner; from edgesplit.cli import main; "
        "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
        "assert 'doctor' in r.output; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
