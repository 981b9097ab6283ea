"""Leaving the data space: the purge plan (pure), and its receipts on a real SQLite store.

The plan is a function of the agreements held as consumer and what the store reports
holding; these tests pin its invariants (one step per unanswered pair, none for an
answered one, agreements held as provider untouched) and then carry a plan out on a
real store: the rows and keys go, the receipt says why and verifies, the provider's
duty view shows it, a second purge finds nothing, and a sweep racing a purge for the
same duty sends one receipt, not two.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.exc import OperationalError

from qdspace.connector.agreement import (
    REASON_LEAVING,
    DeletionReceipt,
    SignedReceipt,
    deletion_digest,
    open_signed_receipt,
    receipt_from_bytes,
)
from qdspace.connector.contract_errors import (
    AgreementError,
    ContractDenied,
    KeyShreddedError,
    ReceiptSignatureError,
)
from qdspace.connector.contract_store import (
    ContractStore,
    IncomingRow,
    OutboxMessage,
    ensure_schema,
    received_row_table,
)
from qdspace.connector.contract_store.agreements import AgreementStore
from qdspace.connector.contract_store.data_keys import data_key_table
from qdspace.connector.negotiation import Role
from qdspace.connector.purge import (
    ConsumerAgreement,
    Holding,
    PurgeStep,
    agreements_to_end,
    plan_purge,
)
from qdspace.connector.retention_sweep import shred_and_sign, sweep
from qdspace.policies.canonical import canonical_json
from qdspace.policies.retention import DutyStatus

from . import test_contract_store
from .test_retention import C_KEY, T0, give_agreement, rows_of

A1 = ConsumerAgreement("agr-1", "cellex", "sunarc", terminated=False)
A2 = ConsumerAgreement("agr-2", "polycell", "sunarc", terminated=True)


# ------------------------------------------------------------------ the plan (pure)


def test_every_held_unanswered_pair_gets_one_step_and_answered_ones_none() -> None:
    holdings = [
        Holding("agr-1", "ORD-1", rows=4),
        Holding("agr-1", "ORD-1", key_live=True),  # the same pair, reported twice
        Holding("agr-1", "ORD-2", closed=True),  # closed, nothing received: still answered
        Holding("agr-1", "ORD-3", rows=2, receipted=True),  # answered by the sweep before
        Holding("agr-2", "ORD-9", key_live=True),
        Holding("agr-x", "ORD-1", rows=7),  # an agreement we provide: not ours to delete
    ]
    plan = plan_purge([A1, A2], holdings)
    assert plan.steps == (
        PurgeStep("agr-1", "ORD-1", "cellex", "sunarc"),
        PurgeStep("agr-1", "ORD-2", "cellex", "sunarc"),
        PurgeStep("agr-2", "ORD-9", "polycell", "sunarc"),
    )
    assert plan.answered == (("agr-1", "ORD-3"),)
    assert plan.terminate == ("agr-1",)  # agr-2 has ended already


def test_an_agreement_that_never_held_anything_is_answered_once_for_order_blank() -> None:
    plan = plan_purge([A1], [])
    assert plan.steps == (PurgeStep("agr-1", "", "cellex", "sunarc"),)
    answered = plan_purge([A1], [Holding("agr-1", "", receipted=True)])
    assert answered.steps == () and answered.answered == (("agr-1", ""),)
    # a pair that holds nothing now (a key destroyed, rows gone) but was never answered
    # still marks the agreement as touched: no blank step for it
    assert plan_purge([A1], [Holding("agr-1", "ORD-1")]).steps == ()


def test_a_purged_member_plans_nothing() -> None:
    ended = ConsumerAgreement("agr-1", "cellex", "sunarc", terminated=True)
    plan = plan_purge([ended], [Holding("agr-1", "ORD-1", rows=0, receipted=True)])
    assert plan.empty and agreements_to_end([ended]) == ()


pairs = st.tuples(st.sampled_from(["agr-1", "agr-2", "agr-x"]), st.sampled_from(["", "O1", "O2"]))
holding = st.builds(
    lambda p, rows, key, closed, answered: Holding(p[0], p[1], rows, key, closed, answered),
    pairs,
    st.integers(0, 3),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)


@given(st.lists(holding, max_size=12))
def test_plan_invariants(holdings: list[Holding]) -> None:
    plan = plan_purge([A1, A2], holdings)
    keys = [(s.agreement_id, s.order_id) for s in plan.steps]
    answered = {(h.agreement_id, h.order_id) for h in holdings if h.receipted}
    held = {
        (h.agreement_id, h.order_id)
        for h in holdings
        if h.holds_anything and h.agreement_id in ("agr-1", "agr-2")
    }
    assert len(keys) == len(set(keys))  # at most one receipt per pair
    assert not set(keys) & answered  # never a second receipt
    assert held - answered <= set(keys)  # nothing held is left behind
    assert all(a in ("agr-1", "agr-2") for a, _ in keys)  # only what we received
    for step in plan.steps:
        assert (step.provider_id, step.consumer_id) == (
            {"agr-1": "cellex", "agr-2": "polycell"}[step.agreement_id],
            "sunarc",
        )


# ----------------------------------------------------- the receipt's reason field


def _receipt(reason: str = "") -> DeletionReceipt:
    count, digest = deletion_digest([{"a": 1}])
    return DeletionReceipt("agr-1", "sunarc", count, digest, T0, "ORD-1", reason)


def test_a_reason_is_signed_and_a_receipt_without_one_keeps_its_old_bytes() -> None:
    plain = _receipt()
    assert b"reason" not in plain.canonical_bytes()  # what every sweep receipt always was
    leaving = _receipt(REASON_LEAVING)
    assert json.loads(leaving.canonical_bytes())["reason"] == REASON_LEAVING
    assert receipt_from_bytes(leaving.canonical_bytes()) == leaving
    assert leaving.receipt_id != plain.receipt_id
    signature = C_KEY.sign(b"qdspace.v1/deletion-receipt/consumer\x00" + plain.canonical_bytes())
    # the signature over the plain receipt does not cover one that adds a reason
    with pytest.raises(ReceiptSignatureError):
        open_signed_receipt(leaving.canonical_bytes(), signature.signature, C_KEY.verify_key)


def test_an_empty_or_oversized_reason_is_not_a_receipt() -> None:
    raw = json.loads(_receipt().canonical_bytes())
    with pytest.raises(AgreementError, match="canonical"):  # "" is spelled by leaving it out
        receipt_from_bytes(canonical_json({**raw, "reason": ""}))
    with pytest.raises(AgreementError, match="reason"):
        _receipt("x" * 201)
    with pytest.raises(AgreementError, match="keys"):
        receipt_from_bytes(canonical_json({**raw, "why": "x"}))


# ------------------------------------------------------ carried out on a real store


engine = test_contract_store.engine  # the same store on SQLite, and PostgreSQL when set


@pytest.fixture
def store(engine: Engine) -> ContractStore:
    return ContractStore(engine, b"k" * 32)


def _receive(
    store: ContractStore, agreement_id: str, order: str, count: int
) -> list[dict[str, object]]:
    rows = rows_of(order, count)
    incoming = [IncomingRow(i, order, canonical_json(r)) for i, r in enumerate(rows)]
    store.store_received_rows(agreement_id, f"tx-{agreement_id}-{order}", incoming, T0)
    return rows


def _outbox(signed: SignedReceipt, provider: str) -> list[OutboxMessage]:
    rid = signed.receipt.receipt_id
    return [OutboxMessage(provider, "notification", rid, f"receipt:{rid}", b"x")]


def _carry_out(store: ContractStore, now: datetime) -> list[SignedReceipt]:
    """What the runtime's purge does, without the node: end, plan, shred each step."""
    held = store.agreements(Role.CONSUMER)
    agreements = [
        ConsumerAgreement(
            s.agreement_id,
            s.signed.agreement.provider_id,
            s.signed.agreement.consumer_id,
            s.terminated_at is not None,
        )
        for s in held
    ]
    for agreement_id in agreements_to_end(agreements):
        store.terminate_agreement(agreement_id, "leaving", now)
    plan = plan_purge(agreements, store.holdings())
    issued = []
    for step in plan.steps:
        signed = shred_and_sign(
            store, step.agreement_id, step.order_id, C_KEY, now, _outbox, reason=REASON_LEAVING
        )
        assert signed is not None
        issued.append(signed)
    return issued


