"""``qdspace host start`` in which one tenant's blocking work is held until released.

Run as ``python held_host.py host start --dir HOST`` by the worker-share tests
(`test_host_worker_shares`). Two blocking functions that run in the host's worker
threads are wrapped: a peer's trace hop (``TraceServicer._upstream``: the asyncio
executor, as every gRPC handler's database read) and the QDM counts
(``QualityStore.counts``: the operator API's threads, as every synchronous route). A call
of the tenant named in ``$QDSPACE_HELD_TENANT`` notes that it started in
``$QDSPACE_HELD_GATE/started`` (one byte per call) and then holds its worker thread (as a
slow database read or a large encode does) until the file ``$QDSPACE_HELD_GATE/open``
exists, or until it is the one held call to take ``$QDSPACE_HELD_GATE/release`` (each
such file lets exactly one call go). Every other tenant's calls run as they are.

What the pools decide is logged in ``$QDSPACE_HELD_GATE/log``, a line each: ``POOL wait
TENANT`` (its work queued: no thread free), ``POOL start TENANT`` (queued work started)
and ``POOL now TENANT`` (work started as it came). Everything else is the real host:
its processes, listeners, TLS, quotas and worker shares.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

HOLD_MAX_S = 60.0


def _hold(gate: Path, tenant: str) -> None:
    from qdspace.node.logs import MEMBER

    if MEMBER.get() != tenant:  # the worker thread runs in its caller's context
        return
    fd = os.open(gate / "started", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, b".")
    finally:
        os.close(fd)
    deadline = time.monotonic() + HOLD_MAX_S
    while not (gate / "open").exists() and time.monotonic() < deadline:
        try:
            (gate / "release").unlink()  # (only one call's unlink succeeds)
        except FileNotFoundError:
            time.sleep(0.02)
        else:
            return


def _log_decisions(gate: Path) -> None:
    """Log each start and wait of `FairShares` (both pools') in ``gate/log``."""
    from qdspace.node.host.workers import FairShares

    add, done, start_now = FairShares.add, FairShares.done, FairShares.start_now

    def note(pool: object, lines: list[str]) -> None:
        fd = os.open(gate / "log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, "".join(f"{id(pool)} {line}\n" for line in lines).encode())
        finally:
            os.close(fd)

    def logged_add(self: Any, key: str | None, item: Any) -> Any:
        started = add(self, key, item)
        lines = [f"{'now' if it is item else 'start'} {k}" for k, it in started]
        if all(it is not item for _, it in started):
            lines.append(f"wait {key}")
        note(self, lines)
        return started

    def logged_done(self: Any, key: str | None) -> Any:
        started = done(self, key)
        note(self, [f"start {k}" for k, _ in started])
        return started

    def logged_start_now(self: Any, key: str | None) -> bool:
        now: bool = start_now(self, key)
        if now:
            note(self, [f"now {key}"])
        return now

    FairShares.add = logged_add  # type: ignore[method-assign]
    FairShares.done = logged_done  # type: ignore[method-assign]
    FairShares.start_now = logged_start_now  # type: ignore[method-assign]


def main() -> None:
    gate = Path(os.environ["QDSPACE_HELD_GATE"])
    tenant = os.environ["QDSPACE_HELD_TENANT"]
    from qdspace.connector.storage import QualityStore
    from qdspace.node.cli import main as cli
    from qdspace.node.rpc.trace_service import TraceServicer

    upstream, counts = TraceServicer._upstream, QualityStore.counts
    _log_decisions(gate)

    def held_upstream(self: TraceServicer, *args: Any) -> Any:
        _hold(gate, tenant)
        return upstream(self, *args)

    def held_counts(self: QualityStore) -> dict[str, int]:
        _hold(gate, tenant)
        return counts(self)

    TraceServicer._upstream = held_upstream  # type: ignore[method-assign]
    QualityStore.counts = held_counts  # type: ignore[method-assign]
    sys.argv = ["qdspace", *sys.argv[1:]]
    cli()


if __name__ == "__main__":
    main()
