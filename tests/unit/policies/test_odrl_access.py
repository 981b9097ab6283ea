"""Access policies on facts the node knows (an attested BPNL, membership), not claims."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from qdspace.policies.errors import BpnNotAttested, PolicyDenied
from qdspace.policies.odrl.access import CallerFacts, check_access
from qdspace.policies.odrl.codec import parse_jsonld_policy
from qdspace.policies.odrl.vocab import PolicyKind

BPN = "BPNL00000003CRHK"
AT = datetime(2026, 1, 1, tzinfo=UTC)


def _policy(*constraints: dict[str, Any], action: str = "access") -> Any:
    doc = {
        "@context": [
            "https://w3id.org/dspace/2025/1/odrl-profile.jsonld",
            "https://w3id.org/catenax/policy/context.jsonld",
            "https://qdspace.dev/ns/policy/context.jsonld",
        ],
        "@type": "Set",
        "@id": "urn:access:1",
        "permission": [{"action": action, "constraint": list(constraints)}],
    }
    return parse_jsonld_policy(doc, default_kind=PolicyKind.SET)


def _bpn(op: str = "isAnyOf", right: Any = (BPN,)) -> dict[str, Any]:
    return {"leftOperand": "BusinessPartnerNumber", "operator": op, "rightOperand": list(right)}


MEMBER = {"leftOperand": "Membership", "operator": "eq", "rightOperand": "active"}


def test_an_attested_bpn_grants_access() -> None:
    report = check_access(_policy(_bpn(), MEMBER), CallerFacts("m1", BPN), AT, "dataset x")
    assert report.permitted


def test_no_attested_bpn_is_a_clear_refusal() -> None:
    with pytest.raises(BpnNotAttested, match="attested none for m1"):
        check_access(_policy(_bpn()), CallerFacts("m1", None), AT, "dataset x")


def test_another_bpn_is_denied_not_unattested() -> None:
    with pytest.raises(PolicyDenied) as denied:
        check_access(_policy(_bpn()), CallerFacts("m1", "BPNL000000000001"), AT, "dataset x")
    assert not isinstance(denied.value, BpnNotAttested)


def test_membership_alone_and_use_covering_access() -> None:
    assert check_access(_policy(MEMBER), CallerFacts("m1", None), AT, "d").permitted
    assert check_access(_policy(MEMBER, action="use"), CallerFacts("m1", None), AT, "d").permitted
    with pytest.raises(PolicyDenied):  # read does not grant access
        check_access(_policy(MEMBER, action="read"), CallerFacts("m1", None), AT, "d")


def test_a_fact_the_node_has_no_register_of_refuses() -> None:
    framework = {"leftOperand": "FrameworkAgreement", "operator": "eq", "rightOperand": "Pcf:1.0"}
    with pytest.raises(PolicyDenied):
        check_access(_policy(framework), CallerFacts("m1", BPN), AT, "d")
