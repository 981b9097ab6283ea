"""``qdspace host start`` in which one tenant's blocking work is held until a gate opens.

Run as ``python held_host.py host start --dir HOST`` by the worker-share tests
(`test_host_worker_shares`). Two blocking functions that run in the host's worker
threads are wrapped: a peer's trace hop (``TraceServicer._upstream``: the asyncio
executor, as every gRPC handler's database read) and the QDM counts
(``QualityStore.counts``: the operator API's threads, as every synchronous route). While
the file ``$QDSPACE_HELD_GATE/open`` is missing, a call of the tenant named in
``$QDSPACE_HELD_TENANT`` holds its worker thread (as a slow database read or a large
encode does) and notes that it started in ``$QDSPACE_HELD_GATE/started`` (one byte per
call); every other tenant's calls run as they are. Everything else is the real host:
its processes, listeners, TLS and quotas.
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
        time.sleep(0.02)


def main() -> None:
    gate = Path(os.environ["QDSPACE_HELD_GATE"])
    tenant = os.environ["QDSPACE_HELD_TENANT"]
    from qdspace.connector.storage import QualityStore
    from qdspace.node.cli import main as cli
    from qdspace.node.rpc.trace_service import TraceServicer

    upstream, counts = TraceServicer._upstream, QualityStore.counts

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
