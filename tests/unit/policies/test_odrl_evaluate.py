"""ODRL 2.2 evaluation: logical operators, operators, conflicts, duties, typed operands, CX."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from qdspace.policies.errors import PolicySyntaxError
from qdspace.policies.odrl.codec import parse_jsonld_policy
from qdspace.policies.odrl.evaluate import Context, evaluate_policy
from qdspace.policies.odrl.literals import Duration
from qdspace.policies.odrl.report import Outcome, State

T0 = datetime(2026, 5, 1, tzinfo=UTC)
BPN = "BPNL00000003CRHK"


def atom(left: str, op: str, right: Any) -> dict[str, Any]:
    return {"leftOperand": left, "operator": op, "rightOperand": right}


def policy(
    permission: list[dict[str, Any]] | None = None,
    prohibition: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {"@id": "urn:policy:1", "@type": "Set", **extra}
    if permission is not None:
        doc["permission"] = permission
    if prohibition is not None:
        doc["prohibition"] = prohibition
    return doc


def use(*constraints: dict[str, Any], action: str = "use", **more: Any) -> dict[str, Any]:
    return {"action": action, "constraint": list(constraints), **more}


def run(doc: dict[str, Any], action: str = "read", **facts: Any) -> Any:
    fulfilled = facts.pop("fulfilled", frozenset())
    facts.setdefault("dateTime", T0)
    return evaluate_policy(parse_jsonld_policy(doc), Context(action, facts, fulfilled))


# ------------------------------------------------------------ logical constraints


def test_and_needs_every_item() -> None:
    doc = policy(
        [
            use(
                {
                    "and": [
                        atom("purpose", "eq", "quality-assurance"),
                        atom("BusinessPartnerNumber", "eq", BPN),
                    ]
                }
            )
        ]
    )
    assert run(doc, purpose="quality-assurance", bpn=BPN).permitted
    report = run(doc, purpose="quality-assurance", bpn="BPNL000000000000")
    assert report.outcome is Outcome.DENY
    logical = report.rules[0].constraints[0]
    assert logical.state is State.FAILS
    assert [item.state for item in logical.items] == [State.HOLDS, State.FAILS]
    assert "bpn is BPNL000000000000" in report.reason


def test_or_needs_one_item() -> None:
    doc = policy([use({"or": [atom("purpose", "eq", "a"), atom("purpose", "eq", "b")]})])
    assert run(doc, purpose="b").permitted
    assert not run(doc, purpose="c").permitted


def test_xone_needs_exactly_one_item() -> None:
    items = [atom("purpose", "isAnyOf", ["a", "b"]), atom("purpose", "eq", "b")]
    doc = policy([use({"xone": items})])
    assert run(doc, purpose="a").permitted
    report = run(doc, purpose="b")  # both hold
    assert not report.permitted
    assert report.rules[0].constraints[0].state is State.FAILS


def test_and_sequence_stops_at_the_first_failure() -> None:
    items = [atom("purpose", "eq", "a"), atom("BusinessPartnerNumber", "eq", BPN)]
    doc = policy([use({"andSequence": items})])
    assert run(doc, purpose="a", bpn=BPN).permitted
    report = run(doc, purpose="x", bpn=BPN)
    states = [item.state for item in report.rules[0].constraints[0].items]
    assert states == [State.FAILS, State.SKIPPED]


def test_nested_logical_constraints() -> None:
    inner = {"or": [atom("purpose", "eq", "a"), atom("purpose", "eq", "b")]}
    doc = policy([use({"and": [inner, atom("Membership", "eq", "active")]})])
    assert run(doc, purpose="a", membership="active").permitted
    assert not run(doc, purpose="a", membership="inactive").permitted


def test_missing_fact_is_unknown_and_not_permitted() -> None:
    report = run(policy([use(atom("purpose", "eq", "a"))]))
    assert not report.permitted
    assert report.rules[0].constraints[0].state is State.UNKNOWN
    assert report.reason == "request states no purpose"


# ------------------------------------------------------------------- operators


@pytest.mark.parametrize(
    ("op", "right", "fact", "holds"),
    [
        ("eq", "a", "a", True),
        ("eq", "a", "b", False),
        ("neq", "a", "b", True),
        ("neq", "a", "a", False),
        ("isAnyOf", ["a", "b"], "b", True),
        ("isAnyOf", ["a", "b"], "c", False),
        ("isNoneOf", ["a", "b"], "c", True),
        ("isNoneOf", ["a", "b"], "a", False),
        ("isPartOf", ["a", "b"], "a", True),
        ("isPartOf", ["a", "b"], "z", False),
        ("isA", "quality-assurance", "failure-analysis", True),
        ("isA", "quality-assurance", "cx.quality.base:1", True),
        ("isA", "quality-assurance", "model-training", False),
        ("isA", "failure-analysis", "quality-assurance", False),
    ],
)
def test_text_operators(op: str, right: Any, fact: str, holds: bool) -> None:
    assert run(policy([use(atom("purpose", op, right))]), purpose=fact).permitted is holds


@pytest.mark.parametrize(
    ("op", "right", "fact", "holds"),
    [
        ("hasPart", "quality:1.0", {"quality:1.0", "pcf:1.0"}, True),
        ("hasPart", "traceability:1.0", {"quality:1.0"}, False),
        ("isAllOf", ["quality:1.0", "pcf:1.0"], {"quality:1.0", "pcf:1.0", "x"}, True),
        ("isAllOf", ["quality:1.0", "pcf:1.0"], {"quality:1.0"}, False),
        ("isAnyOf", ["quality:1.0", "pcf:1.0"], {"pcf:1.0"}, True),
        ("isNoneOf", ["pcf:1.0"], {"quality:1.0"}, True),
        ("isPartOf", ["quality:1.0", "pcf:1.0"], {"quality:1.0"}, True),
        ("isPartOf", ["quality:1.0"], {"quality:1.0", "pcf:1.0"}, False),
        ("eq", "quality:1.0", {"quality:1.0", "pcf:1.0"}, True),
        ("neq", "quality:1.0", {"pcf:1.0"}, True),
    ],
)
def test_set_operators_on_framework_agreements(
    op: str, right: Any, fact: set[str], holds: bool
) -> None:
    doc = policy([use(atom("FrameworkAgreement", op, right))])
    assert run(doc, frameworkAgreement=frozenset(fact)).permitted is holds


@pytest.mark.parametrize(
    ("op", "at", "holds"),
    [
        ("lt", "2026-06-01T00:00:00Z", True),
        ("lt", "2026-05-01T00:00:00Z", False),
        ("lteq", "2026-05-01T00:00:00Z", True),
        ("gt", "2026-04-30T23:59:59Z", True),
        ("gt", "2026-05-01T00:00:00Z", False),
        ("gteq", "2026-05-01T00:00:00Z", True),
        ("eq", "2026-05-01T02:00:00+02:00", True),
        ("neq", "2026-05-01T00:00:00Z", False),
    ],
)
def test_datetime_operators_on_typed_literals(op: str, at: str, holds: bool) -> None:
    right = {"@value": at, "@type": "xsd:dateTime"}
    assert run(policy([use(atom("dateTime", op, right))])).permitted is holds


def test_untyped_datetime_is_read_as_datetime() -> None:
    assert run(policy([use(atom("dateTime", "lt", "2027-01-01T00:00:00Z"))])).permitted


# ------------------------------------------------------------------- conflicts


def _conflicting(strategy: str | None) -> dict[str, Any]:
    extra = {} if strategy is None else {"conflict": strategy}
    return policy(
        [use(atom("purpose", "eq", "a"))],
        [{"action": "read", "constraint": [atom("BusinessPartnerNumber", "eq", BPN)]}],
        **extra,
    )


def test_conflict_perm_permits() -> None:
    report = run(_conflicting("perm"), purpose="a", bpn=BPN)
    assert report.outcome is Outcome.PERMIT
    assert "conflict perm" in report.reason


def test_conflict_prohibit_denies() -> None:
    report = run(_conflicting("prohibit"), purpose="a", bpn=BPN)
    assert report.outcome is Outcome.DENY
    assert report.reason == "action read is prohibited (prohibition[0])"


@pytest.mark.parametrize("strategy", ["invalid", None])
def test_conflict_invalid_voids_the_policy_and_is_the_default(strategy: str | None) -> None:
    report = run(_conflicting(strategy), purpose="a", bpn=BPN)
    assert report.outcome is Outcome.INVALID
    assert not report.permitted
    assert report.conflict == "invalid"


def test_no_conflict_when_the_prohibition_does_not_apply() -> None:
    report = run(_conflicting("invalid"), purpose="a", bpn="BPNL000000000001")
    assert report.outcome is Outcome.PERMIT


def test_prohibition_with_unknown_facts_applies() -> None:
    report = run(_conflicting("prohibit"), purpose="a")  # no bpn known
    assert not report.permitted
    assert report.rules[1].active


def test_prohibition_only_policy() -> None:
    doc = policy(None, [{"action": "distribute"}])
    report = run(doc, action="distribute")
    assert report.outcome is Outcome.DENY
    assert "prohibited" in report.reason
    report = run(doc, action="read")
    assert report.outcome is Outcome.DENY
    assert report.reason == "no permission grants read"
    assert not report.rules[0].relevant


# ----------------------------------------------------------------------- duties


def test_precondition_duty_must_be_fulfilled_before_use() -> None:
    doc = policy([use(atom("purpose", "eq", "a"), duty=[{"action": "compensate"}])])
    report = run(doc, purpose="a")
    assert not report.permitted
    assert report.rules[0].active and not report.rules[0].satisfied
    assert report.rules[0].duties[0].timing == "before use"
    assert report.reason == "compensate must be fulfilled before use"
    assert run(doc, purpose="a", fulfilled=frozenset({"compensate"})).permitted


def test_delete_duty_is_an_obligation_after_use_with_a_duration() -> None:
    retention = atom("retention", "lteq", {"@value": "P30D", "@type": "xsd:duration"})
    doc = policy(
        [use(atom("purpose", "eq", "a"), duty=[{"action": "delete", "constraint": [retention]}])],
        obligation=[{"action": "delete", "constraint": [retention]}],
    )
    parsed = parse_jsonld_policy(doc)
    duty = parsed.permissions[0].duties[0]
    assert duty.after_use
    right = duty.constraints[0].right  # type: ignore[union-attr]
    assert right == (Duration.of_days(30),)
    report = run(doc, purpose="a")
    assert report.permitted
    assert report.rules[0].duties[0].timing == "after use"
    assert report.obligations[0].state == "pending"


def test_duration_literal_forms() -> None:
    retention = atom("retention", "lteq", {"@value": "P1Y2M3DT4H5M6S", "@type": "xsd:duration"})
    doc = policy(
        [use(atom("purpose", "eq", "a"), duty=[{"action": "delete", "constraint": [retention]}])]
    )
    duty = parse_jsonld_policy(doc).permissions[0].duties[0]
    assert str(duty.constraints[0].right[0]) == "P1Y2M3DT4H5M6S"  # type: ignore[union-attr]


def test_incomparable_durations_are_unevaluable() -> None:
    assert not Duration(1, 0).comparable(Duration(0, 86400))


# ------------------------------------------------------------------ Catena-X


def cx_offer() -> dict[str, Any]:
    """A typical Catena-X usage policy, as an EDC writes it (prefixed names)."""
    return {
        "@context": [
            "https://w3id.org/dspace/2025/1/context.jsonld",
            "https://w3id.org/dspace/2025/1/odrl-profile.jsonld",
            {"cx-policy": "https://w3id.org/catenax/2025/9/policy/"},
        ],
        "@id": "urn:uuid:offer-cx",
        "@type": "Offer",
        "permission": [
            {
                "action": "use",
                "constraint": [
                    {
                        "and": [
                            atom(
                                "cx-policy:FrameworkAgreement", "eq", "DataExchangeGovernance:1.0"
                            ),
                            atom("cx-policy:UsagePurpose", "eq", "cx.quality.base:1"),
                            atom("cx-policy:Membership", "eq", "active"),
                            atom("cx-policy:BusinessPartnerNumber", "isAnyOf", [BPN]),
                            atom("cx-policy:ContractReference", "eq", "frame-2026-001"),
                        ]
                    }
                ],
            }
        ],
    }


def cx_facts(**changes: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "frameworkAgreement": frozenset({"DataExchangeGovernance:1.0"}),
        "purpose": "cx.quality.base:1",
        "membership": "active",
        "bpn": BPN,
        "contractReference": frozenset({"frame-2026-001"}),
    }
    facts.update(changes)
    return facts


def test_catena_x_policy_permits_the_right_member() -> None:
    assert run(cx_offer(), **cx_facts()).permitted


@pytest.mark.parametrize(
    ("fact", "value", "why"),
    [
        ("frameworkAgreement", frozenset({"pcf:1.0"}), "frameworkAgreement is [pcf:1.0]"),
        ("purpose", "cx.core.industrycore:1", "purpose is cx.core.industrycore:1"),
        ("membership", "inactive", "membership is inactive"),
        ("bpn", "BPNL000000000001", "bpn is BPNL000000000001"),
        ("contractReference", frozenset(), "contractReference is []"),
    ],
)
def test_each_catena_x_term_is_enforced(fact: str, value: Any, why: str) -> None:
    report = run(cx_offer(), **cx_facts(**{fact: value}))
    assert not report.permitted
    assert report.reason == why


def test_catena_x_access_action() -> None:
    doc = policy([use(atom("BusinessPartnerNumber", "eq", BPN), action="access")])
    assert run(doc, action="access", bpn=BPN).permitted
    assert not run(doc, action="read", bpn=BPN).permitted  # access does not grant use
    assert run(policy([use(atom("purpose", "eq", "a"))]), action="access", purpose="a").permitted


def test_unknown_catena_x_term_is_refused() -> None:
    doc = cx_offer()
    doc["permission"][0]["constraint"][0]["and"].append(
        atom("cx-policy:AffiliatesRegion", "eq", "cx.region.europe:1")
    )
    with pytest.raises(PolicySyntaxError, match="unknown leftOperand"):
        parse_jsonld_policy(doc)


def test_fact_of_the_wrong_type_is_unevaluable_and_denied() -> None:
    report = run(policy([use(atom("purpose", "eq", "a"))]), purpose=5)
    assert report.outcome is Outcome.INDETERMINATE
    assert "cannot be evaluated" in report.reason


def test_report_lines_and_dict() -> None:
    report = run(cx_offer(), **cx_facts(bpn="BPNL000000000001"))
    text = "\n".join(report.lines())
    assert "BusinessPartnerNumber isAnyOf" in text and "not satisfied" in text
    as_dict = report.to_dict()
    assert as_dict["outcome"] == "deny"
    assert as_dict["rules"][0]["constraints"][0]["items"][3]["state"] == "not satisfied"


def test_cli_prints_the_same_lines_as_the_report() -> None:
    from qdspace.node.cli.agreement import report_lines

    report = run(cx_offer(), **cx_facts(bpn="BPNL000000000001"))
    assert report_lines(report.to_dict()) == report.lines()
