"""The operator route ``POST /v1/dsp/negotiations`` and the DSP listener's connections
against hostile input: every refusal a 4xx that says what is wrong, never a 5xx; and an
error answer leaves the caller's keep-alive connection open (a body too large closes it)."""

from __future__ import annotations

import http.client
import json
import ssl
from typing import Any

import pytest

from qdspace.node.dsp.auth import issue_token
from qdspace.node.localnet.network import LocalNetwork
from qdspace.util.ports import free_port

from .conftest import ingest_sample, ok, runtime_of

pytestmark = pytest.mark.integration
DSP = "https://w3id.org/dspace/2025/1/context.jsonld"


def _negotiate(net: LocalNetwork, body: Any, **kw: Any) -> Any:
    with net["sunarc"].client(**kw) as oem:
        if isinstance(body, bytes):
            headers = {"content-type": "application/json"}
            return oem.post("/v1/dsp/negotiations", content=body, headers=headers)
        return oem.post("/v1/dsp/negotiations", json=body)


def test_hostile_operator_requests_are_4xx(dsp_net: LocalNetwork) -> None:
    ingest_sample(dsp_net, "cellex")
    provider = runtime_of(dsp_net, "cellex")["dsp"]
    host = provider.removeprefix("https://")
    cases: dict[str, tuple[Any, int]] = {
        "http address": ({"provider_url": f"http://{host}", "dataset_id": "inspections"}, 422),
        "no scheme": ({"provider_url": host, "dataset_id": "inspections"}, 422),
        "user in url": (
            {"provider_url": f"https://me:pw@{host}", "dataset_id": "inspections"},
            422,
        ),
        "query in url": ({"provider_url": f"{provider}?x=1", "dataset_id": "inspections"}, 422),
        "bad port": ({"provider_url": "https://127.0.0.1:99999", "dataset_id": "x"}, 422),
        "space in url": ({"provider_url": f"{provider} x", "dataset_id": "inspections"}, 422),
        "unknown dataset": ({"provider_url": provider, "dataset_id": "no-such-set"}, 404),
        "path in dataset": ({"provider_url": provider, "dataset_id": "../negotiations/x"}, 404),
        "query in dataset": ({"provider_url": provider, "dataset_id": "x?y=1#z"}, 404),
        "huge dataset id": ({"provider_url": provider, "dataset_id": "d" * 100_000}, 422),
        "huge url": ({"provider_url": "https://" + "h" * 100_000, "dataset_id": "x"}, 422),
        "control chars": ({"provider_url": provider, "dataset_id": "in\x00spect"}, 422),
        "number": ({"provider_url": provider, "dataset_id": 1e308}, 422),
        "list": ([{"provider_url": provider}], 422),
        "missing": ({"provider_url": provider}, 422),
        "not json": (b"{not json", 422),
        "deep": (b"[" * 5000 + b"]" * 5000, 400),
    }
    for name, (body, status) in cases.items():
        answer = _negotiate(dsp_net, body)
        assert answer.status_code == status, (name, answer.status_code, answer.text[:300])
        assert "Traceback" not in answer.text, name
    unauthenticated = _negotiate(dsp_net, {"provider_url": provider, "dataset_id": "x"}, token="x")
    assert unauthenticated.status_code == 401
    # nothing listens there: the provider's failure, not the operator's (502, no traceback)
    gone = _negotiate(
        dsp_net, {"provider_url": f"https://127.0.0.1:{free_port()}", "dataset_id": "x"}
    )
    assert gone.status_code == 502 and "Traceback" not in gone.text
    # the operator API is no DSP provider (another member's listener answers 4xx or fails)
    other = _negotiate(
        dsp_net, {"provider_url": dsp_net["cellex"].api_url, "dataset_id": "inspections"}
    )
    assert other.status_code in (403, 404, 502), other.text
    with dsp_net["sunarc"].client() as oem:
        assert all(n["state"] != "REQUESTED" for n in ok(oem.get("/v1/contracts/negotiations")))


def _connection(net: LocalNetwork) -> http.client.HTTPSConnection:
    layout = net["sunarc"].layout
    context = ssl.create_default_context(cafile=str(layout.ca_cert))
    context.check_hostname = False
    context.load_cert_chain(layout.tls_cert, layout.tls_key)
    url = runtime_of(net, "cellex")["dsp"].removeprefix("https://")
    host, _, port = url.partition(":")
    return http.client.HTTPSConnection(host, int(port.rstrip("/")), context=context, timeout=30)


def _call(conn: http.client.HTTPSConnection, body: bytes, token: str) -> tuple[int, str, Any]:
    headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
    conn.request("POST", "/catalog/request", body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    return response.status, response.getheader("connection") or "", json.loads(data or b"{}")


def test_error_answers_keep_the_connection(dsp_net: LocalNetwork) -> None:
    keys = dsp_net["sunarc"].keys()
    audience = dsp_net["cellex"].keys().identity.member_id

    def token() -> str:
        return issue_token(keys.signing_key, keys.identity.member_id, audience)

    good = json.dumps({"@context": [DSP], "@type": "CatalogRequestMessage"}).encode()
    conn = _connection(dsp_net)
    try:
        status, _, _ = _call(conn, good, token())
        assert status == 200
        sock = conn.sock
        port = sock.getsockname()[1]
        for body, bearer, expected in [
            (good, "not-a-token", 401),
            (b"{not json", token(), 400),
            (json.dumps({"@context": [DSP], "@graph": []}).encode(), token(), 400),
            (good, token(), 200),
        ]:
            status, connection, answer = _call(conn, body, bearer)
            assert status == expected, answer
            assert connection.lower() != "close", (expected, answer)
            assert conn.sock is sock and sock.getsockname()[1] == port  # the same connection
        status, connection, _ = _call(conn, b"x" * 300_000, token())
        assert status == 413 and connection.lower() == "close"
    finally:
        conn.close()
