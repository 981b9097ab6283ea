"""Policy evaluation and enforcement: exact denial reasons and the no-leak property."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from qdspace.policies.errors import PolicyDenied
from qdspace.policies.evaluate import InvalidRequestError, Request, enforce_rows, evaluate
from qdspace.policies.model import (
    Action,
    Constraint,
    Duty,
    LeftOperand,
    OfferTerms,
    Operator,
    Permission,
    Policy,
    PolicyType,
    Prohibition,
    make_offer,
    to_agreement,
)

T0 = datetime(2026, 5, 1, tzinfo=UTC)
ASSET_FIELDS = frozenset({"order_id", "record_id", "verdict", "score", "operator_id", "station"})
GRANTED = frozenset({"order_id", "record_id", "verdict", "score"})


def agreement(**terms: Any) -> Policy:
    base: dict[str, Any] = {
        "purposes": frozenset({"quality-assurance"}),
        "orders": frozenset({"ORD-1"}),
        "fields": GRANTED,
        "not_after": T0 + timedelta(days=365),
    }
    base.update(terms)
    offer = make_offer("offer-1", "cellex-mono", "asset-1", OfferTerms(**base))
    return to_agreement(offer, "agr-1", "sunarc")


def request(**changes: Any) -> Request:
    base = Request(
        action=Action.READ,
        at=T0,
        asset_fields=ASSET_FIELDS,
        purpose="quality-assurance",
        order_id="ORD-1",
    )
    return replace(base, **changes)


ROWS = [
    {"order_id": "ORD-1", "record_id": 1, "verdict": "ok", "operator_id": "op-7", "station": "s1"},
    {"order_id": "ORD-9", "record_id": 2, "verdict": "defect", "operator_id": "op-8"},
    {"order_id": "ORD-1", "record_id": 3, "verdict": "defect", "score": 0.93},
    {"record_id": 4, "verdict": "ok"},
]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"order_id": "ORD-9"}, "order ORD-9 is outside the agreement's scope (ORD-1)"),
        ({"fields": frozenset({"verdict", "operator_id"})}, "field operator_id is not granted"),
        ({"fields": frozenset({"colour"})}, "field colour is not offered by this asset"),
        ({"fields": frozenset()}, "request names no fields"),
        ({"purpose": "marketing"}, "purpose marketing is not granted"),
        ({"purpose": None}, "request states no purpose (granted: quality-assurance)"),
        ({"at": T0 + timedelta(days=365)}, "agreement expired at 2027-05-01T00:00:00Z"),
        ({"terminated": True}, "agreement terminated"),
        ({"action": Action.DISTRIBUTE}, "action distribute is prohibited"),
    ],
)
def test_denials_say_exactly_why_and_release_nothing(changes: dict[str, Any], reason: str) -> None:
    policy = agreement()
    decision = evaluate(policy, request(**changes))
    assert not decision.allowed
    assert decision.reason == reason
    assert decision.allowed_fields == frozenset()
    assert list(enforce_rows(policy, request(**changes), ROWS)) == []
    with pytest.raises(PolicyDenied, match="^" + reason.replace("(", r"\(").replace(")", r"\)")):
        decision.require()


def test_retention_deadline_ends_all_use() -> None:
    policy = agreement(retention_days=180)
    closed = T0 + timedelta(days=10)
    inside = request(at=closed + timedelta(days=179), order_closed_at=closed)
    assert evaluate(policy, inside).allowed
    after = request(at=closed + timedelta(days=180), order_closed_at=closed)
    decision = evaluate(policy, after)
    assert not decision.allowed
    assert decision.reason.startswith("agreement expired at 2026-11-07T00:00:00Z: retention of 180")


def test_not_valid_before_lower_bound() -> None:
    policy = agreement(not_before=T0 + timedelta(days=1))
    assert (
        evaluate(policy, request()).reason == "agreement is not valid before 2026-05-02T00:00:00Z"
    )
    assert evaluate(policy, request(at=T0 + timedelta(days=1))).allowed


def test_allowed_request_gets_only_granted_fields_of_its_order() -> None:
    policy = agreement()
    decision = evaluate(policy, request())
    assert decision.allowed and decision.reason == "granted"
    assert decision.allowed_fields == GRANTED
    rows = list(enforce_rows(policy, request(), ROWS))
    assert rows == [
        {"order_id": "ORD-1", "record_id": 1, "verdict": "ok"},
        {"order_id": "ORD-1", "record_id": 3, "verdict": "defect", "score": 0.93},
    ]
    narrow = list(enforce_rows(policy, request(fields=frozenset({"verdict"})), ROWS))
    assert narrow == [{"verdict": "ok"}, {"verdict": "defect"}]


def test_stream_without_order_checks_every_row() -> None:
    policy = agreement(orders=frozenset({"ORD-1", "ORD-2"}))
    rows = [*ROWS, {"order_id": "ORD-2", "record_id": 5}, {"order_id": 7, "record_id": 6}]
    live = request(action=Action.STREAM, order_id=None)
    assert evaluate(policy, live).allowed
    out = list(enforce_rows(policy, live, rows))
    assert [r["record_id"] for r in out] == [1, 3, 5]


def test_use_covers_read_and_stream_but_read_does_not_cover_stream() -> None:
    read_only = Policy(
        uid="agr-2",
        type=PolicyType.AGREEMENT,
        assigner="p",
        target="asset-1",
        assignee="c",
        permissions=(Permission(Action.READ),),
    )
    assert evaluate(read_only, request()).allowed
    denied = evaluate(read_only, request(action=Action.STREAM))
    assert denied.reason == "action stream is not granted (granted: read)"
    assert evaluate(agreement(), request(action=Action.STREAM)).allowed


def test_field_denylist_and_multiple_permissions() -> None:
    deny_operator = Constraint(LeftOperand.FIELDS, Operator.IS_NONE_OF, frozenset({"operator_id"}))
    qa = Constraint(LeftOperand.PURPOSE, Operator.EQ, "quality-assurance")
    audit = Constraint(LeftOperand.PURPOSE, Operator.EQ, "audit")
    only_verdict = Constraint(LeftOperand.FIELDS, Operator.EQ, frozenset({"verdict"}))
    policy = Policy(
        uid="agr-3",
        type=PolicyType.AGREEMENT,
        assigner="p",
        target="asset-1",
        assignee="c",
        permissions=(
            Permission(Action.READ, (qa, deny_operator)),
            Permission(Action.READ, (audit, only_verdict)),
        ),
    )
    assert evaluate(policy, request()).allowed_fields == ASSET_FIELDS - {"operator_id"}
    assert evaluate(policy, request(purpose="audit")).allowed_fields == frozenset({"verdict"})
    assert evaluate(policy, request(purpose="sales")).reason == "purpose sales is not granted"


def test_prohibition_with_constraints_applies_only_when_they_hold() -> None:
    no_marketing = Prohibition(
        Action.USE, (Constraint(LeftOperand.PURPOSE, Operator.EQ, "marketing"),)
    )
    policy = Policy(
        uid="agr-4",
        type=PolicyType.AGREEMENT,
        assigner="p",
        target="asset-1",
        assignee="c",
        permissions=(Permission(Action.USE),),
        prohibitions=(no_marketing,),
    )
    assert evaluate(policy, request()).allowed
    assert evaluate(policy, request(purpose="marketing")).reason == "action read is prohibited"
    # Unknown purpose: the prohibition might apply, so it does.
    assert not evaluate(policy, request(purpose=None)).allowed


def test_requests_with_naive_times_or_duty_actions_are_refused() -> None:
    with pytest.raises(InvalidRequestError):
        request(at=datetime(2026, 1, 1))
    with pytest.raises(InvalidRequestError):
        request(action=Action.DELETE)


# ------------------------------------------------------------ property tests
#
# Policies are generated from plain parameters (an oracle model); whether a
# request may see a row is then decided from those parameters with Python set
# logic, independently of the evaluator.

PURPOSES = ["qa", "audit", "marketing"]
ORDERS = ["ORD-1", "ORD-2", "ORD-3"]
FIELDS = ["order_id", "a", "b", "c", "operator_id"]


@dataclass(frozen=True)
class Model:
    purpose_op: Operator
    purposes: frozenset[str]
    order_op: Operator | None
    orders: frozenset[str]
    fields_allow: bool | None
    fields: frozenset[str]
    time_op: Operator | None
    bound: datetime
    prohibit_distribution: bool
    action: Action

    def text_ok(self, op: Operator, values: frozenset[str], value: str) -> bool:
        if op is Operator.EQ:
            return len(values) == 1 and value in values
        if op is Operator.NEQ:
            return len(values) == 1 and value not in values
        return (value not in values) if op is Operator.IS_NONE_OF else (value in values)

    def constraint(self, left: LeftOperand, op: Operator, values: frozenset[str]) -> Constraint:
        single = op in (Operator.EQ, Operator.NEQ) and left is not LeftOperand.FIELDS
        right: Any = next(iter(values)) if single else values
        return Constraint(left, op, right)

    def policy(self) -> Policy:
        cs = [self.constraint(LeftOperand.PURPOSE, self.purpose_op, self.purposes)]
        if self.order_op is not None:
            cs.append(self.constraint(LeftOperand.ORDER, self.order_op, self.orders))
        if self.fields_allow is not None:
            op = Operator.IS_PART_OF if self.fields_allow else Operator.IS_NONE_OF
            cs.append(Constraint(LeftOperand.FIELDS, op, self.fields))
        if self.time_op is not None:
            cs.append(Constraint(LeftOperand.DATETIME, self.time_op, self.bound))
        prohibitions = (Prohibition(Action.DISTRIBUTE),) if self.prohibit_distribution else ()
        return Policy(
            uid="agr",
            type=PolicyType.AGREEMENT,
            assigner="p",
            target="t",
            assignee="c",
            permissions=(Permission(self.action, tuple(cs), (Duty(),)),),
            prohibitions=prohibitions,
        )

    def granted_fields(self, asset: frozenset[str]) -> frozenset[str]:
        if self.fields_allow is None:
            return asset
        return asset & self.fields if self.fields_allow else asset - self.fields

    def allows(self, req: Request) -> bool:
        covers = self.action in (Action.USE, req.action)
        if req.terminated or not covers or req.purpose is None:
            return False
        if self.prohibit_distribution and req.action is Action.DISTRIBUTE:
            return False
        if not self.text_ok(self.purpose_op, self.purposes, req.purpose):
            return False
        if (
            self.order_op is not None
            and req.order_id is not None
            and not self.text_ok(self.order_op, self.orders, req.order_id)
        ):
            return False
        if self.time_op is not None:
            ok = {
                Operator.LT: req.at < self.bound,
                Operator.LTEQ: req.at <= self.bound,
                Operator.GT: req.at > self.bound,
                Operator.GTEQ: req.at >= self.bound,
            }[self.time_op]
            if not ok:
                return False
        if req.order_closed_at is not None and req.at >= req.order_closed_at + timedelta(180):
            return False
        granted = self.granted_fields(req.asset_fields)
        wanted = granted if req.fields is None else req.fields
        return bool(wanted) and wanted <= granted


text_ops = st.sampled_from(
    [Operator.EQ, Operator.NEQ, Operator.IS_ANY_OF, Operator.IS_NONE_OF, Operator.IS_PART_OF]
)
value_sets = st.frozensets(st.sampled_from(ORDERS), min_size=1, max_size=3)
times = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2026, 1, 3), timezones=st.just(UTC)
)


@st.composite
def models(draw: st.DrawFn) -> Model:
    purpose_op = draw(text_ops)
    order_op = draw(st.none() | text_ops)
    single = (Operator.EQ, Operator.NEQ)
    return Model(
        purpose_op=purpose_op,
        purposes=draw(
            st.frozensets(
                st.sampled_from(PURPOSES), min_size=1, max_size=1 if purpose_op in single else 3
            )
        ),
        order_op=order_op,
        orders=draw(
            st.frozensets(
                st.sampled_from(ORDERS), min_size=1, max_size=1 if order_op in single else 3
            )
        ),
        fields_allow=draw(st.none() | st.booleans()),
        fields=draw(st.frozensets(st.sampled_from(FIELDS), max_size=5)),
        time_op=draw(
            st.none() | st.sampled_from([Operator.LT, Operator.LTEQ, Operator.GT, Operator.GTEQ])
        ),
        bound=draw(times),
        prohibit_distribution=draw(st.booleans()),
        action=draw(st.sampled_from([Action.USE, Action.READ, Action.STREAM])),
    )


requests = st.builds(
    Request,
    action=st.sampled_from([Action.USE, Action.READ, Action.STREAM, Action.DISTRIBUTE]),
    at=times,
    asset_fields=st.frozensets(st.sampled_from(FIELDS), min_size=1),
    purpose=st.sampled_from([None, "qa", "qa", "audit", "marketing"]),
    order_id=st.none() | st.sampled_from(ORDERS),
    fields=st.one_of(
        st.none(), st.none(), st.frozensets(st.sampled_from([*FIELDS, "secret"]), max_size=4)
    ),
    terminated=st.sampled_from([False, False, False, True]),
    order_closed_at=st.one_of(
        st.none(),
        st.none(),
        st.datetimes(
            min_value=datetime(2025, 6, 1), max_value=datetime(2026, 1, 2), timezones=st.just(UTC)
        ),
    ),
)
rows = st.lists(
    st.fixed_dictionaries(
        {"order_id": st.sampled_from(ORDERS) | st.integers()},
        optional={name: st.integers() for name in [*FIELDS[1:], "secret", "extra"]},
    )
    | st.dictionaries(st.sampled_from([*FIELDS, "secret"]), st.integers()),
    max_size=12,
)


@settings(max_examples=400)
@given(models(), requests, rows)
def test_enforce_rows_never_releases_what_the_policy_does_not_allow(
    model: Model, req: Request, data: list[dict[str, Any]]
) -> None:
    policy = model.policy()
    decision = evaluate(policy, req)
    assert decision.allowed == model.allows(req), decision.reason
    out = list(enforce_rows(policy, req, data))
    event(f"allowed={decision.allowed} per-row={req.order_id is None and bool(model.order_op)}")
    if not decision.allowed:
        assert out == []  # a denial releases zero rows
        return
    granted = model.granted_fields(req.asset_fields)
    wanted = granted if req.fields is None else req.fields
    expected = []
    for row in data:
        order = row.get("order_id")
        if req.order_id is not None and order != req.order_id:
            continue
        if (
            req.order_id is None
            and model.order_op is not None
            and (
                not isinstance(order, str) or not model.text_ok(model.order_op, model.orders, order)
            )
        ):
            continue
        expected.append({k: v for k, v in row.items() if k in wanted})
    assert out == expected
    for row in out:
        assert set(row) <= granted
        assert "secret" not in row and "extra" not in row
    # Allowed and at least one row of the requested order: something is released.
    if req.order_id is not None and any(r.get("order_id") == req.order_id for r in data):
        assert len(out) >= 1


@pytest.mark.parametrize(
    ("held", "allowed"),
    [
        (None, False),  # unknown (a peer outside any directory)
        (frozenset(), False),
        (frozenset({"Pcf:1.0"}), False),
        (frozenset({"Pcf:1.0", "DataExchangeGovernance:1.0"}), True),
    ],
)
def test_a_framework_agreement_is_required_at_every_release(
    held: frozenset[str] | None, allowed: bool
) -> None:
    policy = agreement(framework="DataExchangeGovernance:1.0")
    decision = evaluate(policy, request(frameworks=held))
    assert decision.allowed is allowed, decision.reason
    if not allowed:
        assert "framework agreement DataExchangeGovernance:1.0" in decision.reason
        assert ("attests none" in decision.reason) is (not held)
    # without the requirement, what the consumer holds does not matter
    assert evaluate(agreement(), request(frameworks=held)).allowed
    either = Constraint(LeftOperand.FRAMEWORK, Operator.IS_ANY_OF, frozenset({"A:1", "Pcf:1.0"}))
    anyof = replace(policy, permissions=(Permission(Action.USE, (either,)),))
    assert evaluate(anyof, request(frameworks=held)).allowed is bool(held)
