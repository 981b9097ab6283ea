"""The ``qdspace`` script builds only the command a call names (`node.cli.dispatch`).

What must hold: for every top-level command and group, the one built alone is the same
command as in the whole tree (name, help, every parameter, every subcommand, down the
tree), the whole app is left as it was, and any call that does not name exactly one
command (none, an option first, an unknown word) gets the whole app, so its error can
list and suggest the others. The last test runs the script's own entry in a fresh
interpreter and checks what a user sees.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main

from qdspace.node.cli import app
from qdspace.node.cli.dispatch import command_for

ROOT = Path(__file__).parents[3]
FULL = typer.main.get_command(app)
NAMES = sorted(FULL.commands)  # type: ignore[attr-defined]


def _describe(command: Any) -> dict[str, Any]:
    """What a user meets of a click command: its words, help and parameters, and its
    subcommands' (recursively)."""
    params = [
        (
            p.name,
            tuple(p.opts),
            tuple(p.secondary_opts),
            p.required,
            p.multiple,
            p.nargs,
            repr(p.default),
            repr(getattr(getattr(p, "type_descriptor", None), "annotation", None)),
            p.metavar,
            p.envvar,
            getattr(p, "help", None),
            getattr(p, "hidden", False),
            getattr(p, "is_flag", False),
        )
        for p in command.params
    ]
    described: dict[str, Any] = {
        "name": command.name,
        "help": command.help,
        "short_help": command.short_help,
        "hidden": command.hidden,
        "no_args_is_help": command.no_args_is_help,
        "params": params,
        "callback": command.callback is not None,
        "rich_markup_mode": getattr(command, "rich_markup_mode", None),
        "context_settings": getattr(command, "context_settings", None),
    }
    if hasattr(command, "commands"):
        described["invoke_without_command"] = command.invoke_without_command
        described["commands"] = {n: _describe(c) for n, c in sorted(command.commands.items())}
    return described


def test_the_cli_has_many_commands_to_leave_unbuilt() -> None:
    # the point of the dispatch; and the equivalence test below walks all of these
    assert len(NAMES) >= 15
    assert {"contracts", "ledger", "node", "verify", "demo"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_a_command_built_alone_is_the_one_in_the_whole_tree(name: str) -> None:
    slim = command_for(app, [name, "--help"])
    assert slim is not app
    alone = typer.main.get_command(slim)
    assert sorted(alone.commands) == [name]  # type: ignore[attr-defined]
    assert _describe(alone.commands[name]) == _describe(FULL.commands[name])  # type: ignore[attr-defined]


def test_the_whole_app_is_left_as_it_was() -> None:
    commands, groups = list(app.registered_commands), list(app.registered_groups)
    command_for(app, ["contracts"])
    command_for(app, ["ledger", "verify"])
    assert app.registered_commands == commands
    assert app.registered_groups == groups
    assert app.registered_callback is None
    assert sorted(typer.main.get_command(app).commands) == NAMES  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "args",
    [[], ["--help"], ["-h"], ["contrcts"], ["no-such-command", "x"], [""]],
    ids=["nothing", "help", "short-option", "typo", "unknown", "empty-word"],
)
def test_a_call_that_names_no_one_command_gets_the_whole_app(args: list[str]) -> None:
    assert command_for(app, args) is app


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    probe = "import sys; sys.argv[0] = 'qdspace'; from qdspace.node.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", probe, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={"COLUMNS": "100", "PATH": "/usr/bin:/bin", "TERM": "dumb"},
    )


@pytest.mark.parametrize(
    ("args", "code", "stream", "expected"),
    [
        (
            ("contracts", "--bogus"),
            2,
            "stderr",
            ("Usage: qdspace contracts [OPTIONS] COMMAND [ARGS]...", "No such option: --bogus"),
        ),
        (("contrcts",), 2, "stderr", ("No such command 'contrcts'. Did you mean 'contracts'",)),
        (
            ("ledger", "--help"),
            0,
            "stdout",
            ("Usage: qdspace ledger [OPTIONS] COMMAND [ARGS]...", "verify"),
        ),
        (("--help",), 0, "stdout", ("contracts", "ledger", "node", "verify")),
    ],
    ids=["bad-option", "typo", "group-help", "top-help"],
)
def test_the_script_answers_as_the_whole_tree_did(
    args: tuple[str, ...], code: int, stream: str, expected: tuple[str, ...]
) -> None:
    done = _script(*args)
    assert done.returncode == code, done.stdout + done.stderr
    said = getattr(done, stream)
    for text in expected:
        assert text in said
