"""The DSP listener against a hostile member: every refusal is the binding's error, no 5xx;
every body the node answers with validates against its DSP 2025-1 schema."""

from __future__ import annotations

import json
import ssl
import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jsonschema import Draft201909Validator
from referencing import Registry, Resource

from qdspace.node.dsp.auth import issue_token
from qdspace.node.localnet.network import LocalNetwork

from .conftest import SCHEMAS, ingest_sample, ok, rows_of, runtime_of, wait_for
from .peer import Peer, request

pytestmark = pytest.mark.integration
CTX = ["https://w3id.org/dspace/2025/1/context.jsonld"]


def _terms(count: int) -> dict[str, str]:
    return {f"a{i}": f"urn:a{i}" for i in range(count)}


def _typed_nodes(count: int, inline: dict[str, Any], kind: str = "T") -> dict[str, Any]:
    """A CatalogRequestMessage whose filter holds `count` nodes of type `kind`."""
    return {
        "@context": [*CTX, inline] if inline else CTX,
        "@type": "CatalogRequestMessage",
        "filter": [{"@type": kind}] * count,
    }


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _registry() -> Registry:
    resources = []
    for path in SCHEMAS.rglob("*.json"):
        doc = json.loads(path.read_text())
        resources.append((doc["$id"], Resource.from_contents(doc)))
    return Registry().with_resources(resources)


def valid(body: Any, schema: str) -> None:
    doc = json.loads((SCHEMAS / schema).read_text())
    Draft201909Validator(doc, registry=_registry()).validate(body)


