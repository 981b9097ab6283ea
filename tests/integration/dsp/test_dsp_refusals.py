"""What a consumer keeps of a DSP request the provider refused, and what the provider
keeps of one it failed to open (real node processes, real mutual TLS).

A provider that answers a TransferRequestMessage or a ContractRequestMessage with a 4xx
holds no process for it: the consumer's own copy, opened before the request went out (the
provider's callbacks may come before its answer), must end TERMINATED saying why, not
wait in REQUESTED for ever, and the operator is told the provider's reason with the
status it means (403, not the 502 of a provider that could not be reached). A provider
that fails while opening a transfer keeps none of it, so the consumer's retry of the
same request is decided afresh instead of being refused as a taken id."""

from __future__ import annotations

import gzip
import json
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from qdspace.connector import dsp_transfer as wire
from qdspace.node.cli import app
from qdspace.node.localnet.network import LocalNetwork

from .conftest import ingest_sample, ok, runtime_of, wait_for
from .peer import Peer, peer_with_callbacks, request
from .test_dsp_transfer import negotiate

pytestmark = pytest.mark.integration


def negotiations(oem: httpx.Client) -> dict[str, dict[str, Any]]:
    return {n["negotiation_id"]: n for n in ok(oem.get("/v1/contracts/negotiations"))}


def transfers(client: httpx.Client) -> dict[str, dict[str, Any]]:
    return {t["transfer_id"]: t for t in ok(client.get("/v1/contracts/transfers"))}


def test_a_refused_transfer_request_ends_the_consumers_copy(dsp_net: LocalNetwork) -> None:
    ingest_sample(dsp_net, "cellex")
    cellex = runtime_of(dsp_net, "cellex")["dsp"]
    with dsp_net["sunarc"].client() as oem:
        agreement = negotiate(oem, cellex, "inspections")
        before = set(transfers(oem))
    with dsp_net["cellex"].client() as supplier:
        hold = {"reason": "quality hold"}
        ok(supplier.post(f"/v1/contracts/agreements/{agreement}/terminate", json=hold))
    with dsp_net["sunarc"].client() as oem:
        answer = oem.post("/v1/dsp/transfers", json={"agreement_id": agreement})
        assert answer.status_code == 403, answer.text  # the provider's refusal, not a 502
        detail = answer.json()["detail"]
        assert "refused (HTTP 403): agreement terminated" in detail, detail
        assert "{" not in detail  # the reason, not the provider's JSON body
        new = {k: v for k, v in transfers(oem).items() if k not in before}
    assert len(new) == 1, new
    (mine,) = new.values()
    assert mine["state"] == "TERMINATED", mine  # not REQUESTED, waiting for ever
    assert mine["reason"] == "refused by the provider: agreement terminated", mine
    with dsp_net["cellex"].client() as supplier:
        assert mine["transfer_id"] not in transfers(supplier)  # the provider holds none
    oem_dir = str(dsp_net["sunarc"].directory)
    runner = CliRunner()
    asked = runner.invoke(app, ["dsp", "transfer", "--dir", oem_dir, agreement])
    assert asked.exit_code == 1 and "agreement terminated" in asked.output, asked.output
    assert "Traceback" not in asked.output
    shown = runner.invoke(app, ["dsp", "status", "--dir", oem_dir, mine["transfer_id"]])
    assert shown.exit_code == 0, shown.output
    assert "terminated: refused by the provider: agreement terminated" in shown.output


