"""Regulator endpoints over a real chain: proofs per kind, verification, clear 4xx on faults."""

from __future__ import annotations

import base64
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from nacl.signing import SigningKey

from qdspace.ledger.anchor_policy import AnchorPolicy
from qdspace.ledger.anchorer import Anchorer
from qdspace.ledger.deploy import fund_from_dev_account
from qdspace.ledger.keys import ChainSigner, new_key_file
from qdspace.ledger.passport import Passport, issue_passport
from qdspace.ledger.proofs import InclusionProof, build_proof
from qdspace.ledger.queue import LeafQueue
from qdspace.ledger.queue_schema import ensure_schema
from qdspace.node.api.regulator import regulator_router
from qdspace.node.member_ids import member_id_for
from qdspace.node.runtime.ledger import root_anchorer

from .conftest import ONE_ETH, ChainProcess, funded_chain, sqlite_engine

pytestmark = pytest.mark.integration


def _id(name: str, key: SigningKey) -> str:
    """The member id a passport signed with `key` must carry (`node.member_ids`)."""
    return member_id_for(name, bytes(key.verify_key))


TOKEN = "regulator-secret"
JSON = {"content-type": "application/json"}
RECORDS = {
    ("inspection", "EL-0001"): b'{"verdict":"ok"}',
    ("agreement", "agr-1"): b'{"agreement":"one"}',
    ("deletion_receipt", "del-1"): b'{"deleted":40}',
    ("model_version", "el-model-v3"): b'{"sha256":"ab"}',
}


bearer = HTTPBearer(auto_error=False)


