"""Ids and times a DSP peer chooses, as the DSP app (`node.dsp.app`, in-process, with its
transfer routes) takes them: every id derived from a peer's id fits the 128-character id
columns, or the message is refused with a 400 naming the field; an agreement id we hold
already, or an agreement dated ahead of our clock, is refused and the negotiation stays as
it was.

The id bounds matter on PostgreSQL, which refuses a value longer than its column where
SQLite stores it: those tests run on both (`db_backend`), the others on SQLite.

- A provider keeps a DSP transfer under the consumer's pid and makes its message ids from
  it (``<pid>:dsp-termination:<12 hex>`` the longest): a 128-character consumerPid was a
  500 on PostgreSQL, a 105-character one opened a transfer whose operator could neither
  suspend nor terminate it (a 134-character message id).
- Our consumer made a provider's offer's message id from the offer's ``@id``, and took the
  agreement id from the agreement's ``@id``, whose length nothing checked: a 500 on
  PostgreSQL, an agreement no transfer could name on SQLite.
- A provider's agreement reusing an agreement id held here was a 500 and a traceback, in
  words apart from any other refusal, and left our negotiation stuck; one dated 9999 was
  countersigned, kept and anchored.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from qdspace.connector import dsp_codec as codec
from qdspace.connector import dsp_negotiation as wire
from qdspace.connector.contract_store import DspProcess
from qdspace.connector.contract_store.common import ID_LENGTH
from qdspace.connector.negotiation import (
    ContractRequest,
    NegotiationState,
    Role,
    open_negotiation,
)
from qdspace.node import faults
from qdspace.node.dsp.edr import DataTokens
from qdspace.node.dsp.transfer_process import MAX_CONSUMER_PID, DspTransferMoves
from qdspace.policies.codec import parse_policy, policy_to_json
from qdspace.policies.errors import PolicySyntaxError
from qdspace.policies.model import MAX_UID, OfferTerms, Policy, make_offer, to_agreement
from qdspace.policies.odrl.vocab import PolicyKind

from . import conftest as base
from .conftest import (
    DSP,
    ENDPOINT,
    POLICY_CTX,
    Caller,
    Provider,
    request_message,
    with_transfers,
)


def peer_pid(pid: str) -> str:
    """SunArc's pid of our negotiation `pid` (one of its own for each)."""
    return f"urn:sunarc:{pid.rpartition(':')[2]}"


@pytest.fixture
def node(
    db_backend: str,
    tmp_path: Path,
    fresh_pg_schema: Callable[[str], AbstractContextManager[tuple[str, str]]],
) -> Iterator[Provider]:
    """Cellex (`conftest.provider`) on a SQLite file, or on a schema of its own of the
    test PostgreSQL server."""
    if db_backend == "sqlite":
        made = base.provider(tmp_path)
        yield made
        made.close()
        return
    with fresh_pg_schema("dsp_ids") as (url, _):
        made = base.provider(tmp_path, url=url)
        try:
            yield made
        finally:
            made.close()


def answer(caller: Caller, path: str, body: Any) -> tuple[int, str]:
    """The status and body of a POST; a 500 the app re-raised (Starlette's server-error
    middleware does, and the in-process transport hands it on) as a 500."""
    try:
        response = caller.post(path, body)
    except Exception as exc:  # (the old code's 500: what it was)
        return 500, f"{type(exc).__name__}: {exc}"[:300]
    return response.status_code, response.text


def sunarc_of(cellex: Provider) -> Caller:
    return cellex.client(cellex.authority.member("sunarc", "oem", b"o"))


def outbox(cellex: Provider) -> list[dict[str, Any]]:
    with cellex.runtime.store.engine.connect() as connection:
        rows = connection.execute(text("SELECT payload FROM contract_outbox"))
        return [json.loads(payload)["body"] for (payload,) in rows]


