"""A framework agreement counts over DSP only as the authority attests it: Cellex's
``inspections`` dataset is for members that signed ``DataExchangeGovernance:1.0`` (a
Catena-X access policy). Members join through the authority service; the authority's
operator attests with ``qdspace authority attest`` while the service runs, and Cellex
reads the attestation from the next signed directory it fetches. Before it, SunArc gets
the clear 403 of an unattested framework; after, it sees the dataset and trades for it;
once withdrawn, the dataset closes again. Polycell holds another framework only: the
dataset does not exist for it (404), as for a wrong BPNL. Polycell, hostile, publishes an
entry of its own that claims the framework: the authority refuses it.

The same framework in a *usage* policy: Cellex offers its operator log only to members
that signed it (``offers``' ``framework``). The offer carries Catena-X's
``FrameworkAgreement`` term over DSP; SunArc, unattested, is refused at the negotiation;
attested, it agrees and pulls; once the authority withdraws the attestation, Cellex
releases nothing more under the agreement it signed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from qdspace.node.authority.client import AuthorityClient, AuthorityRefused
from qdspace.node.client_transport import ClientError
from qdspace.node.config import OfferSetting
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.certs import cert_to_pem
from qdspace.node.identity.directory import new_entry
from qdspace.node.identity.member import load_member_keys
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.node.rpc.client import open_channel
from qdspace.protocols.v1 import catalog_pb2, catalog_pb2_grpc

from .conftest import ingest_sample, negotiated_over_dsp, ok, wait_for
from .joined import held_directory, joined_space
from .peer import DSP, Peer

pytestmark = pytest.mark.integration
DEG = "DataExchangeGovernance:1.0"
QA = "quality-assurance"
SAMPLE_ORDER = "PO-2026-0042"  # SunArc's order with Cellex in the sample data
CX = [
    "https://w3id.org/dspace/2025/1/odrl-profile.jsonld",
    "https://w3id.org/catenax/policy/context.jsonld",
]
NEEDS_DEG = {
    "@context": CX,
    "@type": "Set",
    "@id": "urn:access:inspections",
    "permission": [
        {
            "action": "access",
            "constraint": [
                {"leftOperand": "FrameworkAgreement", "operator": "eq", "rightOperand": DEG}
            ],
        }
    ],
}
MEMBERS = (
    MemberSpec("sunarc", "oem"),
    MemberSpec("polycell", "oem"),
    MemberSpec("cellex", "supplier"),
)
Space = tuple[LocalNetwork, Authority, str]


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Space]:
    workdir = tmp_path_factory.mktemp("dsp-frameworks")
    access = {
        "dsp_access": {"inspections": NEEDS_DEG},
        "offers": {"operator-log": OfferSetting(framework=DEG)},
    }
    joining = [(spec, None, access if spec.name == "cellex" else {}) for spec in MEMBERS]
    with joined_space(workdir, "framework-space", joining) as (network, authority, url):
        ingest_sample(network, "cellex")
        yield network, authority, url


def _frameworks_at_cellex(network: LocalNetwork, name: str) -> list[str] | None:
    held = held_directory(network, "cellex")
    ids = {e["name"]: e["member_id"] for e in held.get("entries", [])}
    if name not in ids:
        return None
    frameworks: list[str] = held.get("attested", {}).get(ids[name], {}).get("frameworks", [])
    return frameworks


def _datasets(peer: Peer) -> set[str]:
    body = {"@context": [DSP], "@type": "CatalogRequestMessage"}
    return {d["@id"] for d in ok(peer.post("/catalog/request", body))["dataset"]}


def _attest(authority: Authority, *args: str) -> str:
    """``qdspace authority attest`` as the authority's operator runs it, beside the service."""
    done = subprocess.run(
        [sys.executable, "-m", "qdspace", "authority", "attest", "--dir",
         str(authority.directory), *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_an_attested_framework_opens_the_dataset_and_a_withdrawn_one_closes_it(
    space: Space,
) -> None:
    network, authority, _ = space
    wait_for("SunArc in Cellex's directory", lambda: _frameworks_at_cellex(network, "sunarc") == [])
    peer = Peer(network, "sunarc", "cellex")
    try:
        refused = peer.get("/catalog/datasets/inspections")
        assert refused.status_code == 403, refused.text
        reason = refused.json()["reason"][0]
        assert "framework agreement" in reason and "attests none" in reason, reason
        assert "inspections" not in _datasets(peer)

        said = _attest(authority, "--member", "sunarc", "--framework", DEG)
        assert DEG in said and "next directory" in said, said
        wait_for(
            "Cellex to hold SunArc's attested framework",
            lambda: _frameworks_at_cellex(network, "sunarc") == [DEG] or None,
        )
        assert "inspections" in _datasets(peer)
        ok(peer.get("/catalog/datasets/inspections"))
        wait_for("SunArc to see what the authority attests of it", lambda: _own(network) == [DEG])
        assert negotiated_over_dsp(network, "sunarc", "cellex")["state"] == "FINALIZED"

        _attest(authority, "--member", "sunarc", "--withdraw", DEG)
        wait_for(
            "Cellex to drop SunArc's withdrawn framework",
            lambda: _frameworks_at_cellex(network, "sunarc") == [] or None,
        )
        again = peer.get("/catalog/datasets/inspections")
        assert again.status_code == 403, again.text
    finally:
        peer.http.close()


def test_another_framework_hides_the_dataset_and_a_members_own_claim_is_refused(
    space: Space,
) -> None:
    network, authority, url = space
    authority.attest("polycell", add=["Pcf:1.0"])
    wait_for(
        "Cellex to hold Polycell's framework",
        lambda: _frameworks_at_cellex(network, "polycell") == ["Pcf:1.0"] or None,
    )
    peer = Peer(network, "polycell", "cellex")
    try:
        hidden = peer.get("/catalog/datasets/inspections")
        assert hidden.status_code == 404, hidden.text
        assert "inspections" not in _datasets(peer)
    finally:
        peer.http.close()

    # Polycell signs an entry of its own naming the framework it wants
    keys = load_member_keys(network["polycell"].directory)
    entry = new_entry(keys.identity, keys.signing_key, {"peer": "127.0.0.1:1"}).to_json()
    claimed = {**entry, "frameworks": [DEG]}
    with (
        AuthorityClient(url, cert_to_pem(authority.cert)) as client,
        pytest.raises(AuthorityRefused) as refused,
    ):
        client.publish(claimed, keys.cert_pem)
    assert refused.value.status == 400 and "unknown field 'frameworks'" in str(refused.value)
    assert _frameworks_at_cellex(network, "polycell") == ["Pcf:1.0"]


def test_a_hidden_dataset_is_not_found_over_grpc_either(space: Space) -> None:
    """Polycell (another framework only) asks Cellex's gRPC Catalog, with its own member
    certificate, for what DSP hides from it: ``inspections`` is not listed and GetAsset
    answers NOT_FOUND, while a dataset its policy does not hide is listed and served."""
    network, authority, _ = space
    authority.attest("polycell", add=["Pcf:1.0"])
    wait_for(
        "Cellex to hold Polycell's framework",
        lambda: _frameworks_at_cellex(network, "polycell") == ["Pcf:1.0"] or None,
    )
    keys = load_member_keys(network["polycell"].directory)

    async def refusal(catalog: Any, asset_id: str) -> tuple[grpc.StatusCode, str]:
        try:
            await catalog.GetAsset(catalog_pb2.AssetRequest(asset_id=asset_id))
        except grpc.aio.AioRpcError as refused:
            return refused.code(), refused.details() or ""
        return grpc.StatusCode.OK, "served"

    async def ask() -> tuple[set[str], tuple[grpc.StatusCode, str], tuple[grpc.StatusCode, str]]:
        async with open_channel(keys, network["cellex"].grpc_address, "cellex") as channel:
            catalog = catalog_pb2_grpc.CatalogStub(channel)
            listed = await catalog.ListAssets(catalog_pb2.CatalogRequest(), timeout=10)
            shown = await catalog.GetAsset(catalog_pb2.AssetRequest(asset_id="operator-log"))
            assert shown.asset_id == "operator-log"
            hidden = await refusal(catalog, "inspections")
            unknown = await refusal(catalog, "no-such-set")
            return {a.asset_id for a in listed.assets}, hidden, unknown

    listed, hidden, unknown = asyncio.run(ask())
    assert "operator-log" in listed and "inspections" not in listed, listed
    assert hidden[0] is grpc.StatusCode.NOT_FOUND, hidden
    # in the words of a dataset that is not there: the answer does not tell them apart
    assert (hidden[0], hidden[1].replace("inspections", "no-such-set")) == unknown


def _own(network: LocalNetwork) -> list[str] | None:
    """What SunArc's node says the authority attests of it (``GET /v1/node``)."""
    with network["sunarc"].operator() as sunarc:
        own: list[str] | None = sunarc.node()["attested_frameworks"]
        return own


def test_a_usage_policy_for_framework_signatories_holds_at_every_release(space: Space) -> None:
    network, authority, _ = space
    wait_for("SunArc in Cellex's directory", lambda: _frameworks_at_cellex(network, "sunarc") == [])
    wait_for("Cellex in SunArc's directory", lambda: _known(network, "sunarc", "cellex"))
    peer = Peer(network, "sunarc", "cellex")
    try:  # visible to all (no access policy), with the requirement in the offer itself
        entry = ok(peer.get("/catalog/datasets/operator-log"))
    finally:
        peer.http.close()
    (offer,) = entry["hasPolicy"] if isinstance(entry["hasPolicy"], list) else [entry["hasPolicy"]]
    needs = [
        c for p in offer["permission"] for c in p["constraint"] if "FrameworkAgreement" in str(c)
    ]
    assert [c["rightOperand"] for c in needs] == [DEG], offer

    with network["sunarc"].operator(timeout=120) as sunarc:
        ask = {"orders": [SAMPLE_ORDER]}
        refused = sunarc.negotiate("cellex", "operator-log", [QA], **ask)
        assert refused["state"] == "TERMINATED", refused
        assert f"framework agreement {DEG}" in refused["reason"], refused["reason"]
        assert "attests none" in refused["reason"], refused["reason"]

        _attest(authority, "--member", "sunarc", "--framework", DEG)
        wait_for(
            "Cellex to hold SunArc's attested framework",
            lambda: _frameworks_at_cellex(network, "sunarc") == [DEG] or None,
        )
        agreed = sunarc.negotiate("cellex", "operator-log", [QA], **ask)
        assert agreed["state"] == "FINALIZED", agreed
        agreement_id = agreed["agreement_id"]
        (permission,) = sunarc.agreement(agreement_id)["policy"]["permission"]
        signed = {c["leftOperand"]: c["rightOperand"] for c in permission["constraint"]}
        assert signed["FrameworkAgreement"] == DEG
        pulled = sunarc.transfer(agreement_id, QA, order_id=SAMPLE_ORDER)
        assert pulled["offset"] > 0, pulled

        _attest(authority, "--member", "sunarc", "--withdraw", DEG)
        wait_for(
            "Cellex to drop SunArc's withdrawn framework",
            lambda: _frameworks_at_cellex(network, "sunarc") == [] or None,
        )
        with pytest.raises(ClientError) as denied:
            sunarc.transfer(agreement_id, QA, order_id=SAMPLE_ORDER)
    assert denied.value.status == 403, denied.value
    assert f"framework agreement {DEG}" in str(denied.value), denied.value


def _known(network: LocalNetwork, holder: str, name: str) -> bool:
    return any(e["name"] == name for e in held_directory(network, holder).get("entries", []))
