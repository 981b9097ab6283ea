"""The DSP transfer endpoints and the HTTP data plane against hostile members (real node
processes, real mutual TLS): unknown pids, another member's pid, wrong transitions,
forged, expired, revoked and someone else's data tokens, oversize bodies and hostile
query parameters all get a 4xx TransferError, never a 5xx; nothing is half-done."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from jsonschema import Draft201909Validator
from nacl.signing import SigningKey
from referencing import Registry, Resource
from sqlalchemy import Engine, create_engine, text

from qdspace.connector import dsp_transfer as wire
from qdspace.connector.transfer import MAX_MESSAGES
from qdspace.node.dsp.auth import issue_token
from qdspace.node.dsp.edr import DataTokens
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.node.rpc.client import open_channel

from .conftest import SCHEMAS, ingest_sample, ok, rows_of, runtime_of, wait_for

pytestmark = pytest.mark.integration
CTX = ["https://w3id.org/dspace/2025/1/context.jsonld"]


def _load(path: Path) -> Any:  # see tests/unit/connector/test_dsp_transfer.py
    return json.loads(path.read_text().replace(".json#definitions/", ".json#/definitions/"))


REGISTRY = Registry().with_resources(
    (d["$id"], Resource.from_contents(d)) for d in map(_load, SCHEMAS.rglob("*.json"))
)


def valid(body: Any, schema: str) -> None:
    Draft201909Validator(_load(SCHEMAS / "transfer" / schema), registry=REGISTRY).validate(body)


def refused(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    valid(body, "transfer-error-schema.json")
    assert body["@type"] == "TransferError" and body["reason"][0]


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    net = LocalNetwork(
        tmp_path_factory.mktemp("dsp-xfer"),
        [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier"),
         MemberSpec("polycell", "supplier")],
        chain=False,
        env={"QDSPACE_DSP_PORT": "0"},
    )  # fmt: skip
    net.create()
    net.start()
    try:
        yield net
    finally:
        net.stop()


class Caller:
    """A member process's credentials (its certificate and key) calling cellex directly."""

    def __init__(self, net: LocalNetwork, name: str) -> None:
        layout = net[name].layout
        context = ssl.create_default_context(cafile=str(layout.ca_cert))
        context.check_hostname = False
        context.load_cert_chain(layout.tls_cert, layout.tls_key)
        self.keys = net[name].keys()
        self.me = self.keys.identity.member_id
        self.audience = net["cellex"].keys().identity.member_id
        self.http = httpx.Client(
            verify=context,
            base_url=runtime_of(net, "cellex")["dsp"],
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    def auth(self) -> dict[str, str]:
        token = issue_token(self.keys.signing_key, self.me, self.audience)
        return {"authorization": f"Bearer {token}"}

    def post(self, path: str, body: Any, **kw: Any) -> httpx.Response:
        headers = {**self.auth(), **kw.pop("headers", {})}
        if isinstance(body, bytes):
            return self.http.post(path, content=body, headers=headers, **kw)
        return self.http.post(path, json=body, headers=headers, **kw)

    def data(self, pid: str, token: str | None, **params: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}"} if token is not None else {}
        return self.http.get(f"/data/{pid}", headers=headers, params=params)


@pytest.fixture(scope="module")
def setup(trio: LocalNetwork) -> dict[str, Any]:
    """A DSP agreement of sunarc with cellex and a transfer sunarc opened by hand."""
    ingest_sample(trio, "cellex")
    provider = runtime_of(trio, "cellex")["dsp"]
    with trio["sunarc"].client() as oem:
        nid = ok(
            oem.post(
                "/v1/dsp/negotiations", json={"provider_url": provider, "dataset_id": "inspections"}
            )
        )["negotiation_id"]

        def agreed() -> Any:
            mine = [
                n for n in ok(oem.get("/v1/contracts/negotiations")) if n["negotiation_id"] == nid
            ]
            return mine and mine[0]["state"] == "FINALIZED" and mine[0]["agreement_id"]

        agreement = wait_for("a DSP agreement", agreed)
    sunarc = Caller(trio, "sunarc")
    cpid = f"urn:uuid:{uuid.uuid4()}"
    callback = runtime_of(trio, "sunarc")["dsp"] + "/callback"  # sunarc has no such pid: 404s
    ack = sunarc.post("/transfers/request", wire.request_message(cpid, agreement, callback))
    assert ack.status_code == 201, ack.text
    valid(ack.json(), "transfer-process-schema.json")
    return {
        "agreement": agreement,
        "cpid": cpid,
        "ppid": ack.json()["providerPid"],
        "sunarc": sunarc,
        "polycell": Caller(trio, "polycell"),
        "tokens": DataTokens(trio["cellex"].keys().signing_key, 300),
    }


def _message(kind: str, ppid: str, cpid: str) -> dict[str, Any]:
    return {"@context": CTX, "@type": kind, "providerPid": ppid, "consumerPid": cpid}


def test_unknown_and_other_members_pids_are_404(setup: dict[str, Any]) -> None:
    sunarc, polycell, ppid, cpid = setup["sunarc"], setup["polycell"], setup["ppid"], setup["cpid"]
    unknown = f"urn:uuid:{uuid.uuid4()}"
    refused(sunarc.http.get(f"/transfers/{unknown}", headers=sunarc.auth()), 404)
    got = sunarc.http.get(f"/transfers/{ppid}", headers=sunarc.auth())
    assert got.status_code == 200 and got.json()["state"] == "STARTED"
    valid(got.json(), "transfer-process-schema.json")
    refused(polycell.http.get(f"/transfers/{ppid}", headers=polycell.auth()), 404)  # not yours
    suspend = _message("TransferSuspensionMessage", ppid, cpid)
    refused(polycell.post(f"/transfers/{ppid}/suspension", suspend), 404)
    refused(sunarc.post(f"/transfers/{unknown}/suspension", suspend), 404)
    refused(sunarc.post(f"/transfers/{cpid}/suspension", suspend), 404)  # the consumer's pid
    refused(
        sunarc.post(
            f"/callback/transfers/{ppid}/start", _message("TransferStartMessage", ppid, cpid)
        ),
        404,
    )
    # a transfer id of another member's cannot be taken over
    steal = wire.request_message(cpid, setup["agreement"], "https://127.0.0.1:9/cb")
    assert polycell.post("/transfers/request", steal).status_code in (403, 404)
    assert sunarc.http.get(f"/transfers/{ppid}", headers=sunarc.auth()).json()["state"] == "STARTED"


@pytest.mark.parametrize(
    "change,status",
    [
        ({"format": "HttpData-PUSH"}, 400),
        ({"agreementId": "agr-not-yours"}, 403),
        ({"callbackAddress": "http://plain.example"}, 400),
        ({"consumerPid": "x" * 500}, 400),
        ({"@type": "TransferStartMessage"}, 400),
    ],
)
def test_bad_requests(setup: dict[str, Any], change: dict[str, Any], status: int) -> None:
    body = {
        **wire.request_message(
            f"urn:uuid:{uuid.uuid4()}", setup["agreement"], "https://127.0.0.1:9/cb"
        ),
        **change,
    }
    refused(setup["sunarc"].post("/transfers/request", body), status)


def test_data_plane_tokens(setup: dict[str, Any]) -> None:
    sunarc, polycell, ppid, tokens = (
        setup["sunarc"],
        setup["polycell"],
        setup["ppid"],
        setup["tokens"],
    )
    good = tokens.issue(ppid, sunarc.me, 1)  # generation 1: the request
    pulled = sunarc.data(ppid, good)
    assert pulled.status_code == 200, pulled.text
    assert pulled.headers["content-type"].startswith("application/x-ndjson")
    assert b'"last":true' in pulled.content
    forged = DataTokens(SigningKey.generate(), 300).issue(ppid, sunarc.me, 1)
    cases = {
        "none": None,
        "junk": "not-a-token",
        "forged": forged,
        "expired": tokens.issue(ppid, sunarc.me, 1, now=time.time() - 3600),
        "other pid": tokens.issue(f"urn:uuid:{uuid.uuid4()}", sunarc.me, 1),
        "old generation": tokens.issue(ppid, sunarc.me, 0),
        "huge": "a" * 5000,
    }
    for what, token in cases.items():
        response = sunarc.data(ppid, token)
        assert response.status_code == 401, (what, response.text)
        refused(response, 401)
    refused(polycell.data(ppid, tokens.issue(ppid, polycell.me, 1)), 404)  # not its transfer
    refused(polycell.data(ppid, good), 401)  # a token lifted from sunarc


@pytest.mark.parametrize(
    "params",
    [
        {"batch_rows": "0"},
        {"batch_rows": "abc"},
        {"batch_rows": "\u00b2"},  # a superscript two: a digit to str.isdigit, not to int()
        {"offset": "\u0661", "digest": "00" * 32},
        {"offset": "1", "digest": "00" * 32, "position": "\u00b2"},
        {"offset": "1", "digest": "00" * 32, "position": "9" * 25},  # past a 64-bit row id
        {"batch_rows": "99999999999999999999999"},
        {"offset": "-1", "digest": "00" * 32},
        {"offset": "1", "digest": "zz"},
        {"offset": "1", "digest": "00" * 32, "position": "x' OR 1=1"},
        {"offset": "999999", "digest": "00" * 32},
    ],
)
def test_hostile_query_params(setup: dict[str, Any], params: dict[str, str]) -> None:
    good = setup["tokens"].issue(setup["ppid"], setup["sunarc"].me, 1)
    response = setup["sunarc"].data(setup["ppid"], good, **params)
    assert 400 <= response.status_code < 500, response.text
    refused(response, response.status_code)


def test_oversize_and_malformed_bodies(setup: dict[str, Any]) -> None:
    sunarc, ppid = setup["sunarc"], setup["ppid"]
    big = sunarc.post(
        f"/transfers/{ppid}/suspension",
        b"x" * 300_000,
        headers={"content-type": "application/json"},
    )
    refused(big, 413)
    refused(sunarc.post(f"/transfers/{ppid}/suspension", b"{not json"), 400)
    refused(
        sunarc.post(
            f"/transfers/{ppid}/suspension",
            _message("TransferSuspensionMessage", "urn:uuid:other", setup["cpid"]),
        ),
        400,
    )


def test_wrong_transitions_and_revocation(setup: dict[str, Any]) -> None:
    """A fresh transfer (STARTED, nothing pulled): suspended, then terminated."""
    sunarc, tokens = setup["sunarc"], setup["tokens"]
    cpid = f"urn:uuid:{uuid.uuid4()}"
    ack = sunarc.post(
        "/transfers/request", wire.request_message(cpid, setup["agreement"], "https://127.0.0.1:9")
    )
    assert ack.status_code == 201, ack.text
    ppid = ack.json()["providerPid"]
    done = _message("TransferCompletionMessage", ppid, cpid)
    refused(sunarc.post(f"/transfers/{ppid}/completion", done), 409)  # STARTED: not all pulled
    good = tokens.issue(ppid, sunarc.me, 1)
    with sunarc.http.stream(
        "GET",
        f"/data/{ppid}",
        headers={"authorization": f"Bearer {good}"},
        params={"batch_rows": "1"},
    ) as r:
        assert r.status_code == 200  # the token works (one row read at most: still STARTED)
    pause = sunarc.post(
        f"/transfers/{ppid}/suspension", _message("TransferSuspensionMessage", ppid, cpid)
    )
    assert pause.status_code == 200, pause.text
    refused(sunarc.data(ppid, good), 401)  # revoked by the suspension
    refused(sunarc.data(ppid, tokens.issue(ppid, sunarc.me, 2)), 401)  # SUSPENDED: no data
    refused(sunarc.post(f"/transfers/{ppid}/completion", done), 409)
    term = {**_message("TransferTerminationMessage", ppid, cpid), "code": "x", "reason": ["bye"]}
    ended = sunarc.post(f"/transfers/{ppid}/termination", term)
    assert ended.status_code == 200, ended.text
    state = sunarc.http.get(f"/transfers/{ppid}", headers=sunarc.auth()).json()
    assert state["state"] == "TERMINATED"
    refused(
        sunarc.post(f"/transfers/{ppid}/start", _message("TransferStartMessage", ppid, cpid)), 409
    )
    refused(
        sunarc.post(
            f"/transfers/{ppid}/suspension", _message("TransferSuspensionMessage", ppid, cpid)
        ),
        409,
    )
    refused(sunarc.data(ppid, tokens.issue(ppid, sunarc.me, 3)), 401)


def test_a_retried_request_is_the_same_process(trio: LocalNetwork, setup: dict[str, Any]) -> None:
    """A retry is answered as the same process; its start is queued again only when none
    is still owed (SunArc's callback cannot be reached here, so the first is), so a
    member retrying in a loop costs no row and no POST a retry (was: one of each, for
    ever)."""
    sunarc = setup["sunarc"]
    cpid = f"urn:uuid:{uuid.uuid4()}"
    body = wire.request_message(cpid, setup["agreement"], "https://127.0.0.1:9")
    first, *again = (sunarc.post("/transfers/request", body) for _ in range(20))
    assert first.status_code == 201, first.text
    assert {r.status_code for r in again} == {201}, again[0].text
    assert {r.json()["providerPid"] for r in again} == {first.json()["providerPid"]}
    queued = "SELECT count(*) FROM contract_outbox WHERE process_id = :p"
    assert rows_of(trio, "cellex", queued, p=cpid)[0][0] == 1


def test_a_member_is_held_to_its_streams_in_flight(
    trio: LocalNetwork, setup: dict[str, Any]
) -> None:
    """SunArc opens live data streams up to its cap (`rpc_max_streams_per_peer`, 8, as on
    the gRPC listener): the next is a 429 TransferError naming the cap, answered before
    its token is read, and so is a gRPC stream to the same node (one count for both
    listeners: separate ones let a member hold the cap on each); Polycell's calls and
    SunArc's own control calls go on meanwhile; once SunArc closes a stream, its next
    one is admitted."""
    from .test_dsp_transfer import negotiate

    with trio["sunarc"].client() as oem:
        live = negotiate(oem, runtime_of(trio, "cellex")["dsp"], "live-inspections")
    sunarc, tokens = setup["sunarc"], setup["tokens"]
    cpid = f"urn:uuid:{uuid.uuid4()}"
    ack = sunarc.post("/transfers/request", wire.request_message(cpid, live, "https://127.0.0.1:9"))
    assert ack.status_code == 201, ack.text
    ppid = ack.json()["providerPid"]
    headers = {"authorization": f"Bearer {tokens.issue(ppid, sunarc.me, 1)}"}

    def open_stream() -> httpx.Response:
        request = sunarc.http.build_request("GET", f"/data/{ppid}", headers=headers)
        return sunarc.http.send(request, stream=True)

    held = [open_stream() for _ in range(8)]
    try:
        assert [r.status_code for r in held] == [200] * 8, [r.status_code for r in held]
        over = sunarc.data(ppid, "not-even-a-token")  # refused before the token is read
        refused(over, 429)
        assert "8 streams open" in over.json()["reason"][0], over.text
        code, details = asyncio.run(grpc_stream(trio, "sunarc", "cellex"))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
        assert "8 streams open" in details, details
        assert sunarc.http.get(f"/transfers/{ppid}", headers=sunarc.auth()).status_code == 200
        catalog = {"@context": CTX, "@type": "CatalogRequestMessage"}
        assert setup["polycell"].post("/catalog/request", catalog).status_code == 200
        held.pop().close()

        def admitted() -> Any:  # the slot is freed once the server sees the hang-up
            again = open_stream()
            if again.status_code == 200:
                held.append(again)
                return True
            again.close()
            return False

        wait_for("a stream slot freed by the closed stream", admitted)
        held.pop().close()
        wait_for(
            "the slot freed for a gRPC stream",
            lambda: (
                asyncio.run(grpc_stream(trio, "sunarc", "cellex"))[0]
                != grpc.StatusCode.RESOURCE_EXHAUSTED
            ),
        )
    finally:
        for response in held:
            response.close()


async def grpc_stream(net: LocalNetwork, caller: str, callee: str) -> tuple[Any, str]:
    """`caller` opens a gRPC stream (a subscription, with an empty request) on `callee`'s
    peer listener; the status it ends with and its details."""
    channel = open_channel(net[caller].keys(), net[callee].grpc_address, callee)
    try:
        call = channel.unary_stream("/qdspace.v1.Subscription/Subscribe")(b"", timeout=10)
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
        return grpc.StatusCode.OK, ""
    finally:
        await channel.close()


def test_a_data_address_off_the_providers_dsp_address_is_refused_and_never_dialled(
    trio: LocalNetwork, setup: dict[str, Any]
) -> None:
    """Cellex, SunArc's provider in a live transfer over DSP, sends SunArc's node a start
    (after its own suspension, so the state machine would take it) whose data address is
    a host and port of its choosing: a decoy listener here, standing for a service inside
    SunArc's network. Before, SunArc took it and connected there (and again after every
    failure, for as long as the transfer ran). Now the start is a 400 naming the
    provider's DSP address, the decoy is never dialled, and the transfer stays as it was
    until the provider's own resume, at its own address, which still works."""
    from .peer import Peer
    from .test_dsp_transfer import start_live_transfer, transfer_state

    cellex = runtime_of(trio, "cellex")["dsp"]
    decoy = socket.socket()
    decoy.bind(("127.0.0.1", 0))
    decoy.listen(8)
    decoy_port = decoy.getsockname()[1]
    with trio["sunarc"].client() as oem, trio["cellex"].client() as supplier, decoy:
        _agreement, tid = start_live_transfer(oem, cellex)
        view = transfer_state(oem, tid)
        ppid, cpid = view["provider_pid"], view["consumer_pid"]
        ok(supplier.post(f"/v1/dsp/transfers/{tid}/suspend", json={"reason": "audit"}))
        wait_for("SunArc to be told", lambda: transfer_state(oem, tid)["state"] == "SUSPENDED")

        rogue = Peer(trio, "cellex", "sunarc")  # Cellex's own credentials, by hand
        with rogue.http:
            _rogue_starts(rogue, ppid, cpid, cellex, decoy_port)
        decoy.settimeout(3.0)
        with pytest.raises(TimeoutError):
            decoy.accept()  # SunArc never connected to it
        assert transfer_state(oem, tid)["state"] == "SUSPENDED"

        assert ok(supplier.post(f"/v1/dsp/transfers/{tid}/resume"))["state"] == "STARTED"
        wait_for("STARTED at SunArc", lambda: transfer_state(oem, tid)["state"] == "STARTED")
        ok(oem.post(f"/v1/dsp/transfers/{tid}/terminate", json={"reason": "done"}))


def _rogue_starts(rogue: Any, ppid: str, cpid: str, cellex: str, decoy_port: int) -> None:
    """Two starts pointing at the decoy: by address, and behind user info naming Cellex."""
    for endpoint in (
        f"https://127.0.0.1:{decoy_port}/data/{ppid}",
        f"https://{cellex.removeprefix('https://')}@127.0.0.1:{decoy_port}/data/{ppid}",
    ):
        address = wire.DataAddress(endpoint, "a-token", wire.STREAM)
        start = wire.start_message(ppid, cpid, address)
        answer = rogue.post(f"/callback/transfers/{cpid}/start", start)
        refused(answer, 400)
        assert "the provider's DSP address" in answer.text, answer.text


def test_re_reading_a_transfer_over_and_over_stops_at_its_message_cap(
    trio: LocalNetwork, setup: dict[str, Any]
) -> None:
    """SunArc opens a transfer by hand and GETs its data again and again: each re-read of
    the completed transfer it never acknowledged is a new completion that Cellex keeps
    with the process. The history is brought to a few below `MAX_MESSAGES` by writing
    Cellex's message rows directly (a thousand GETs would take a minute); the GETs then
    add one each until Cellex answers 409 (the cap named) and keeps no more; a new
    transfer is the way on (on the old code: 200 for ever, one row each)."""
    sunarc, tokens = setup["sunarc"], setup["tokens"]
    cpid = f"urn:uuid:{uuid.uuid4()}"
    callback = runtime_of(trio, "sunarc")["dsp"] + "/callback"

    def request(pid: str) -> dict[str, Any]:
        return wire.request_message(pid, setup["agreement"], callback)

    ack = sunarc.post("/transfers/request", request(cpid))
    assert ack.status_code == 201, ack.text
    ppid = ack.json()["providerPid"]
    token = tokens.issue(ppid, sunarc.me, 1)
    assert sunarc.data(ppid, token).status_code == 200  # sent and completed
    engine = create_engine(trio["cellex"].db_url)
    try:
        _pad_history(engine, cpid, MAX_MESSAGES - 2 - _messages(engine, cpid))
        statuses = [sunarc.data(ppid, token).status_code for _ in range(4)]
        assert statuses == [200, 200, 409, 409], statuses
        assert _messages(engine, cpid) == MAX_MESSAGES
        full = sunarc.data(ppid, token)
        assert f"holds {MAX_MESSAGES} messages" in full.json()["reason"][0], full.text
        again = sunarc.post("/transfers/request", request(f"urn:uuid:{uuid.uuid4()}"))
        assert again.status_code == 201, again.text  # the way on: a new transfer
    finally:
        engine.dispose()


def _messages(engine: Engine, transfer_id: str) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                text(
                    "SELECT count(*) FROM contract_message "
                    "WHERE process_kind = 'transfer' AND process_id = :t"
                ),
                {"t": transfer_id},
            ).scalar_one()
        )


def _pad_history(engine: Engine, transfer_id: str, more: int) -> None:
    """`more` messages appended to the transfer's history at Cellex, as that many resumes
    would leave it (its message count with them: the compare-and-set of the next save)."""
    with engine.begin() as connection:
        last = connection.execute(
            text(
                "SELECT max(sequence) FROM contract_message "
                "WHERE process_kind = 'transfer' AND process_id = :t"
            ),
            {"t": transfer_id},
        ).scalar_one()
        rows = [
            {"t": transfer_id, "m": f"{transfer_id}:c-resume-pad{i}", "s": last + 1 + i}
            for i in range(more)
        ]
        connection.execute(
            text(
                "INSERT INTO contract_message "
                "(process_kind, process_id, message_id, sequence, fingerprint) "
                f"VALUES ('transfer', :t, :m, :s, '{'0' * 64}')"
            ),
            rows,
        )
        connection.execute(
            text(
                "UPDATE contract_transfer SET message_count = message_count + :n "
                "WHERE transfer_id = :t"
            ),
            {"n": more, "t": transfer_id},
        )
