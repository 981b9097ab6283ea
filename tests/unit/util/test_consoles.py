"""Command output piped to a file keeps its ids and addresses whole (`util.consoles`)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

from rich.console import Console
from rich.table import Table

from qdspace.util.consoles import PIPED_WIDTH, widen_when_piped

ADDRESS = "https://127.0.0.1:25413"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _members(environ: dict[str, str]) -> str:
    """The demo's members table as a console on a file renders it under ``environ``."""
    table = Table()
    for col in ("member", "role", "member id", "gRPC", "operator API", "regulator API"):
        table.add_column(col)
    table.add_row(
        "siliwafer", "supplier", "siliwafer-1b502fc83d8a", "127.0.0.1:1", ADDRESS, ADDRESS
    )
    console = Console(file=io.StringIO(), color_system=None, _environ=environ)
    with console.capture() as captured:
        console.print(table)
    return captured.get()


def test_piped_output_is_written_wide_unless_columns_says_otherwise() -> None:
    assert ADDRESS not in _members({})  # rich's 80 columns: '127.0.0.1:…', as it was
    piped: dict[str, str] = {}
    widen_when_piped(io.StringIO(), piped)
    assert piped == {"COLUMNS": str(PIPED_WIDTH)}
    assert _members(piped).count(ADDRESS) == 2
    told = {"COLUMNS": "90"}
    widen_when_piped(io.StringIO(), told)
    assert told == {"COLUMNS": "90"}
    terminal: dict[str, str] = {}
    widen_when_piped(_Terminal(), terminal)
    assert terminal == {}


def test_the_script_widens_its_own_piped_output() -> None:
    """`qdspace` itself, its output a pipe: a table that wraps a long cell at 80 columns
    keeps it on one line."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    done = subprocess.run(
        [sys.executable, "-m", "qdspace", "ingest", "--kind", "inspection", "--template"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    widest = max(len(line) for line in done.stdout.splitlines())
    assert 80 < widest <= PIPED_WIDTH
    assert any(
        "pass | fail (also accept=pass, bad=fail" in line for line in done.stdout.splitlines()
    )
