"""The deletion duties read in SQL: every page, order, filter and count is what building
every duty in Python gives, at any moment, on the boundaries of a deadline too (SQLite
and PostgreSQL)."""

from __future__ import annotations

import random
from collections import Counter
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine

from qdspace.connector.agreement import DeletionReceipt, sign_receipt
from qdspace.connector.contract_store import ContractStore, DutyReport
from qdspace.connector.negotiation import Role
from qdspace.policies.evaluate import order_in_scope
from qdspace.policies.retention import ATTENTION_ORDER, DutyStatus, deletion_duty

from .test_agreement_listing import KEK, KEYS, ORDERS, T0, _fill, _old_deletion_duties


@pytest.fixture
def store(contract_engine: Engine) -> ContractStore:
    return ContractStore(contract_engine, KEK)


def _receipt(store: ContractStore, agreement_id: str, order: str, deleted_at: datetime) -> None:
    terms = store.agreement(agreement_id).signed.agreement
    receipt = DeletionReceipt(
        agreement_id=agreement_id,
        consumer_id=terms.consumer_id,
        row_count=3,
        content_sha256="ab" * 32,
        deleted_at=deleted_at,
        order_id=order,
    )
    store.record_receipt(sign_receipt(receipt, KEYS[terms.consumer_id]))


def _given(store: ContractStore, seed: int) -> list[datetime]:
    """120 random agreements; orders closed, receipts on time, late, exactly at the
    deadline and before any closure. Returns the deadlines set."""
    rnd = random.Random(seed)
    every = _fill(store, 120, seed)
    given = [a for a in every if a.role is Role.PROVIDER and a.signed.complete]
    deadlines = []
    for held in rnd.sample(given, 2 * len(given) // 3):
        policy = held.signed.agreement.policy
        order = rnd.choice([o for o in ORDERS if order_in_scope(policy, o)])
        closed_at = T0 + timedelta(days=rnd.randrange(300))
        closure = store.record_order_closed(held.agreement_id, order, closed_at)
        if closure.deadline is None:
            continue
        deadlines.append(closure.deadline)
        pick = rnd.random()
        if pick < 0.2:  # on the deadline itself: fulfilled, not late
            _receipt(store, held.agreement_id, order, closure.deadline)
        elif pick < 0.6:
            _receipt(store, held.agreement_id, order, closed_at + timedelta(rnd.randrange(400)))
    unclosed = [a for a in given if not store.closures(a.agreement_id)]
    for held in rnd.sample(unclosed, min(4, len(unclosed))):  # answered before closing
        policy = held.signed.agreement.policy
        order = rnd.choice([o for o in ORDERS if order_in_scope(policy, o)])
        if deletion_duty(policy, None, order) is not None:
            _receipt(store, held.agreement_id, order, T0 + timedelta(days=5))
    return deadlines


def _attention_first(reports: list[DutyReport]) -> list[DutyReport]:
    """The attention order over the whole list, as the console sorted it in Python."""
    never = datetime.max.replace(tzinfo=T0.tzinfo)
    return sorted(
        reports, key=lambda d: (ATTENTION_ORDER.index(d.status), d.duty.deadline or never)
    )


@pytest.mark.parametrize("seed", [3, 4])
def test_duties_read_in_sql_are_those_every_agreement_gave(store: ContractStore, seed: int) -> None:
    deadlines = _given(store, seed)
    moments = [T0, T0 + timedelta(days=200), T0 + timedelta(days=700), *deadlines[:3]]
    for now in moments:  # a moment equal to a deadline: overdue from that instant
        whole = _old_deletion_duties(store, now)
        assert store.deletion_duties(now) == whole
        first = store.deletion_duties(now, attention_first=True)
        assert first == _attention_first(whole)
        pages = [
            store.deletion_duties(now, limit=7, offset=o, attention_first=True)
            for o in range(0, len(whole), 7)
        ]
        assert [d for page in pages for d in page] == first
        assert store.deletion_duties(now, limit=5, offset=3) == whole[3:8]
        counts = Counter(d.status for d in whole)
        assert store.count_duties(now) == {s: counts[s] for s in ATTENTION_ORDER}
        for status in DutyStatus:
            assert store.deletion_duties(now, status=status) == [
                d for d in whole if d.status is status
            ]
    statuses = {d.status for d in store.deletion_duties(T0 + timedelta(days=200))}
    assert len(statuses) >= 4  # the random fill reaches (nearly) every status
    answered_early = [
        d for d in store.deletion_duties(T0) if d.receipt is not None and d.duty.deadline is None
    ]
    assert answered_early


def test_a_deadline_is_overdue_from_its_instant_and_a_receipt_on_it_is_on_time(
    store: ContractStore,
) -> None:
    _fill(store, 40, 11)
    given = [
        a
        for a in store.agreements(Role.PROVIDER)
        if a.signed.complete and deletion_duty(a.signed.agreement.policy, None) is not None
    ]
    first, second = given[:2]
    orders = []
    for held in (first, second):
        policy = held.signed.agreement.policy
        order = next(o for o in ORDERS if order_in_scope(policy, o))
        orders.append(order)
        closure = store.record_order_closed(held.agreement_id, order, T0)
        assert closure.deadline is not None
    deadline = store.closure(first.agreement_id, orders[0]).deadline  # type: ignore[union-attr]
    assert deadline is not None

    def status(now: datetime, agreement_id: str) -> DutyStatus:
        (found,) = [
            d
            for d in store.deletion_duties(now)
            if d.duty.agreement_id == agreement_id and d.duty.order_id
        ]
        return found.status

    assert status(deadline - timedelta(microseconds=1), first.agreement_id) is DutyStatus.DUE
    assert status(deadline, first.agreement_id) is DutyStatus.OVERDUE
    _receipt(store, first.agreement_id, orders[0], deadline)
    assert status(deadline + timedelta(days=9), first.agreement_id) is DutyStatus.FULFILLED
    late = store.closure(second.agreement_id, orders[1]).deadline  # type: ignore[union-attr]
    assert late is not None
    _receipt(store, second.agreement_id, orders[1], late + timedelta(microseconds=1))
    assert status(late, second.agreement_id) is DutyStatus.FULFILLED_LATE