def agreed_as_provider(cellex: Provider, sunarc: Caller) -> str:
    """Cellex agrees with SunArc as its provider over DSP (to FINALIZED): the agreement's id."""
    cpid = f"urn:uuid:{uuid.uuid4()}"
    asked = request_message(sunarc, cpid)
    opened = sunarc.post("/negotiations/request", asked)
    assert opened.status_code == 201, opened.text
    ppid = opened.json()["providerPid"]
    (countered,) = [
        q
        for q in outbox(cellex)
        if q["@type"] == "ContractOfferMessage" and q["consumerPid"] == cpid
    ]
    counter = {
        "@context": POLICY_CTX,
        "@type": "ContractRequestMessage",
        "providerPid": ppid,
        "consumerPid": cpid,
        "offer": {**countered["offer"], "@id": f"urn:uuid:{uuid.uuid4()}"},
    }
    assert sunarc.post(f"/negotiations/{ppid}/request", counter).status_code == 200
    verification = codec.pids_message("ContractAgreementVerificationMessage", ppid, cpid)
    assert (
        sunarc.post(f"/negotiations/{ppid}/agreement/verification", verification).status_code == 200
    )
    assert sunarc.get(f"/negotiations/{ppid}").json()["state"] == "FINALIZED"
    (terms,) = [
        q
        for q in outbox(cellex)
        if q["@type"] == "ContractAgreementMessage" and q["consumerPid"] == cpid
    ]
    return str(terms["agreement"]["@id"])


def consumer_negotiation(cellex: Provider, sunarc: Caller) -> tuple[str, Policy]:
    """Cellex as SunArc's consumer over DSP, its request sent and bound to SunArc's pid
    (what `DspConsumer.negotiate` stores): our pid and the terms we asked."""
    dataset = sunarc.get("/catalog/datasets/inspections").json()
    body = {"@context": dataset["@context"], "offer": {**dataset["hasPolicy"][0]}}
    published = codec.read_policy(body, "offer", PolicyKind.OFFER, "inspections")
    asked = replace(published, assigner=sunarc.member.identity.member_id)
    rt = cellex.runtime
    pid = f"urn:uuid:{uuid.uuid4()}"
    request = ContractRequest(
        wire.message_id(pid, "request"), pid, rt.me.member_id, asked, rt.clock.now()
    )
    opened = open_negotiation(request, Role.CONSUMER, signed=False)
    row = DspProcess(
        "negotiation", pid, Role.CONSUMER.value, sunarc.member.identity.member_id, pid,
        "https://sunarc.example/dsp", asked_json=policy_to_json(asked),
    )  # fmt: skip
    rt.store.open_dsp_negotiation(opened, row)
    rt.store.dsp.set_peer_pid("negotiation", pid, peer_pid(pid))
    return pid, asked


def agreement_body(
    cellex: Provider, pid: str, asked: Policy, agreement_id: str, at: dt.datetime | None = None
) -> dict[str, Any]:
    """The provider's ContractAgreementMessage for our negotiation `pid`, its ``@id``
    `agreement_id` (of any length: set in the JSON, as a peer would)."""
    terms = to_agreement(asked, "urn:uuid:placeholder", cellex.runtime.me.member_id)
    body = codec.agreement_message(peer_pid(pid), pid, terms, at or dt.datetime.now(dt.UTC))
    body["agreement"]["@id"] = agreement_id
    return body


def offer_body(pid: str, asked: Policy, offer_id: str) -> dict[str, Any]:
    body = codec.offer_message(peer_pid(pid), pid, replace(asked, uid="urn:uuid:placeholder"))
    body["offer"]["@id"] = offer_id
    return body


def state_of(cellex: Provider, pid: str) -> NegotiationState:
    return cellex.runtime.store.load_negotiation(pid).state


def agreement_ids(cellex: Provider) -> list[str]:
    with cellex.runtime.store.engine.connect() as connection:
        return [
            a for (a,) in connection.execute(text("SELECT agreement_id FROM contract_agreement"))
        ]


def long_id(length: int) -> str:
    unique = uuid.uuid4().hex[:8]
    return "urn:" + "x" * (length - 4 - len(unique)) + unique


# ------------------------------------------------------------------ the bounds


