"""The DSP JSON-LD policy form: schema-valid output, every input form, hostile input."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema.validators import validator_for
from referencing import Registry, Resource

from qdspace.policies.errors import PolicySyntaxError
from qdspace.policies.evaluate import Request, evaluate
from qdspace.policies.model import Action, OfferTerms, make_offer, to_agreement
from qdspace.policies.odrl.bridge import to_context, to_odrl
from qdspace.policies.odrl.codec import parse_jsonld_policy, policy_to_expanded, policy_to_jsonld
from qdspace.policies.odrl.evaluate import Context, evaluate_policy
from qdspace.policies.odrl.jsonld import expand
from qdspace.policies.odrl.model import OdrlPolicy
from qdspace.policies.odrl.node_form import from_odrl
from qdspace.policies.odrl.vocab import PolicyKind

SCHEMAS = Path(__file__).parent / "dsp_2025_1"
T0 = datetime(2026, 5, 1, tzinfo=UTC)


def _registry() -> Registry:
    resources = []
    for path in SCHEMAS.rglob("*.json"):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    return Registry().with_resources(resources)


REGISTRY = _registry()
CONTRACT = "https://w3id.org/dspace/2025/1/negotiation/contract-schema.json"


def validate(instance: Any, definition: str) -> None:
    schema = {"$ref": f"{CONTRACT}#/definitions/{definition}"}
    root = REGISTRY.contents(CONTRACT)
    validator = validator_for(root)(schema, registry=REGISTRY)
    validator.validate(instance)


DEG = "DataExchangeGovernance:1.0"


def offer_policy(framework: str | None = None) -> Any:
    terms = OfferTerms(
        framework=framework,
        purposes=frozenset({"quality-assurance"}),
        orders=frozenset({"PO-1", "PO-2"}),
        fields=frozenset({"serial", "verdict"}),
        not_before=T0,
        not_after=T0 + timedelta(days=365),
        retention_days=90,
    )
    return make_offer("urn:uuid:offer-1", "did:web:provider", "urn:asset:cells", terms)


def agreement() -> OdrlPolicy:
    legacy = to_agreement(offer_policy(), "urn:uuid:agreement-1", "did:web:consumer")
    odrl = to_odrl(legacy)
    return OdrlPolicy(**{**odrl.__dict__, "timestamp": T0})


def test_catalog_offer_validates_against_the_dsp_schema() -> None:
    doc = policy_to_jsonld(to_odrl(offer_policy()), catalog=True)
    validate(doc, "Offer")
    assert "target" not in doc and doc["@id"] == "urn:uuid:offer-1"
    assert "uid" not in doc


def test_message_offer_validates() -> None:
    validate(policy_to_jsonld(to_odrl(offer_policy())), "MessageOffer")


def test_agreement_validates_with_timestamp_and_parties() -> None:
    doc = policy_to_jsonld(agreement())
    validate(doc, "Agreement")
    assert doc["timestamp"] == "2026-05-01T00:00:00Z"
    assert doc["assignee"] == "did:web:consumer" and doc["target"] == "urn:asset:cells"


def test_catena_x_policy_validates_and_round_trips() -> None:
    from tests.unit.policies.test_odrl_evaluate import cx_offer

    parsed = parse_jsonld_policy(cx_offer())
    doc = policy_to_jsonld(parsed, catalog=True)
    validate(doc, "Offer")
    assert parse_jsonld_policy(doc) == parsed


def test_a_framework_requirement_reads_back_as_the_catena_x_term() -> None:
    """Published over DSP, the node's framework constraint is Catena-X's
    ``FrameworkAgreement``: a Catena-X connector finds the term it expects, and the node
    reads the term back (also as another connector spells it) into its own form."""
    policy = offer_policy(DEG)
    doc = policy_to_jsonld(to_odrl(policy), catalog=True)
    validate(doc, "Offer")
    iris = json.dumps(expand(doc, None))
    assert "https://w3id.org/catenax/policy/FrameworkAgreement" in iris
    assert from_odrl(parse_jsonld_policy(doc), target="urn:asset:cells") == policy
    theirs = json.loads(
        json.dumps(doc).replace('"FrameworkAgreement"', '"cx-policy:FrameworkAgreement"')
    )
    theirs["@context"] = [*doc["@context"], "https://w3id.org/catenax/policy/context.jsonld"]
    assert from_odrl(parse_jsonld_policy(theirs), target="urn:asset:cells") == policy


def test_typed_right_operands() -> None:
    doc = policy_to_jsonld(to_odrl(offer_policy()))
    constraints = doc["permission"][0]["constraint"]
    times = [c["rightOperand"] for c in constraints if c["leftOperand"] == "dateTime"]
    assert times[0] == {"@value": "2026-05-01T00:00:00Z", "@type": "xsd:dateTime"}
    retention = doc["permission"][0]["duty"][0]["constraint"][0]["rightOperand"]
    assert retention == {"@value": "P90D", "@type": "xsd:duration"}
    assert doc["profile"] == "https://qdspace.dev/ns/policy"


@pytest.mark.parametrize("policy", [to_odrl(offer_policy()), agreement()])
def test_every_form_parses_to_the_same_policy(policy: OdrlPolicy) -> None:
    compacted = policy_to_jsonld(policy)
    assert parse_jsonld_policy(compacted) == policy
    # expanded JSON-LD, as a processor would hand it over
    assert parse_jsonld_policy(expand(compacted, None)[0]) == policy
    assert parse_jsonld_policy(policy_to_expanded(policy)) == policy
    # embedded in a message: no context of its own
    embedded = policy_to_jsonld(policy, embedded=True)
    assert "@context" not in embedded
    assert parse_jsonld_policy(embedded) == policy
    # as JSON text
    assert parse_jsonld_policy(json.dumps(compacted)) == policy


def test_catalog_offer_without_type_reads_as_offer() -> None:
    doc = policy_to_jsonld(to_odrl(offer_policy()), catalog=True, embedded=True)
    del doc["@type"]
    parsed = parse_jsonld_policy(doc, default_kind=PolicyKind.OFFER)
    assert parsed.kind is PolicyKind.OFFER


def test_full_iris_without_context() -> None:
    odrl = "http://www.w3.org/ns/odrl/2/"
    doc = {
        "@context": {},
        "@id": "urn:p",
        "@type": odrl + "Set",
        odrl + "permission": [
            {
                odrl + "action": {"@id": odrl + "use"},
                odrl + "constraint": [
                    {
                        odrl + "leftOperand": {"@id": odrl + "purpose"},
                        odrl + "operator": {"@id": odrl + "eq"},
                        odrl + "rightOperand": "quality-assurance",
                    }
                ],
            }
        ],
    }
    parsed = parse_jsonld_policy(doc)
    report = evaluate_policy(parsed, Context("read", {"purpose": "quality-assurance"}))
    assert report.permitted


def test_remote_context_is_never_fetched() -> None:
    doc = {"@context": "https://evil.example/context.jsonld", "@id": "urn:p", "@type": "Set"}
    with pytest.raises(PolicySyntaxError, match="not known to this node"):
        parse_jsonld_policy(doc)


# ------------------------------------------------------------- hostile policies


def _set(*constraints: Any, **extra: Any) -> dict[str, Any]:
    return {
        "@id": "urn:p",
        "@type": "Set",
        "permission": [{"action": "use", "constraint": list(constraints)}],
        **extra,
    }


def _with_context(inline: dict[str, Any]) -> dict[str, Any]:
    """A policy with an inline context of its own beside the ODRL profile."""
    profile = "https://w3id.org/dspace/2025/1/odrl-profile.jsonld"
    return _set(_atom(), **{"@context": [profile, inline]})


def _atom(left: str = "purpose", op: str = "eq", right: Any = "a") -> dict[str, Any]:
    return {"leftOperand": left, "operator": op, "rightOperand": right}


def _nest(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = _atom()
    for _ in range(depth):
        node = {"and": [node]}
    return node


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_set(_nest(9)), "nested deeper than 8"),
        (_set(_nest(40)), "nested deeper than 32"),
        (_set(_atom(right=[str(i) for i in range(2000)], op="isAnyOf")), "more than 1024"),
        (_set(*[_atom() for _ in range(300)]), "more than 256 constraints"),
        (_set(_atom(op="odrl:matches")), "unknown operator"),
        (_set(_atom(op="isGreaterThanButNotReally")), "unknown operator"),
        (_set(_atom(left="odrl:spatial")), "unknown leftOperand"),
        (_set(_atom(left="dateTime", op="lt", right="soon")), "not an ISO 8601"),
        (_set(_atom(left="purpose", op="lt", right="a")), "operator lt is not defined"),
        (_set(_atom(right=True)), "boolean"),
        (_set(_atom(right=1.5)), "floating-point"),
        (_set(_atom(right={"@value": "x", "@type": "xsd:integer"})), "cannot be typed"),
        (_set(_atom(op="eq", right=["a", "b"])), "takes one value"),
        (_set({"and": []}), "needs items"),
        (_set({"and": [_atom()], "or": [_atom()]}), "exactly one operator"),
        (_set(_atom(right="x" * 5000)), "1 to 1024 characters"),
        ({"@id": "urn:p", "@type": "Set"}, "a permission or a prohibition"),
        ({"@type": "Set", "permission": [{"action": "use"}]}, "@id"),
        (_set(_atom(), permission_extra=1), "not understood"),
        (
            {"@id": "urn:p", "permission": [{"action": "use", "refinement": []}], "@type": "Set"},
            "not understood",
        ),
        ({"@id": "urn:p", "@type": "Set", "permission": [{"action": "fly"}]}, "unknown action"),
        (_set(_atom(), conflict="maybe"), "unknown conflict"),
        (_with_context({"T": {"@id": "urn:t", "@context": {"a": "urn:a"}}}), "scoped context"),
        (_with_context({f"a{i}": f"urn:a{i}" for i in range(65)}), "more than 64 term defin"),
        (
            _set(
                {
                    "leftOperand": "retention",
                    "operator": "lteq",
                    "rightOperand": {"@value": "P99999999Y", "@type": "xsd:duration"},
                }
            ),
            "xsd:duration",
        ),
    ],
)
def test_hostile_policies_are_refused_with_a_clear_error(doc: Any, message: str) -> None:
    with pytest.raises(PolicySyntaxError, match=message):
        parse_jsonld_policy(doc)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"@id": "urn:p", "x": NaN}', "NaN is not valid JSON"),
        ('{"@id": "urn:p", "x": Infinity}', "Infinity is not valid JSON"),
        ('{"@id": "a", "@id": "b"}', "duplicate key"),
        ("[" * 200_000 + "]" * 200_000, "larger than"),
        ("[" * 5000 + "]" * 5000, "nested deeper"),
        ('{"@id": "urn:p", "x": 1e999}', "NaN and infinity"),
    ],
)
def test_hostile_json_text(text: str, message: str) -> None:
    with pytest.raises(PolicySyntaxError, match=message):
        parse_jsonld_policy(text)


def test_huge_integer_operand_is_refused() -> None:
    from qdspace.policies.odrl.literals import parse_literal
    from qdspace.policies.odrl.vocab import ValueKind

    with pytest.raises(PolicySyntaxError, match=r"out of range|not an xsd:integer"):
        parse_literal(str(2**80), ValueKind.INTEGER, None, "$")
    with pytest.raises(PolicySyntaxError, match="finite"):
        parse_literal("NaN", ValueKind.DECIMAL, None, "$")
    assert not math.isnan(float(parse_literal("1.5", ValueKind.DECIMAL, None, "$")))


# ------------------------------------------------- property: unevaluable never permits

_FACTS = st.fixed_dictionaries(
    {},
    optional={
        "purpose": st.one_of(st.sampled_from(["a", "b"]), st.integers(), st.none()),
        "bpn": st.one_of(st.sampled_from([BPN := "BPNL1", "BPNL2"]), st.floats(allow_nan=True)),
        "dateTime": st.one_of(st.just(T0), st.text(max_size=3)),
        "frameworkAgreement": st.one_of(st.frozensets(st.sampled_from(["q", "p"])), st.just("q")),
    },
)
_ATOMS = st.sampled_from(
    [
        _atom(),
        _atom(op="isAnyOf", right=["a", "b"]),
        _atom(left="BusinessPartnerNumber", right=BPN),
        _atom(left="dateTime", op="lt", right="2027-01-01T00:00:00Z"),
        _atom(left="FrameworkAgreement", op="hasPart", right="q"),
        _atom(op="isA", right="a"),
    ]
)
_CONSTRAINTS = st.recursive(
    _ATOMS,
    lambda inner: st.builds(
        lambda op, items: {op: items},
        st.sampled_from(["and", "or", "xone", "andSequence"]),
        st.lists(inner, min_size=1, max_size=3),
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(
    constraints=st.lists(_CONSTRAINTS, min_size=1, max_size=3),
    prohibit=st.lists(_CONSTRAINTS, max_size=2),
    conflict=st.sampled_from(["perm", "prohibit", "invalid"]),
    facts=_FACTS,
)
def test_an_unevaluable_constraint_never_permits(
    constraints: list[Any], prohibit: list[Any], conflict: str, facts: dict[str, Any]
) -> None:
    doc = _set(*constraints, conflict=conflict)
    if prohibit:
        doc["prohibition"] = [{"action": "read", "constraint": prohibit}]
    try:
        policy = parse_jsonld_policy(doc)
    except PolicySyntaxError:
        return  # refused outright (too deep): never permitted either
    report = evaluate_policy(
        policy, Context("read", {k: v for k, v in facts.items() if v is not None})
    )
    unevaluable = any(rule.state.value == "unevaluable" for rule in report.rules)
    if unevaluable:
        assert not report.permitted
        assert report.outcome.value == "indeterminate"


# ------------------------------------- the bridge: same decisions as the node's evaluator


@settings(max_examples=150, deadline=None)
@given(
    purpose=st.sampled_from(["quality-assurance", "model-training", None]),
    order=st.sampled_from(["PO-1", "PO-3", None]),
    action=st.sampled_from([Action.READ, Action.STREAM, Action.DISTRIBUTE, Action.USE]),
    days=st.integers(-30, 400),
    framework=st.sampled_from([None, DEG]),
    held=st.sampled_from([None, frozenset(), frozenset({DEG}), frozenset({"Pcf:1.0", DEG})]),
)
def test_bridge_decides_like_the_node_evaluator(
    purpose: str | None,
    order: str | None,
    action: Action,
    days: int,
    framework: str | None,
    held: frozenset[str] | None,
) -> None:
    legacy = offer_policy(framework)
    request = Request(
        action,
        T0 + timedelta(days=days),
        frozenset({"serial", "verdict"}),
        purpose,
        order,
        frameworks=held,
    )
    old = evaluate(legacy, request)
    new = evaluate_policy(to_odrl(legacy), to_context(request))
    assert new.permitted == old.allowed, (old.reason, new.reason)
