"""Anchoring through real node processes: one chain process, a supplier and a regulator.

The supplier ingests inspection records over its API; its anchorer (inside the node
process) anchors them on the launcher's chain; the regulator fetches proofs with its
credential and checks them with ``qdspace verify``; a changed record fails; a chain that
goes down while records arrive loses none of them.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from qdspace.ledger.client import LedgerClient
from qdspace.node.api.regulator_auth import issue_credential
from qdspace.node.identity.member import load_member_keys
from qdspace.node.localnet.network import LocalNetwork, MemberProcess, MemberSpec

pytestmark = pytest.mark.integration

MEMBERS = (MemberSpec("cellex", "supplier"), MemberSpec("regulator", "regulator"))


def inspections(start: int, count: int) -> list[dict[str, object]]:
    return [
        {
            "inspection_id": f"CX-EL-{i:06d}",
            "station": "EL-1",
            "inspected_at": f"2026-11-02T08:{i // 60 % 60:02d}:{i % 60:02d}Z",
            "verdict": "fail" if i % 7 == 0 else "pass",
            "score": round(0.01 * (i % 100), 2),
            "batch_id": "CX-CB-260001",
        }
        for i in range(start, start + count)
    ]


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    """One chain process and two nodes for the module (the tests use disjoint records)."""
    space = tmp_path_factory.mktemp("space")
    net = LocalNetwork(space, MEMBERS, env={"QDSPACE_LEDGER_FLUSH_S": "0.5"})
    try:
        net.create()
        net.start()
        yield net
    finally:
        net.stop()


def ingest(member: MemberProcess, rows: list[dict[str, object]]) -> None:
    with member.client() as client:
        r = client.post("/v1/ingest/inspection", json={"rows": rows, "source": "test"})
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == len(rows)


def flush(member: MemberProcess, timeout_s: float = 60) -> dict[str, object]:
    with member.client(timeout=timeout_s + 30) as client:
        r = client.post("/v1/ledger/flush", params={"timeout_s": timeout_s})
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def regulator_client(network: LocalNetwork, member: MemberProcess) -> httpx.Client:
    """A client on ``member``'s regulator listener with a fresh regulator credential."""
    keys = load_member_keys(network["regulator"].directory)
    with member.regulator_client() as anonymous:
        audience = anonymous.get("/healthz").json()["member_id"]
    return member.regulator_client(issue_credential(keys, audience), timeout=60)


def verify_cli(path: Path, rpc: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qdspace", "verify", str(path), "--rpc", rpc],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_regulator_verifies_node_anchored_records_and_catches_a_changed_one(
    network: LocalNetwork, tmp_path: Path
) -> None:
    cellex = network["cellex"]
    assert network.chain is not None
    ingest(cellex, inspections(0, 30))
    done = flush(cellex)
    # the background sweep (every 2 s) may have queued the rows before this flush did
    assert done["flushed"] is True and done["swept_rows"] in (0, 30)
    status = done["status"]
    assert isinstance(status, dict) and status["pending"]["inspection"] == 0

    with regulator_client(network, cellex) as reg:
        r = reg.get("/v1/regulator/inspections/CX-EL-000007/proof")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["verdict"]["valid"] is True, body["verdict"]
        assert body["verdict"]["checks"][0]["name"] == "record"
        assert body["proof"]["size"] == 30
        # read-only, credential required, clear 4xx
        assert reg.get("/v1/regulator/inspections/CX-EL-999999/proof").status_code == 404
        assert reg.post("/v1/regulator/verify", json={"type": "x"}).status_code == 422
        elsewhere = json.loads(json.dumps(body["proof"]))
        elsewhere["chain_id"] = 1
        assert reg.post("/v1/regulator/verify", json=elsewhere).status_code == 400
    with cellex.regulator_client() as anonymous:
        no_cred = anonymous.get("/v1/regulator/inspections/CX-EL-000007/proof")
    assert no_cred.status_code == 401
    with cellex.regulator_client(cellex.token) as operator:  # no regulator credential
        assert operator.get("/v1/regulator/inspections/CX-EL-000007/proof").status_code == 403
    with cellex.client() as operator:  # nor do the regulator routes live on the operator API
        assert operator.get("/v1/regulator/inspections/CX-EL-000007/proof").status_code == 404

    proof_path = tmp_path / "proof.json"
    proof_path.write_text(json.dumps(body["proof"]))
    ok = verify_cli(proof_path, network.chain.url)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "VALID" in ok.stdout

    forged = json.loads(json.dumps(body["proof"]))
    forged["root"] = "0x" + "ab" * 32
    proof_path.write_text(json.dumps(forged))
    bad = verify_cli(proof_path, network.chain.url)
    assert bad.returncode == 1 and "INVALID" in bad.stdout

    # someone edits the stored record after anchoring: the regulator sees it fail
    with sqlite3.connect(cellex.directory / "node.db") as db:
        db.execute("UPDATE qdm_inspection SET verdict='pass' WHERE inspection_id='CX-EL-000007'")
    with regulator_client(network, cellex) as reg:
        body = reg.get("/v1/regulator/inspections/CX-EL-000007/proof").json()
    assert body["verdict"]["valid"] is False
    assert body["verdict"]["reason"].startswith("record:")

    passport = tmp_path / "passport.json"
    out = subprocess.run(
        [sys.executable, "-m", "qdspace", "ledger", "passport", "--dir", str(cellex.directory),
         "--out", str(passport)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    checked = verify_cli(passport, network.chain.url)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(passport.read_text())["activity"]["inspection"]["leaves"] == 30


def test_chain_down_while_records_arrive_then_every_leaf_anchored_once(
    network: LocalNetwork,
) -> None:
    cellex, chain = network["cellex"], network.chain
    assert chain is not None
    ingest(cellex, inspections(100, 10))
    assert flush(cellex)["flushed"] is True
    chain.kill()
    ingest(cellex, inspections(110, 15))
    stalled = flush(cellex, timeout_s=2)
    assert stalled["flushed"] is False
    status = stalled["status"]
    assert (
        isinstance(status, dict)
        and status["pending"]["inspection"]
        + sum(status["batches"][s] for s in ("sealed", "signed"))
        > 0
    )
    chain.start()  # same port, same state: the node reconnects by itself
    assert flush(cellex)["flushed"] is True

    dep = chain.deployment
    client = LedgerClient(chain.url, dep.address)
    logs = client.w3.eth.get_logs({"address": client.address, "fromBlock": 0, "toBlock": "latest"})
    roots = [bytes(e["topics"][1]) for e in logs]
    total = 0
    for root in roots:
        entry = client.lookup(root)
        assert entry is not None
        total += entry.leaf_count
    assert len(set(roots)) == len(roots)
    # every leaf once: none lost in the outage, none anchored twice (incl. the first test's)
    with cellex.client() as operator:
        queued = operator.get("/v1/ledger/leaves/inspection", params={"limit": 1000}).json()
    assert all(leaf["anchored"] for leaf in queued)
    assert total == len(queued) >= 25
    with regulator_client(network, cellex) as reg:
        for i in (100, 112, 124):
            r = reg.get(f"/v1/regulator/inspections/CX-EL-{i:06d}/proof")
            assert r.status_code == 200 and r.json()["verdict"]["valid"] is True, r.text