def test_one_bound_for_every_id() -> None:
    """A policy's uid (an agreement's id, on the gRPC wire too), a DSP pid and the id
    columns: one length, and a policy's uid is held to it wherever a policy is read."""
    assert MAX_UID == ID_LENGTH == codec.MAX_PID
    terms = OfferTerms(frozenset({"quality"}))
    offer = make_offer("a" * MAX_UID, "cellex-000000000000", "inspections", terms)
    assert parse_policy(policy_to_json(offer)).uid == offer.uid
    raw = json.loads(policy_to_json(offer))
    with pytest.raises(PolicySyntaxError, match=r"\$\.uid: uid must be at most 128"):
        parse_policy(json.dumps({**raw, "uid": "a" * (MAX_UID + 1)}).encode())


# ----------------------------------------------------- a consumer's long pid


def test_a_consumer_pid_too_long_for_the_transfer_message_ids_is_refused(node: Provider) -> None:
    """The longest consumerPid taken opens a transfer its provider's operator can suspend
    and terminate (every message id of it fits); one character more is refused with a 400
    naming consumerPid, and a 128-character one too (a 500 on PostgreSQL)."""
    with_transfers(node)
    sunarc = sunarc_of(node)
    aid = agreed_as_provider(node, sunarc)

    def request(cpid: str) -> tuple[int, str]:
        body = {
            "@context": [DSP],
            "@type": "TransferRequestMessage",
            "consumerPid": cpid,
            "agreementId": aid,
            "format": "HttpData-PULL",
            "callbackAddress": "https://sunarc.example/dsp",
        }
        return answer(sunarc, "/transfers/request", body)

    longest = long_id(MAX_CONSUMER_PID)
    status, said = request(longest)
    assert status == 201, said
    moves = DspTransferMoves(node.runtime, DataTokens(node.runtime.signing_key, 600), ENDPOINT)
    row = node.runtime.store.dsp.by_local("transfer", longest)
    assert row is not None
    assert moves.own(row, "suspension", "the operator stops it").state.value == "SUSPENDED"
    assert moves.own(row, "termination", "and ends it").state.value == "TERMINATED"
    for length in (MAX_CONSUMER_PID + 1, 105, codec.MAX_PID):
        cpid = long_id(length)
        status, said = request(cpid)
        assert status == 400, (length, status, said)
        assert "consumerPid" in said and str(MAX_CONSUMER_PID) in said, said
        assert node.runtime.store.dsp.by_local("transfer", cpid) is None
        assert node.runtime.store.find_transfer(cpid) is None


# ------------------------------------------------ a provider's long offer and agreement ids


def test_a_providers_offer_id_of_any_allowed_length_is_taken(node: Provider) -> None:
    """Our consumer makes the offer's message id from the offer's ``@id``: a 128-character
    one is taken (a 500 on PostgreSQL); a longer one is refused with a 400 naming the
    offer's uid, and the negotiation stays as it was."""
    sunarc = sunarc_of(node)
    pid, asked = consumer_negotiation(node, sunarc)
    status, said = answer(
        sunarc, f"/negotiations/{pid}/offers", offer_body(pid, asked, long_id(128))
    )
    assert status == 200, said
    assert state_of(node, pid) is NegotiationState.ACCEPTED  # the same terms: accepted
    retried = answer(sunarc, f"/negotiations/{pid}/offers", offer_body(pid, asked, long_id(128)))
    assert retried[0] < 500, retried

    other, asked = consumer_negotiation(node, sunarc)
    status, said = answer(
        sunarc, f"/negotiations/{other}/offers", offer_body(other, asked, long_id(200))
    )
    assert status == 400, said
    assert "$.offer" in said and "uid" in said, said
    assert state_of(node, other) is NegotiationState.REQUESTED


def test_a_providers_agreement_id_over_128_characters_is_refused(node: Provider) -> None:
    """The agreement id is the agreement's ``@id``: one of 128 characters is taken; a
    longer one is refused (400, naming the agreement's uid) and nothing is kept: it was
    a 500 on PostgreSQL, and on SQLite an agreement no transfer could name."""
    sunarc = sunarc_of(node)
    pid, asked = consumer_negotiation(node, sunarc)
    too_long = long_id(200)
    status, said = answer(
        sunarc, f"/negotiations/{pid}/agreement", agreement_body(node, pid, asked, too_long)
    )
    assert status == 400, said
    assert "$.agreement" in said and "uid" in said, said
    assert state_of(node, pid) is NegotiationState.REQUESTED
    assert too_long not in agreement_ids(node)

    longest = long_id(ID_LENGTH)
    status, said = answer(
        sunarc, f"/negotiations/{pid}/agreement", agreement_body(node, pid, asked, longest)
    )
    assert status == 200, said
    assert longest in agreement_ids(node)


