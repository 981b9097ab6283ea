"""Two contract runtimes (each on its own SQLite file) run a quality case through their
outboxes, delivered by hand: the receiver answers RECEIVE by itself, a retried delivery
changes nothing, and the closure is anchored with the same bytes on both sides."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from sqlalchemy import create_engine

from qdspace.connector.contract_errors import CaseDenied
from qdspace.connector.contract_store import ContractStore, ensure_schema
from qdspace.connector.investigation import (
    ActionItem,
    ActionKind,
    CaseKind,
    CaseState,
    CaseTerms,
    Severity,
    Step,
)
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.member_ids import member_id_for
from qdspace.node.rpc.contracts_notification_serde import notification_from_proto
from qdspace.node.runtime.contracts import ContractRuntime
from qdspace.node.runtime.contracts_cases import CASE_KIND
from qdspace.node.runtime.contracts_clock import ContractClock
from qdspace.protocols.v1 import notification_pb2

Anchored = list[tuple[str, str, bytes]]


def node(root: Path, name: str, seed: bytes) -> tuple[ContractRuntime, Anchored]:
    key = SigningKey(seed * 32)
    vk = bytes(key.verify_key)
    me = MemberIdentity(
        member_id_for(name, vk), name, "oem", vk, 1, dt.datetime(2100, 1, 1, tzinfo=dt.UTC), name
    )
    engine = create_engine(f"sqlite:///{root / f'{name}.db'}")
    ensure_schema(engine)
    store = ContractStore(engine, bytes(32))
    clock = ContractClock(root / f"{name}.clock", control=False)
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
    """Hand every due message of `sender` to `receiver` (as the outbox would)."""
    count = 0
    for pending in sender.store.due_messages(sender.clock.now()):
        wire = notification_pb2.NotificationMessage.FromString(pending.message.payload)
        note = notification_from_proto(wire)
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
