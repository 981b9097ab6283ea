"""What the demo did: the one report every step writes into and every printer reads.

``story`` creates a :class:`DemoReport`, hands it to each step in turn and, at the
end, to each chapter's printer; it is also written to ``summary.json``. Chapters
import this module (and never ``story``), so the runner can import the chapters
without an import circle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from qdspace.node.localnet.network import LocalNetwork


@dataclass
class DemoReport:
    """What happened, for the summary and for ``summary.json``."""

    workdir: str
    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    ingest: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    rejected_examples: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    handshakes: dict[str, dict[str, str]] = field(default_factory=dict)
    trace: dict[str, Any] = field(default_factory=dict)
    refusal: str = ""
    # the managed hosts (where, files, tenants) and the genealogy hop to a hosted tenant
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    wafer_trace: dict[str, Any] = field(default_factory=dict)
    # one entry per later chapter (contracts, inspection, ledger, federation): JSON-able
    chapters: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    #: the network (the chain with it) is left running after the demo (``--keep-running``)
    kept_running: bool = False


#: a step of the story: runs against the network, keeps its results on the report
Step = Callable[["LocalNetwork", DemoReport], None]
#: a chapter's part of the summary
Printer = Callable[["Console", DemoReport], None]
