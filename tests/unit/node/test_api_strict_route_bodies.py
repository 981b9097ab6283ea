"""The rest of the operator API's JSON bodies are strict too: a federated join, a training
on own images, a DSP negotiation, a quality case, a trace.

They were plain pydantic models, validated in lax mode: ``"deploy": "true"`` or ``1``
deployed, ``"epochs": "12"`` or ``12.0`` trained 12 epochs, ``"retention_days": true``
asked for a day, and a date or date-time sent as a number was read as seconds since
1970 (``"due": 86400`` was 1970-01-02, ``"valid_until": 5`` five seconds after 1970).
Each is a 422 problem naming the field now, while what JSON writes as a string (an enum
member, an ISO 8601 date or date-time) is still taken. Real HTTP requests to the
operator app over a real node directory, in process: FastAPI validates a body in
pydantic's Python mode, where only a request shows what a caller meets.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from qdspace.node.context import NodeContext
from qdspace.node.rpc.contracts_jobs import client_of
from qdspace.node.rpc.federation_link import GrpcCoordinator
from qdspace.node.runtime.federation_member import FederationMember
from qdspace.node.serving import trace_room

from .conftest import post_json

JOIN = "/v1/federation/sessions"
TRAIN = "/v1/inspection/trainings"
DSP = "/v1/dsp/negotiations"
CASE = "/v1/investigations"
TRACE = "/v1/traces"
NEGOTIATE = "/v1/contracts/negotiations"

NOWHERE = "/nonexistent/qdspace-test"
JOINED = {"job_id": "j1", "coordinator": "x", "data": f"{NOWHERE}/own.npz"}
IMAGES = {"images": f"{NOWHERE}/images"}
NARROWED = {
    "provider_url": "https://provider.example/dsp",
    "dataset_id": "qdm-inspection",
    "purposes": ["quality-analysis"],
}
OPENED = {"peer": "sunarc", "severity": "MAJOR", "subject": "cracked cells"}
ACTION = {"action_id": "A1", "kind": "CONTAINMENT", "owner": "sunarc", "due": "2030-01-31"}
OFFER = {"peer": "sunarc", "asset_id": "qdm-inspection", "purposes": ["quality-analysis"]}


@pytest.fixture(scope="module", autouse=True)
def services(node: NodeContext, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """What a running node puts on its context before the routes read a body: the
    contract client and outbox, the trace runs, a federation member (whose coordinator
    is never reached: a valid join is refused first, its data file is not there)."""

    def connect(coordinator: str, job_id: str) -> GrpcCoordinator:
        channel = grpc.aio.insecure_channel("127.0.0.1:9")
        return GrpcCoordinator(None, lambda *_: False, channel, coordinator, job_id)  # type: ignore[arg-type]

    client_of(node)
    trace_room(node)
    node.federation = FederationMember(connect, tmp_path_factory.mktemp("fl"), "cellex")
    yield
    node.contract_client, node.outbox, node.traces, node.federation = None, None, None, None


def action(**change: Any) -> dict[str, Any]:
    return {**OPENED, "actions": [{**ACTION, **change}]}


BAD = [
    (JOIN, {**JOINED, "deploy": "true"}, "body.deploy"),
    (JOIN, {**JOINED, "deploy": 1}, "body.deploy"),
    (JOIN, {**JOINED, "image_size": "64"}, "body.image_size"),
    (JOIN, {**JOINED, "image_size": 64.0}, "body.image_size"),
    (JOIN, {**JOINED, "poll_s": "5"}, "body.poll_s"),
    (JOIN, {**JOINED, "poll_s": True}, "body.poll_s"),
    (TRAIN, {**IMAGES, "epochs": "12"}, "body.epochs"),
    (TRAIN, {**IMAGES, "epochs": 12.0}, "body.epochs"),
    (TRAIN, {**IMAGES, "size": "64"}, "body.size"),
    (TRAIN, {**IMAGES, "seed": "1"}, "body.seed"),
    (TRAIN, {**IMAGES, "seed": True}, "body.seed"),
    (TRAIN, {**IMAGES, "threads": True}, "body.threads"),
    (TRAIN, {**IMAGES, "grades": "false"}, "body.grades"),
    (TRAIN, {**IMAGES, "grades": 0}, "body.grades"),
    (TRAIN, {**IMAGES, "activate": "true"}, "body.activate"),
    (DSP, {**NARROWED, "retention_days": "5"}, "body.retention_days"),
    (DSP, {**NARROWED, "retention_days": True}, "body.retention_days"),
    (DSP, {**NARROWED, "retention_days": 5.0}, "body.retention_days"),
    (DSP, {**NARROWED, "valid_until": 1893456000}, "body.valid_until"),
    (DSP, {**NARROWED, "valid_until": "1893456000"}, "body.valid_until"),
    (CASE, action(due=86400), "body.actions.0.due"),
    (CASE, action(due="0"), "body.actions.0.due"),
    (TRACE, {"since": 0, "until": "2030-01-01T00:00:00Z"}, "body.since"),
    (TRACE, {"since": "2026-01-01T00:00:00Z", "until": 1.5e9}, "body.until"),
    (TRACE, {"since": "2026-01-01T00:00:00Z", "until": "1700000000"}, "body.until"),
    (NEGOTIATE, {**OFFER, "valid_until": 5}, "body.valid_until"),
]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [pytest.param(p, b, f, id=f"{p} {f}={json.dumps(b)[-30:]}") for p, b, f in BAD],
)
def test_a_value_in_another_type_is_a_422_naming_the_field(
    node: NodeContext, path: str, body: dict[str, Any], field: str
) -> None:
    answer = post_json(node, path, body)
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert [e["field"] for e in problem["errors"]] == [field], problem
    assert problem["detail"].startswith(f"{field}: "), problem


#: (route, a body as JSON writes it, the status and words of what the node says next)
GOOD = [
    (JOIN, {**JOINED, "deploy": False, "image_size": 64, "poll_s": 5}, 400, "not a file"),
    (
        TRAIN,
        {**IMAGES, "epochs": 3, "grades": False, "activate": False, "positive": ["ok"]},
        400,
        NOWHERE,
    ),
    (
        DSP,
        {**NARROWED, "retention_days": 30, "valid_until": "2030-01-01T00:00:00+02:00"},
        409,
        "runs no DSP listener",
    ),
    (CASE, {**action(kind="ROOT-CAUSE"), "kind": "ALERT"}, 404, "unknown peer 'sunarc'"),
    (
        TRACE,
        {"since": "2026-01-01T00:00:00Z", "until": "2026-01-02T00:00:00+02:00"},
        400,
        "no batch here matches",
    ),
    (NEGOTIATE, {**OFFER, "valid_until": "2030-01-01T00:00:00Z"}, 404, "unknown peer 'sunarc'"),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "then"),
    [pytest.param(*case, id=f"{case[0]}") for case in GOOD],
)
def test_bodies_as_json_writes_them_pass_validation(
    node: NodeContext, path: str, body: dict[str, Any], status: int, then: str
) -> None:
    """Numbers, flags, enum members and ISO dates as JSON writes them: the body is taken,
    and the node answers what comes next (no such file, peer, listener or batch here)."""
    answer = post_json(node, path, body)
    assert answer.status_code == status, answer.text
    assert then in answer.json()["detail"], answer.text


def test_a_refused_date_says_what_form_it_takes(node: NodeContext) -> None:
    """The message says what to send instead of the seconds since 1970."""
    problem = post_json(node, CASE, action(due=0)).json()
    assert "ISO 8601" in problem["detail"], problem
    problem = post_json(node, JOIN, {**JOINED, "deploy": "yes"}).json()
    assert "valid boolean" in problem["detail"], problem


def test_the_enum_fields_still_refuse_a_member_they_do_not_have(node: NodeContext) -> None:
    for body, field in (
        ({**OPENED, "severity": "SEVERE"}, "body.severity"),
        ({**OPENED, "severity": 2}, "body.severity"),
        ({**OPENED, "kind": None}, "body.kind"),
        (action(kind="FIX"), "body.actions.0.kind"),
    ):
        problem = post_json(node, CASE, body).json()
        assert [e["field"] for e in problem["errors"]] == [field], problem


def test_the_paths_stay_plain_strings(node: NodeContext, tmp_path: Path) -> None:
    """Path fields are JSON strings, as the CLI sends them (``str(path.resolve())``)."""
    problem = post_json(node, TRAIN, {"images": ["/a"]}).json()
    assert [e["field"] for e in problem["errors"]] == ["body.images"], problem
    answer = post_json(node, JOIN, {**JOINED, "data": str(tmp_path / "none.npz")})
    assert answer.status_code == 400 and "not a file" in answer.text, answer.text
