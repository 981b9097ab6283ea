"""``qdspace host start`` in which a tenant's closing or opening is held until released.

Run as ``python race_host.py host start --dir HOST`` by the lifecycle race tests
(`test_host_lifecycle_races`), with ``$QDSPACE_RACE_GATE`` naming a folder. The test arms
a hold by writing a tenant's name to ``GATE/hold-drop`` or ``GATE/hold-open``: the next
closing of that tenant (`HostRuntime.drop`, as a reopen or a removal closes it) or its
next opening (`HostRuntime._open_as_member`, in its worker thread) takes the file,
writes ``GATE/held-drop`` (``held-open``) and waits, as a slow database or a slow stop
would, until ``GATE/release`` exists (taken: each release lets one hold go). Each call of
the host API's removal (`leaving.remove`) and suspension (`HostRuntime.suspend`) writes
``GATE/entered-remove`` (``entered-suspend``) before any of it runs, so the test knows it
reached the host before it lets the held step go. Everything else is the real host.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

HOLD_MAX_S = 60.0


def _take(gate: Path, point: str, tenant: str) -> bool:
    """Whether a hold at `point` is armed for `tenant` (and now taken)."""
    armed = gate / f"hold-{point}"
    try:
        if armed.read_text().strip() != tenant:
            return False
        armed.unlink()
    except FileNotFoundError:
        return False
    (gate / f"held-{point}").touch()
    return True


def _released(gate: Path) -> bool:
    try:
        (gate / "release").unlink()  # (only one hold's unlink succeeds)
    except FileNotFoundError:
        return False
    return True


def _note(gate: Path, what: str) -> None:
    (gate / f"entered-{what}").touch()


def main() -> None:
    gate = Path(os.environ["QDSPACE_RACE_GATE"])
    from qdspace.node.cli import main as cli
    from qdspace.node.host import leaving
    from qdspace.node.host.runtime import HostRuntime

    drop, open_as_member = HostRuntime.drop, HostRuntime._open_as_member
    suspend, remove = HostRuntime.suspend, leaving.remove

    async def held_drop(self: HostRuntime, tenant: Any) -> None:
        if _take(gate, "drop", tenant.name):
            deadline = time.monotonic() + HOLD_MAX_S
            while not _released(gate) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        await drop(self, tenant)

    def held_open(self: HostRuntime, tenant: Any, *args: Any) -> None:
        if _take(gate, "open", tenant.name):
            deadline = time.monotonic() + HOLD_MAX_S
            while not _released(gate) and time.monotonic() < deadline:
                time.sleep(0.02)
        open_as_member(self, tenant, *args)

    async def noted_suspend(self: HostRuntime, name: str, reason: str = "") -> Any:
        _note(gate, "suspend")
        return await suspend(self, name, reason)

    async def noted_remove(runtime: HostRuntime, name: str, confirm: str) -> Any:
        _note(gate, "remove")
        return await remove(runtime, name, confirm)

    HostRuntime.drop = held_drop  # type: ignore[method-assign]
    HostRuntime._open_as_member = held_open  # type: ignore[method-assign, assignment]
    HostRuntime.suspend = noted_suspend  # type: ignore[method-assign]
    leaving.remove = noted_remove
    sys.argv = ["qdspace", *sys.argv[1:]]
    cli()


if __name__ == "__main__":
    main()
