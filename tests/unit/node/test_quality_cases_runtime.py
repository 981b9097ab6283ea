"""Two contract runtimes (each on its own SQLite file) run a quality case through their
outboxes, delivered by hand: the receiver answers RECEIVE by itself, a retried delivery
changes nothing, and the closure is anchored with the same bytes on both sides. A peer's
event dated ahead of the receiver's clock, or before the event it follows, is refused;
a late one in order is taken; a node dates its own moves after what they answer."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from sqlalchemy import create_engine

from qdspace.connector.contract_errors import (
    CaseDenied,
    MessageOutOfTime,
    NotificationQuotaError,
)
from qdspace.connector.contract_store import ContractStore, ensure_schema
from qdspace.connector.investigation import (
    ActionItem,
    ActionKind,
    CaseEvent,
    CaseKind,
    CaseState,
    CaseTerms,
    Severity,
    Step,
    next_event,
    opening,
)
from qdspace.connector.investigation_wire import SealedEvent, sign_event
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.member_ids import member_id_for
from qdspace.node.rpc.contracts_notification_serde import Notification, notification_from_proto
from qdspace.node.runtime.contracts import ContractRuntime
from qdspace.node.runtime.contracts_cases import CASE_KIND
from qdspace.node.runtime.contracts_clock import ContractClock
from qdspace.protocols.v1 import notification_pb2

Anchored = list[tuple[str, str, bytes]]


def node(
    root: Path, name: str, seed: bytes, ahead: dt.timedelta | None = None
) -> tuple[ContractRuntime, Anchored]:
    key = SigningKey(seed * 32)
    vk = bytes(key.verify_key)
    me = MemberIdentity(
        member_id_for(name, vk), name, "oem", vk, 1, dt.datetime(2100, 1, 1, tzinfo=dt.UTC), name
    )
    engine = create_engine(f"sqlite:///{root / f'{name}.db'}")
    ensure_schema(engine)
    store = ContractStore(engine, bytes(32))
    clock = ContractClock(root / f"{name}.clock", control=ahead is not None)
    if ahead is not None:  # this node's clock runs ahead of the other's
        clock.set_offset(ahead)
    runtime = ContractRuntime(me, key, store, engine, clock, bytes(32), {})
    anchored: Anchored = []
    runtime.record = lambda kind, ref, data: anchored.append((kind, ref, data))
    return runtime, anchored


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[ContractRuntime, ContractRuntime, Anchored, Anchored]]:
    oem, oem_anchored = node(tmp_path, "sunarc", b"o")
    sup, sup_anchored = node(tmp_path, "cellex", b"s")
    yield oem, sup, oem_anchored, sup_anchored
    oem.qdm.dispose()
    sup.qdm.dispose()


def deliver(sender: ContractRuntime, receiver: ContractRuntime, twice: bool = False) -> int:
    """Hand every due message of `sender` to `receiver` until none is left (as the outbox
    would: a case's events one after the other)."""
    count = 0
    while due := sender.store.due_messages(sender.clock.now()):
        for pending in due:
            note = notification_from_proto(
                notification_pb2.NotificationMessage.FromString(pending.message.payload)
            )
            assert receiver.handle_notification(sender.me, note)
            if twice:
                assert not receiver.handle_notification(sender.me, note)
            sender.store.mark_sent(pending.id, sender.clock.now())
            count += 1
    return count


def test_a_case_between_two_runtimes(
    pair: tuple[ContractRuntime, ContractRuntime, Anchored, Anchored],
) -> None:
    oem, sup, oem_anchored, sup_anchored = pair
    actions = (
        ActionItem("A1", ActionKind.ROOT_CAUSE, sup.me.member_id, date(2026, 12, 9)),
        ActionItem("A2", ActionKind.VERIFICATION, oem.me.member_id, date(2026, 12, 19)),
    )
    terms = CaseTerms(
        CaseKind.INVESTIGATION,
        oem.me.member_id,
        sup.me.member_id,
        Severity.MAJOR,
        "EL microcracks",
        actions=actions,
    )
    case_id = oem.open_case(terms).case.case_id
    assert deliver(oem, sup, twice=True) == 2  # OPEN, SEND; each retried once
    assert sup.store.cases.find_case(case_id).case.state is CaseState.RECEIVED
    assert deliver(sup, oem) == 1  # the automatic RECEIVE
    assert oem.store.cases.find_case(case_id).case.state is CaseState.RECEIVED
    sup.case_step(case_id, Step.ACKNOWLEDGE)
    sup.case_step(case_id, Step.ACCEPT)
    with pytest.raises(CaseDenied, match="made by the node itself"):
        sup.case_step(case_id, Step.RECEIVE)
    assert deliver(sup, oem, twice=True) == 2
    sup.case_step(case_id, Step.ACTION_DONE, "A1")  # both at once, neither seen by the other
    oem.case_step(case_id, Step.ACTION_DONE, "A2")
    assert deliver(sup, oem) == 1
    assert deliver(oem, sup) == 1
    oem.case_step(case_id, Step.CLOSE)
    assert deliver(oem, sup) == 1
    mine, theirs = oem.store.cases.find_case(case_id), sup.store.cases.find_case(case_id)
    assert mine.case == theirs.case and mine.case.state is CaseState.CLOSED
    assert len(oem_anchored) == len(sup_anchored) == 1
    assert oem_anchored[0][0] == CASE_KIND
    assert oem_anchored == sup_anchored  # the same leaf on both sides
    ref = oem_anchored[0][1]
    assert oem.case_record(ref) == sup.case_record(ref) == oem_anchored[0][2]
    assert oem.case_record("nobody:qc-x") is None


def hand(sender: ContractRuntime, receiver: ContractRuntime, event: CaseEvent) -> bool:
    """`sender`'s event, signed with its key, made by hand (a modified node) and delivered."""
    signed = sign_event(event, sender.signing_key)
    body = SealedEvent(event.canonical_bytes(), signed.signature)
    note = Notification(f"case:{event.event_id}", sender.me.member_id, event.at, body)
    return receiver.handle_notification(sender.me, note)


def alert(sender: ContractRuntime, receiver: ContractRuntime, subject: str) -> CaseTerms:
    return CaseTerms(
        CaseKind.ALERT, sender.me.member_id, receiver.me.member_id, Severity.MINOR, subject
    )


def test_a_case_dated_far_ahead_is_refused_and_cannot_pin_the_listing(
    pair: tuple[ContractRuntime, ContractRuntime, Anchored, Anchored],
) -> None:
    oem, sup, _, _ = pair
    own = sup.open_case(alert(sup, oem, "our own critical case, opened now")).case.case_id
    far = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
    opened = opening("qc-9999", alert(oem, sup, "noise"), far)[0]
    with pytest.raises(MessageOutOfTime, match="ahead of this node's clock"):
        hand(oem, sup, opened)
    ahead = sup.clock.now() + dt.timedelta(minutes=6)  # past the five minutes clocks drift
    with pytest.raises(MessageOutOfTime, match="ahead of this node's clock"):
        hand(oem, sup, opening("qc-ahead", alert(oem, sup, "noise"), ahead)[0])
    assert sup.store.cases.count_cases() == 1
    today = sup.clock.now().date()
    assert [r.case_id for r in sup.store.cases.case_rows(today, limit=1)] == [own]


def test_a_late_delivery_in_order_is_taken(
    pair: tuple[ContractRuntime, ContractRuntime, Anchored, Anchored],
) -> None:
    """An outbox delivers three days after the case was opened (the peer was down): taken,
    and the receiver's RECEIVE is dated by its own clock."""
    oem, sup, _, _ = pair
    then = oem.clock.now() - dt.timedelta(days=3)
    for event in opening("qc-late", alert(oem, sup, "written during an outage"), then):
        assert hand(oem, sup, event)
    log = sup.store.cases.case_log(oem.me.member_id, "qc-late")
    assert log.case.state is CaseState.RECEIVED
    assert log.events[-1].event.at > then + dt.timedelta(days=2)


def test_a_receiver_cannot_date_its_moves_before_the_case(
    pair: tuple[ContractRuntime, ContractRuntime, Anchored, Anchored],
) -> None:
    """The receiver's ACKNOWLEDGE, made by hand, dated 2020 (before the case was opened and
    before its own RECEIVE): refused, the opener's log stays as it was; dated in order,
    taken."""
    oem, sup, _, _ = pair
    case_id = oem.open_case(alert(oem, sup, "check lot L9")).case.case_id
    deliver(oem, sup)
    deliver(sup, oem)
    case = oem.store.cases.find_case(case_id).case
    past = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    ack = next_event(case, sup.me.member_id, Step.ACKNOWLEDGE, past)
    with pytest.raises(MessageOutOfTime, match="before the event it follows"):
        hand(sup, oem, ack)
    assert oem.store.cases.find_case(case_id).case.state is CaseState.RECEIVED
    in_order = next_event(case, sup.me.member_id, Step.ACKNOWLEDGE, case.updated_at)
    assert hand(sup, oem, in_order)


def test_moves_answering_a_peer_a_little_ahead_are_dated_after_it(
    tmp_path: Path,
) -> None:
    """The opener's clock runs three minutes ahead (within the drift a receiver accepts):
    the receiver dates its RECEIVE and ACKNOWLEDGE no earlier than the SEND they answer,
    so the opener takes them."""
    oem, _ = node(tmp_path, "sunarc", b"o", ahead=dt.timedelta(minutes=3))
    sup, _ = node(tmp_path, "cellex", b"s")
    case_id = oem.open_case(alert(oem, sup, "cells from lot L3")).case.case_id
    sent_at = oem.store.cases.find_case(case_id).case.updated_at
    assert deliver(oem, sup) == 2
    sup.case_step(case_id, Step.ACKNOWLEDGE)
    assert deliver(sup, oem) == 2  # RECEIVE, ACKNOWLEDGE: both taken
    log = oem.store.cases.find_case(case_id)
    assert log.case.state is CaseState.ACKNOWLEDGED
    assert [s.event.at >= sent_at for s in log.events] == [True] * 4
    oem.qdm.dispose()
    sup.qdm.dispose()


def test_a_case_held_back_by_the_hourly_cap_arrives_whole_later(
    pair: tuple[ContractRuntime, ContractRuntime, Anchored, Anchored],
) -> None:
    """The receiver takes one case an hour from the opener: the second case's OPEN is
    refused (RESOURCE_EXHAUSTED, retried) and its SEND waits behind it in the opener's
    outbox, instead of being refused as an event of an unknown case and set aside; once
    the receiver takes cases again both arrive."""
    oem, sup, _, _ = pair
    sup.cases_per_hour = 1
    oem.open_case(alert(oem, sup, "first"))
    assert deliver(oem, sup) == 2
    second = oem.open_case(alert(oem, sup, "second")).case.case_id
    (due,) = oem.store.due_messages(oem.clock.now())  # the OPEN alone
    note = notification_from_proto(
        notification_pb2.NotificationMessage.FromString(due.message.payload)
    )
    with pytest.raises(NotificationQuotaError, match="cases_per_member_hour 1") as refused:
        sup.handle_notification(oem.me, note)
    assert refused.value.grpc_status == "RESOURCE_EXHAUSTED"
    assert sup.store.cases.count_cases() == 1
    sup.cases_per_hour = 2  # as if the hour had gone by
    assert deliver(oem, sup) == 2
    assert sup.store.cases.find_case(second).case.state is CaseState.RECEIVED


def test_a_retried_event_is_known_without_reading_the_case(
    pair: tuple[ContractRuntime, ContractRuntime, Anchored, Anchored],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sender's outbox delivers an event again until it hears back, and every retry read
    and parsed the case's whole log (8.5 ms for a case opened with 213 KB, and no quota
    counts retries). A retry is now known by its one row: answered False, the log unread."""
    oem, sup, _, _ = pair
    oem.open_case(alert(oem, sup, "EL microcracks"))
    due = oem.store.due_messages(oem.clock.now())
    notes = [
        notification_from_proto(notification_pb2.NotificationMessage.FromString(p.message.payload))
        for p in due
    ]
    assert all(sup.handle_notification(oem.me, note) for note in notes)
    reads: list[str] = []
    log = sup.store.cases.case_log
    monkeypatch.setattr(sup.store.cases, "case_log", lambda *a: reads.append(a[1]) or log(*a))
    assert not any(sup.handle_notification(oem.me, note) for note in notes)
    assert reads == []
