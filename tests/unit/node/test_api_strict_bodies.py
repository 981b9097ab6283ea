"""The operator API's JSON bodies take numbers and flags only as JSON writes them.

Pydantic's lax mode took ``"retention_days": true`` as 1 day, ``"5"`` as 5 and
``"wait": "false"`` as false: the node then acted on a request other than the caller's.
Each is a 422 problem naming the field now, while what JSON writes as a string (an ISO
8601 date-time, a literal) is still taken. Real HTTP requests (the operator app over a
real node directory, in process): FastAPI validates a body in pydantic's Python mode,
where a strict model would also refuse a date-time string, so only requests tell.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from qdspace.node.context import NodeContext
from qdspace.node.rpc.contracts_jobs import client_of

from .conftest import post_json

NEGOTIATE = "/v1/contracts/negotiations"
TRANSFER = "/v1/contracts/transfers"
SUBSCRIBE = "/v1/contracts/subscriptions"
CLOCK = "/v1/contracts/clock"
OFFER = {"peer": "sunarc", "asset_id": "qdm-inspection", "purposes": ["quality-analysis"]}
PULL = {"agreement_id": "no-such-agreement", "purpose": "quality-analysis"}
WATCH = {"agreement_id": "no-such-agreement"}


@pytest.fixture(scope="module", autouse=True)
def contract_client(node: NodeContext) -> Iterator[None]:
    """The node's real contract client and outbox, as a running node makes them: without
    them the contract routes answer 503 before they read a body."""
    client_of(node)
    yield
    node.contract_client, node.outbox = None, None


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (NEGOTIATE, {**OFFER, "retention_days": True}, "body.retention_days"),
        (NEGOTIATE, {**OFFER, "retention_days": "5"}, "body.retention_days"),
        (NEGOTIATE, {**OFFER, "retention_days": 5.0}, "body.retention_days"),
        (NEGOTIATE, {**OFFER, "as_offered": "true"}, "body.as_offered"),
        (NEGOTIATE, {**OFFER, "as_offered": 1}, "body.as_offered"),
        (TRANSFER, {**PULL, "batch_rows": True}, "body.batch_rows"),
        (TRANSFER, {**PULL, "batch_rows": "500"}, "body.batch_rows"),
        (TRANSFER, {**PULL, "wait": "false"}, "body.wait"),
        (TRANSFER, {**PULL, "since_last": 0}, "body.since_last"),
        (SUBSCRIBE, {**WATCH, "baseline_size": "20"}, "body.baseline_size"),
        (SUBSCRIBE, {**WATCH, "usl": "0.5"}, "body.usl"),
        (CLOCK, {"offset_days": "5"}, "body.offset_days"),
        (CLOCK, {"offset_days": True}, "body.offset_days"),
    ],
    ids=lambda v: json.dumps(v)[:40] if isinstance(v, dict) else None,
)
def test_a_number_or_flag_in_another_type_is_a_422_naming_the_field(
    node: NodeContext, path: str, body: dict[str, Any], field: str
) -> None:
    answer = post_json(node, path, body)
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert [e["field"] for e in problem["errors"]] == [field], problem
    assert problem["detail"].startswith(f"{field}: "), problem


def test_an_iso_datetime_is_still_taken_next_to_a_refused_number(node: NodeContext) -> None:
    """A strict model in Python mode refuses a date-time string: the body's only error is
    the number sent as a flag, not the date-time."""
    body = {**OFFER, "valid_until": "2030-01-01T00:00:00Z", "retention_days": True}
    problem = post_json(node, NEGOTIATE, body).json()
    assert [e["field"] for e in problem["errors"]] == ["body.retention_days"], problem
    naive = post_json(node, NEGOTIATE, {**OFFER, "valid_until": "2030-01-01T00:00:00"})
    assert naive.status_code == 422 and "timezone" in naive.text, naive.text


NO_PEER = "unknown peer 'sunarc'"
NO_AGREEMENT = "no agreement no-such-agreement here"


@pytest.mark.parametrize(
    ("path", "body", "then"),
    [
        (
            NEGOTIATE,
            {**OFFER, "retention_days": 30, "valid_until": "2030-01-01T00:00:00+02:00"},
            NO_PEER,
        ),
        (NEGOTIATE, {**OFFER, "as_offered": False}, NO_PEER),
        (TRANSFER, {**PULL, "batch_rows": 500, "wait": False, "since_last": True}, NO_AGREEMENT),
        (SUBSCRIBE, {**WATCH, "usl": 1, "lsl": 0.25, "baseline_size": 20}, NO_AGREEMENT),
        (CLOCK, {"offset_days": 0}, "QDSPACE_CLOCK_CONTROL=1"),
        ("/v1/contracts/agreements/no-such-agreement/explain", {"action": "use"}, NO_AGREEMENT),
    ],
    ids=lambda v: json.dumps(v)[:40] if isinstance(v, dict) else None,
)
def test_bodies_as_json_writes_them_pass_validation(
    node: NodeContext, path: str, body: dict[str, Any], then: str
) -> None:
    """An integer for a float, an ISO date-time with its offset, a literal: the body is
    taken, and the node answers what comes next (no such peer or agreement here)."""
    answer = post_json(node, path, body)
    assert answer.status_code in (403, 404), answer.text
    assert then in answer.json()["detail"], answer.text