class RogueProvider:
    """A DSP provider's address served by a process holding Cellex's own certificate: it
    publishes Cellex's real dataset and answers a ContractRequestMessage as told."""

    def __init__(self, net: LocalNetwork, dataset: bytes) -> None:
        layout = net["cellex"].layout
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(layout.ca_cert))
        context.load_cert_chain(layout.tls_cert, layout.tls_key)
        self.answer: tuple[int, bytes] = (403, b"")
        self.headers: dict[str, str] = {}
        self.endless = False  # answer with a body that never ends (no length)
        self.sent = 0  # bytes of the last endless body written before the caller hung up
        self.requests: list[dict[str, Any]] = []
        self.answered = threading.Event()
        rogue = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: bytes, as_told: bool = False) -> None:
                endless = as_told and rogue.endless
                told = rogue.headers if as_told else {}
                self.send_response(status)
                self.send_header("content-type", "application/json")
                for name, value in told.items():
                    self.send_header(name, value)
                if not endless and "content-length" not in told:
                    self.send_header("content-length", str(len(body)))
                self.end_headers()
                if not endless:
                    self.wfile.write(body)
                    return
                rogue.sent = 0
                chunk = b'{"reason": ["' + b"x" * 65_536
                try:
                    while rogue.sent < 512 * 1024 * 1024:  # (a bound for the test's sake)
                        self.wfile.write(chunk)
                        rogue.sent += len(chunk)
                except OSError:
                    pass  # the caller hung up

            def do_GET(self) -> None:
                if self.path.startswith("/catalog/datasets/"):
                    self._send(200, dataset)
                else:
                    self._send(200, b'{"protocolVersions":[{"version":"2025-1","path":"/"}]}')

            def do_POST(self) -> None:
                size = int(self.headers.get("content-length") or 0)
                rogue.requests.append(json.loads(self.rfile.read(size) or b"{}"))
                self._send(*rogue.answer, as_told=True)
                rogue.answered.set()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@contextmanager
def rogue_provider(net: LocalNetwork) -> Iterator[RogueProvider]:
    peer = Peer(net, "sunarc", "cellex")
    try:
        dataset = peer.get("/catalog/datasets/inspections")
        assert dataset.status_code == 200, dataset.text
    finally:
        peer.http.close()
    rogue = RogueProvider(net, dataset.content)
    try:
        yield rogue
    finally:
        rogue.server.shutdown()
        rogue.server.server_close()


def _error(reason: Any) -> bytes:
    body = {
        "@context": ["https://w3id.org/dspace/2025/1/context.jsonld"],
        "@type": "ContractNegotiationError",
        "code": "403",
        "reason": reason,
    }
    return json.dumps(body).encode()


def test_a_refused_negotiation_request_ends_the_consumers_copy(dsp_net: LocalNetwork) -> None:
    with rogue_provider(dsp_net) as rogue, dsp_net["sunarc"].client() as oem:
        ask = {"provider_url": rogue.url, "dataset_id": "inspections"}

        def attempt(status: int, body: bytes) -> tuple[httpx.Response, dict[str, Any]]:
            rogue.answer = (status, body)
            known = set(negotiations(oem))
            answer = oem.post("/v1/dsp/negotiations", json=ask)
            new = [n for k, n in negotiations(oem).items() if k not in known]
            assert len(new) == 1, new  # opened before the request went out
            return answer, new[0]

        # a refusal with a reason written to mislead: a newline, and 20,000 characters
        reason = "dataset withdrawn\nby the supplier" + " (see annex)" * 1_700
        answer, mine = attempt(403, _error([reason]))
        assert answer.status_code == 403, answer.text
        detail = answer.json()["detail"]
        assert "refused (HTTP 403): dataset withdrawn by the supplier (see annex)" in detail
        assert "\n" not in detail and len(detail) < 500, len(detail)
        assert mine["state"] == "TERMINATED", mine
        assert mine["reason"].startswith("refused by the provider: dataset withdrawn by the")
        assert rogue.requests[-1]["consumerPid"] == mine["negotiation_id"]

        # a 400 with no DSP body: the provider found our message wrong, which is not the
        # operator's mistake (502), but it holds no process either
        answer, mine = attempt(400, b"<html>bad request</html>")
        assert answer.status_code == 502, answer.text
        assert "refused (HTTP 400): <html>bad request</html>" in answer.json()["detail"]
        assert mine["state"] == "TERMINATED", mine

        # a provider that failed may have taken the request up: ours stays open
        answer, mine = attempt(503, b"")
        assert answer.status_code == 502, answer.text
        assert mine["state"] == "REQUESTED", mine

        # a refusal compressed (read once, decoded once)
        rogue.headers = {"content-encoding": "gzip"}
        answer, mine = attempt(403, gzip.compress(_error(["order closed"])))
        assert answer.status_code == 403, answer.text
        assert "refused (HTTP 403): order closed" in answer.json()["detail"], answer.text
        assert mine["reason"] == "refused by the provider: order closed", mine

        # an answer said to be 5 GB long, and one that never ends: not read past 1 MiB
        rogue.headers = {"content-length": str(5 * 1024**3)}
        rogue.endless = True
        answer, mine = attempt(403, b"")
        assert answer.status_code == 502, answer.text
        assert f"an answer of {5 * 1024**3} bytes" in answer.json()["detail"], answer.text
        assert mine["state"] == "REQUESTED", mine  # nothing it said was read
        rogue.headers = {}
        rogue.answered.clear()
        answer, mine = attempt(200, b"")
        assert answer.status_code == 502, answer.text
        assert "an answer over 1048576 bytes" in answer.json()["detail"], answer.text
        assert rogue.answered.wait(30)  # the rogue saw the caller hang up
        assert rogue.sent < 64 * 1024 * 1024, rogue.sent


