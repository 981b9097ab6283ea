"""The contract store on a real SQLite file (and PostgreSQL when QDSPACE_TEST_PG_URL is set)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from nacl.signing import SigningKey
from sqlalchemy import Engine, create_engine, inspect, select, text

from qdspace.connector.agreement import (
    DeletionReceipt,
    SignedAgreement,
    countersign,
    deletion_digest_of_bytes,
    sign_agreement,
    sign_receipt,
)
from qdspace.connector.contract_errors import (
    ForeignRecordError,
    KeyShreddedError,
    NotificationQuotaError,
    RecordEnvelopeError,
    UnknownContractError,
)
from qdspace.connector.contract_store import (
    CONTRACT_METADATA,
    ConcurrentUpdateError,
    ContractStore,
    ContractStoreError,
    Deletion,
    DspProcess,
    IncomingRow,
    OutboxMessage,
    ensure_schema,
    notices,
    received_agreement_table,
    received_row_table,
)
from qdspace.connector.contract_store.agreements import AgreementStore
from qdspace.connector.contract_store.data_keys import DataKeys, row_aad
from qdspace.connector.contract_store.received_pages import Pages, received_page_table
from qdspace.connector.negotiation import (
    Accepted,
    Agreement,
    ContractOffer,
    ContractRequest,
    Finalized,
    Negotiation,
    NegotiationState,
    PartyKeys,
    Role,
    Termination,
    Verification,
    apply,
    draft_agreement,
    open_negotiation,
)
from qdspace.connector.spc import Investigation, QualityAlert, SpcAlert, SpcPoint
from qdspace.connector.storage import head_revision, migrate
from qdspace.connector.transfer import TransferState, advance, open_transfer
from qdspace.connector.transfer import apply as apply_transfer
from qdspace.connector.transfer_messages import TransferRequest, TransferStart
from qdspace.connector.transfer_wire import Checkpoint, row_bytes, tombstone_bytes
from qdspace.policies.canonical import canonical_json
from qdspace.policies.model import OfferTerms, Policy, make_offer
from qdspace.policies.retention import DutyStatus, ReceiptMismatchError

T0 = datetime(2026, 5, 1, tzinfo=UTC)
KEK = bytes(range(32))
P_KEY, C_KEY = SigningKey(b"p" * 32), SigningKey(b"c" * 32)
KEYS = PartyKeys(P_KEY.verify_key, C_KEY.verify_key)


@pytest.fixture
def engine(contract_engine: Engine) -> Engine:
    return contract_engine


@pytest.fixture
def store(engine: Engine) -> ContractStore:
    return ContractStore(engine, KEK)


def offer(orders: frozenset[str] = frozenset({"ORD-1", "ORD-2"}), days: int = 180) -> Policy:
    terms = OfferTerms(purposes=frozenset({"qa"}), orders=orders, retention_days=days)
    return make_offer("offer-1", "cellex", "inspections", terms)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def finalized(store: ContractStore, role: Role, neg: str = "neg-1", days: int = 180) -> Negotiation:
    """Run a whole negotiation through the store, saving after every message."""
    first = ContractRequest(f"{neg}-m1", neg, "sunarc", offer(days=days), at(0))
    n = open_negotiation(first, role)
    store.save_negotiation(None, n)
    terms = draft_agreement(n, f"agr-{neg}", at(2))
    signed = sign_agreement(terms, P_KEY)
    countersigned = countersign(signed, C_KEY, P_KEY.verify_key)
    assert countersigned.consumer_signature is not None
    for message in (
        Agreement(f"{neg}-m2", neg, "cellex", signed, at(2)),
        Verification(f"{neg}-m3", neg, "sunarc", countersigned.consumer_signature, at(3)),
        Finalized(f"{neg}-m4", neg, "cellex", at(4)),
    ):
        before = store.load_negotiation(neg)
        store.save_negotiation(before, apply(before, message, KEYS))
    return store.load_negotiation(neg)


def test_negotiation_round_trips_with_its_history_and_agreement(store: ContractStore) -> None:
    n = finalized(store, Role.PROVIDER)
    assert n.state is NegotiationState.FINALIZED
    assert n.agreement is not None and n.agreement.complete
    assert [mid for mid, _ in n.seen] == ["neg-1-m1", "neg-1-m2", "neg-1-m3", "neg-1-m4"]
    # A message re-delivered after a restart is recognised from the stored history.
    again = Finalized("neg-1-m4", "neg-1", "cellex", at(4))
    assert apply(n, again, KEYS) == n
    stored = store.agreement("agr-neg-1")
    assert stored.signed == n.agreement and stored.active and stored.role is Role.PROVIDER
    assert store.negotiations(NegotiationState.FINALIZED) == [n]
    assert store.negotiations(NegotiationState.REQUESTED) == []
    with pytest.raises(UnknownContractError):
        store.load_negotiation("neg-x")
    assert store.find_negotiation("neg-x") is None


def test_negotiations_that_ended_without_agreement_are_pruned_after_their_keep(
    store: ContractStore, engine: Engine
) -> None:
    """Every request a member sent stayed, refused or not. `prune_ended` deletes the
    negotiations that ended without an agreement before the cutoff, with their messages;
    a finalized one, one still open and one that ended after the cutoff stay."""
    finalized(store, Role.PROVIDER, "neg-kept")

    def opened(neg: str, seconds: float) -> Negotiation:
        first = ContractRequest(f"{neg}-m1", neg, "sunarc", offer(), at(seconds))
        n = open_negotiation(first, Role.PROVIDER)
        store.save_negotiation(None, n)
        return n

    for neg, seconds in (("neg-old", 10), ("neg-new", 100)):
        n = opened(neg, seconds)
        ended = apply(n, Termination(f"{neg}-m2", neg, "cellex", "no", at(seconds)), KEYS)
        store.save_negotiation(n, ended)
    opened("neg-open", 10)
    store.dsp.bind(_dsp_binding("neg-old"))
    store.dsp.bind(_dsp_binding("neg-new"))
    assert store.prune_ended_negotiations(at(50)) == 1
    assert store.prune_ended_negotiations(at(50)) == 0
    assert store.find_negotiation("neg-old") is None
    left = sorted(n.negotiation_id for n in store.negotiations())
    assert left == ["neg-kept", "neg-new", "neg-open"]
    with engine.connect() as connection:
        held = connection.execute(
            text("SELECT count(*) FROM contract_message WHERE process_id = 'neg-old'")
        ).scalar_one()
    assert held == 0
    # its DSP binding went with it; the one of a negotiation kept stays
    assert store.dsp.by_own_pid("negotiation", "urn:neg-old") is None
    assert store.dsp.by_own_pid("negotiation", "urn:neg-new") is not None


def _dsp_binding(negotiation_id: str) -> DspProcess:
    """The DSP binding of a negotiation a member opened with us over the DSP."""
    return DspProcess(
        "negotiation",
        negotiation_id,
        "provider",
        "sunarc",
        f"urn:{negotiation_id}",
        "https://sunarc.example/callback",
        f"urn:consumer-{negotiation_id}",
    )


def test_negotiations_that_ended_without_agreement_are_capped_per_member(
    store: ContractStore, engine: Engine
) -> None:
    """A member could keep its quota's worth of refused requests every hour for the whole
    keep. `prune_ended_beyond` deletes, per member that opened them with us, the oldest
    that ended without an agreement beyond the cap, with their messages, a batch at a
    time; another member's, a finalized one, one still open and one we opened as consumer
    stay."""
    cap = 3

    def refused(neg: str, consumer: str, seconds: float, role: Role = Role.PROVIDER) -> None:
        first = ContractRequest(f"{neg}-m1", neg, consumer, offer(), at(seconds))
        n = open_negotiation(first, role)
        store.save_negotiation(None, n)
        ended = apply(n, Termination(f"{neg}-m2", neg, "cellex", "no", at(seconds)), KEYS)
        store.save_negotiation(n, ended)

    for i in range(cap + 4):  # the hostile member: 4 beyond the cap
        refused(f"neg-h{i}", "hostile", 10 + i)
    for i in range(cap):  # another member, at the cap: nothing to take
        refused(f"neg-o{i}", "other", i)
    # the hostile member's oldest: one still open, one terminated after an agreement
    open_one = ContractRequest("neg-open-m1", "neg-open", "hostile", offer(), at(0))
    store.save_negotiation(None, open_negotiation(open_one, Role.PROVIDER))
    first = ContractRequest("neg-agreed-m1", "neg-agreed", "hostile", offer(), at(1))
    n = open_negotiation(first, Role.PROVIDER)
    store.save_negotiation(None, n)
    signed = sign_agreement(draft_agreement(n, "agr-neg-agreed", at(2)), P_KEY)
    for message in (
        Agreement("neg-agreed-m2", "neg-agreed", "cellex", signed, at(2)),
        Termination("neg-agreed-m3", "neg-agreed", "cellex", "no", at(3)),
    ):
        before, n = n, apply(n, message, KEYS)
        store.save_negotiation(before, n)
    assert n.state is NegotiationState.TERMINATED and n.agreement is not None
    for i in range(cap + 1):  # ours as consumer, refused, with our own id as consumer
        refused(f"neg-c{i}", "us", i, Role.CONSUMER)

    store.dsp.bind(_dsp_binding("neg-h0"))
    store.dsp.bind(_dsp_binding("neg-h6"))
    # those opened within the member's quota window stay (the quota counts them): here
    # the window starts at 12 s, so only the two opened before it go first
    assert store.prune_ended_negotiations_beyond(cap, at(12), limit=3) == 2
    assert store.prune_ended_negotiations_beyond(cap, at(12), limit=3) == 0
    assert store.find_negotiation("neg-h2") is not None
    assert store.prune_ended_negotiations_beyond(cap, at(100), limit=1) == 1
    assert store.prune_ended_negotiations_beyond(cap, at(100), limit=3) == 1
    assert store.prune_ended_negotiations_beyond(cap, at(100), limit=3) == 0
    left = sorted(n.negotiation_id for n in store.negotiations())
    kept = ["neg-h4", "neg-h5", "neg-h6"]  # the hostile member's newest
    others = ["neg-o0", "neg-o1", "neg-o2", "neg-agreed", "neg-open"]
    ours = [f"neg-c{i}" for i in range(cap + 1)]
    assert left == sorted(kept + others + ours)
    assert store.load_negotiation("neg-agreed").agreement is not None
    with engine.connect() as connection:
        held = connection.execute(
            text(
                "SELECT count(*) FROM contract_message "
                "WHERE process_id IN ('neg-h0', 'neg-h1', 'neg-h2', 'neg-h3')"
            )
        ).scalar_one()
    assert held == 0
    assert store.dsp.by_own_pid("negotiation", "urn:neg-h0") is None
    assert store.dsp.by_own_pid("negotiation", "urn:neg-h6") is not None


def test_negotiations_are_listed_a_page_at_a_time(store: ContractStore) -> None:
    """Only a page of negotiations is loaded (a member may open any number): the pages
    make up the whole list, the newest first reverses it."""
    made = [finalized(store, Role.PROVIDER, f"neg-{i}") for i in range(5)]
    whole = store.negotiations()
    assert whole == sorted(made, key=lambda n: (n.created_at, n.negotiation_id))
    assert store.count_negotiations() == 5
    pages = [store.negotiations(limit=2, offset=o) for o in (0, 2, 4)]
    assert [n for page in pages for n in page] == whole
    assert store.negotiations(limit=2, newest_first=True) == whole[::-1][:2]
    assert store.negotiations(NegotiationState.TERMINATED) == []


def test_a_stale_save_loses_and_writes_nothing(store: ContractStore) -> None:
    first = ContractRequest("m1", "neg-2", "sunarc", offer(), at(0))
    n = open_negotiation(first, Role.PROVIDER)
    store.save_negotiation(None, n)
    with pytest.raises(ConcurrentUpdateError):
        store.save_negotiation(None, n)
    counter = ContractOffer("m2", "neg-2", "cellex", offer(days=30), at(1))
    other = ContractOffer("m2b", "neg-2", "cellex", offer(days=60), at(1))
    winner = apply(n, counter, KEYS)
    store.save_negotiation(n, winner, [OutboxMessage("sunarc", "offer", "neg-2", "m2", b"1")])
    with pytest.raises(ConcurrentUpdateError):
        store.save_negotiation(
            n, apply(n, other, KEYS), [OutboxMessage("sunarc", "offer", "neg-2", "m2b", b"2")]
        )
    assert store.load_negotiation("neg-2") == winner
    assert [p.message.message_id for p in store.due_messages(at(5))] == ["m2"]
    # The helper reloads and re-applies; an idempotent step changes nothing.
    accepted = Accepted("m3", "neg-2", "sunarc", at(2))
    result = store.update_negotiation("neg-2", lambda cur: (apply(cur, accepted, KEYS), ()))
    assert result.state is NegotiationState.ACCEPTED
    assert store.update_negotiation("neg-2", lambda cur: (apply(cur, accepted, KEYS), ())) == result


def test_agreements_keep_exact_bytes_and_termination_is_sticky(store: ContractStore) -> None:
    n = finalized(store, Role.CONSUMER)
    assert n.agreement is not None
    half = SignedAgreement(n.agreement.agreement, n.agreement.provider_signature)
    store.save_agreement(half, Role.CONSUMER)  # a re-save without countersignature keeps it
    stored = store.agreement("agr-neg-1")
    assert stored.signed.canonical_bytes == n.agreement.canonical_bytes
    assert stored.signed.consumer_signature == n.agreement.consumer_signature
    ended = store.terminate_agreement("agr-neg-1", "supplier left", at(10))
    assert not ended.active and ended.termination_reason == "supplier left"
    again = store.terminate_agreement("agr-neg-1", "other", at(20))
    assert again.terminated_at == at(10) and again.termination_reason == "supplier left"
    other_terms = replace(n.agreement.agreement, agreed_at=at(3))
    with pytest.raises(ContractStoreError, match="other terms"):
        store.save_agreement(sign_agreement(other_terms, P_KEY), Role.CONSUMER)
    assert [a.agreement_id for a in store.agreements(Role.CONSUMER)] == ["agr-neg-1"]
    assert store.agreements(Role.PROVIDER) == []


def test_update_opens_a_missing_negotiation_only_through_opening(store: ContractStore) -> None:
    """`update_negotiation(id, step, opening)`: a missing id is saved as `opening` says
    (load and save in one transaction); a known one goes through `step`, never `opening`;
    without `opening` a missing id is unknown, as before."""
    first = ContractRequest("o-m1", "neg-o", "sunarc", offer(), at(0))
    opened = open_negotiation(first, Role.PROVIDER)

    def refuse(_: Negotiation) -> tuple[Negotiation, tuple[()]]:
        raise AssertionError("step on a missing negotiation")

    with pytest.raises(UnknownContractError):
        store.update_negotiation("neg-o", refuse)
    assert store.update_negotiation("neg-o", refuse, lambda: (opened, ())) == opened
    assert store.load_negotiation("neg-o") == opened
    accepted_offer = ContractOffer("o-m2", "neg-o", "cellex", offer(), at(1))

    def never() -> tuple[Negotiation, tuple[()]]:
        raise AssertionError("opening a known negotiation")

    moved = store.update_negotiation(
        "neg-o", lambda cur: (apply(cur, accepted_offer, KEYS), ()), never
    )
    assert moved.state is NegotiationState.OFFERED
    assert store.load_negotiation("neg-o") == moved


def test_an_agreement_saved_with_what_was_stored_keeps_the_same_rules(
    store: ContractStore,
) -> None:
    """`save_agreement_in(..., stored=)` (a negotiation's loaded agreement) skips reading
    the row back, not the rules: the countersignature is added, and terms other than the
    stored ones are still refused (round 3 of bench/PROFILE-negotiation.md)."""
    agreements = AgreementStore(store.engine)
    opening = ContractRequest("s-m1", "neg-s", "sunarc", offer(), at(0))
    terms = draft_agreement(open_negotiation(opening, Role.CONSUMER), "agr-s", at(2))
    signed = sign_agreement(terms, P_KEY)
    with store.engine.begin() as connection:
        agreements.save_agreement_in(connection, signed, Role.CONSUMER)  # inserted at once
    countersigned = countersign(signed, C_KEY, P_KEY.verify_key)
    with store.engine.begin() as connection:
        agreements.save_agreement_in(connection, countersigned, Role.CONSUMER, stored=signed)
    assert store.agreement("agr-s").signed == countersigned
    other = sign_agreement(replace(signed.agreement, agreed_at=at(3)), P_KEY)
    with pytest.raises(ContractStoreError, match="other terms"), store.engine.begin() as c:
        agreements.save_agreement_in(c, other, Role.CONSUMER, stored=signed)
    assert store.agreement("agr-s").signed == countersigned


ROWS = [
    {"@key": f"rec_{n}", "@v": 1, "inspection_id": f"i{n}", "order_id": "ORD-1", "verdict": "ok"}
    for n in range(6)
]


def rec(key: str, version: int = 1, **fields: object) -> bytes:
    """A received row's bytes: the record envelope and `fields`."""
    return row_bytes({"@key": key, "@v": version, **fields})


def _transfer(store: ContractStore) -> tuple[Negotiation, object]:
    n = finalized(store, Role.CONSUMER)
    request = TransferRequest(
        "t1", "tx-1", "sunarc", "agr-neg-1", "cellex", at(5), "qa", "ORD-1", frozenset({"verdict"})
    )
    process = open_transfer(request, Role.CONSUMER)
    store.save_transfer(None, process)
    started = apply_transfer(
        process, TransferStart("t2", "tx-1", "cellex", Checkpoint.genesis("tx-1"), at(6))
    )
    store.save_transfer(process, started)
    return n, started


def test_transfer_batches_commit_atomically_and_never_twice(
    store: ContractStore, engine: Engine
) -> None:
    _, started = _transfer(store)
    process = store.load_transfer("tx-1")
    assert process == started
    assert (process.purpose, process.order_id, process.fields) == ("qa", "ORD-1", {"verdict"})
    payloads = [row_bytes(r) for r in ROWS]
    batch = [IncomingRow(i, "ORD-1", p) for i, p in enumerate(payloads[:4])]
    after = advance(process, payloads[:4], "4")
    store.commit_transfer_batch(process, after, batch, at(7))
    # The same batch again (a retry after a crash before the acknowledgement) is refused
    # and stores nothing twice.
    with pytest.raises(ConcurrentUpdateError):
        store.commit_transfer_batch(process, after, batch, at(7))
    with pytest.raises(ContractStoreError, match="seq"):
        store.commit_transfer_batch(after, advance(after, payloads[4:], "6"), batch[:2], at(8))
    loaded = store.load_transfer("tx-1")
    assert loaded.checkpoint == after.checkpoint and loaded.state is TransferState.STARTED
    assert store.count_received("agr-neg-1") == 4
    assert [r.decode() for r in store.received_rows("agr-neg-1")] == ROWS[:4]
    assert {r.received_at for r in store.received_rows("agr-neg-1")} == {at(7)}
    assert store.last_received_seq("tx-1") == 3
    # At rest the rows are ciphertext, bound to their place.
    with engine.connect() as connection:
        raw = [bytes(c) for c in connection.scalars(select(received_row_table.c.ciphertext))]
    assert raw and all(b"inspection_id" not in blob for blob in raw)
    with engine.begin() as connection:
        connection.execute(
            received_row_table.update().where(received_row_table.c.seq == 0).values(seq=99)
        )
    with pytest.raises(ContractStoreError, match="integrity"):
        store.received_rows("agr-neg-1")


def test_rows_do_not_open_without_the_node_key(store: ContractStore, engine: Engine) -> None:
    finalized(store, Role.CONSUMER)
    seven = IncomingRow(7, "ORD-1", rec("k7"))
    store.store_received_rows("agr-neg-1", "sub-1", [seven], at(1))
    assert store.store_received_rows("agr-neg-1", "sub-1", [seven], at(2)).changed == 0
    mixed = [seven, IncomingRow(8, "ORD-1", rec("k8"))]
    assert store.store_received_rows("agr-neg-1", "sub-1", mixed, at(3)).added == 1
    with pytest.raises(ContractStoreError, match="node's key"):
        ContractStore(engine, b"\1" * 32).received_rows("agr-neg-1")
    with pytest.raises(ContractStoreError, match="32 bytes"):
        ContractStore(engine, b"short")


def test_outbox_retries_until_sent(store: ContractStore) -> None:
    message = OutboxMessage("cellex", "receipt", "agr-1", "msg-1", b"payload")
    store.enqueue([message, message], at(0))
    (pending,) = store.due_messages(at(0))
    assert pending.message == message and pending.attempts == 0
    store.mark_failed(pending.id, "connection refused", at(30))
    assert store.due_messages(at(10)) == []
    (retry,) = store.due_messages(at(30))
    assert retry.attempts == 1 and retry.last_error == "connection refused"
    store.mark_sent(retry.id, at(31))
    assert store.due_messages(at(1000)) == []
    store.enqueue([message], at(40))  # already sent once: not queued again
    assert store.due_messages(at(1000)) == []


def _receipt_for(deletion: Deletion, when: datetime) -> tuple[object, tuple[OutboxMessage, ...]]:
    receipt = DeletionReceipt(
        deletion.agreement_id,
        "sunarc",
        deletion.row_count,
        deletion.content_sha256,
        when,
        deletion.order_id,
    )
    signed = sign_receipt(receipt, C_KEY)
    note = OutboxMessage("cellex", "receipt", deletion.agreement_id, receipt.receipt_id, b"r")
    return signed, (note,)


def test_order_closure_shredding_and_duties_on_both_sides(
    store: ContractStore, tmp_path: Path
) -> None:
    finalized(store, Role.CONSUMER, "neg-c", days=10)
    payloads = [canonical_json(r) for r in ROWS]
    store.store_received_rows(
        "agr-neg-c", "sub", [IncomingRow(i, "ORD-1", p) for i, p in enumerate(payloads)], at(1)
    )
    store.store_received_rows("agr-neg-c", "sub", [IncomingRow(50, "ORD-2", rec("k50"))], at(1))
    closure = store.record_order_closed("agr-neg-c", "ORD-1", at(100))
    assert closure.deadline == at(100) + timedelta(days=10)
    assert store.record_order_closed("agr-neg-c", "ORD-1", at(999)).closed_at == at(100)
    assert store.expired_closures(at(100) + timedelta(days=9)) == []
    (due,) = store.expired_closures(at(100) + timedelta(days=10))
    when = at(100) + timedelta(days=11)
    signed = store.shred(due.agreement_id, due.order_id, when, lambda d: _receipt_for(d, when))  # type: ignore[arg-type,return-value]
    assert signed.receipt.row_count == 6
    assert store.count_received("agr-neg-c") == 1  # ORD-2 is still open: kept
    assert store.key_destroyed("agr-neg-c", "ORD-1")
    assert not store.key_destroyed("agr-neg-c", "ORD-2")
    with pytest.raises(KeyShreddedError):
        store.store_received_rows("agr-neg-c", "sub", [IncomingRow(99, "ORD-1", rec("k99"))], when)
    assert store.expired_closures(when + timedelta(days=100)) == []
    assert store.receipts("agr-neg-c") == [signed]
    assert store.receipt(signed.receipt.receipt_id) == signed  # a regulator's look-up
    assert store.receipt("no-such-receipt") is None
    assert [p.message.kind for p in store.due_messages(when)] == ["receipt"]
    store.record_order_closed("agr-neg-c", "ORD-2", at(100))
    with pytest.raises(ContractStoreError, match="does not describe"):
        store.shred(
            "agr-neg-c",
            "ORD-2",
            when,
            lambda d: _receipt_for(replace(d, row_count=5), when),  # type: ignore[arg-type,return-value]
        )
    assert store.count_received("agr-neg-c") == 1  # the failed shred rolled back


def test_provider_tracks_duties_from_pending_to_fulfilled(store: ContractStore) -> None:
    finalized(store, Role.PROVIDER, "neg-p", days=10)
    (pending,) = store.deletion_duties(at(50))
    assert pending.status is DutyStatus.PENDING and pending.duty.deadline is None
    assert store.close_order("cellex", "ORD-9", at(100)) == []  # outside the scope
    assert store.close_order("cellex", "ORD-1", at(100)) == ["agr-neg-p"]
    assert store.closed_orders("agr-neg-p") == {"ORD-1": at(100)}
    (due,) = store.deletion_duties(at(200))
    assert (due.status, due.duty.order_id) == (DutyStatus.DUE, "ORD-1")
    late = at(100) + timedelta(days=10, seconds=1)
    assert store.deletion_duties(late)[0].status is DutyStatus.OVERDUE
    receipt = DeletionReceipt("agr-neg-p", "sunarc", 3, "ab" * 32, late, "ORD-1")
    wrong = replace(receipt, consumer_id="polycell")
    with pytest.raises(ReceiptMismatchError):
        store.record_receipt(sign_receipt(wrong, C_KEY))
    store.record_receipt(sign_receipt(receipt, C_KEY))
    store.record_receipt(sign_receipt(receipt, C_KEY))  # idempotent
    (done,) = store.deletion_duties(late)
    assert done.status is DutyStatus.FULFILLED_LATE and done.receipt == receipt


def test_the_contract_schema_comes_from_its_migration(engine: Engine) -> None:
    """The tables `ensure_schema` made are exactly CONTRACT_METADATA's, at the head revision
    (0002_contracts made them; a table change without a new revision fails here)."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection)
        assert context.get_current_revision() == head_revision()
        diffs = compare_metadata(context, CONTRACT_METADATA)
    ours = [d for d in diffs if "contract_" in repr(d)]
    assert ours == []
    assert set(CONTRACT_METADATA.tables) <= set(inspect(engine).get_table_names())
    ensure_schema(engine)  # idempotent: a second start changes nothing
    with engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == head_revision()


def test_tables_made_before_the_migration_existed_are_adopted(tmp_path: Path) -> None:
    old = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate(old, "0001_qdm")
    CONTRACT_METADATA.create_all(old)  # what a node did before 0002_contracts
    kept = OutboxMessage("cellex", "notification", "n-1", "n-1", b"x")
    ContractStore(old, KEK).enqueue([kept], T0)
    ensure_schema(old)
    with old.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == head_revision()
    assert [m.message for m in ContractStore(old, KEK).due_messages(at(1))] == [kept]
    old.dispose()


def test_received_quality_alerts_are_kept_once_and_read_back_whole(store: ContractStore) -> None:
    points = tuple(SpcPoint(i, 0.5 + i / 7, at(i)) for i in range(3))
    first = QualityAlert(
        "alert-1",
        SpcAlert("RULE_2", "9 points above the centre line", points, at(3)),
        agreement_id="agr-neg-1",
        order_id="ORD-1",
        station="EL-1",
        characteristic="score",
    )
    second = QualityAlert("alert-2", SpcAlert("CPK", "Cpk 0.81 < 1.33", points[:1], at(4)))
    assert store.notices.record_alert("sunarc", first, at(5))
    assert not store.notices.record_alert("sunarc", first, at(6))  # a retried notification
    assert store.notices.record_alert("sunarc", second, at(7))
    assert store.notices.record_alert("polycell", first, at(8))  # ids are per sender
    assert store.notices.received_alerts("sunarc") == [first, second]
    assert len(store.notices.received_alerts()) == 3
    reopened = ContractStore(store.engine, KEK)  # durable: another process sees them
    assert reopened.notices.received_alerts("polycell") == [first]


def test_the_newest_received_alerts_and_their_count_are_read_without_the_rest(
    store: ContractStore,
) -> None:
    """A page that shows the newest few alerts reads those and the count (a peer may keep
    10,000): every limit, either way round, is the slice of reading them all, alerts of
    two senders with the same ids and the same arrival time among them."""
    points = (SpcPoint(0, 0.9, at(0)),)
    for i in range(12):
        alert = QualityAlert(f"a-{i % 5}", SpcAlert("RULE_1", f"beyond 3 sigma {i}", points, at(i)))
        sender = ("sunarc", "polycell", "siliwafer")[i % 3]
        store.notices.record_alert(sender, alert, at(i // 2))  # two arrive at each instant
    whole = store.notices.received_alerts()
    assert len(whole) == store.notices.count_received_alerts() == 12
    for limit in (None, 0, 1, 5, 12, 20):
        assert store.notices.received_alerts(limit=limit) == whole[:limit]
        assert store.notices.received_alerts(limit=limit, newest_first=True) == whole[::-1][:limit]
    assert (
        store.notices.received_alerts("sunarc", limit=2, newest_first=True)
        == [a for a in whole if a.alert.description in ("beyond 3 sigma 9", "beyond 3 sigma 6")][
            ::-1
        ]
    )


def test_each_sender_keeps_a_bounded_number_of_alerts_and_investigations(
    store: ContractStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notices, "MAX_RECEIVED_PER_SENDER", 2)
    points = (SpcPoint(0, 0.9, at(0)),)
    alerts = [
        QualityAlert(f"q-{i}", SpcAlert("RULE_1", "beyond 3 sigma", points, at(1)))
        for i in range(3)
    ]
    cases = [Investigation(f"inv-{i}", "microcracks", "check batch") for i in range(3)]
    received = store.notices
    for record, items in ((received.record_alert, alerts), (received.record_investigation, cases)):
        assert record("mallory", items[0], at(2)) and record("mallory", items[1], at(3))
        assert not record("mallory", items[1], at(4))  # a retry is no new entry
        with pytest.raises(NotificationQuotaError, match=r"mallory already has 2 .* kept here"):
            record("mallory", items[2], at(5))
        assert record("sunarc", items[2], at(6))  # the bound is per sender
    assert [c.investigation_id for c in store.notices.received_investigations("mallory")] == [
        "inv-0",
        "inv-1",
    ]


def test_received_records_are_held_once_in_their_latest_version(store: ContractStore) -> None:
    """Keyed by (agreement, record key): re-deliveries store nothing, a later version
    replaces, an older one never does, a tombstone withdraws (on both backends)."""
    finalized(store, Role.CONSUMER)
    rows = [IncomingRow(i, "ORD-1", rec(f"k{i}", verdict="ok")) for i in range(4)]
    assert store.store_received_rows("agr-neg-1", "sub-1", rows, at(1)).added == 4
    again = store.store_received_rows("agr-neg-1", "sub-2", rows, at(2))
    assert (again.changed, again.unchanged) == (0, 4)
    newer = [
        IncomingRow(10, "ORD-2", rec("k1", 2, verdict="ng")),
        IncomingRow(11, "ORD-1", rec("k2", 2, **{"@withdrawn": True})),
        IncomingRow(12, "ORD-1", rec("k0", 1, verdict="stale")),
    ]
    result = store.store_received_rows("agr-neg-1", "sub-3", newer, at(3))
    assert (result.replaced, result.withdrawn, result.unchanged) == (1, 1, 1)
    older = store.store_received_rows("agr-neg-1", "sub-4", rows[1:3], at(4))
    assert older.changed == 0  # versions 1 of k1 and k2 arrive late: ignored
    held = {r.record_key: r for r in store.received_rows("agr-neg-1")}
    assert sorted(held) == ["k0", "k1", "k3"] and store.count_received("agr-neg-1") == 3
    assert held["k1"].decode()["verdict"] == "ng" and held["k1"].order_id == "ORD-2"
    assert held["k0"].decode()["verdict"] == "ok"
    changes = store.received_changes("agr-neg-1")
    assert [(c.record_key, c.version, c.withdrawn) for c in changes] == [
        ("k1", 2, False),
        ("k2", 2, True),
    ]
    assert changes[0].content_sha256 == hashlib.sha256(newer[0].payload).hexdigest()
    # what a host's row quota counts: three records, k2's tombstone and the two changes
    assert store.stored_rows() == 6
    with pytest.raises(ForeignRecordError, match="ORD-9"):
        store.store_received_rows("agr-neg-1", "s", [IncomingRow(1, "ORD-9", rec("k9"))], at(5))


def test_a_provider_s_unstorable_key_or_order_is_refused_not_a_database_error(
    store: ContractStore,
) -> None:
    """A record key or an order id with a NUL, or an order id longer than the columns
    hold: PostgreSQL refuses them outright (a driver error mid-delivery), SQLite would
    store them. Both refuse the delivery as the provider's (nothing of it is stored), on
    the batch path (many rows, one decoder) and the row path alike."""
    finalized(store, Role.CONSUMER)
    good = [IncomingRow(i, "ORD-1", rec(f"k{i}", verdict="ok")) for i in range(1, 40)]
    for bad in (
        [*good, IncomingRow(40, "ORD-1", rec("k\x0040", verdict="ok"))],
        [IncomingRow(1, "ORD-1", rec("\x00"))],
    ):
        with pytest.raises(RecordEnvelopeError, match="no NUL"):
            store.store_received_rows("agr-neg-1", "s", bad, at(5))
    for order in ("ORD\x00-1", "O" * 129):
        with pytest.raises(ForeignRecordError, match="is no order"):
            store.store_received_rows("agr-neg-1", "s", [IncomingRow(1, order, rec("k1"))], at(5))
    assert store.count_received("agr-neg-1") == 0


def test_sealed_pages_hold_exactly_the_records_held(store: ContractStore, engine: Engine) -> None:
    """Keep-once, corrections and withdrawals, on both databases: the sealed pages end
    up holding the current version of each record held, nothing stale or withdrawn, and
    erasing the order deletes them with a receipt over exactly those records."""
    finalized(store, Role.CONSUMER)
    agr = "agr-neg-1"
    pages = Pages(DataKeys(engine, KEK), received_row_table)

    def slots() -> list[bytes]:
        with engine.connect() as connection:
            ids = list(connection.scalars(select(received_page_table.c.id)))
            opened = pages.open_pages(connection, ids, at(9))
        return sorted(p for page in opened.values() for p in page.payloads if p)

    first = [IncomingRow(i, "ORD-1", rec(f"k{i}", verdict="pass")) for i in range(5)]
    assert store.store_received_rows(agr, "sub-1", first, at(1)).added == 5
    again = store.store_received_rows(
        agr, "sub-1", [*first, IncomingRow(5, "ORD-1", rec("k5"))], at(2)
    )
    assert (again.added, again.unchanged) == (1, 5)  # the copies left no slot behind
    # held copies the sample of first versions misses (every other one is looked at):
    # written, counted by the upsert, and their slots blanked
    mixed = [rec(f"k{i // 2 % 6}") if i % 2 else rec(f"n{i}") for i in range(16)]
    result = store.store_received_rows(
        agr, "sub-2", [IncomingRow(100 + i, "ORD-1", p) for i, p in enumerate(mixed)], at(2)
    )
    assert (result.added, result.unchanged) == (8, 8)
    assert slots() == sorted(r.payload for r in store.received_rows(agr))
    changed = [
        IncomingRow(6, "ORD-1", rec("k1", 2, verdict="fail")),
        IncomingRow(7, "ORD-1", tombstone_bytes("k2", 2)),
        IncomingRow(8, "ORD-1", rec("k0")),  # a copy of what is held
        IncomingRow(9, "ORD-1", rec("k3", 2)),
        IncomingRow(10, "ORD-1", rec("k3", 3, verdict="fail")),  # twice in one delivery
        IncomingRow(11, "ORD-1", rec("k6", 2)),  # first seen at version 2
    ]
    result = store.store_received_rows(agr, "sub-1", changed, at(3))
    assert (result.added, result.replaced, result.withdrawn, result.unchanged) == (1, 3, 1, 1)
    held = store.received_rows(agr)
    assert {r.record_key: r.version for r in held} == {
        "k0": 1,
        "k1": 2,
        "k3": 3,
        "k4": 1,
        "k5": 1,
        "k6": 2,
        **{f"n{i}": 1 for i in range(0, 16, 2)},
    }
    assert slots() == sorted(r.payload for r in held)
    assert store.last_received_seq("sub-1") == 11
    store.record_order_closed(agr, "ORD-1", at(4))

    erased: list[Deletion] = []

    def receipt(deletion: Deletion) -> tuple[object, tuple[OutboxMessage, ...]]:
        erased.append(deletion)
        return _receipt_for(deletion, at(4) + timedelta(days=200))

    store.shred(agr, "ORD-1", at(4) + timedelta(days=200), receipt)  # type: ignore[arg-type]
    (deletion,) = erased
    digest = deletion_digest_of_bytes([r.payload for r in held])
    assert (deletion.row_count, deletion.content_sha256) == digest
    assert slots() == [] and store.count_received(agr) == 0


def test_a_page_index_keeps_any_record_key_whether_its_seqs_run_on_or_not(
    store: ContractStore,
) -> None:
    """A page's row index goes in from its keys alone when its seqs run on by one and
    its versions are one, and slot by slot otherwise: both keep every record key as it
    came (quotes, backslashes, non-ASCII, control characters, long ones) and every seq."""
    finalized(store, Role.CONSUMER)
    agr = "agr-neg-1"
    odd = ['k"q', "k\\b", "k-ü-€-😀", "k" * 127, "k\u0001x"]
    run = [IncomingRow(10 + i, "ORD-1", rec(key)) for i, key in enumerate(odd)]
    assert store.store_received_rows(agr, "sub-1", run, at(1)).added == len(odd)
    gaps = [IncomingRow(20 + 3 * i, "ORD-1", rec(f"{key}2")) for i, key in enumerate(odd)]
    assert store.store_received_rows(agr, "sub-2", gaps, at(2)).added == len(odd)
    held = {r.record_key: r.seq for r in store.received_rows(agr)}
    assert held == {
        **{key: 10 + i for i, key in enumerate(odd)},
        **{f"{key}2": 20 + 3 * i for i, key in enumerate(odd)},
    }
    assert (store.last_received_seq("sub-1"), store.last_received_seq("sub-2")) == (14, 32)


def test_rows_sealed_before_pages_are_read_replaced_and_erased(
    store: ContractStore, engine: Engine
) -> None:
    """A row stored before 0009_received_pages keeps its own ciphertext: it is read,
    counted and erased like a paged one, and a later version moves it into a page."""
    finalized(store, Role.CONSUMER)
    agr, keys = "agr-neg-1", DataKeys(engine, KEK)
    old = rec("k-old", verdict="pass")
    with engine.begin() as connection:
        cipher = keys.key_in(connection, agr, "ORD-1", True, at(1))
        nonce = os.urandom(12)
        sealed = cipher.encrypt(nonce, old, row_aad(agr, "ORD-1", "tx-0", 3))
        number = connection.execute(
            received_agreement_table.insert()
            .values(agreement_id=agr)
            .returning(received_agreement_table.c.agreement_no)
        ).scalar_one()
        values = {"agreement_id": agr, "order_id": "ORD-1", "source_id": "tx-0", "seq": 3}
        values |= {"agreement_no": number}
        connection.execute(
            received_row_table.insert().values(
                **values, nonce=nonce, ciphertext=sealed, received_at=at(1), record_key="k-old"
            )
        )
    # a stream event may hold a newline (JSON whitespace): its page keeps the bytes
    spaced = b'{"@key": "k-new",\n "@v": 1}'
    store.store_received_rows(agr, "sub-1", [IncomingRow(4, "ORD-1", spaced)], at(2))
    assert [r.payload for r in store.received_rows(agr)] == [old, spaced]
    fixed = rec("k-old", 2, verdict="fail")
    assert store.store_received_rows(agr, "sub-1", [IncomingRow(5, "ORD-1", fixed)], at(3)).replaced
    with engine.connect() as connection:
        left = connection.execute(
            select(received_row_table.c.ciphertext).where(
                received_row_table.c.record_key == "k-old"
            )
        ).scalar_one()
    assert bytes(left) == b""  # the old version's own ciphertext is gone
    assert sorted(r.payload for r in store.received_rows(agr)) == sorted([fixed, spaced])


def test_a_sources_delivered_rows_are_counted_with_its_cursor(store: ContractStore) -> None:
    """`delivered` counts the rows a source's deliveries brought, copies of rows held
    included (as a subscription counts what arrived), a replayed delivery not (it moves
    the cursor nowhere), and it is kept per source like the cursor."""
    finalized(store, Role.CONSUMER)
    agr = "agr-neg-1"
    assert store.delivered("sub-1") == 0
    first = [IncomingRow(10 + i, "ORD-1", rec(f"d{i}")) for i in range(3)]
    store.store_received_rows(agr, "sub-1", first, at(1))
    assert (store.delivered("sub-1"), store.last_received_seq("sub-1")) == (3, 12)
    store.store_received_rows(agr, "sub-1", first, at(2))  # replayed: not news
    assert store.delivered("sub-1") == 3
    copies = [IncomingRow(20 + i, "ORD-1", rec(f"d{i}")) for i in range(2)]  # held already
    assert store.store_received_rows(agr, "sub-1", copies, at(3)).added == 0
    assert (store.delivered("sub-1"), store.last_received_seq("sub-1")) == (5, 21)
    store.store_received_rows(agr, "sub-2", [IncomingRow(7, "ORD-1", rec("e"))], at(4))
    assert (store.delivered("sub-1"), store.delivered("sub-2")) == (5, 1)


def test_the_transfers_being_received_come_with_their_dsp_binding(store: ContractStore) -> None:
    """`receiving`: the consumer's STARTED transfers, each with its DSP binding or None (a
    gRPC one), what a restarted node takes up; a finished or a provided one is not."""
    _n, started = _transfer(store)
    assert store.receiving() == [(started, None)]
    request = TransferRequest("d1", "urn:uuid:d", "sunarc", "agr-neg-1", "cellex", at(7))
    dsp = apply_transfer(
        open_transfer(request, Role.CONSUMER),
        TransferStart("d2", "urn:uuid:d", "cellex", Checkpoint.genesis("urn:uuid:d"), at(8)),
    )
    store.save_transfer(None, dsp)
    binding = DspProcess("transfer", "urn:uuid:d", "consumer", "cellex", "urn:uuid:d", "https://c")
    store.dsp.bind(binding)
    store.dsp.bind(DspProcess("negotiation", "tx-1", "consumer", "cellex", "urn:uuid:n", "h"))
    got = {process.transfer_id: bound for process, bound in store.receiving()}
    assert got == {"tx-1": None, "urn:uuid:d": binding}  # another kind's binding is not its


@pytest.mark.parametrize(
    ("column", "value", "why"),
    [
        ("record_key", "k-other", "another record"),
        ("version", 2, "another record"),
        ("seq", 99, "not in its page"),
        ("slot", 40, "not in its page"),
    ],
)
def test_a_held_rows_index_entry_that_is_not_its_page_slots_is_refused(
    store: ContractStore, engine: Engine, column: str, value: object, why: str
) -> None:
    """Each row read from a page is checked against its index entry (the page's place,
    the slot's seq, and the record's own key and version, read for the whole read in one
    pass): an entry changed under the store names the row and why, on every reader."""
    finalized(store, Role.CONSUMER)
    agr = "agr-neg-1"
    rows = [IncomingRow(10 + i, "ORD-1", rec(f"k{i}")) for i in range(30)]
    store.store_received_rows(agr, "sub-1", rows, at(1))
    assert len(store.received_rows(agr)) == 30
    table = received_row_table
    with engine.begin() as connection:
        connection.execute(table.update().where(table.c.seq == 17).values({column: value}))
    for read in (
        lambda: store.received_rows(agr),
        lambda: store.received_newest(agr, 25),
        lambda: store.received_since(agr, 0),
    ):
        with pytest.raises(
            ContractStoreError, match=f"sub-1#(17|99) fails its integrity check: {why}"
        ):
            read()
