"""A third member in someone else's DSP negotiation: ``mallory``, a real member of the
space (its own node, certificate and key), learned the process ids of a negotiation
between sunarc and cellex and calls both nodes' DSP listeners with them, on every
negotiation route the binding serves, with well-formed messages naming the right pids.

Every call is a 404 exactly like a pid that names nothing (the process is looked up
by pid *and* caller before the body is read: `node.dsp.app`'s ``owned``), and neither
side's negotiation moves: one still open (cellex's move done, sunarc's to come) and
one both nodes finalized."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from qdspace.node.localnet.network import LocalNetwork, MemberSpec

from .conftest import dsp_network, ingest_sample, ok, runtime_of, wait_for
from .peer import DSP, Callbacks, Peer, peer_with_callbacks, request

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    members = [
        MemberSpec("sunarc", "oem"),
        MemberSpec("cellex", "supplier"),
        MemberSpec("mallory", "oem"),
    ]
    for net in dsp_network(tmp_path_factory, members):
        ingest_sample(net, "cellex")
        yield net


@pytest.fixture(scope="module")
def sunarc(trio: LocalNetwork) -> Iterator[tuple[Peer, Callbacks]]:
    with peer_with_callbacks(trio, "sunarc", "cellex") as pair:
        yield pair


@pytest.fixture(scope="module")
def open_one(sunarc: tuple[Peer, Callbacks]) -> tuple[str, str, dict[str, Any]]:
    """(provider pid, consumer pid, offer) of a negotiation sunarc opened by hand with
    cellex on its catalog offer: cellex countered, narrowed to sunarc's orders (OFFERED)."""
    peer, callbacks = sunarc
    cpid = f"urn:uuid:{uuid.uuid4()}"
    ppid = ok(
        peer.post(
            "/negotiations/request", request(cpid, peer.catalog_offer("inspections"), callbacks.url)
        )
    )["providerPid"]
    offer = callbacks.wait(cpid, "ContractOfferMessage")["offer"]
    assert peer.state(ppid) == "OFFERED"
    return ppid, cpid, offer


@pytest.fixture(scope="module")
def finalized(trio: LocalNetwork) -> tuple[str, str]:
    """(provider pid, consumer pid) of a negotiation sunarc's node ran with cellex's to the
    end; the consumer pid is sunarc's negotiation id."""
    body = {"provider_url": runtime_of(trio, "cellex")["dsp"], "dataset_id": "inspections"}
    with trio["sunarc"].client() as oem:
        started = ok(oem.post("/v1/dsp/negotiations", json=body))
        cpid = started["negotiation_id"]

        def ended() -> Any:
            found = ok(oem.get(f"/v1/contracts/negotiations/{cpid}"))
            return found["state"] in ("FINALIZED", "TERMINATED") and found

        assert wait_for("the negotiation to end", ended, timeout=60)["state"] == "FINALIZED"
    return started["provider_pid"], cpid


def _pids(kind: str, ppid: str, cpid: str, **extra: Any) -> dict[str, Any]:
    return {"@context": [DSP], "@type": kind, "providerPid": ppid, "consumerPid": cpid, **extra}


def _messages(ppid: str, cpid: str, offer: dict[str, Any], url: str) -> dict[str, dict[str, Any]]:
    """Mallory's message for each negotiation route, by the route's path after the pid."""
    counter = _pids("ContractRequestMessage", ppid, cpid, offer=offer)
    agreement = {
        "@id": f"urn:uuid:{uuid.uuid4()}",
        "@type": "Agreement",
        "target": offer.get("target", "inspections"),
        "assigner": offer.get("assigner", "cellex"),
        "assignee": "mallory",
        "timestamp": "2026-12-02T06:00:00Z",
        "permission": offer.get("permission", []),
    }
    return {
        "termination": _pids(
            "ContractNegotiationTerminationMessage", ppid, cpid, code="x", reason=["mallory"]
        ),
        "events": _pids("ContractNegotiationEventMessage", ppid, cpid, eventType="ACCEPTED"),
        "agreement/verification": _pids("ContractAgreementVerificationMessage", ppid, cpid),
        "request": counter,
        "offers": _pids("ContractOfferMessage", ppid, cpid, offer=offer, callbackAddress=url),
        "agreement": _pids(
            "ContractAgreementMessage", ppid, cpid, agreement=agreement, callbackAddress=url
        ),
    }


