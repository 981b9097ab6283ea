"""Explaining decisions under a real agreement, and its DSP JSON-LD form, over the node API."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import CELLEX_ORDER, POLYCELL_ORDER, QA, Space, negotiate, ok

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def agreement_id(space: Space) -> str:
    with space.client("sunarc") as oem:
        result = negotiate(oem, "cellex", "inspections", orders=[CELLEX_ORDER])
    assert result["state"] == "FINALIZED"
    return str(result["agreement_id"])


def _explain(space: Space, node: str, agreement_id: str, **body: Any) -> Any:
    with space.client(node) as client:
        return client.post(f"/v1/contracts/agreements/{agreement_id}/explain", json=body)


def test_provider_explains_a_grant_rule_by_rule(space: Space, agreement_id: str) -> None:
    report = ok(_explain(space, "cellex", agreement_id, purpose=QA, order_id=CELLEX_ORDER))
    assert report["outcome"] == "permit" and report["permitted"]
    permission = report["rules"][0]
    assert permission["kind"] == "permission" and permission["satisfied"]
    states = {c["constraint"].split()[0]: c["state"] for c in permission["constraints"]}
    assert states["purpose"] == "satisfied" and states["order"] == "satisfied"
    assert permission["duties"][0]["timing"] == "after use"


@pytest.mark.parametrize(
    ("body", "reason", "failing"),
    [
        ({"purpose": "marketing"}, "purpose marketing is not granted", "purpose"),
        (
            {"order_id": POLYCELL_ORDER},
            f"order {POLYCELL_ORDER} is outside the agreement's scope",
            "order",
        ),
    ],
)
def test_denials_name_the_rule_and_constraint(
    space: Space, agreement_id: str, body: dict[str, Any], reason: str, failing: str
) -> None:
    request = {"purpose": QA, "order_id": CELLEX_ORDER, **body}
    report = ok(_explain(space, "cellex", agreement_id, **request))
    assert report["outcome"] == "deny" and reason in report["reason"]
    failed = [c for c in report["rules"][0]["constraints"] if c["state"] == "not satisfied"]
    assert [c["constraint"].split()[0] for c in failed] == [failing]


def test_prohibited_distribution_is_explained(space: Space, agreement_id: str) -> None:
    report = ok(_explain(space, "sunarc", agreement_id, action="distribute", purpose=QA))
    assert report["outcome"] == "deny"
    assert report["reason"] == "action distribute is prohibited"
    assert any(r["kind"] == "prohibition" and r["active"] for r in report["rules"])


def test_bad_explain_requests_are_client_errors(space: Space, agreement_id: str) -> None:
    assert _explain(space, "cellex", agreement_id, action="delete").status_code == 422
    assert _explain(space, "cellex", agreement_id, purpose="x" * 5000).status_code == 422
    assert _explain(space, "cellex", "no-such-agreement").status_code == 404


def test_agreement_in_dsp_jsonld_form(space: Space, agreement_id: str) -> None:
    from qdspace.policies.odrl.codec import parse_jsonld_policy
    from tests.unit.policies.test_odrl_jsonld import validate

    with space.client("sunarc") as oem:
        doc = ok(oem.get(f"/v1/contracts/agreements/{agreement_id}/odrl"))
    validate(doc, "Agreement")
    assert doc["@id"] == agreement_id and "timestamp" in doc
    parsed = parse_jsonld_policy(doc)
    assert parsed.assignee and parsed.target