def regulator(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    """The test's regulator credential check (the node brings its own)."""
    if creds is None or not hmac.compare_digest(creds.credentials, TOKEN):
        raise HTTPException(401, "regulator credential required")


@pytest.fixture
def api(chain: ChainProcess, signer: ChainSigner, queue: LeafQueue) -> Iterator[httpx.Client]:
    """The regulator API on a chain of this test's own (for a test that kills it)."""
    with _api(chain, signer, queue) as http:
        yield http


@pytest.fixture(scope="module")
def shared_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """One regulator API, chain and anchored RECORDS for the tests that only read them:
    a chain start, a funded key and the anchoring once instead of once each."""
    with (
        funded_chain(tmp_path_factory.mktemp("regulator-shared")) as (chain, signer, queue),
        _api(chain, signer, queue) as http,
    ):
        yield http


@contextmanager
def _api(chain: ChainProcess, signer: ChainSigner, queue: LeafQueue) -> Iterator[httpx.Client]:
    anchorer = Anchorer(queue, chain.client(), signer, AnchorPolicy())
    for (kind, ref), record in RECORDS.items():
        anchorer.enqueue(kind, ref, record)
    assert anchorer.flush(timeout_s=30)
    anchorer.enqueue("inspection", "EL-0002", b'{"verdict":"crack"}')  # queued, not anchored
    client = chain.client()
    member_key = SigningKey.generate()

    def issue(from_block: int, to_block: int | None) -> Passport:
        return issue_passport(
            queue,
            client,
            member_key,
            _id("cellex", member_key),
            signer.address,
            from_block,
            to_block,
        )

    app = FastAPI()
    app.include_router(
        regulator_router(
            queue=queue,
            client=client,
            require_regulator=regulator,
            record_loader=lambda kind, ref: RECORDS.get((kind, ref)),
            passport_issuer=issue,
            anchorer_of=root_anchorer(queue, signer.address),  # what the node passes
        )
    )
    with (
        serve(app) as base_url,
        httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        ) as http,
    ):
        yield http


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """The app under uvicorn on a loopback port of its own, for real HTTP."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("API server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


PROOF_ROUTES = [
    ("/v1/regulator/inspections/EL-0001/proof", "inspection", "EL-0001"),
    ("/v1/regulator/agreements/agr-1/proof", "agreement", "agr-1"),
    ("/v1/regulator/deletion-receipts/del-1/proof", "deletion_receipt", "del-1"),
    ("/v1/regulator/model-versions/el-model-v3/proof", "model_version", "el-model-v3"),
    ("/v1/regulator/proofs/agreement/agr-1", "agreement", "agr-1"),
]


def test_each_kind_has_a_verified_proof(shared_api: httpx.Client) -> None:
    for path, kind, ref in PROOF_ROUTES:
        r = shared_api.get(path)
        assert r.status_code == 200, (path, r.text)
        body = r.json()
        assert (body["kind"], body["ref_id"]) == (kind, ref)
        assert body["verdict"]["valid"] is True, body["verdict"]
        proof = InclusionProof.parse(body["proof"])
        assert body["leaf"] == "0x" + proof.leaf_hash().hex()
        assert body["root"] == proof.root
        assert base64.b64decode(body["proof_binary_b64"]) == proof.to_bytes()
        assert body["tx_hash"].startswith("0x") and body["block_number"] >= 1
        # the proof handed out verifies again when posted back
        again = shared_api.post("/v1/regulator/verify", json=body["proof"])
        assert again.status_code == 200 and again.json()["verdict"]["valid"] is True


def test_faults_are_clear_4xx(api: httpx.Client, chain: ChainProcess) -> None:
    assert api.get("/v1/regulator/agreements/nope/proof").status_code == 404
    r = api.get("/v1/regulator/proofs/invoice/x")
    assert r.status_code == 404 and "unknown kind 'invoice'" in r.json()["detail"]
    r = api.get("/v1/regulator/inspections/EL-0002/proof")
    assert r.status_code == 409 and "not yet in a batch" in r.json()["detail"]
    no_auth = api.get("/v1/regulator/agreements/agr-1/proof", headers={"Authorization": ""})
    assert no_auth.status_code == 401

    proof = api.get("/v1/regulator/agreements/agr-1/proof").json()["proof"]
    broken = json.loads(json.dumps(proof))
    broken["path"] = "not base64!"
    r = api.post("/v1/regulator/verify", json=broken)
    assert r.status_code == 422 and "path" in r.json()["detail"]
    assert api.post("/v1/regulator/verify", json={"type": "invoice"}).status_code == 422
    assert api.post("/v1/regulator/verify", content=b"{not json").status_code == 422
    elsewhere = json.loads(json.dumps(proof))
    elsewhere["chain_id"] = 1
    r = api.post("/v1/regulator/verify", json=elsewhere)
    assert r.status_code == 400 and "document is for chain 1" in r.json()["detail"]
    tampered = json.loads(json.dumps(proof))
    tampered["ref_id"] = "agr-2"
    r = api.post("/v1/regulator/verify", json=tampered)
    assert r.status_code == 200 and r.json()["verdict"]["valid"] is False

    chain.kill()  # a root not confirmed in the last minute needs the chain: 503, not 500
    r = api.get("/v1/regulator/inspections/EL-0001/proof")
    assert r.status_code == 503 and "unreachable" in r.json()["detail"]


def test_passport_endpoint_returns_a_verifiable_passport(shared_api: httpx.Client) -> None:
    r = shared_api.get("/v1/regulator/passport")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["activity"]["deletion_receipt"]["leaves"] == 1
    verified = shared_api.post("/v1/regulator/verify", json=doc)
    assert verified.status_code == 200 and verified.json()["verdict"]["valid"] is True
    assert shared_api.get("/v1/regulator/passport?from_block=5&to_block=2").status_code == 422
    # past 64 bits: a 422 naming the parameter, not an overflow in the database (a 500)
    huge = shared_api.get(f"/v1/regulator/passport?from_block=0&to_block={2**64}")
    assert huge.status_code == 422 and "to_block" in huge.text, huge.text


def test_a_proof_of_a_root_another_account_anchored_is_not_this_members(
    api: httpx.Client, chain: ChainProcess, tmp_path: Path
) -> None:
    """The contract takes a root from anyone who can send a transaction: a stranger on
    the same chain anchors its own one-leaf batch of a deletion receipt 'dr-victim-0001'
    (the real anchoring path, its own funded account) and posts the proof. On the old
    code it verified VALID, 'all checks passed': a receipt the member never kept. Now
    the member's regulator listener says it was not anchored by the member's account;
    the member's own proofs stay valid."""
    stranger = new_key_file(tmp_path / "stranger" / "chain.key")
    fund_from_dev_account(chain.url, stranger.address, ONE_ETH)
    engine = sqlite_engine(tmp_path / "stranger.db")
    ensure_schema(engine)
    theirs = LeafQueue(engine)
    forger = Anchorer(theirs, chain.client(), stranger, AnchorPolicy())
    forger.enqueue("deletion_receipt", "dr-victim-0001", b'{"deleted":40}')
    assert forger.flush(timeout_s=30)
    proof = build_proof(theirs, "deletion_receipt", "dr-victim-0001")
    engine.dispose()
    posted = api.post("/v1/regulator/verify", content=proof.to_json(), headers=JSON)
    verdict = posted.json()["verdict"]
    assert verdict["valid"] is False, verdict
    (check,) = [c for c in verdict["checks"] if c["name"] == "anchorer"]
    assert "not by the member's account" in check["detail"] and stranger.address in check["detail"]
    own = api.get("/v1/regulator/deletion-receipts/del-1/proof").json()
    assert own["verdict"]["valid"] is True
    assert any(c["name"] == "anchorer" and c["ok"] for c in own["verdict"]["checks"])


def test_a_root_another_member_anchored_first_with_our_leaves_is_still_ours(
    chain: ChainProcess, signer: ChainSigner, queue: LeafQueue, tmp_path: Path
) -> None:
    """Both parties anchor an agreement: the same leaves make the same root, the contract
    keeps the first, and the second node adopts it (its queue records who anchored it).
    The second node's proof of its own agreement names the first member's account, and
    verifies: the root is one this node holds. A root it never held still does not."""
    other = new_key_file(tmp_path / "other" / "chain.key")
    fund_from_dev_account(chain.url, other.address, ONE_ETH)
    engine = sqlite_engine(tmp_path / "other.db")
    ensure_schema(engine)
    first = Anchorer(LeafQueue(engine), chain.client(), other, AnchorPolicy())
    for (kind, ref), record in RECORDS.items():  # the counterparty anchors them all first
        first.enqueue(kind, ref, record)
    assert first.flush(timeout_s=30)
    engine.dispose()
    with _api(chain, signer, queue) as http:  # ours: the same leaves, adopted
        body = http.get("/v1/regulator/agreements/agr-1/proof").json()
        assert body["verdict"]["valid"] is True, body["verdict"]
        checks = {c["name"]: c for c in body["verdict"]["checks"]}
        assert other.address in checks["anchorer"]["detail"] and checks["anchorer"]["ok"]
        again = http.post("/v1/regulator/verify", json=body["proof"]).json()
        assert again["verdict"]["valid"] is True
