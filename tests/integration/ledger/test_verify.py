"""Proofs and passports checked with nothing but chain read access (``qdspace ledger verify``)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from nacl.signing import SigningKey
from typer.testing import CliRunner

from qdspace.ledger.anchor_policy import AnchorPolicy
from qdspace.ledger.anchorer import Anchorer
from qdspace.ledger.client import _ANCHORED_TOPIC as ANCHORED_TOPIC
from qdspace.ledger.deploy import fund_from_dev_account
from qdspace.ledger.errors import DocumentFormatError
from qdspace.ledger.keys import ChainSigner, new_key_file
from qdspace.ledger.leaves import KIND_CODES, leaf_preimage
from qdspace.ledger.merkle import leaf_hash
from qdspace.ledger.passport import Passport, issue_passport, verify_passport
from qdspace.ledger.proofs import build_proof, verify_proof
from qdspace.ledger.queue import LeafQueue
from qdspace.ledger.queue_schema import ensure_schema
from qdspace.ledger.verify import verify_document
from qdspace.node.cli.ledger import ledger_app
from qdspace.node.member_ids import member_id_for

from .conftest import ChainProcess, funded_chain, sqlite_engine

pytestmark = pytest.mark.integration


def _id(name: str, key: SigningKey) -> str:
    """The member id a passport signed with `key` must carry (`node.member_ids`)."""
    return member_id_for(name, bytes(key.verify_key))


RECORDS = {
    ("inspection", f"EL-CX-{i:03d}"): f'{{"station":"EL-2","verdict":"crack","n":{i}}}'.encode()
    for i in range(7)
}
RECORDS[("agreement", "agr-sunarc-cellex-1")] = b'{"offer":"el-verdicts","order":"PO-77"}'
RECORDS[("deletion_receipt", "del-1")] = b'{"agreement":"agr-sunarc-cellex-1","rows":40}'


@dataclass
class Anchored:
    chain: ChainProcess
    queue: LeafQueue
    signer: ChainSigner
    anchorer: Anchorer


def _anchor(chain: ChainProcess, signer: ChainSigner, queue: LeafQueue) -> Anchored:
    anchorer = Anchorer(queue, chain.client(), signer, AnchorPolicy(max_leaves=4))
    for (kind, ref), record in RECORDS.items():
        anchorer.enqueue(kind, ref, record)
    assert anchorer.flush(timeout_s=30)
    return Anchored(chain, queue, signer, anchorer)


@pytest.fixture
def anchored(chain: ChainProcess, signer: ChainSigner, queue: LeafQueue) -> Anchored:
    """RECORDS anchored on a chain of this test's own (for a test that anchors more)."""
    return _anchor(chain, signer, queue)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anchored]:
    """RECORDS anchored once for the tests that only read the chain and the queue
    (build proofs, verify them and their forgeries): one chain process for all of them
    instead of one each (a chain start, a funded key, 3 anchoring transactions)."""
    with funded_chain(tmp_path_factory.mktemp("verify-shared")) as (chain, signer, queue):
        yield _anchor(chain, signer, queue)


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(ledger_app, list(args))
    return result.exit_code, result.output


