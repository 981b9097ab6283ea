"""A closed quality case is anchored on the chain by both parties, as the same leaf.

Two real nodes and a chain: SunArc opens an investigation with Cellex, Cellex accepts
it (no actions), SunArc closes it; each node then anchors the closure record
(``quality_case``, ``<opener>:<case>``) and both leaves commit to the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qdspace.node.localnet.network import LocalNetwork, MemberSpec

from .conftest import ok, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    net = LocalNetwork(
        tmp_path_factory.mktemp("cases-anchored"),
        [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")],
        env={"QDSPACE_LEDGER_FLUSH_S": "0.5"},
    )
    try:
        net.create()
        net.start()
        yield net
    finally:
        net.stop()


def state(net: LocalNetwork, name: str, case_id: str) -> str:
    with net[name].client() as client:
        result: str = ok(client.get(f"/v1/investigations/{case_id}"))["state"]
    return result


def test_both_parties_anchor_the_same_closure(pair: LocalNetwork) -> None:
    body = {"peer": "cellex", "severity": "MAJOR", "subject": "EL microcracks"}
    with pair["sunarc"].client() as oem:
        case_id = ok(oem.post("/v1/investigations", json=body))["case_id"]
    wait_for("cellex to receive", lambda: state(pair, "cellex", case_id) == "RECEIVED")
    with pair["cellex"].client() as supplier:
        ok(supplier.post(f"/v1/investigations/{case_id}/ack", json={}))
        ok(supplier.post(f"/v1/investigations/{case_id}/accept", json={}))
    wait_for("sunarc to see it accepted", lambda: state(pair, "sunarc", case_id) == "ACCEPTED")
    with pair["sunarc"].client() as oem:
        opener = ok(oem.post(f"/v1/investigations/{case_id}/close", json={}))["opener_id"]
    wait_for("cellex to see it closed", lambda: state(pair, "cellex", case_id) == "CLOSED")
    leaves = {}
    for name in ("sunarc", "cellex"):
        with pair[name].client(timeout=120) as client:
            ok(client.post("/v1/ledger/flush", params={"timeout_s": 60}))
            found = ok(client.get("/v1/ledger/leaves/quality_case"))
        leaves[name] = {(leaf["ref_id"], leaf["leaf_hash"], leaf["anchored"]) for leaf in found}
    assert len(leaves["sunarc"]) == 1
    ((ref, _, anchored),) = leaves["sunarc"]
    assert ref == f"{opener}:{case_id}" and anchored
    assert leaves["sunarc"] == leaves["cellex"]
