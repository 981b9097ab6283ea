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
