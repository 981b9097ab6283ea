"""The operator-API client's one error check, and the CLI's usage errors.

A node answers a refused call with an RFC 9457 problem; the client turns it into a
typed ``ClientError`` (status, title, detail) whose message names the route. These
tests answer from an in-process transport, so no node runs.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from qdspace.connector.ingest import KINDS
from qdspace.inference.dataset import ALL_MEMBERS, SUPPLIER_BY_CELL_TYPE
from qdspace.ledger.leaves import KIND_CODES
from qdspace.node.cli import app
from qdspace.node.cli.choices import CellMember, LeafKind, QdmKind, Role
from qdspace.node.client import ClientError, NodeUnreachable, OperatorClient
from qdspace.node.errors import NodeError
from qdspace.node.identity.certs import ROLES


def _answering(status: int, body: Any, media: str = "application/problem+json") -> OperatorClient:
    def handler(request: httpx.Request) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(status, content=content, headers={"content-type": media})

    return OperatorClient("http://node.test", "t", transport=httpx.MockTransport(handler))


def test_a_problem_answer_becomes_a_typed_client_error() -> None:
    problem = {
        "type": "about:blank",
        "title": "Forbidden",
        "status": 403,
        "detail": "purpose marketing is not granted",
    }
    with _answering(403, problem) as node, pytest.raises(ClientError) as caught:
        node.transfer("agr-1", "marketing")
    error = caught.value
    assert isinstance(error, NodeError)  # the CLI's handler knows it
    assert (error.status, error.title, error.detail) == (
        403,
        "Forbidden",
        "purpose marketing is not granted",
    )
    message = str(error)
    assert "\n" not in message
    assert message == (
        "POST /v1/contracts/transfers: 403 Forbidden: purpose marketing is not granted"
    )


def test_a_non_problem_failure_keeps_its_body_as_the_detail() -> None:
    with _answering(502, b"bad gateway", "text/plain") as node, pytest.raises(ClientError) as c:
        node.agreements()
    assert (c.value.status, c.value.title, c.value.detail) == (502, "Bad Gateway", "bad gateway")


def test_no_answer_is_node_unreachable_without_a_status() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    node = OperatorClient("http://node.test", "t", transport=httpx.MockTransport(refuse))
    with node, pytest.raises(NodeUnreachable) as caught:
        node.qdm_counts()
    assert caught.value.status is None and "connection refused" in str(caught.value)


def test_answers_are_decoded_and_the_token_is_sent() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[{"asset_id": "a"}])

    node = OperatorClient("http://node.test/", "tok", transport=httpx.MockTransport(handler))
    with node:
        assert node.catalog("cellex", kind="inspection") == [{"asset_id": "a"}]
    assert seen[0].headers["authorization"] == "Bearer tok"
    assert seen[0].url.path == "/v1/contracts/catalog/cellex"
    assert seen[0].url.params["kind"] == "inspection"


def test_the_dsp_calls_go_to_the_dsp_routes_with_their_bodies() -> None:
    seen: list[tuple[str, str, bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, request.content))
        return httpx.Response(200, json={"state": "STARTED"})

    node = OperatorClient("http://node.test", "t", transport=httpx.MockTransport(handler))
    with node:
        node.dsp.negotiate("https://edc.test/dsp", "ds-1")
        node.dsp.transfer("agr-1")
        node.dsp.transfer_status("urn:uuid:1")
        node.dsp.control("urn:uuid:1", "suspend", "pause")
    assert [(m, p, json.loads(b) if b else None) for m, p, b in seen] == [
        (
            "POST",
            "/v1/dsp/negotiations",
            {"provider_url": "https://edc.test/dsp", "dataset_id": "ds-1"},
        ),
        ("POST", "/v1/dsp/transfers", {"agreement_id": "agr-1"}),
        ("GET", "/v1/dsp/transfers/urn:uuid:1", None),
        ("POST", "/v1/dsp/transfers/urn:uuid:1/suspend", {"reason": "pause"}),
    ]


def test_the_federation_calls_go_to_the_federation_routes_with_their_bodies() -> None:
    seen: list[tuple[str, str, str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        seen.append((request.method, request.url.path, request.url.query.decode(), body))
        return httpx.Response(200, json={"state": "running"})

    node = OperatorClient("http://node.test", "t", transport=httpx.MockTransport(handler))
    status = {"round": 2, "attempt": 0, "phase": "collect", "version": 1, "finished": False}
    with node:
        node.federation.start({"job_id": "j1"}, b"\x00\x01", "sunarc")
        node.federation.start({"job_id": "j1"})
        node.federation.jobs()
        node.federation.jobs("sunarc")
        node.federation.job("j1")
        node.federation.job("j1", "sunarc", seen=status, wait_s=5.0)
        node.federation.join("j1", "/d.npz", coordinator="sunarc", test=None, deploy=True)
        node.federation.session("s1")
        node.federation.session("s1", after=3)
    assert seen == [
        (
            "POST",
            "/v1/federation/jobs",
            "",
            {"terms": {"job_id": "j1"}, "initial": "AAE=", "coordinator": "sunarc"},
        ),
        (
            "POST",
            "/v1/federation/jobs",
            "",
            {"terms": {"job_id": "j1"}, "initial": None, "coordinator": None},
        ),
        ("GET", "/v1/federation/jobs", "", None),
        ("GET", "/v1/federation/jobs", "coordinator=sunarc", None),
        ("GET", "/v1/federation/jobs/j1", "", None),
        (
            "GET",
            "/v1/federation/jobs/j1",
            "coordinator=sunarc&wait_s=5.0&round=2&attempt=0&phase=collect&version=1",
            None,
        ),
        (
            "POST",
            "/v1/federation/sessions",
            "",
            {"job_id": "j1", "data": "/d.npz", "coordinator": "sunarc", "deploy": True},
        ),
        ("GET", "/v1/federation/sessions/s1", "", None),
        ("GET", "/v1/federation/sessions/s1", "after=3", None),
    ]


def _member_node(held: list[dict[str, Any]], state: str) -> tuple[OperatorClient, list[Any]]:
    """A member's API holding ``held`` agreements; a negotiation there ends in ``state``."""
    asked: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/contracts/agreements":
            return httpx.Response(200, json=held)
        asked.append(json.loads(request.content))
        outcome = {"state": state, "negotiation_id": "neg-1", "reason": "not a member"}
        return httpx.Response(200, json={**outcome, "agreement_id": "agr-new"})

    return OperatorClient("http://node.test", "t", transport=httpx.MockTransport(handler)), asked


