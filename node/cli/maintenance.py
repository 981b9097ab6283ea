"""``qdspace node backup``: what an operator runs from cron, next to a serving node.

Mounted on the ``node`` group by ``node.cli``. It reads the node's settings only (no
server stack), so it starts as fast as the other local commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from qdspace.node.cli.errors import clean_errors

console = Console()


def mount(node_app: typer.Typer) -> None:
    node_app.command("backup")(backup)


@clean_errors
def backup(
    directory: Annotated[Path, typer.Option("--dir", help="node directory")],
    out: Annotated[Path, typer.Option(help="the backup file to write (never overwritten)")],
) -> None:
    """Copy the node's SQLite store consistently, even while the node serves."""
    from rich.progress import BarColumn, Progress, TextColumn

    from qdspace.node.config import NodeSettings
    from qdspace.node.runtime.backup import backup_sqlite, sqlite_path

    settings = NodeSettings.load(directory)
    source = sqlite_path(settings.database_url)
    with Progress(TextColumn("backing up {task.description}"), BarColumn(), console=console) as bar:
        task = bar.add_task(source.name, total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = backup_sqlite(source, out.resolve(), progress)
    console.print(
        f"{result.source} backed up to {result.destination}: {result.pages} pages, "
        f"{result.bytes / 1e6:.1f} MB in {result.seconds:.1f} s (integrity check ok). "
        "The node's keys are not in it: back up the node directory's key files separately."
    )
