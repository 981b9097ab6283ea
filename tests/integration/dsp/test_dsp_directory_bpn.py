"""A BPNL counts over DSP only as the authority attested it: members join a space through
the authority service (``node join``, the signed member directory); SunArc was enrolled
with its BPNL (``enroll --bpn``), Polycell claims the same number in its settings without
the authority's word. Cellex's ``inspections`` dataset is for that BPNL only: SunArc sees
it and trades for it over DSP; Polycell's claim does not get its entry into the directory,
and Cellex answers it the clear 403 of an unattested number."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from qdspace.connector.dsp_transfer import request_message as transfer_request
from qdspace.node.client import ClientError
from qdspace.node.localnet.network import LocalNetwork, MemberSpec

from .conftest import ingest_sample, negotiated_over_dsp, ok, runtime_of, wait_for
from .joined import held_directory, joined_space
from .peer import DSP, Peer, request

pytestmark = pytest.mark.integration
BPN = "BPNL00000003CRHK"
CX = [
    "https://w3id.org/dspace/2025/1/odrl-profile.jsonld",
    "https://w3id.org/catenax/policy/context.jsonld",
]
NEEDS_BPN = {
    "@context": CX,
    "@type": "Set",
    "@id": "urn:access:inspections",
    "permission": [
        {
            "action": "access",
            "constraint": [
                {
                    "leftOperand": "BusinessPartnerNumber",
                    "operator": "isAnyOf",
                    "rightOperand": [BPN],
                }
            ],
        }
    ],
}
MEMBERS = (
    (MemberSpec("sunarc", "oem"), BPN),  # enrolled with the BPNL
    (MemberSpec("polycell", "oem"), None),  # enrolled without; claims it anyway
    (MemberSpec("cellex", "supplier"), None),
)


def _settings(spec: MemberSpec) -> dict[str, Any]:
    update: dict[str, Any] = {}
    if spec.name in ("sunarc", "polycell"):
        update["bpn"] = BPN  # its own claim; only the authority's word counts
    if spec.name == "cellex":
        update["dsp_access"] = {"inspections": NEEDS_BPN}
    return update


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    workdir = tmp_path_factory.mktemp("dsp-directory")
    joining = [(spec, bpn, _settings(spec)) for spec, bpn in MEMBERS]
    with joined_space(workdir, "bpn-space", joining) as (network, _, _url):
        ingest_sample(network, "cellex")
        yield network


def _cellex_lists(network: LocalNetwork) -> dict[str, Any]:
    """The entries of the directory Cellex holds, by name."""
    return {e["name"]: e for e in held_directory(network, "cellex").get("entries", [])}


def _datasets(peer: Peer) -> set[str]:
    body = {"@context": [DSP], "@type": "CatalogRequestMessage"}
    return {d["@id"] for d in ok(peer.post("/catalog/request", body))["dataset"]}


def test_an_attested_bpnl_opens_the_dataset_and_trades_over_dsp(space: LocalNetwork) -> None:
    listed = wait_for("SunArc in Cellex's directory", lambda: _cellex_lists(space).get("sunarc"))
    assert listed["bpn"] == BPN
    peer = Peer(space, "sunarc", "cellex")
    try:
        assert "inspections" in _datasets(peer)
        ok(peer.get("/catalog/datasets/inspections"))
    finally:
        peer.http.close()
    assert negotiated_over_dsp(space, "sunarc", "cellex")["state"] == "FINALIZED"


def test_a_callback_off_the_members_published_dsp_address_is_refused_and_never_dialled(
    space: LocalNetwork,
) -> None:
    """SunArc's node publishes its DSP listener in the directory, and Cellex takes
    SunArc's callbacks only there. SunArc, by hand with its own credentials, names a
    decoy listener (a service inside Cellex's network, say) as the callback of a
    contract request and of a transfer request, directly and behind user info naming its
    own address: each is refused with 400 naming the published address, nothing is
    opened for it, and Cellex never dials the decoy (on the old code: 201, and Cellex's
    outbox dialled the decoy for as long as the answer stayed queued)."""

    def published() -> Any:
        return _cellex_lists(space).get("sunarc", {}).get("endpoints", {}).get("dsp")

    listed = wait_for("SunArc's DSP address in Cellex's directory", published)
    assert f"https://{listed}" == runtime_of(space, "sunarc")["dsp"]
    agreed = negotiated_over_dsp(space, "sunarc", "cellex")
    assert agreed["state"] == "FINALIZED"
    decoy = socket.socket()
    decoy.bind(("127.0.0.1", 0))
    decoy.listen(8)
    port = decoy.getsockname()[1]
    peer = Peer(space, "sunarc", "cellex")
    with decoy:
        try:
            offer = peer.catalog_offer("inspections")
            for callback in (
                f"https://127.0.0.1:{port}/cb",
                f"https://{listed}@127.0.0.1:{port}/cb",
            ):
                cpid = f"urn:uuid:{uuid.uuid4()}"
                asked = peer.post("/negotiations/request", request(cpid, offer, callback))
                _refused_naming(asked, listed)
                transfer = transfer_request(cpid, agreed["agreement_id"], callback)
                _refused_naming(peer.post("/transfers/request", transfer), listed)
                with space["cellex"].client() as supplier:
                    mine = ok(supplier.get("/v1/contracts/negotiations"))
                    assert not [n for n in mine if cpid in json.dumps(n)], mine
        finally:
            peer.http.close()
        decoy.settimeout(3.0)
        with pytest.raises(TimeoutError):
            decoy.accept()  # Cellex never connected to it


def _refused_naming(response: Any, listed: str) -> None:
    assert response.status_code == 400, response.text
    reason = response.json()["reason"][0]
    assert "callbackAddress" in reason and f"https://{listed}" in reason, reason


def test_a_claimed_bpnl_counts_for_nothing(space: LocalNetwork) -> None:
    wait_for("Cellex's directory", lambda: "sunarc" in _cellex_lists(space) or None)
    log = space["polycell"].log_path

    def refused() -> bool:
        return "attested none" in log.read_text()

    wait_for("the authority refusing Polycell's claimed BPNL", refused, timeout=60)
    assert "polycell" not in _cellex_lists(space)
    peer = Peer(space, "polycell", "cellex")
    try:
        assert "inspections" not in _datasets(peer)
        refused_get = peer.get("/catalog/datasets/inspections")
        assert refused_get.status_code == 403, refused_get.text
        assert "attested none" in refused_get.json()["reason"][0]
        cpid = f"urn:uuid:{uuid.uuid4()}"
        offer = ok(peer.get("/catalog/datasets/operator-log"))["hasPolicy"][0]
        body = {
            "@context": [DSP, *CX, "https://qdspace.dev/ns/policy/context.jsonld"],
            "@type": "ContractRequestMessage",
            "consumerPid": cpid,
            "offer": {**offer, "target": "inspections"},
            "callbackAddress": "https://127.0.0.1:9/cb",
        }
        asked = peer.post("/negotiations/request", body)
        assert asked.status_code == 403, asked.text
    finally:
        peer.http.close()


def test_the_access_policy_holds_over_grpc_too(space: LocalNetwork) -> None:
    """The same dataset over the node's own binding: Polycell (no BPNL attested) does not
    find ``inspections`` in Cellex's gRPC catalog and is refused a negotiation for it,
    403 saying why; SunArc (attested) finds it. (Before, the access policy held over
    DSP only, and Polycell negotiated over gRPC what DSP refused it.)"""
    wait_for("Polycell to hold Cellex's entry", lambda: _listed_at(space, "polycell", "cellex"))
    with space["polycell"].operator(timeout=60) as polycell:
        seen = {a["asset_id"] for a in polycell.catalog("cellex")}
        assert "inspections" not in seen and "operator-log" in seen, seen
        with pytest.raises(ClientError) as refused:
            polycell.negotiate("cellex", "inspections", ["quality-assurance"])
    assert refused.value.status == 403 and "attested none" in str(refused.value), refused.value
    with space["sunarc"].operator(timeout=60) as sunarc:
        assert "inspections" in {a["asset_id"] for a in sunarc.catalog("cellex")}


def _listed_at(space: LocalNetwork, holder: str, name: str) -> bool | None:
    entries = held_directory(space, holder).get("entries", [])
    return name in {e["name"] for e in entries} or None