def test_a_job_agreement_in_force_is_reused_else_the_offer_is_negotiated_as_offered() -> None:
    held = {
        "asset_id": "fl-job:j1",
        "role": "consumer",
        "active": True,
        "provider_id": "sunarc-0123456789ab",
        "agreement_id": "agr-held",
    }
    node, asked = _member_node([held], "FINALIZED")
    with node:
        assert node.federation.ensure_agreement("sunarc", "fl-job:j1") == ("agr-held", False)
        assert asked == []
        # another coordinator's, a provider's or an ended agreement is not the job's
        for other in (
            {"provider_id": "cellex-0123456789ab"},
            {"role": "provider"},
            {"active": False},
        ):
            held |= {"provider_id": "sunarc-0123456789ab", "role": "consumer", "active": True}
            held |= other
            assert node.federation.ensure_agreement("sunarc", "fl-job:j1") == ("agr-new", True)
    assert asked == 3 * [
        {"peer": "sunarc", "asset_id": "fl-job:j1", "purposes": ["training"], "as_offered": True}
    ]


def test_a_job_agreement_that_is_not_finalized_is_a_node_error() -> None:
    node, _ = _member_node([], "TERMINATED")
    with node, pytest.raises(NodeError) as refused:
        node.federation.ensure_agreement("sunarc", "fl-job:j1")
    assert (
        str(refused.value) == "negotiation neg-1 for fl-job:j1 with sunarc TERMINATED: not a member"
    )


def test_the_cli_choices_are_the_domains_value_sets() -> None:
    assert {r.value for r in Role} == set(ROLES)
    assert [k.value for k in QdmKind] == list(KINDS)
    assert {k.value for k in LeafKind} == set(KIND_CODES)
    members = {m.value for m in CellMember}
    assert members == {"auto", ALL_MEMBERS, *SUPPLIER_BY_CELL_TYPE.values()}


@pytest.mark.parametrize(
    ("args", "allowed"),
    [
        (
            ["node", "init", "--dir", "x", "--name", "n", "--role", "boss", "--authority", "a"],
            ROLES,
        ),
        (["ingest", "--kind", "photos", "--template"], KINDS),
        (
            ["ledger", "fetch-proof", "--dir", "x", "--api", "u", "--kind", "x", "--id", "1"],
            KIND_CODES,
        ),
    ],
)
def test_a_wrong_choice_is_a_usage_error_naming_the_allowed_values(
    args: list[str], allowed: tuple[str, ...]
) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Invalid value" in result.output
    for value in allowed:
        assert value in result.output


def test_a_node_calling_command_needs_dir_or_api_url_and_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("QDSPACE_API_URL", raising=False)
    monkeypatch.delenv("QDSPACE_TOKEN", raising=False)
    monkeypatch.delenv("QDSPACE_TOKEN_FILE", raising=False)
    runner = CliRunner()
    nothing = runner.invoke(app, ["catalog", "cellex"])
    assert nothing.exit_code == 2 and "--api-url" in nothing.output, nothing.output
    no_token = runner.invoke(app, ["catalog", "cellex", "--api-url", "http://127.0.0.1:9"])
    assert no_token.exit_code == 2 and "QDSPACE_TOKEN_FILE" in no_token.output, no_token.output
    both = runner.invoke(
        app, ["catalog", "cellex", "--dir", "x", "--api-url", "http://127.0.0.1:9"]
    )
    assert both.exit_code == 2 and "not both" in both.output, both.output


def test_an_unreachable_api_url_is_one_clean_error_line() -> None:
    result = CliRunner().invoke(
        app,
        ["order", "close", "PO-1"],
        env={"QDSPACE_API_URL": "http://127.0.0.1:9", "QDSPACE_TOKEN": "t"},
    )
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: POST /v1/contracts/orders/PO-1/close: ")
    assert "Traceback" not in result.output
