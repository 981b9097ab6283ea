"""Access policies on facts the node knows (an attested BPNL, attested framework agreements,
membership), not claims."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from qdspace.policies.errors import BpnNotAttested, FrameworkNotAttested, PolicyDenied
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


def _framework(op: str = "eq", right: Any = "Pcf:1.0") -> dict[str, Any]:
    return {"leftOperand": "FrameworkAgreement", "operator": op, "rightOperand": right}


def test_a_caller_no_directory_lists_has_no_frameworks_to_show() -> None:
    """No register speaks for it (a static peer): unknown, so refused, and said why."""
    with pytest.raises(FrameworkNotAttested, match=r"attests none for m1") as refused:
        check_access(_policy(_framework()), CallerFacts("m1", BPN), AT, "d")
    assert "FrameworkAgreement" in str(refused.value)


def test_an_attested_framework_grants_access() -> None:
    facts = CallerFacts("m1", None, frameworks=frozenset({"Pcf:1.0", "Dcm:1.0"}))
    assert check_access(_policy(_framework()), facts, AT, "d").permitted
    anyof = _framework("isAnyOf", ["Pcf:1.0", "Other:2.0"])
    assert check_access(_policy(anyof, MEMBER), facts, AT, "d").permitted


def test_none_attested_is_a_clear_refusal_another_is_a_plain_one() -> None:
    with pytest.raises(FrameworkNotAttested, match="attests none for m1"):
        check_access(_policy(_framework()), CallerFacts("m1", BPN, frameworks=frozenset()), AT, "d")
    other = CallerFacts("m1", BPN, frameworks=frozenset({"Dcm:1.0"}))
    with pytest.raises(PolicyDenied) as denied:
        check_access(_policy(_framework()), other, AT, "d")
    assert not isinstance(denied.value, FrameworkNotAttested)


def test_a_framework_prohibited_counts_against_the_empty_set_too() -> None:
    """``neq`` on the register's word: a member attested nothing has not signed it."""
    neq = _framework("neq", "Pcf:1.0")
    assert check_access(_policy(neq), CallerFacts("m1", None, frameworks=frozenset()), AT, "d")
    signed = CallerFacts("m1", None, frameworks=frozenset({"Pcf:1.0"}))
    with pytest.raises(PolicyDenied):
        check_access(_policy(neq), signed, AT, "d")
