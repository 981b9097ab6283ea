"""Catena-X access over DSP: the provider's ``dsp_access`` policies decide which datasets a
member sees, on facts from the authority's signed member directory. A member the authority
attested no business partner number for does not see a dataset whose access policy names
one, and asking for it is a clear 403, whatever the member claims about itself."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from qdspace.node.config import NodeSettings
from qdspace.node.localnet.network import LocalNetwork, MemberSpec

from .conftest import ingest_sample, ok
from .peer import POLICY_CTX, Peer, request

pytestmark = pytest.mark.integration
BPN = "BPNL00000003CRHK"
CX = [
    "https://w3id.org/dspace/2025/1/odrl-profile.jsonld",
    "https://w3id.org/catenax/policy/context.jsonld",
]


def _access(*constraints: dict[str, Any]) -> dict[str, Any]:
    return {
        "@context": CX,
        "@type": "Set",
        "@id": f"urn:access:{uuid.uuid4()}",
        "permission": [{"action": "access", "constraint": list(constraints)}],
    }


NEEDS_BPN = _access(
    {"leftOperand": "BusinessPartnerNumber", "operator": "isAnyOf", "rightOperand": [BPN]},
    {"leftOperand": "Membership", "operator": "eq", "rightOperand": "active"},
)
MEMBERS = _access({"leftOperand": "Membership", "operator": "eq", "rightOperand": "active"})


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    network = LocalNetwork(
        tmp_path_factory.mktemp("dsp-bpn"),
        [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")],
        chain=False,
        env={"QDSPACE_DSP_PORT": "0"},
    )
    network.create()
    cellex = NodeSettings.load(network["cellex"].directory)
    access = {"inspections": NEEDS_BPN, "*": MEMBERS}
    cellex.model_copy(update={"dsp_access": access}).save()
    sunarc = NodeSettings.load(network["sunarc"].directory)
    sunarc.model_copy(update={"bpn": BPN}).save()  # its own claim: it counts for nothing
    network.start()
    try:
        ingest_sample(network, "cellex")
        yield network
    finally:
        network.stop()


def _claiming(peer: Peer) -> dict[str, str]:
    """An ID token that also claims the BPNL (a self-issued token may say anything)."""
    now, me = int(time.time()), peer.keys.identity.member_id
    claims = {"iss": me, "sub": me, "aud": peer.audience, "iat": now, "exp": now + 60, "bpn": BPN}
    key = Ed25519PrivateKey.from_private_bytes(bytes(peer.keys.signing_key))
    return {"authorization": f"Bearer {jwt.encode(claims, key, algorithm='EdDSA')}"}


@pytest.fixture
def peer(net: LocalNetwork) -> Iterator[Peer]:
    caller = Peer(net, "sunarc", "cellex")
    try:
        yield caller
    finally:
        caller.http.close()


def test_the_catalog_lists_only_what_the_access_policies_grant(peer: Peer) -> None:
    body = {"@context": POLICY_CTX[:1], "@type": "CatalogRequestMessage"}
    listed = {d["@id"] for d in ok(peer.post("/catalog/request", body))["dataset"]}
    assert "inspections" not in listed
    assert {"operator-log", "process-genealogy"} <= listed  # membership is enough there
    ok(peer.get("/catalog/datasets/operator-log"))


def test_an_unattested_bpn_is_a_clear_403(net: LocalNetwork, peer: Peer) -> None:
    for headers in (peer.headers(), _claiming(peer)):
        refused = peer.http.get("/catalog/datasets/inspections", headers=headers)
        assert refused.status_code == 403, refused.text
        assert "attested none" in refused.json()["reason"][0]
    offer = ok(peer.get("/catalog/datasets/operator-log"))["hasPolicy"][0]
    cpid = f"urn:uuid:{uuid.uuid4()}"
    asked = request(cpid, {**offer, "target": "inspections"}, "https://127.0.0.1:9/cb")
    asked["offer"]["assigner"] = peer.audience
    refused = peer.http.post("/negotiations/request", json=asked, headers=_claiming(peer))
    assert refused.status_code == 403, refused.text
    assert refused.json()["@type"] == "ContractNegotiationError"
    with net["cellex"].client() as cellex:
        negotiations = ok(cellex.get("/v1/contracts/negotiations"))
    assert all(n.get("asset_id") != "inspections" for n in negotiations), negotiations
