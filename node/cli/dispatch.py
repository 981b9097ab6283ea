"""Build only the command a ``qdspace`` call names, not the whole tree.

Why: before it parses the arguments, typer turns every command's signature into click
parameters (`typer.main.get_command`). For this CLI's ~85 commands that took 139-151 ms
of every call here, as long as importing the CLI itself, and a command that only calls
its node should answer well under a second (``bench/cli.py`` measures it).

A call whose first word names one top-level command or group gets a copy of the app
that holds just that one, so only its signature (or its group's) is converted. The
copy keeps everything else of the app (help, settings, error style), so the command
parses, helps and fails exactly as in the whole tree: its usage line still reads
``qdspace WORD ...`` and a bad option is the same error. Anything else gets the whole
app: no word, an option first (``--help``), or a word that names nothing, where the
error lists the commands and suggests the nearest.

Only typer's public surface is used: a `typer.Typer` and its ``registered_commands``
and ``registered_groups``. A typer app with one command and no callback would become
that command itself instead of a group with it (``qdspace contracts`` would then read
``contracts`` as an argument), so the copy gets a callback that does nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import typer
from typer.main import get_command_name
from typer.models import CommandInfo, TyperInfo


def _command_name(info: CommandInfo) -> str | None:
    if info.name:
        return info.name
    callback = info.callback
    return get_command_name(callback.__name__) if callback is not None else None


def _group_name(info: TyperInfo) -> str | None:
    name = info.name
    if isinstance(name, str) and name:
        return name
    inner = info.typer_instance.info.name if info.typer_instance is not None else None
    return inner if isinstance(inner, str) and inner else None


def _nothing() -> None:
    """(a group's callback that does nothing: keeps a one-command copy a group)"""


def command_for(app: typer.Typer, args: Sequence[str]) -> typer.Typer:
    """The app to run ``args`` with: a copy holding only the command or group that
    ``args[0]`` names, or ``app`` itself where that is not exactly one of them."""
    if not args or args[0].startswith("-") or app.registered_callback is not None:
        return app
    named = [(_group_name(g), g) for g in app.registered_groups]
    if any(name is None for name, _ in named):
        return app  # a group without a name lends its commands to the top level
    word = args[0]
    groups = [g for name, g in named if name == word]
    commands = [c for c in app.registered_commands if _command_name(c) == word]
    if len(groups) + len(commands) != 1:
        return app
    slim = copy.copy(app)
    slim.registered_groups = groups
    slim.registered_commands = commands
    slim.registered_callback = TyperInfo(callback=_nothing)
    return slim