def test_purge_deletes_everything_received_and_answers_each_order(store: ContractStore) -> None:
    give_agreement(store, "agr-1", 180, Role.CONSUMER)
    give_agreement(store, "agr-2", 180, Role.CONSUMER)
    give_agreement(store, "agr-p", 180, Role.PROVIDER)  # we gave this one: untouched
    first = _receive(store, "agr-1", "ORD-1", 3)
    _receive(store, "agr-1", "ORD-2", 2)
    now = T0 + timedelta(days=2)  # long before any deadline
    issued = _carry_out(store, now)
    by_pair = {(s.receipt.agreement_id, s.receipt.order_id): s for s in issued}
    assert set(by_pair) == {("agr-1", "ORD-1"), ("agr-1", "ORD-2"), ("agr-2", "")}
    one = by_pair[("agr-1", "ORD-1")].receipt
    assert (one.row_count, one.content_sha256) == (3, deletion_digest(first)[1])
    assert by_pair[("agr-2", "")].receipt.row_count == 0
    for signed in issued:
        assert signed.receipt.reason == REASON_LEAVING and signed.receipt.deleted_at == now
        opened = open_signed_receipt(
            signed.receipt.canonical_bytes(), signed.signature, C_KEY.verify_key
        )
        assert opened == signed
    # nothing readable is left: no rows, no live key
    assert store.count_received() == 0
    with store.engine.connect() as connection:
        assert connection.execute(select(received_row_table)).all() == []
        keys = connection.execute(select(data_key_table)).all()
    assert keys and all(k.wrapped_key is None for k in keys)
    assert store.key_destroyed("agr-1", "ORD-1") and store.key_destroyed("agr-1", "ORD-2")
    # every agreement as consumer ended, the provider's one not
    assert all(not s.active for s in store.agreements(Role.CONSUMER))
    assert store.agreement("agr-p").active
    # each receipt, and only once, waits in the outbox for its provider
    messages = [m.message.message_id for m in store.due_messages(now)]
    assert sorted(messages) == sorted(f"receipt:{s.receipt.receipt_id}" for s in issued)
    # a second purge finds nothing to do
    assert _carry_out(store, now + timedelta(hours=1)) == []
    assert len(store.receipts()) == 3


