"""The demo's "check yourself" command names a chain that still answers: without
``--keep-running`` the chain stops with the demo, and the command printed as it was
found nobody at that URL (a new user's first try of ``qdspace verify`` failed)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from qdspace.node.demo.ledger import CHAPTER, print_ledger
from qdspace.node.demo.report import DemoReport

CHECK = {
    "member": "cellex",
    "kind": "inspection",
    "ref_id": "CX-EL-001500",
    "valid": True,
    "reason": "valid",
    "root": "0x" + "ab" * 32,
    "block": 8,
    "tx": "0x" + "cd" * 32,
}


def _printed(kept_running: bool) -> str:
    report = DemoReport(workdir="/d", kept_running=kept_running)
    report.chapters[CHAPTER] = {
        "chain": "http://127.0.0.1:28000",
        "inspection_batch": "CX-CB-1",
        "inspections": [CHECK],
        "contracts": [],
        "tampered": {**CHECK, "valid": False, "reason": "record: differs", "changed": "x"},
        "passport": {"valid": True, "reason": ""},
        "files": "/d/ledger",
    }
    out = io.StringIO()
    print_ledger(Console(file=out, width=300), report)
    return out.getvalue()


@pytest.mark.parametrize("kept_running", [False, True])
def test_the_check_yourself_command_says_when_the_chain_is_gone(kept_running: bool) -> None:
    command = "qdspace verify /d/ledger/proof-CX-EL-001500.json --rpc http://127.0.0.1:28000"
    line = next(x for x in _printed(kept_running).splitlines() if "check yourself" in x)
    assert command in line
    assert ("--keep-running" in line) is not kept_running