def test_cli_verifies_a_proof_and_rejects_a_forged_record(shared: Anchored, tmp_path: Path) -> None:
    proof = build_proof(
        shared.queue,
        "agreement",
        "agr-sunarc-cellex-1",
        RECORDS[("agreement", "agr-sunarc-cellex-1")],
    )
    path = tmp_path / "proof.json"
    path.write_text(proof.to_json())
    code, out = _cli("verify", str(path), "--rpc", shared.chain.url)
    assert code == 0, out
    assert "VALID qdspace.inclusion-proof" in out
    forged = json.loads(path.read_text())
    forged["record_b64"] = "eyJvZmZlciI6ImVsLXZlcmRpY3RzIiwib3JkZXIiOiJQTy03OCJ9"
    path.write_text(json.dumps(forged))
    code, out = _cli("verify", str(path), "--rpc", shared.chain.url)
    assert code == 1 and "INVALID" in out and "record" in out
    path.write_text("{}")
    code, out = _cli("verify", str(path), "--rpc", shared.chain.url)
    assert code == 2 and "no 'type' field" in out
    # the binary spelling of the same proof verifies the same way
    binary = tmp_path / "proof.qdp"
    binary.write_bytes(proof.to_bytes())
    code, out = _cli("verify", str(binary), "--rpc", shared.chain.url)
    assert code == 0 and "VALID qdspace.inclusion-proof" in out, out
    # pinned to the member's account: valid; to another account: not this member's anchor
    mine, space = shared.signer.address, shared.chain.deployment.address
    pins = ("--rpc", shared.chain.url, "--contract", space)
    code, out = _cli("verify", str(binary), *pins, "--anchorer", mine)
    assert code == 0 and "anchored by the member's account" in out, out
    assert "Pin the data space's" not in out
    someone = "0x" + "12" * 20
    code, out = _cli("verify", str(binary), *pins, "--anchorer", someone)
    assert code == 1 and "not by the member's account" in out, out
    # an account pinned without the contract pins nothing: refused as unusable
    code, out = _cli("verify", str(binary), "--rpc", shared.chain.url, "--anchorer", mine)
    assert code == 2 and "--anchorer needs --contract" in out, out
    binary.write_bytes(proof.to_bytes()[:-1])
    code, out = _cli("verify", str(binary), "--rpc", shared.chain.url)
    assert code == 2 and "malformed proof" in out


def _mutations(text: str) -> list[str]:
    """Every single-byte change of ``text`` (one replacement per position)."""
    out = []
    for i, ch in enumerate(text):
        if ch in "0123456789abcdef":
            new = "0123456789abcdef"[("0123456789abcdef".index(ch) + 1) % 16]
        else:
            new = chr(ord(ch) ^ 1)
        out.append(text[:i] + new + text[i + 1 :])
    return out


def test_changing_any_byte_of_record_proof_or_root_fails(shared: Anchored) -> None:
    key = ("inspection", "EL-CX-005")
    proof = build_proof(shared.queue, *key, RECORDS[key])
    text = proof.to_json()
    assert verify_document(text, shared.chain.url)[1].valid
    survivors = []
    for mutated in _mutations(text):
        try:
            _, verdict = verify_document(mutated, shared.chain.url)
        except DocumentFormatError:
            continue
        if verdict.valid:
            survivors.append(mutated)
    assert survivors == []


def test_a_proof_naming_another_real_anchoring_transaction_fails(shared: Anchored) -> None:
    """Verification reads the root's record from the named transaction's receipt: a real
    transaction of ours that anchored another root (in its own block) confirms nothing."""
    mine = build_proof(
        shared.queue, "inspection", "EL-CX-005", RECORDS[("inspection", "EL-CX-005")]
    )
    other = build_proof(shared.queue, "agreement", "agr-sunarc-cellex-1",
                        RECORDS[("agreement", "agr-sunarc-cellex-1")])  # fmt: skip
    assert mine.tx_hash != other.tx_hash and mine.root != other.root
    client = shared.chain.client()
    for swapped in (
        mine.model_copy(update={"tx_hash": other.tx_hash}),
        mine.model_copy(update={"tx_hash": other.tx_hash, "block_number": other.block_number}),
    ):
        verdict = verify_proof(swapped, client)
        assert not verdict.valid
        assert "did not anchor root" in verdict.reason
    assert verify_proof(mine, client).valid


def test_changing_any_byte_of_a_binary_proof_fails(shared: Anchored) -> None:
    key = ("agreement", "agr-sunarc-cellex-1")
    data = build_proof(shared.queue, *key, RECORDS[key]).to_bytes()
    assert verify_document(data, shared.chain.url)[1].valid
    survivors = []
    for i in range(len(data)):
        for xor in (0x01, 0x80):
            mutated = data[:i] + bytes([data[i] ^ xor]) + data[i + 1 :]
            try:
                _, verdict = verify_document(mutated, shared.chain.url)
            except DocumentFormatError:
                continue
            if verdict.valid:
                survivors.append((i, xor))
    assert survivors == []
    for cut in (data[:-1], data + b"\x00", data[:40]):
        with pytest.raises(DocumentFormatError, match="malformed proof"):
            verify_document(cut, shared.chain.url)