def test_rows_arriving_after_the_purge_are_refused(store: ContractStore) -> None:
    give_agreement(store, "agr-1", 180, Role.CONSUMER)
    _receive(store, "agr-1", "ORD-1", 2)
    _carry_out(store, T0)
    with pytest.raises(ContractDenied, match="terminated"):
        _receive(store, "agr-1", "ORD-7", 1)  # a new order under the ended agreement
    with pytest.raises((ContractDenied, KeyShreddedError)):
        _receive(store, "agr-1", "ORD-1", 1)
    assert store.count_received() == 0


def test_a_termination_waits_for_a_delivery_that_read_the_agreement_live(
    store: ContractStore,
) -> None:
    """A batch holds its agreement row until it commits, so a purge that has terminated
    the agreement cannot miss rows of a batch still in flight (PostgreSQL; SQLite writes
    are serialised anyway)."""
    if store.engine.dialect.name != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite serialises its writers")
    give_agreement(store, "agr-1", 180, Role.CONSUMER)
    end = text("UPDATE contract_agreement SET terminated_at = now() WHERE agreement_id = 'agr-1'")
    with store.engine.connect() as delivering, store.engine.connect() as purging:
        with delivering.begin():
            AgreementStore(store.engine).agreement_in(delivering, "agr-1", hold=True)
            with pytest.raises(OperationalError, match="lock"), purging.begin():
                purging.execute(text("SET LOCAL lock_timeout = '200ms'"))
                purging.execute(end)
        with purging.begin():  # the delivery committed: the termination goes through
            purging.execute(end)
    assert not store.agreement("agr-1").active


def test_a_purge_racing_a_sweep_for_the_same_duty_sends_one_receipt(store: ContractStore) -> None:
    give_agreement(store, "agr-1", 180, Role.CONSUMER)
    _receive(store, "agr-1", "ORD-1", 2)
    store.record_order_closed("agr-1", "ORD-1", T0)
    late = T0 + timedelta(days=181)
    plan = plan_purge(
        [ConsumerAgreement("agr-1", "cellex", "sunarc", False)], store.holdings()
    )  # read before the sweep ran
    (swept,) = sweep(store, C_KEY, late, outbox=_outbox).receipts
    (step,) = plan.steps
    again = shred_and_sign(
        store, step.agreement_id, step.order_id, C_KEY, late, _outbox, reason=REASON_LEAVING
    )
    assert again is None  # the sweep answered first: nothing of the purge's attempt kept
    assert store.receipts() == [swept]
    assert [m.message.message_id for m in store.due_messages(late)] == [
        f"receipt:{swept.receipt.receipt_id}"
    ]


def test_the_provider_sees_an_early_receipt_as_the_duty_fulfilled(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'provider.db'}")
    ensure_schema(engine)
    provider = ContractStore(engine, b"p" * 32)
    give_agreement(provider, "agr-1", 180, Role.PROVIDER)
    give_agreement(provider, "agr-2", 180, Role.PROVIDER)
    now = T0 + timedelta(days=1)
    assert [d.status for d in provider.deletion_duties(now)] == [DutyStatus.PENDING] * 2
    count, digest = deletion_digest(rows_of("ORD-1", 3))
    receipt = DeletionReceipt("agr-1", "sunarc", count, digest, now, "ORD-1", REASON_LEAVING)
    signature = C_KEY.sign(b"qdspace.v1/deletion-receipt/consumer\x00" + receipt.canonical_bytes())
    provider.record_receipt(SignedReceipt(receipt, signature.signature))  # no closure yet
    duties = {(d.duty.agreement_id, d.duty.order_id): d for d in provider.deletion_duties(now)}
    assert set(duties) == {("agr-1", "ORD-1"), ("agr-2", "")}
    answered = duties[("agr-1", "ORD-1")]
    assert answered.status is DutyStatus.FULFILLED and answered.receipt == receipt
    assert duties[("agr-2", "")].status is DutyStatus.PENDING
    engine.dispose()
