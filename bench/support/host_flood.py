"""The flooder of ``bench/host.py``'s fairness runs, in a module of its own.

It runs as its own process (its load is not the measuring loop's) and needs only the
calling member's keys, the peer directory and the Catalog stubs; started as
``python bench/host.py --flood`` it imported the whole bench first (the local network,
and with it every node module), which cost each fairness run seconds before the flood
began. ``bench/host.py`` starts this file directly (its only way in).

    python bench/support/host_flood.py NAME=HOST:PORT CALLER_DIR CONCURRENCY
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def flood(caller_dir: Path, target: str, address: str, concurrency: int) -> None:
    """ListAssets on ``target``, ``concurrency`` in flight, refusals counted and ignored,
    until SIGTERM; prints ``flooding`` once going, then its counts as JSON."""
    import grpc

    from qdspace.node.identity.member import load_member_keys
    from qdspace.node.layout import NodeLayout
    from qdspace.node.rpc.peers import PeerDirectory
    from qdspace.protocols.v1 import catalog_pb2, catalog_pb2_grpc

    keys = load_member_keys(caller_dir)
    files = NodeLayout(caller_dir)
    peers = PeerDirectory(keys, {target: address}, cert_files=(files.tls_cert, files.tls_key))
    counts = {"served": 0, "refused": 0, "failed": 0}

    async def run() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        stub = catalog_pb2_grpc.CatalogStub(peers.channel(target))
        request = catalog_pb2.CatalogRequest()

        async def worker() -> None:
            while not stop.is_set():
                try:
                    await stub.ListAssets(request, timeout=30)
                    counts["served"] += 1
                except grpc.aio.AioRpcError as exc:
                    exhausted = exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    counts["refused" if exhausted else "failed"] += 1
                if sum(counts.values()) == 1:
                    print("flooding", flush=True)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        took = time.perf_counter() - started
        await peers.close()
        print(json.dumps({**counts, "seconds": took}), flush=True)

    asyncio.run(run())


def main() -> None:
    if len(sys.argv) != 4 or "=" not in sys.argv[1]:
        raise SystemExit(__doc__)
    target, _, address = sys.argv[1].partition("=")
    flood(Path(sys.argv[2]), target, address, int(sys.argv[3]))


if __name__ == "__main__":
    main()
