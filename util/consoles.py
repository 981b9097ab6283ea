"""Command output written to a file or a pipe keeps its ids and addresses whole.

rich sizes its tables to the terminal; a file or a pipe (``qdspace contracts | grep
agr-``, ``make demo | tee demo.txt``) has no width, so rich takes 80 columns and cuts
every long cell short with an ellipsis: the agreement id, the address, the path a
person piped the output to find. As kubectl and gh do, output that goes to a file is
written wide instead (`PIPED_WIDTH`). ``COLUMNS``, when set, still decides, and a
terminal keeps its own width. The width goes through ``COLUMNS`` because the commands'
consoles are made when their modules are imported, and rich reads it when it prints.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import TextIO

#: the width of command output that goes to a file or a pipe
PIPED_WIDTH = 160


def widen_when_piped(stdout: TextIO, environ: MutableMapping[str, str]) -> None:
    """Set ``COLUMNS`` to `PIPED_WIDTH` when ``stdout`` is not a terminal and it is unset."""
    if "COLUMNS" not in environ and not stdout.isatty():
        environ["COLUMNS"] = str(PIPED_WIDTH)