def test_a_transfer_the_provider_failed_to_open_is_not_half_kept(dsp_net: LocalNetwork) -> None:
    """Cellex's database refuses the transfer's DSP binding (a trigger stands in for a
    disk or a process failing mid-request): none of the transfer stays, and the same
    request retried then opens it and its start reaches the consumer's callback."""
    ingest_sample(dsp_net, "cellex")
    cellex = runtime_of(dsp_net, "cellex")["dsp"]
    with dsp_net["sunarc"].client() as oem:
        agreement = negotiate(oem, cellex, "live-inspections")
    cpid = f"urn:uuid:{uuid.uuid4()}"
    engine = create_engine(dsp_net["cellex"].db_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "CREATE TRIGGER refuse_binding BEFORE INSERT ON dsp_process "
                    f"WHEN NEW.local_id = '{cpid}' BEGIN SELECT RAISE(ABORT, 'disk gone'); END"
                )
            )
        with peer_with_callbacks(dsp_net, "sunarc", "cellex") as (peer, callbacks):
            ask = wire.request_message(cpid, agreement, callbacks.url)
            failed = peer.post("/transfers/request", ask)
            assert failed.status_code >= 400, failed.text
            with dsp_net["cellex"].client() as supplier:
                assert cpid not in transfers(supplier)  # no transfer without its binding
            time.sleep(1.0)  # the outbox would have sent a queued start by now
            assert not callbacks.received
            with engine.begin() as connection:
                connection.execute(text("DROP TRIGGER refuse_binding"))
            again = peer.post("/transfers/request", ask)
            assert again.status_code == 201, again.text
            assert again.json()["consumerPid"] == cpid

            def started() -> Any:
                with callbacks.lock:
                    return [b for p, b in callbacks.received if p == f"/transfers/{cpid}/start"]

            (start,) = wait_for("the provider's start", started)
            assert start["providerPid"] == again.json()["providerPid"]
            assert start["dataAddress"]["endpoint"].endswith(again.json()["providerPid"])
    finally:
        engine.dispose()
    with dsp_net["cellex"].client() as supplier:
        assert transfers(supplier)[cpid]["state"] == "STARTED"


def test_a_refused_negotiation_request_leaves_no_binding(dsp_net: LocalNetwork) -> None:
    """A request Cellex refuses after binding its pids (an offer that names another
    member as assigner) leaves no binding: the consumer's retry with the same consumerPid
    and the published offer is decided afresh (Cellex answers it by callback), not
    answered 404 for a process that never was."""
    with peer_with_callbacks(dsp_net, "sunarc", "cellex") as (peer, callbacks):
        offer = peer.catalog_offer("inspections")
        cpid = f"urn:uuid:{uuid.uuid4()}"
        wrong = request(cpid, {**offer, "assigner": "someone-else"}, callbacks.url)
        refused = peer.post("/negotiations/request", wrong)
        assert refused.status_code == 403, refused.text
        again = peer.post("/negotiations/request", request(cpid, offer, callbacks.url))
        assert again.status_code == 201, again.text
        assert again.json()["consumerPid"] == cpid

        def answered() -> Any:  # its terms for SunArc, or why not (no order of SunArc's yet)
            with callbacks.lock:
                return [b for p, b in callbacks.received if p.startswith(f"/negotiations/{cpid}/")]

        (answer,) = wait_for("Cellex's answer by callback", answered)
        assert answer["providerPid"] == again.json()["providerPid"], answer
