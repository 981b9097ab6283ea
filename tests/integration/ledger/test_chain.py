"""The embedded chain process: JSON-RPC over HTTP, deploy once, state survives a crash."""

from __future__ import annotations

import os

import pytest
import requests

from qdspace.ledger.client import LedgerClient
from qdspace.ledger.errors import AlreadyAnchored, ChainUnavailable, WrongChain
from qdspace.ledger.keys import ChainSigner

from .conftest import ChainProcess

pytestmark = pytest.mark.integration


def _rpc(url: str, body: object) -> object:
    return requests.post(url, json=body, timeout=5).json()


def test_json_rpc_answers_and_refuses_clearly(chain: ChainProcess) -> None:
    ok = _rpc(chain.url, {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    assert ok == {"jsonrpc": "2.0", "id": 1, "result": hex(chain.deployment.chain_id)}
    unknown = _rpc(chain.url, {"jsonrpc": "2.0", "id": 2, "method": "eth_mineGold", "params": []})
    assert isinstance(unknown, dict) and unknown["error"]["code"] == -32601
    batch = _rpc(
        chain.url,
        [{"jsonrpc": "2.0", "id": 3, "method": "eth_blockNumber"}, {"jsonrpc": "2.0", "id": 4}],
    )
    assert isinstance(batch, list) and batch[0]["result"] == "0x1"
    assert batch[1]["error"]["code"] == -32600
    bad = requests.post(chain.url, data=b"{nope", timeout=5).json()
    assert bad["error"]["code"] == -32700


def test_anchor_lookup_and_refusal_of_a_second_anchor(
    chain: ChainProcess, signer: ChainSigner
) -> None:
    client = chain.client()
    client.check()
    root = os.urandom(32)
    assert client.lookup(root) is None
    signed = client.sign_anchor(signer, root, 42, 3, client.pending_nonce(signer.address))
    assert client.send_raw(signed.raw) == signed.tx_hash
    receipt = client.receipt(signed.tx_hash)
    assert receipt is not None and receipt.succeeded and receipt.anchored_roots == (root,)
    entry = client.lookup(root)
    assert entry is not None
    assert (entry.leaf_count, entry.kind, entry.anchorer) == (42, 3, signer.address)
    assert entry.block_number == receipt.block_number
    assert client.anchoring_tx(root, entry.block_number) == signed.tx_hash
    # resending the very same bytes is harmless; anchoring the root again is refused
    assert client.send_raw(signed.raw) == signed.tx_hash
    with pytest.raises(AlreadyAnchored, match=root.hex()):
        client.sign_anchor(signer, root, 42, 3, client.pending_nonce(signer.address))


def test_state_survives_a_crash_and_a_torn_journal(
    chain: ChainProcess, signer: ChainSigner
) -> None:
    client = chain.client()
    root = os.urandom(32)
    client.send_raw(client.sign_anchor(signer, root, 1, 1, 0).raw)
    height = client.w3.eth.block_number
    chain.kill()
    with pytest.raises(ChainUnavailable, match="unreachable"):
        client.lookup(root)
    with (chain.state_dir / "journal.bin").open("ab") as fh:
        fh.write(b"\x00\x00\x00\x00\x00\x00\x10\x00partial frame")  # a write torn by the crash
    chain.start()
    again = chain.client()
    assert again.w3.eth.block_number == height
    entry = again.lookup(root)
    assert entry is not None and entry.anchorer == signer.address
    assert again.pending_nonce(signer.address) == 1
    again.check()


def test_wrong_chain_and_missing_contract_are_named(chain: ChainProcess) -> None:
    dep = chain.deployment
    with pytest.raises(WrongChain, match=f"has chain id {dep.chain_id}, expected 1"):
        LedgerClient(chain.url, dep.address, expected_chain_id=1).check()
    with pytest.raises(WrongChain, match="no contract at"):
        LedgerClient(chain.url, "0x" + "12" * 20).check()


def test_a_batch_request_is_durable_once_answered(chain: ChainProcess, signer: ChainSigner) -> None:
    """A batch is fsynced once, before its answer: every transaction it acknowledged
    survives a SIGKILL right after the answer."""
    client = chain.client()
    roots = [os.urandom(32) for _ in range(5)]
    signed = [client.sign_anchor(signer, r, 1, 1, n, gas=120_000) for n, r in enumerate(roots)]
    assert client.send_raw_many([s.raw for s in signed]) == [None] * 5
    chain.kill()
    chain.start()
    again = chain.client()
    receipts = again.receipts([s.tx_hash for s in signed])
    assert [r.anchored_roots if r else None for r in receipts] == [(r,) for r in roots]
    assert again.pending_nonce(signer.address) == 5
