"""Ledger anchoring: leaves/s end to end, proof size at 1M leaves, verification time.

End to end means what a node does: hash each record into a leaf, queue it durably in the
node's SQLite file, seal batches of B leaves (Merkle root), and anchor each batch with one
signed transaction on the embedded EVM chain (JSON-RPC over loopback HTTP, receipt
awaited). The same without the durable queue (hash, root, one transaction per batch) shows
what durability costs. In the same run, the baseline: a plain ``hashlib`` SHA-256 Merkle
root over the same records, no queue and no chain. Then the inclusion proof of a leaf in a
1M-leaf tree (binary audit path and the JSON document), and the time to verify one proof:
offline (the audit path) and fully (offline plus the chain's confirmation over JSON-RPC).

    python bench/anchor.py                  # 200k leaves at batch sizes 1k, 10k, 100k
    python bench/anchor.py --leaves 50000 --batches 1000 10000 --out result.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import os.path
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sqlalchemy import create_engine, event

from ledger.anchorer import Anchorer, AnchorPolicy
from ledger.chain import ChainServer, EmbeddedChain, deploy_with_dev_account
from ledger.client import LedgerClient
from ledger.deploy import fund_from_dev_account
from ledger.keys import new_key_file
from ledger.leaves import Leaf, kind_code
from ledger.merkle import MerkleTree, leaf_hashes, root_of, verify_inclusion
from ledger.proofs import (
    AnchorPart,
    ConfirmationCache,
    InclusionProof,
    LeafPart,
    TreePart,
    build_proof,
    hex32,
    offline_checks,
    verify_proof,
)
from ledger.queue import LeafQueue, ensure_schema

ENQUEUE_CHUNK = 50_000


def records(n: int) -> list[tuple[str, bytes]]:
    """Inspection-record-like canonical bytes, ~200 bytes each."""
    return [
        (
            f"EL-{i:09d}",
            (
                f'{{"inspection_id":"EL-{i:09d}","station":"EL-{1 + i % 4}",'
                f'"inspected_at":"2026-11-{1 + i % 28:02d}T08:00:00Z",'
                f'"verdict":"{"fail" if i % 23 == 0 else "pass"}","score":{(i % 1000) / 1000},'
                f'"image_hash":"{i:064x}"}}'
            ).encode(),
        )
        for i in range(n)
    ]


def plain_root(items: list[tuple[str, bytes]]) -> bytes:
    """The baseline: SHA-256 of each record, then pairwise SHA-256 up to one root."""
    sha = hashlib.sha256
    level = [sha(data).digest() for _, data in items]
    while len(level) > 1:
        nxt = [sha(a + b).digest() for a, b in zip(level[0::2], level[1::2], strict=False)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


class Chain:
    """The embedded chain serving JSON-RPC on loopback from a thread of this process."""

    def __init__(self, state_dir: Path) -> None:
        self.chain = EmbeddedChain(state_dir)
        self.address = deploy_with_dev_account(self.chain)["address"]
        self.server = ChainServer(self.chain)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def client(self) -> LedgerClient:
        return LedgerClient(self.server.url, self.address, timeout_s=60)

    def close(self) -> None:
        self.server.shutdown()


def sqlite_queue(path: Path) -> LeafQueue:
    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _pragmas(conn: Any, _record: Any) -> None:
        cur = conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    ensure_schema(engine)
    return LeafQueue(engine)


def end_to_end(
    chain: Chain, workdir: Path, items: list[tuple[str, bytes]], batch: int
) -> dict[str, Any]:
    """Hash, queue durably, seal batches of ``batch``, one transaction per batch."""
    signer = new_key_file(workdir / f"key-{batch}")
    fund_from_dev_account(chain.server.url, signer.address, 10**20)
    queue = sqlite_queue(workdir / f"node-{batch}.db")
    anchorer = Anchorer(
        queue, chain.client(), signer, AnchorPolicy(max_leaves=batch, max_age_s=0.0)
    )
    start = time.perf_counter()
    for lo in range(0, len(items), ENQUEUE_CHUNK):
        chunk = items[lo : lo + ENQUEUE_CHUNK]
        queue.enqueue_leaves([Leaf.of("inspection", ref, data) for ref, data in chunk])
    queued = time.perf_counter()
    if not anchorer.flush(timeout_s=1800):
        raise RuntimeError(f"batch size {batch}: anchoring did not finish")
    done = time.perf_counter()
    txs = queue.state_counts()["anchored"]
    return {
        "batch": batch,
        "seconds": done - start,
        "queue_seconds": queued - start,
        "anchor_seconds": done - queued,
        "transactions": txs,
        "leaves_per_s": len(items) / (done - start),
        "queue": queue,
        "client": anchorer.client,
    }


def without_queue(
    chain: Chain, workdir: Path, items: list[tuple[str, bytes]], batch: int
) -> dict[str, Any]:
    """The same hashing, roots and one transaction per batch, but no durable queue."""
    signer = new_key_file(workdir / f"key-nq-{batch}")
    fund_from_dev_account(chain.server.url, signer.address, 10**20)
    client = chain.client()
    start = time.perf_counter()
    txs = 0
    for lo in range(0, len(items), batch):
        chunk = items[lo : lo + batch]
        # another kind than the queued runs, so the roots differ from theirs (no duplicates)
        hashes = [Leaf.of("record_batch", ref, data).hash() for ref, data in chunk]
        root = root_of(hashes)
        nonce = client.pending_nonce(signer.address)
        signed = client.sign_anchor(signer, root, len(hashes), kind_code("record_batch"), nonce)
        client.send_raw(signed.raw)
        while client.receipt(signed.tx_hash) is None:
            time.sleep(0.01)
        txs += 1
    seconds = time.perf_counter() - start
    return {"batch": batch, "seconds": seconds, "transactions": txs,
            "leaves_per_s": len(items) / seconds}  # fmt: skip


def proof_at(n: int, anchor: AnchorPart) -> dict[str, Any]:
    """Proof size and offline verification time for a leaf of an ``n``-leaf tree."""
    index = n // 2 + 1
    leaf = Leaf.of("inspection", "EL-000000042", b'{"verdict":"pass"}')
    hashes = leaf_hashes(i.to_bytes(8, "big") for i in range(n))
    hashes[index] = leaf.hash()
    tree = MerkleTree.from_leaf_hashes(hashes)
    del hashes
    path = tree.audit_path(index)
    proof = InclusionProof(
        leaf=LeafPart(
            kind="inspection",
            ref_id=leaf.ref_id,
            record_sha256=hex32(leaf.record_sha256),
            leaf_hash=hex32(leaf.hash()),
        ),
        tree=TreePart(size=n, index=index, path=[hex32(h) for h in path], root=hex32(tree.root)),
        anchor=anchor,
    )
    reps = 2_000
    start = time.perf_counter()
    for _ in range(reps):
        assert verify_inclusion(leaf.hash(), index, n, path, tree.root)
    per_inclusion = (time.perf_counter() - start) / reps
    start = time.perf_counter()
    for _ in range(reps):
        assert all(c.ok for c in offline_checks(proof))
    per_offline = (time.perf_counter() - start) / reps
    return {
        "leaves": n,
        "path_hashes": len(path),
        "path_bytes": 32 * len(path),
        "json_bytes": len(proof.model_dump_json().encode()),
        "verify_inclusion_s": per_inclusion,
        "verify_offline_s": per_offline,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--leaves", type=int, default=200_000, help="leaves per run")
    parser.add_argument("--batches", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--tree", type=int, default=1_000_000, help="leaves for the proof size")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    figures: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "leaves": args.leaves,
    }
    print(f"# {os.cpu_count()} CPUs, Python {platform.python_version()}, {args.leaves} leaves")
    items = records(args.leaves)

    start = time.perf_counter()
    plain_root(items)
    base = args.leaves / (time.perf_counter() - start)
    figures["baseline_hashlib_root_leaves_per_s"] = base
    print(f"baseline.hashlib_merkle_root: {base:,.0f} leaves/s")

    with tempfile.TemporaryDirectory(prefix="qdspace-bench-anchor-") as tmp:
        work = Path(tmp)
        chain = Chain(work / "chain")
        try:
            runs = []
            for batch in args.batches:
                run = end_to_end(chain, work, items, batch)
                ratio = run["leaves_per_s"] / base
                print(
                    f"anchor.end_to_end.batch_{batch}: {run['leaves_per_s']:,.0f} leaves/s "
                    f"({run['transactions']} tx; queue {run['queue_seconds']:.2f} s, "
                    f"seal+anchor {run['anchor_seconds']:.2f} s; {ratio:.2f}x baseline)"
                )
                runs.append(run)
            plain = []
            for batch in args.batches:
                nq = without_queue(chain, work, items, batch)
                print(
                    f"anchor.no_durable_queue.batch_{batch}: {nq['leaves_per_s']:,.0f} leaves/s "
                    f"({nq['transactions']} tx; {nq['leaves_per_s'] / base:.2f}x baseline)"
                )
                plain.append(nq)
            figures["runs_without_queue"] = plain
            last = runs[-1]
            queue, client = last["queue"], last["client"]
            proof = build_proof(queue, "inspection", items[len(items) // 2][0])
            anchor = proof.anchor
            reps = 50
            start = time.perf_counter()
            for _ in range(reps):
                assert verify_proof(proof, client).valid
            full = (time.perf_counter() - start) / reps
            start = time.perf_counter()
            for _ in range(reps * 20):
                assert all(c.ok for c in offline_checks(proof))
            offline = (time.perf_counter() - start) / (reps * 20)
            figures["runs"] = [
                {k: v for k, v in r.items() if k not in ("queue", "client")} for r in runs
            ]
            cache = ConfirmationCache()
            start = time.perf_counter()
            for _ in range(reps * 20):
                assert verify_proof(proof, client, cache).valid
            cached = (time.perf_counter() - start) / (reps * 20)
            figures["verify_with_chain_cached_root_s"] = cached
            print(f"verify.proof_with_chain_root_cached: {cached * 1e3:.3f} ms per proof")
            figures["verify_document_offline_s"] = offline
            figures["verify_document_with_chain_s"] = full
            print(f"verify.proof_offline_checks: {offline * 1e3:.3f} ms per proof")
            print(f"verify.proof_with_chain_rpc: {full * 1e3:.2f} ms per proof")
        finally:
            chain.close()

    tree = proof_at(args.tree, anchor)
    figures["proof_at_tree"] = tree
    n = tree["leaves"]
    print(f"proof.audit_path_at_{n}: {tree['path_bytes']} bytes ({tree['path_hashes']} hashes)")
    print(f"proof.json_document_at_{n}: {tree['json_bytes']} bytes")
    print(f"verify.inclusion_at_{n}: {tree['verify_inclusion_s'] * 1e6:.1f} us per proof")
    print(f"verify.offline_checks_at_{n}: {tree['verify_offline_s'] * 1e6:.1f} us per proof")
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