class Member:
    """A caller holding sunarc's certificate and key (a real member of the space)."""

    def __init__(self, net: LocalNetwork, provider: str) -> None:
        layout = net["sunarc"].layout
        context = ssl.create_default_context(cafile=str(layout.ca_cert))
        context.check_hostname = False
        context.load_cert_chain(layout.tls_cert, layout.tls_key)
        self.keys = net["sunarc"].keys()
        self.audience = net[provider].keys().identity.member_id
        # a new connection per request: the listener closes a connection idle for its
        # keep-alive timeout (5 s), and a POST racing that close on a loaded machine fails
        # before it reached the app (httpx does not resend a POST), which is not under test
        self.http = httpx.Client(
            verify=context,
            base_url=runtime_of(net, provider)["dsp"],
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    def token(self, **over: Any) -> str:
        return issue_token(self.keys.signing_key, self.keys.identity.member_id, self.audience)

    def post(self, path: str, body: Any, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {token or self.token()}", **kw.pop("headers", {})}
        if isinstance(body, bytes):
            return self.http.post(path, content=body, headers=headers, **kw)
        return self.http.post(path, json=body, headers=headers, **kw)


@pytest.fixture(scope="module")
def member(dsp_net: LocalNetwork) -> Member:
    return Member(dsp_net, "cellex")


def test_catalog_and_dataset_validate(member: Member) -> None:
    body = ok(member.post("/catalog/request", {"@context": CTX, "@type": "CatalogRequestMessage"}))
    valid(body, "catalog/catalog-schema.json")
    assert {d["@id"] for d in body["dataset"]} >= {"inspections"}
    headers = {"authorization": f"Bearer {member.token()}"}
    dataset = ok(member.http.get("/catalog/datasets/inspections", headers=headers))
    valid(dataset, "catalog/dataset-schema.json")
    missing = member.http.get("/catalog/datasets/nope", headers=headers)
    assert missing.status_code == 404
    valid(missing.json(), "catalog/catalog-error-schema.json")


def test_unknown_pid_and_wrong_transition(dsp_net: LocalNetwork, member: Member) -> None:
    headers = {"authorization": f"Bearer {member.token()}"}
    gone = member.http.get(
        "/negotiations/urn:uuid:00000000-0000-0000-0000-000000000000", headers=headers
    )
    assert gone.status_code == 404
    valid(gone.json(), "negotiation/contract-negotiation-error-schema.json")
    ingest_sample(dsp_net, "cellex")
    provider = runtime_of(dsp_net, "cellex")["dsp"]
    with dsp_net["sunarc"].client() as oem:
        started = ok(
            oem.post(
                "/v1/dsp/negotiations", json={"provider_url": provider, "dataset_id": "inspections"}
            )
        )
    ppid, cpid = started["provider_pid"], started["negotiation_id"]

    def finalized() -> Any:
        got = member.http.get(
            f"/negotiations/{ppid}", headers={"authorization": f"Bearer {member.token()}"}
        )
        return got.status_code == 200 and got.json()["state"] == "FINALIZED" and got.json()

    state = wait_for("FINALIZED", finalized)
    valid(state, "negotiation/contract-negotiation-schema.json")
    event = {
        "@context": CTX,
        "@type": "ContractNegotiationTerminationMessage",
        "providerPid": ppid,
        "consumerPid": cpid,
        "code": "x",
        "reason": ["late"],
    }
    late = member.post(f"/negotiations/{ppid}/termination", event)
    assert late.status_code == 409, late.text
    valid(late.json(), "negotiation/contract-negotiation-error-schema.json")


def _forged(member: Member, **claims: Any) -> str:
    now = int(time.time())
    base = {
        "iss": member.keys.identity.member_id,
        "sub": member.keys.identity.member_id,
        "aud": member.audience,
        "iat": now,
        "exp": now + 60,
    }
    return jwt.encode({**base, **claims}, Ed25519PrivateKey.generate(), algorithm="EdDSA")


@pytest.mark.parametrize("what", ["forged", "expired", "audience", "none"])
def test_bad_tokens_are_401(member: Member, what: str) -> None:
    body = {"@context": CTX, "@type": "CatalogRequestMessage"}
    own = Ed25519PrivateKey.from_private_bytes(bytes(member.keys.signing_key))
    now = int(time.time())
    me = member.keys.identity.member_id
    claims = {"iss": me, "sub": me, "aud": member.audience, "iat": now - 600, "exp": now - 500}
    tokens = {
        "forged": _forged(member),
        "expired": jwt.encode(claims, own, algorithm="EdDSA"),
        "audience": jwt.encode(
            {**claims, "iat": now, "exp": now + 60, "aud": me}, own, algorithm="EdDSA"
        ),
        "none": jwt.encode({**claims, "iat": now, "exp": now + 60}, None, algorithm="none"),
    }
    refused = member.post("/catalog/request", body, token=tokens[what])
    assert refused.status_code == 401, refused.text
    valid(refused.json(), "catalog/catalog-error-schema.json")


@pytest.mark.parametrize(
    "body,status",
    [
        (b"x" * 300_000, 413),
        (b"[" * 5000 + b"]" * 5000, 400),
        (
            json.dumps(
                {"@context": ["https://evil.example/ctx.jsonld"], "@type": "CatalogRequestMessage"}
            ).encode(),
            400,
        ),
        (b'{"@context": 1, "@context": 2}', 400),
        (b"{not json", 400),
        # a thousand-term context scoped to a type, and a thousand nodes of it: pyld applied
        # it at each (9 s of the node's event loop at 32 KB, minutes at the size limit)
        (_json(_typed_nodes(1000, {"T": {"@id": "urn:t", "@context": _terms(1000)}})), 400),
        (_json(_typed_nodes(1, _terms(65))), 400),  # inline terms past MAX_INLINE_TERMS
        (_json(_typed_nodes(1100, {}, "DataAddress")), 400),  # objects past the cap
        # a node our contexts cannot compact (a protected term redefined): was a 500
        (_json(_typed_nodes(1, {}, "Dataset")), 400),
    ],
    ids=[
        "large",
        "deep",
        "unknown-context",
        "duplicate",
        "not-json",
        "scoped-context",
        "inline-terms",
        "objects",
        "protected",
    ],
)
def test_hostile_bodies(member: Member, body: bytes, status: int) -> None:
    refused = member.post(
        "/catalog/request",
        body,
        headers={"content-type": "application/json", "connection": "close"},
    )
    assert refused.status_code == status, refused.text
    if status == 400:
        valid(refused.json(), "catalog/catalog-error-schema.json")


@pytest.mark.parametrize(
    "callback",
    [
        "https://10.255.255.1:5432/cb",  # into the provider's own network
        "https://169.254.169.254/latest/meta-data",  # a cloud's metadata service
        "https://localhost:8600/cb",  # the member's host, under a name its operator did not write
    ],
)
def test_a_static_peer_s_callback_off_its_configured_host_is_refused(
    dsp_net: LocalNetwork, callback: str
) -> None:
    """Cellex has static peers and no directory: SunArc (a real member, configured at
    127.0.0.1) names a callback elsewhere. A 400 at $.callbackAddress naming the host it
    must be on, nothing opened or queued (on the old code: the negotiation opened and the
    outbox dialled the address, one try a minute)."""
    count = "SELECT count(*) FROM dsp_process"
    queued = "SELECT count(*) FROM contract_outbox"
    before = rows_of(dsp_net, "cellex", count)[0][0], rows_of(dsp_net, "cellex", queued)[0][0]
    peer = Peer(dsp_net, "sunarc", "cellex")
    try:
        offer = peer.catalog_offer("inspections")
        refused = peer.post(
            "/negotiations/request", request("urn:uuid:" + "1" * 32, offer, callback)
        )
    finally:
        peer.http.close()
    assert refused.status_code == 400, refused.text
    valid(refused.json(), "negotiation/contract-negotiation-error-schema.json")
    assert (
        "$.callbackAddress" in refused.text
        and "on 127.0.0.1, where this node's peers" in refused.text
    )
    assert "Traceback" not in refused.text
    after = rows_of(dsp_net, "cellex", count)[0][0], rows_of(dsp_net, "cellex", queued)[0][0]
    assert after == before
