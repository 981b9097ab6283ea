"""The compiled row gate: order scope per row, per-order retention, and `order_in_scope`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from qdspace.policies.evaluate import Request, RowGate, enforce_rows, order_in_scope
from qdspace.policies.model import Action, OfferTerms, Policy, make_offer, to_agreement

T0 = datetime(2026, 5, 1, tzinfo=UTC)
FIELDS = frozenset({"order_id", "verdict", "operator_id"})


def agreement(orders: frozenset[str] | None) -> Policy:
    terms = OfferTerms(
        purposes=frozenset({"qa"}),
        orders=orders,
        fields=frozenset({"order_id", "verdict"}),
        retention_days=10,
    )
    return to_agreement(make_offer("o", "p", "a", terms), "agr", "c")


def stream_request(at: datetime = T0) -> Request:
    return Request(Action.STREAM, at, FIELDS, purpose="qa")


ROWS = [
    {"order_id": "A", "verdict": "ok", "operator_id": "op-1"},
    {"order_id": "B", "verdict": "ng", "operator_id": "op-2"},
    {"order_id": None, "verdict": "ok"},
    {"order_id": "C", "verdict": "ok"},
]


def test_order_in_scope() -> None:
    policy = agreement(frozenset({"A", "B"}))
    assert order_in_scope(policy, "A") and not order_in_scope(policy, "C")
    assert order_in_scope(agreement(None), "anything")


def test_stream_rows_are_checked_per_order_and_per_order_deadline() -> None:
    policy = agreement(frozenset({"A", "B"}))
    gate = RowGate(policy, stream_request())
    assert [gate(r) for r in ROWS] == [
        {"order_id": "A", "verdict": "ok"},
        {"order_id": "B", "verdict": "ng"},
        None,
        None,
    ]
    # Order A closed 11 days ago: its retention (10 days) is over; B is still open.
    closed = {"A": T0 - timedelta(days=11)}
    out = list(enforce_rows(policy, stream_request(), ROWS, closed_orders=closed))
    assert out == [{"order_id": "B", "verdict": "ng"}]


def test_without_order_scope_a_closed_order_still_expires() -> None:
    policy = agreement(None)
    closed = {"C": T0 - timedelta(days=10)}
    out = list(enforce_rows(policy, stream_request(), ROWS, closed_orders=closed))
    assert [row["order_id"] for row in out] == ["A", "B", None]


def test_a_denied_gate_releases_nothing() -> None:
    policy = agreement(frozenset({"A"}))
    gate = RowGate(policy, Request(Action.STREAM, T0, FIELDS, purpose="marketing"))
    assert not gate.decision.allowed
    assert [gate(r) for r in ROWS] == [None] * 4


def _scoped(permissions: list[list[tuple[str, object]]]) -> Policy:
    """An agreement of several permissions, each with these order constraints."""
    from qdspace.policies.model import Constraint, LeftOperand, Operator, Permission

    base = agreement(None)
    rules = tuple(
        Permission(
            Action.USE,
            tuple(Constraint(LeftOperand.ORDER, Operator(op), right) for op, right in rule),  # type: ignore[arg-type]
        )
        for rule in permissions
    )
    return Policy(base.uid, base.type, base.assigner, base.target, rules, assignee=base.assignee)


def test_single_order_names_the_one_order_a_scope_can_hold_else_none() -> None:
    """Over random order scopes (several permissions, eq / isAnyOf / isPartOf / neq /
    isNoneOf): when `single_order` names an order, no other order is in scope; it names
    the order of the common contract (one order's data)."""
    import random

    from qdspace.policies.evaluate import single_order

    assert single_order(agreement(frozenset({"A"}))) == "A"
    assert single_order(agreement(frozenset({"A", "B"}))) is None
    assert single_order(agreement(None)) is None
    orders = ["A", "B", "C", "D"]
    rnd = random.Random(11)
    named = 0
    for _ in range(2000):
        permissions = []
        for _ in range(rnd.randint(1, 3)):
            rule: list[tuple[str, object]] = []
            for _ in range(rnd.randint(0, 3)):
                op = rnd.choice(["eq", "neq", "isAnyOf", "isNoneOf", "isPartOf"])
                if op in ("eq", "neq"):
                    rule.append((op, rnd.choice(orders)))
                else:
                    rule.append((op, frozenset(rnd.sample(orders, rnd.randint(1, 3)))))
            permissions.append(rule)
        policy = _scoped(permissions)
        one = single_order(policy)
        in_scope = [o for o in [*orders, "Z"] if order_in_scope(policy, o)]
        if one is not None:
            named += 1
            assert set(in_scope) <= {one}, (permissions, one)
        elif len(in_scope) == 1:
            # none named although one order is in scope: only where a neq / isNoneOf
            # narrowed a wider set (the store then reads and checks it: still correct)
            assert any(op in ("neq", "isNoneOf") for rule in permissions for op, _ in rule)
    assert named > 200
