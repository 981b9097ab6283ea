"""A name passes to another member once its holder has left: what is owed to the member an
agreement names goes to no other member that holds its name by then.

Real SunArc and Cellex processes agree on Cellex's inspections; then Cellex leaves (its
node stops, the authority revokes it) and another company enrolls under the freed name
"cellex" and serves it at the same address (a new member id, a valid certificate of the
space for that name). SunArc's pull under the old agreement is refused before a byte of
it leaves SunArc: the server called cellex is not the member the agreement names. On the
old code the request went to the successor, which could have answered with rows of its
own making that SunArc would have kept as Cellex's.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qdspace.node.identity.authority import Authority
from qdspace.node.init import init_node
from qdspace.node.layout import NodeLayout
from qdspace.node.localnet.network import LocalNetwork, MemberProcess, MemberSpec
from qdspace.util.ports import free_port

from .conftest import (
    BIG_ORDER,
    CELLEX_ORDER,
    QA,
    bulk_inspection,
    ingest_inspections,
    negotiate,
    oem_and_supplier,
    ok,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    yield from oem_and_supplier(tmp_path_factory, "name-successor")


def _successor(net: LocalNetwork) -> MemberProcess:
    """Cellex has left; a new member enrolls as "cellex" and serves at Cellex's address."""
    old = net["cellex"]
    net.stop(["cellex"])
    Authority.load(net.authority_dir).revoke("cellex", "left the data space")
    directory = net.workdir / "nodes" / "cellex-successor"
    grpc_port, api_port, regulator_port = old.grpc_port, free_port(), free_port()
    init_node(
        directory,
        net.authority_dir,
        name="cellex",
        role="supplier",
        grpc_port=grpc_port,
        api_port=api_port,
        regulator_port=regulator_port,
        peers={"sunarc": net["sunarc"].grpc_address},
    )
    successor = MemberProcess(
        MemberSpec("cellex", "supplier"), directory, grpc_port, api_port, regulator_port
    )
    successor.token = NodeLayout(directory).operator_token.read_text().strip()
    net.members["cellex"] = successor
    net.start(["cellex"])
    return successor


def test_a_pull_under_an_agreement_goes_to_no_other_holder_of_the_provider_s_name(
    pair: LocalNetwork,
) -> None:
    rows = [bulk_inspection(i, "SUCC") for i in range(50)]
    with pair["cellex"].client(timeout=60) as supplier:
        ok(supplier.post("/v1/ingest/order", json={"rows": [BIG_ORDER]}))
        assert ingest_inspections(supplier, rows)["accepted"] == len(rows)
    old_id = pair["cellex"].keys().identity.member_id
    with pair["sunarc"].client(timeout=60) as oem:
        agreement = negotiate(oem, "cellex", "inspections", orders=[CELLEX_ORDER])
        assert agreement["state"] == "FINALIZED", agreement
    body = {"agreement_id": agreement["agreement_id"], "purpose": QA, "order_id": CELLEX_ORDER}

    successor = _successor(pair)
    pair.stop(["sunarc"])  # a restart: nothing SunArc remembers of the address helps
    pair.start(["sunarc"])
    new_id = successor.keys().identity.member_id
    assert new_id != old_id and new_id.startswith("cellex-")
    with pair["sunarc"].client(timeout=60) as oem:
        refused = oem.post("/v1/contracts/transfers", json=body)
        assert refused.status_code == 502, refused.text  # the peer is not who it must be
        detail = refused.json()["detail"]
        assert f"is member {new_id}, not {old_id}" in detail, detail
        assert "not sent" in detail and "Traceback" not in refused.text
        assert ok(oem.get("/v1/contracts/transfers")) == []  # nothing opened
        held = ok(
            oem.get("/v1/contracts/received", params={"agreement_id": agreement["agreement_id"]})
        )
        assert held["total"] == 0
    # the request never reached the successor: no transfer call in its log
    log = successor.log_path.read_text(errors="replace")
    assert "Transfer/Send" not in log and "Traceback" not in log
    # SunArc still reaches the member that holds the name now, by name (hello)
    with pair["sunarc"].client(timeout=60) as oem:
        hello = ok(oem.post("/v1/peers/cellex/hello"))
        assert hello["peer_member_id"] == new_id