def test_passport_verifies_and_catches_tampering_and_omissions(
    anchored: Anchored, tmp_path: Path
) -> None:
    member_key = SigningKey.generate()
    client = anchored.chain.client()
    passport = issue_passport(
        anchored.queue, client, member_key, _id("cellex", member_key), anchored.signer.address
    )
    assert passport.activity["inspection"].leaves == 7
    assert passport.activity["inspection"].batches == 2
    assert passport.activity["agreement"].leaves == 1
    assert verify_passport(passport, client, bytes(member_key.verify_key)).valid
    path = tmp_path / "passport.json"
    path.write_text(passport.to_json())
    code, out = _cli("verify", str(path), "--rpc", anchored.chain.url)
    assert code == 0, out

    inflated = json.loads(path.read_text())
    inflated["activity"]["inspection"]["leaves"] = 70
    resigned = Passport.model_validate(inflated)
    sig = member_key.sign(resigned.signed_bytes()).signature
    resigned = resigned.model_copy(update={"signature": "0x" + sig.hex()})
    verdict = verify_passport(resigned, client)
    assert not verdict.valid and "activity.inspection" in verdict.reason  # signed, but a lie
    tampered = passport.model_copy(update={"member_id": "polycell-1"})
    assert "not the id of the key" in verify_passport(tampered, client).reason
    # another member's id with the signer's own digest still breaks the signature
    renamed = passport.model_copy(update={"member_id": _id("polycell", member_key)})
    assert "signature" in verify_passport(renamed, client).reason
    other = SigningKey.generate()
    assert "signer" in verify_passport(passport, client, bytes(other.verify_key)).reason

    # the account anchors something the passport does not report: the passport is incomplete
    extra = client.sign_anchor(
        anchored.signer, b"\x05" * 32, 3, 1, client.pending_nonce(anchored.signer.address)
    )
    client.send_raw(extra.raw)
    stale = verify_passport(
        passport.model_copy(
            update={
                "period": passport.period.model_copy(
                    update={"to_block": client.latest_block(), "to_time": ""}
                )
            }
        ),
        client,
    )
    assert not stale.valid
    fresh = issue_passport(
        anchored.queue, client, member_key, _id("cellex", member_key), anchored.signer.address
    )
    verdict = verify_passport(fresh, client)
    assert not verdict.valid and "activity.inspection" in verdict.reason
    # the original passport, for its own period, still verifies
    assert verify_passport(passport, client).valid


def test_a_root_another_member_anchored_first_is_not_in_our_passport(
    chain: ChainProcess, signer: ChainSigner, queue: LeafQueue, tmp_path: Path
) -> None:
    """Both parties of a closed quality case anchor the same closure record: one leaf, so
    one root. The second finds it anchored and adopts it (its proof is good), but its
    passport must not claim the first one's anchoring, or the chain contradicts it."""

    closure = ("quality_case", "sunarc-0123456789ab:qc-1", b'{"state":"CLOSED"}')
    first = Anchorer(queue, chain.client(), signer, AnchorPolicy(max_leaves=4))
    first.enqueue(*closure)
    assert first.flush(timeout_s=30)

    other_signer = new_key_file(tmp_path / "keys" / "other.key")
    fund_from_dev_account(chain.url, other_signer.address, 10**18)
    engine = sqlite_engine(tmp_path / "other.db")
    ensure_schema(engine)
    other_queue = LeafQueue(engine)
    second = Anchorer(other_queue, chain.client(), other_signer, AnchorPolicy(max_leaves=4))
    second.enqueue(*closure)
    assert second.flush(timeout_s=30)
    client = chain.client()
    proof = build_proof(other_queue, *closure[:2])
    assert verify_document(proof.model_dump_json(), chain.url)[1].valid  # adopted: still good

    key = SigningKey.generate()
    ours = issue_passport(other_queue, client, key, _id("cellex", key), other_signer.address)
    assert "quality_case" not in ours.activity
    assert verify_passport(ours, client).valid, verify_passport(ours, client).reason
    theirs = issue_passport(queue, client, key, _id("sunarc", key), signer.address)
    assert theirs.activity["quality_case"].leaves == 1
    assert verify_passport(theirs, client).valid
    engine.dispose()


