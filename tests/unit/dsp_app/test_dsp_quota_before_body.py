"""A member over its hourly quota of negotiations (or transfers) is refused before the
body of its next request is read: the same 429 the runtime answers, never a word about
the body, and pyld never runs for it. A body nobody could read (not even JSON) shows
the order: over the quota it is the quota's refusal, under it the body's (400), as
before. A member under its quota, and the other members, are not affected; a member
over its quota still reads the state of the negotiations it opened."""

from __future__ import annotations

import uuid

import httpx
import pytest
from pyld import jsonld

from .conftest import (
    DSP,
    ENDPOINT,
    Caller,
    Calls,
    Provider,
    request_message,
    with_certificate,
    with_transfers,
)

NOT_JSON = b'{"@type": "ContractRequestMessage", "consumerPid": '  # cut off


def raw_post(caller: Caller, path: str, content: bytes) -> httpx.Response:
    """POST `content` as it is (no JSON encoding: a body that does not parse)."""
    headers = {**caller.headers(), "content-type": "application/json"}
    return caller.provider.loop.run(caller.http.post(path, content=content, headers=headers))


def ask(caller: Caller, cpid: str | None = None) -> httpx.Response:
    """A ContractRequestMessage for Cellex's inspections on the offer its catalog shows."""
    return caller.post("/negotiations/request", request_message(caller, cpid))


def test_a_member_over_its_negotiation_quota_is_refused_before_its_body_is_read(
    cellex: Provider, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    cellex.runtime.negotiations_per_hour = 1
    sunarc = cellex.client(cellex.authority.member("sunarc", "oem", b"o"))
    cpid = f"urn:uuid:{uuid.uuid4()}"
    opened = ask(sunarc, cpid)
    assert opened.status_code == 201, opened.text
    ppid = opened.json()["providerPid"]

    calls.watch(monkeypatch, jsonld, "expand")
    refused = raw_post(sunarc, "/negotiations/request", NOT_JSON)
    assert refused.status_code == 429, refused.text  # was 400: the body read first
    body = refused.json()
    assert body["@type"] == "ContractNegotiationError"
    assert "negotiations_per_member_hour 1" in body["reason"][0], body
    assert refused.headers.get("connection") == "close"  # (the body was not read)
    assert calls.counts == {}  # pyld never ran

    # a retry of the request it made is refused while it is over: its state is a GET
    again = ask(sunarc, cpid)
    assert again.status_code == 429, again.text
    assert sunarc.get(f"/negotiations/{ppid}").json()["state"] == "OFFERED"
    assert len(cellex.runtime.store.negotiations()) == 1  # nothing opened meanwhile


def test_members_under_their_negotiation_quota_are_answered_as_before(
    cellex: Provider,
) -> None:
    cellex.runtime.negotiations_per_hour = 2
    sunarc = cellex.client(cellex.authority.member("sunarc", "oem", b"o"))
    polycell = cellex.client(cellex.authority.member("polycell", "oem", b"c"))
    assert ask(sunarc).status_code == 201
    bad = raw_post(sunarc, "/negotiations/request", NOT_JSON)  # under the quota: read
    assert bad.status_code == 400, bad.text
    assert "negotiations_per_member_hour" not in bad.text
    cpid = f"urn:uuid:{uuid.uuid4()}"
    assert ask(sunarc, cpid).status_code == 201  # its second: the last of its quota
    assert raw_post(sunarc, "/negotiations/request", NOT_JSON).status_code == 429

    assert raw_post(polycell, "/negotiations/request", NOT_JSON).status_code == 400
    assert ask(polycell).status_code == 201  # another member's count is its own


def test_a_member_over_its_transfer_quota_is_refused_before_its_body_is_read(
    cellex: Provider, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_transfers(cellex)
    sunarc = cellex.client(cellex.authority.member("sunarc", "oem", b"o"))
    polycell = cellex.client(cellex.authority.member("polycell", "oem", b"c"))
    bad = raw_post(polycell, "/transfers/request", NOT_JSON)
    assert bad.status_code == 400, bad.text  # under the quota: the body is read
    assert bad.json()["@type"] == "TransferError"

    cellex.runtime.transfers_per_hour = 0
    calls.watch(monkeypatch, jsonld, "expand")
    refused = raw_post(sunarc, "/transfers/request", NOT_JSON)
    assert refused.status_code == 429, refused.text  # was 400: the body read first
    assert refused.json()["@type"] == "TransferError"
    assert "transfers_per_member_hour 0" in refused.json()["reason"][0]
    assert refused.headers.get("connection") == "close"
    valid = {
        "@context": [DSP],
        "@type": "TransferRequestMessage",
        "consumerPid": f"urn:uuid:{uuid.uuid4()}",
        "agreementId": "urn:uuid:agreement",
        "format": "HttpData-PULL",
        "callbackAddress": "https://sunarc.example/dsp",
    }
    assert sunarc.post("/transfers/request", valid).status_code == 429
    assert calls.counts == {}  # pyld never ran


def test_a_server_fault_in_the_quota_check_is_still_a_dsp_error(
    cellex: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quota count failing on the server's side (not the caller's refusal) is answered
    as any server fault is: a DSP error body, not Starlette's bare 500 after a second
    failure draining a body that handler can no longer read."""

    def broken(peer: object) -> None:
        raise RuntimeError("the count failed")

    monkeypatch.setattr(cellex.runtime, "within_negotiation_quota", broken)
    sunarc = cellex.client(cellex.authority.member("sunarc", "oem", b"o"))
    # as a server answers: Starlette re-raises a server fault after answering it
    app = with_certificate(cellex.app, sunarc.member.der)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    sunarc.http = httpx.AsyncClient(transport=transport, base_url=ENDPOINT)
    answer = raw_post(sunarc, "/negotiations/request", NOT_JSON)
    assert answer.status_code == 500, answer.text
    assert answer.json()["@type"] == "ContractNegotiationError"
    assert answer.json()["reason"] == ["internal error"]