def _answers(mallory: Peer, pid: str, messages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mallory's GET of `pid` and its POST of each message to `pid`: (status, error body
    with the pid taken out), by route."""
    got: dict[str, Any] = {}
    reply = mallory.get(f"/negotiations/{pid}")
    got["GET"] = reply.status_code, reply.text.replace(pid, "PID")
    for route, body in messages.items():
        reply = mallory.post(f"/negotiations/{pid}/{route}", body)
        got[route] = reply.status_code, reply.text.replace(pid, "PID")
    return got


def _provider_state(trio: LocalNetwork, sunarc: Peer, ppid: str) -> tuple[str, int]:
    """The negotiation's state at cellex as its consumer reads it, and the messages cellex
    applied to it (the DSP provider's negotiation id is its pid)."""
    with trio["cellex"].client() as client:
        held = ok(client.get(f"/v1/contracts/negotiations/{ppid}"))
    return sunarc.state(ppid), held["messages"]


def _consumer_state(trio: LocalNetwork, cpid: str) -> tuple[str, int]:
    with trio["sunarc"].client() as client:
        held = ok(client.get(f"/v1/contracts/negotiations/{cpid}"))
    return held["state"], held["messages"]


def test_a_third_member_gets_404_on_every_route_and_moves_nothing(
    trio: LocalNetwork,
    sunarc: tuple[Peer, Callbacks],
    open_one: tuple[str, str, dict[str, Any]],
    finalized: tuple[str, str],
) -> None:
    peer, _ = sunarc
    ppid, cpid, offer = open_one
    done_ppid, done_cpid = finalized
    before = (
        _provider_state(trio, peer, ppid),
        _provider_state(trio, peer, done_ppid),
        _consumer_state(trio, done_cpid),
    )
    assert before[0][0] == "OFFERED" and before[1][0] == before[2][0] == "FINALIZED"
    mallory_url = runtime_of(trio, "mallory")["dsp"]
    at_cellex = Peer(trio, "mallory", "cellex")
    at_sunarc = Peer(trio, "mallory", "sunarc")
    try:
        unknown = f"urn:uuid:{uuid.uuid4()}"
        calls = {  # (listener, pid): the messages, naming the negotiation's pids
            ("cellex", ppid): (at_cellex, _messages(ppid, cpid, offer, mallory_url)),
            ("cellex", done_ppid): (at_cellex, _messages(done_ppid, done_cpid, offer, mallory_url)),
            ("sunarc", done_cpid): (at_sunarc, _messages(done_ppid, done_cpid, offer, mallory_url)),
        }
        nothing = {
            name: _answers(caller, unknown, _messages(unknown, unknown, offer, mallory_url))
            for name, caller in (("cellex", at_cellex), ("sunarc", at_sunarc))
        }
        for (name, pid), (caller, messages) in calls.items():
            got = _answers(caller, pid, messages)
            assert set(got) == {"GET", *messages}
            for route, (status, text) in got.items():
                assert status == 404, (name, route, status, text)
                assert "Traceback" not in text
            # exactly what a pid that names nothing gets: the pid's existence is not told
            assert got == nothing[name], (name, got, nothing[name])
    finally:
        at_cellex.http.close()
        at_sunarc.http.close()
    after = (
        _provider_state(trio, peer, ppid),
        _provider_state(trio, peer, done_ppid),
        _consumer_state(trio, done_cpid),
    )
    assert after == before