#: a contract of 24 bytes that logs its call data as an ``Anchored`` event (topic first,
#: then root, kind, anchorer as topics; the rest as data): anyone may deploy one
_LOGGER_RUNTIME = "36600060003760605160405160205160005160606080a400"
_LOGGER_INIT = "601880600b6000396000f3" + _LOGGER_RUNTIME


def _rpc(url: str, method: str, params: list[object]) -> Any:
    reply = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    body = reply.json()
    assert "error" not in body, body
    return body["result"]


def test_a_proof_naming_a_contract_of_its_own_is_not_valid_against_the_space(
    shared: Anchored, tmp_path: Path
) -> None:
    """A stranger deploys a contract that logs an ``Anchored`` event for a root of its
    choosing, naming the victim member's account as anchorer, and hands out a one-leaf
    proof naming that contract: 'deletion receipt dr-victim-0001'. Read against the
    contract the proof names, every check passed, ``--anchorer`` pinned too (the anchorer
    is a topic the contract writes). Pinned to the data space's contract, it is INVALID;
    unpinned, the verdict says which contract was read."""
    url, dev = shared.chain.url, None
    dev = _rpc(url, "eth_accounts", [])[1]
    deployed = _rpc(
        url,
        "eth_sendTransaction",
        [{"from": dev, "data": "0x" + _LOGGER_INIT, "gas": hex(200_000)}],
    )
    fake = _rpc(url, "eth_getTransactionReceipt", [deployed])["contractAddress"].lower()
    victim = shared.signer.address.lower()
    record = b'{"deletion":"never happened"}'
    sha = hashlib.sha256(record).digest()
    root = leaf_hash(leaf_preimage("deletion_receipt", "dr-victim-0001", sha))
    block = int(_rpc(url, "eth_blockNumber", []), 16) + 1

    def word(n: int) -> str:
        return n.to_bytes(32, "big").hex()

    data = (
        ANCHORED_TOPIC[2:] + root.hex() + word(KIND_CODES["deletion_receipt"])
        + "00" * 12 + victim[2:] + word(1) + word(block) + word(0)
    )  # fmt: skip
    logged = _rpc(
        url,
        "eth_sendTransaction",
        [{"from": dev, "to": fake, "data": "0x" + data, "gas": hex(100_000)}],
    )
    assert int(_rpc(url, "eth_getTransactionReceipt", [logged])["blockNumber"], 16) == block
    proof = {
        "type": "qdspace.inclusion-proof", "version": 2, "kind": "deletion_receipt",
        "ref_id": "dr-victim-0001", "record_sha256": "0x" + sha.hex(), "index": 0, "size": 1,
        "path": "", "root": "0x" + root.hex(), "chain_id": shared.chain.deployment.chain_id,
        "contract": fake, "tx_hash": logged, "block_number": block,
        "record_b64": base64.b64encode(record).decode(),
    }  # fmt: skip
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(proof))
    space = shared.chain.deployment.address
    code, out = _cli("verify", str(path), "--rpc", url, "--contract", space, "--anchorer", victim)
    assert code == 1 and "INVALID" in out and f"names contract {fake}" in out, out
    _, verdict = verify_document(json.dumps(proof), url, anchorer=victim, contract=space)
    assert not verdict.valid
    # unpinned, the note says what was read (the proof's own contract)
    code, out = _cli("verify", str(path), "--rpc", url)
    assert "Pin the data space's with --contract" in out, out
