"""ODRL JSON parsing and canonical serialisation."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qdspace.policies.canonical import canonical_json, format_datetime
from qdspace.policies.codec import parse_policy, policy_to_dict, policy_to_json
from qdspace.policies.errors import PolicyError, PolicySyntaxError
from qdspace.policies.model import (
    ALLOWED_OPERATORS,
    CONTEXT,
    FRAMEWORK_NAME,
    FRAMEWORK_TERM,
    PERMISSION_OPERANDS,
    PROHIBITION_OPERANDS,
    SET_OPERATORS,
    Action,
    Constraint,
    Duty,
    LeftOperand,
    OfferTerms,
    Permission,
    Policy,
    PolicyType,
    Prohibition,
    make_offer,
)

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=8)
instants = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5))]),
)


@st.composite
def constraints(draw: st.DrawFn, operands: frozenset[LeftOperand]) -> Constraint:
    left = draw(st.sampled_from(sorted(operands)))
    operator = draw(st.sampled_from(sorted(ALLOWED_OPERATORS[left])))
    right: Any
    if left is LeftOperand.DATETIME:
        right = draw(instants)
    elif left is LeftOperand.RETENTION:
        right = draw(st.integers(0, 3650))
    elif left is LeftOperand.FRAMEWORK:
        one = st.from_regex(FRAMEWORK_NAME, fullmatch=True)
        right = draw(
            st.frozensets(one, min_size=1, max_size=3) if operator in SET_OPERATORS else one
        )
    elif left is LeftOperand.FIELDS or operator in SET_OPERATORS:
        right = draw(st.frozensets(names, max_size=4))
    else:
        right = draw(names)
    return Constraint(left, operator, right)


duties = st.builds(
    Duty,
    action=st.just(Action.DELETE),
    constraints=st.lists(constraints(frozenset({LeftOperand.RETENTION})), max_size=1).map(tuple),
    receipt=st.booleans(),
)
rule_actions = st.sampled_from([Action.USE, Action.READ, Action.STREAM, Action.DISTRIBUTE])
permissions = st.builds(
    Permission,
    action=rule_actions,
    constraints=st.lists(constraints(PERMISSION_OPERANDS), max_size=5).map(tuple),
    duties=st.lists(duties, max_size=2).map(tuple),
)
prohibitions = st.builds(
    Prohibition,
    action=rule_actions,
    constraints=st.lists(constraints(PROHIBITION_OPERANDS), max_size=3).map(tuple),
)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    kind = draw(st.sampled_from(list(PolicyType)))
    assignee = draw(names) if kind is PolicyType.AGREEMENT else draw(st.none() | names)
    return Policy(
        uid=draw(names),
        type=kind,
        assigner=draw(names),
        target=draw(names),
        permissions=tuple(draw(st.lists(permissions, min_size=1, max_size=3))),
        prohibitions=tuple(draw(st.lists(prohibitions, max_size=2))),
        obligations=tuple(draw(st.lists(duties, max_size=2))),
        assignee=assignee,
    )


@given(policies())
def test_round_trip_is_exact(policy: Policy) -> None:
    text = policy_to_json(policy)
    parsed = parse_policy(text)
    assert parsed == policy
    assert policy_to_json(parsed) == text


@given(policies())
def test_serialisation_is_canonical(policy: Policy) -> None:
    text = policy_to_json(policy)
    decoded = json.loads(text)
    assert (
        text
        == json.dumps(decoded, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )
    # Whitespace, key order and list order of a peer's document do not change the result.
    pretty = json.dumps(decoded, indent=3)
    assert policy_to_json(parse_policy(pretty)) == text


def _offer_dict() -> dict[str, Any]:
    offer = make_offer(
        "offer-1",
        "cellex-mono",
        "asset-1",
        OfferTerms(purposes=frozenset({"quality-assurance"}), orders=frozenset({"ORD-1"})),
    )
    return policy_to_dict(offer)


def test_equivalent_spellings_normalise() -> None:
    raw = _offer_dict()
    raw["permission"][0]["constraint"][0]["rightOperand"] = ["quality-assurance"] * 3
    raw["permission"][0]["constraint"].append(
        {"leftOperand": "dateTime", "operator": "lt", "rightOperand": "2027-01-01T02:00:00+02:00"}
    )
    raw["obligation"] = []
    policy = parse_policy(json.dumps(raw))
    out = policy_to_dict(policy)
    assert out["permission"][0]["constraint"][0]["rightOperand"] == ["quality-assurance"]
    assert out["permission"][0]["constraint"][2]["rightOperand"] == "2027-01-01T00:00:00Z"
    assert "obligation" not in out


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [
        (
            lambda d: d["permission"][0]["constraint"][1].update(leftOperand="colour"),
            "$.permission[0].constraint[1].leftOperand",
            "unknown leftOperand 'colour'",
        ),
        (
            lambda d: d["permission"][0]["constraint"][0].update(operator="like"),
            "$.permission[0].constraint[0].operator",
            "unknown operator 'like'",
        ),
        (
            lambda d: d["permission"][0]["constraint"][0].update(operator="gt"),
            "$.permission[0].constraint[0].operator",
            "not allowed for purpose",
        ),
        (
            lambda d: d["permission"][0]["duty"][0]["constraint"][0].update(rightOperand="180"),
            "$.permission[0].duty[0].constraint[0].rightOperand",
            "whole number of days",
        ),
        (
            lambda d: d["permission"][0]["duty"][0]["constraint"][0].update(rightOperand=-1),
            "$.permission[0].duty[0].constraint[0].rightOperand",
            "0 to 36,500",
        ),
        (  # parsed, then the agreement's save ended in an OverflowError
            lambda d: d["permission"][0]["duty"][0]["constraint"][0].update(rightOperand=10**30),
            "$.permission[0].duty[0].constraint[0].rightOperand",
            "0 to 36,500",
        ),
        (
            lambda d: d["permission"][0]["constraint"][0].update(rightOperand="quality"),
            "$.permission[0].constraint[0].rightOperand",
            "expected a list",
        ),
        (
            lambda d: d["permission"][0]["constraint"].append(
                {"leftOperand": "retention", "operator": "lteq", "rightOperand": 3}
            ),
            "$.permission[0].constraint[2].leftOperand",
            "not allowed in a permission",
        ),
        (
            lambda d: d["prohibition"][0].update(
                constraint=[
                    {"leftOperand": "fields", "operator": "isPartOf", "rightOperand": ["a"]}
                ]
            ),
            "$.prohibition[0].constraint[0].leftOperand",
            "not allowed in a prohibition",
        ),
        (
            lambda d: d["permission"][0].update(action="sell"),
            "$.permission[0].action",
            "unknown action 'sell'",
        ),
        (
            lambda d: d["permission"][0].update(action="delete"),
            "$.permission[0].action",
            "not a rule action",
        ),
        (
            lambda d: d["permission"][0]["duty"][0].update(action="read"),
            "$.permission[0].duty[0].action",
            "not supported",
        ),
        (
            lambda d: d["permission"][0]["duty"][0].update(receipt="yes"),
            "$.permission[0].duty[0].receipt",
            "true or false",
        ),
        (
            lambda d: d["permission"][0].update(refinement=[]),
            "$.permission[0].refinement",
            "unknown key",
        ),
        (lambda d: d.update(profile="x"), "$.profile", "unknown key"),
        (lambda d: d.pop("target"), "$.target", "missing"),
        (lambda d: d.update({"@type": "Set"}), "$.@type", "unknown policy type 'Set'"),
        (
            lambda d: d.update({"@context": "http://www.w3.org/ns/odrl.jsonld"}),
            "$.@context",
            "expected",
        ),
        (lambda d: d.update(permission=[]), "$.permission", "at least one permission"),
        (lambda d: d.update(permission={}), "$.permission", "expected a list"),
        (lambda d: d.update({"@type": "Agreement"}), "$.assignee", "names its assignee"),
        (lambda d: d.update(uid=""), "$.uid", "non-empty"),
        (
            lambda d: d["permission"].append(
                {
                    "action": "read",
                    "constraint": [
                        {"leftOperand": "dateTime", "operator": "lt", "rightOperand": "2027-01-01"}
                    ],
                }
            ),
            "$.permission[1].constraint[0].rightOperand",
            "no time zone",
        ),
        (
            lambda d: d["permission"].append(
                {
                    "action": "read",
                    "constraint": [
                        {"leftOperand": "dateTime", "operator": "lt", "rightOperand": "soon"}
                    ],
                }
            ),
            "$.permission[1].constraint[0].rightOperand",
            "not an ISO 8601",
        ),
        (
            lambda d: d["permission"].append(
                {
                    "action": "read",
                    "constraint": [
                        {
                            "leftOperand": "dateTime",
                            "operator": "eq",
                            "rightOperand": "2027-01-01T00:00Z",
                        }
                    ],
                }
            ),
            "$.permission[1].constraint[0].operator",
            "not allowed for dateTime",
        ),
        (
            lambda d: d["permission"][0]["duty"][0]["constraint"].append(
                {"leftOperand": "retention", "operator": "lteq", "rightOperand": 3}
            ),
            "$.permission[0].duty[0].constraint",
            "one retention",
        ),
    ],
)
def test_strict_parser_names_the_path(mutate: Any, path: str, fragment: str) -> None:
    raw = _offer_dict()
    mutate(raw)
    with pytest.raises(PolicySyntaxError) as info:
        parse_policy(json.dumps(raw))
    assert info.value.path == path
    assert fragment in str(info.value)
    assert str(info.value).startswith(path)


@pytest.mark.parametrize(
    "text",
    [b"{", b"[]", b'{"uid": 1', b"\xff\xfe", b'{"a": NaN}', b"null"],
)
def test_malformed_json_is_a_policy_error(text: bytes) -> None:
    with pytest.raises(PolicySyntaxError) as info:
        parse_policy(text)
    assert info.value.path == "$"


def test_duplicate_keys_are_refused() -> None:
    text = policy_to_json(parse_policy(_offer_dict())).decode()
    doubled = text.replace('"uid":', '"uid":"other","uid":', 1)
    with pytest.raises(PolicySyntaxError, match="duplicate key 'uid'"):
        parse_policy(doubled)


def test_the_framework_term_is_in_the_context_of_a_policy_that_uses_it_only() -> None:
    plain = make_offer("o1", "cellex", "inspections", OfferTerms(purposes=frozenset({"qa"})))
    bound = make_offer(
        "o1", "cellex", "inspections", OfferTerms(purposes=frozenset({"qa"}), framework="Deg:1.0")
    )
    # a policy without the term keeps its bytes (and its signatures) as before the term
    assert policy_to_dict(plain)["@context"] == [CONTEXT[0], dict(CONTEXT[1])]
    with_term = policy_to_dict(bound)
    assert with_term["@context"][1][FRAMEWORK_TERM[0]] == FRAMEWORK_TERM[1]
    assert with_term["permission"][0]["constraint"][-1] == {
        "leftOperand": "FrameworkAgreement",
        "operator": "eq",
        "rightOperand": "Deg:1.0",
    }
    assert parse_policy(policy_to_json(bound)) == bound
    # the term used without its definition, or defined and not used, reads two ways
    missing = policy_to_dict(bound)
    missing["@context"] = [CONTEXT[0], dict(CONTEXT[1])]
    with pytest.raises(PolicySyntaxError, match=r"\$\.@context"):
        parse_policy(missing)
    extra = policy_to_dict(plain)
    extra["@context"][1][FRAMEWORK_TERM[0]] = FRAMEWORK_TERM[1]
    with pytest.raises(PolicySyntaxError, match=r"\$\.@context"):
        parse_policy(extra)


@pytest.mark.parametrize("right", ["", "has space", "x" * 65, ["Deg:1.0", "-bad"], []])
def test_a_framework_constraint_names_frameworks(right: Any) -> None:
    raw = policy_to_dict(
        make_offer("o1", "c", "t", OfferTerms(purposes=frozenset({"qa"}), framework="Deg:1.0"))
    )
    constraint = raw["permission"][0]["constraint"][-1]
    constraint.update(rightOperand=right, operator="isAnyOf" if isinstance(right, list) else "eq")
    with pytest.raises(PolicySyntaxError, match=r"framework agreement names|non-empty") as refused:
        parse_policy(raw)
    assert refused.value.path == "$.permission[0].constraint[1].rightOperand"


def test_policy_errors_share_one_base() -> None:
    assert issubclass(PolicySyntaxError, PolicyError)
    assert issubclass(PolicySyntaxError, ValueError)


def test_canonical_json_refuses_what_has_no_single_form() -> None:
    with pytest.raises(PolicyError):
        canonical_json({"t": datetime(2026, 1, 1)})
    with pytest.raises(PolicyError):
        canonical_json({"x": float("nan")})
    with pytest.raises(PolicyError):
        canonical_json({1: "a"})
    assert (
        canonical_json({"b": 1, "a": [True, None, "é"]}) == '{"a":[true,null,"é"],"b":1}'.encode()
    )
    stamp = datetime(2026, 3, 1, 12, 0, 0, 5, tzinfo=timezone(timedelta(hours=1)))
    assert format_datetime(stamp) == "2026-03-01T11:00:00.000005Z"