# ------------------------------------------ an agreement id held here, an agreement of 9999


def test_an_agreement_id_held_here_is_refused_as_any_unfit_agreement(
    cellex: Provider, caplog: pytest.LogCaptureFixture
) -> None:
    """A provider's agreement under an id this node holds already (one it provides under,
    one it consumes under) is refused with a 400, in the same words wherever the id is
    held, without a traceback; the negotiation is left as it was and takes a fresh id."""
    sunarc = sunarc_of(cellex)
    provided = agreed_as_provider(cellex, sunarc)
    pid, asked = consumer_negotiation(cellex, sunarc)
    consumed = f"urn:uuid:{uuid.uuid4()}"
    body = agreement_body(cellex, pid, asked, consumed)
    assert answer(sunarc, f"/negotiations/{pid}/agreement", body)[0] == 200

    pid, asked = consumer_negotiation(cellex, sunarc)
    caplog.set_level(logging.INFO)
    said = {}
    for held in (provided, consumed):
        body = agreement_body(cellex, pid, asked, held)
        status, text_ = answer(sunarc, f"/negotiations/{pid}/agreement", body)
        assert status == 400, (held, status, text_)
        said[held] = json.dumps(json.loads(text_)["reason"])
        assert state_of(cellex, pid) is NegotiationState.REQUESTED
        assert cellex.runtime.store.load_negotiation(pid).agreement is None
    assert said[provided].replace(provided, "<id>") == said[consumed].replace(consumed, "<id>")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not [q for q in outbox(cellex) if q["consumerPid"] == pid]
    fresh = f"urn:uuid:{uuid.uuid4()}"
    body = agreement_body(cellex, pid, asked, fresh)
    assert answer(sunarc, f"/negotiations/{pid}/agreement", body)[0] == 200
    assert state_of(cellex, pid) is NegotiationState.VERIFIED


def test_an_agreement_id_held_here_is_the_peers_fault_on_every_transport() -> None:
    """The store's refusal (the gRPC consumer's path meets it too: its save of the
    provider's agreement) answers as a mismatching agreement does, not as the node's
    fault."""
    from qdspace.connector.contract_errors import OfferMismatchError
    from qdspace.connector.contract_store.agreements import AgreementIdTaken

    assert faults.http_status(AgreementIdTaken) == faults.http_status(OfferMismatchError) == 400
    assert faults.grpc_status_name(AgreementIdTaken) == "INVALID_ARGUMENT"


def test_an_agreement_dated_ahead_of_our_clock_is_refused(cellex: Provider) -> None:
    """An agreement dated 9999 is refused (400, naming its timestamp) and the negotiation
    left as it was: it was countersigned, kept and anchored, and every notice under it then
    refused as dated before it. One dated now is taken."""
    sunarc = sunarc_of(cellex)
    pid, asked = consumer_negotiation(cellex, sunarc)
    future = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)
    for at in (future, dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)):
        body = agreement_body(cellex, pid, asked, f"urn:uuid:{uuid.uuid4()}", at)
        status, said = answer(sunarc, f"/negotiations/{pid}/agreement", body)
        assert status == 400, said
        assert "$.agreement.timestamp" in said, said
        assert state_of(cellex, pid) is NegotiationState.REQUESTED
    assert agreement_ids(cellex) == []
    assert not [q for q in outbox(cellex) if q["consumerPid"] == pid]
    body = agreement_body(cellex, pid, asked, f"urn:uuid:{uuid.uuid4()}")
    assert answer(sunarc, f"/negotiations/{pid}/agreement", body)[0] == 200
    assert state_of(cellex, pid) is NegotiationState.VERIFIED
