"""The same ledger code against a real JSON-RPC dev chain from npm (ganache on 127.0.0.1)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from qdspace.ledger.anchor_policy import AnchorPolicy
from qdspace.ledger.anchorer import Anchorer
from qdspace.ledger.client import LedgerClient
from qdspace.ledger.compile import tools_dir
from qdspace.ledger.deploy import deploy_anchor, fund_from_dev_account
from qdspace.ledger.errors import AlreadyAnchored
from qdspace.ledger.keys import new_key_file
from qdspace.ledger.proofs import build_proof
from qdspace.ledger.queue import LeafQueue
from qdspace.ledger.tx import ANCHOR_GAS, GAS_MARGIN
from qdspace.ledger.verify import verify_document

from .conftest import ONE_ETH, free_port

pytestmark = pytest.mark.integration

GANACHE_CLI = tools_dir() / "node_modules" / "ganache" / "dist" / "node" / "cli.js"
GANACHE_CHAIN_ID = 1337


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "Node.js (`node`) not found on PATH; the ganache test needs it"
    if not GANACHE_CLI.is_file():
        return f"ganache not installed under {tools_dir()}; run `npm ci --prefix deploy/chain`"
    return None


@pytest.fixture
def ganache(tmp_path: Path) -> Iterator[str]:
    why = _missing()
    if why:
        pytest.skip(why)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "ganache.log").open("wb") as log:
        proc = subprocess.Popen(
            ["node", str(GANACHE_CLI), "--server.host", "127.0.0.1", "--server.port", str(port),
             "--chain.chainId", str(GANACHE_CHAIN_ID), "--wallet.deterministic",
             "--logging.quiet"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"},
                              timeout=2)  # fmt: skip
                break
            except requests.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("ganache did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_anchor_and_verify_on_ganache(ganache: str, queue: LeafQueue, tmp_path: Path) -> None:
    signer = new_key_file(tmp_path / "chain.key")
    fund_from_dev_account(ganache, signer.address, ONE_ETH)
    deployment = deploy_anchor(ganache, signer)
    assert deployment.chain_id == GANACHE_CHAIN_ID
    client = LedgerClient(ganache, deployment.address, expected_chain_id=GANACHE_CHAIN_ID)
    client.check()
    anchorer = Anchorer(queue, client, signer, AnchorPolicy(max_leaves=3))
    for i in range(7):
        anchorer.enqueue("inspection", f"EL-{i}", f"verdict {i}".encode())
    anchorer.enqueue("deletion_receipt", "del-9", b"deleted")
    assert anchorer.flush(timeout_s=60)
    batches = queue.batches()
    assert [b.leaf_count for b in batches] == [3, 3, 1, 1]
    assert client.pending_nonce(signer.address) == 1 + len(batches)  # deploy + one per batch
    for b in batches:
        entry = client.lookup(b.root)
        assert entry is not None and entry.leaf_count == b.leaf_count
        assert entry.anchorer == signer.address
    proof = build_proof(queue, "inspection", "EL-4", b"verdict 4")
    _, verdict = verify_document(proof.to_json(), ganache)
    assert verdict.valid, verdict.reason
    with pytest.raises(AlreadyAnchored):
        client.sign_anchor(signer, batches[0].root, 3, 1, client.pending_nonce(signer.address))
    worst = client.estimate_anchor_gas(signer.address, b"\xff" * 32, 2**64 - 1, 255)
    assert worst * GAS_MARGIN <= ANCHOR_GAS  # the fixed limit holds on ganache's EVM too
    # a journaled transaction resent after a crash is recognised, not sent twice
    b = batches[-1]
    assert b.raw_tx is not None and b.tx_hash is not None
    assert client.send_raw(b.raw_tx) == b.tx_hash
