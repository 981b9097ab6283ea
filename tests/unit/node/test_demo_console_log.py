"""The demo's console shows a warning once, with its level once.

`node.demo.story._log_to` sends the demo process's warnings (the line's drift alarms, a
retried frame) to the console above the progress bars. Its console handler had no
formatter of its own, so ``logging.basicConfig`` gave it logging's default one and a new
user's first screen read ``WARNING  WARNING:inference:inference.alarm drift ...``.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from qdspace.node.demo.story import _log_to


@pytest.fixture
def root_restored() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_a_warning_reads_once_on_the_console_and_fully_in_the_log(
    tmp_path: Path, root_restored: None
) -> None:
    screen = io.StringIO()
    _log_to(tmp_path / "demo.log", Console(file=screen, width=200, color_system=None))
    message = "inference.alarm drift [el-1]: FNR 0.600 > 0.553 over the last 38 frames"
    logging.getLogger("inference").warning(message)
    logging.getLogger("inference").info("a line for the log only")
    shown = screen.getvalue().strip()
    assert shown == f"WARNING  {message}", shown
    logged = (tmp_path / "demo.log").read_text()
    assert f"WARNING inference: {message}" in logged
    assert "a line for the log only" in logged and "a line for the log only" not in shown
