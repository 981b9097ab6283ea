"""What a peer's notice states is checked before the node keeps, signs or logs anything
(`node.runtime.contracts_notices`, `connector.contract_store.closures`).

Each case was a hostile member's, reproduced against the real runtime and a real SQLite
store, each notice through the decoding a Notify call does: a provider "closed" hundreds
of orders it invented under an agreement that names none, and the consumer signed,
anchored and queued a deletion receipt for each; a closure dated 1970 cut an agreed
retention to zero and one dated 9999 overflowed the deadline (INTERNAL); a receipt dated
1970 turned an overdue duty into one fulfilled on time; a member with no agreement had
its alert kept and shown; a line break in an alert forged a line in the node's log.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from pathlib import Path

import grpc
import pytest
from nacl.signing import SigningKey

from qdspace.connector.agreement import (
    AgreementTermination,
    ContractAgreement,
    DeletionReceipt,
    OrderClosed,
    countersign,
    sign_agreement,
    sign_receipt,
)
from qdspace.connector.contract_errors import ContractDenied, ContractError
from qdspace.connector.contract_store import ContractStore, IncomingRow, ensure_schema
from qdspace.connector.contract_store import closures as closure_store
from qdspace.connector.negotiation import Role
from qdspace.connector.spc import Investigation, QualityAlert, SpcAlert, SpcPoint
from qdspace.connector.storage import create_store_engine
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.rpc.codes import status_code
from qdspace.node.rpc.contracts_notification_serde import (
    Notification,
    NotificationBody,
    notification_from_proto,
    notification_to_proto,
)
from qdspace.node.rpc.limits import check_values
from qdspace.node.runtime.contracts import ContractRuntime
from qdspace.node.runtime.contracts_clock import ContractClock
from qdspace.policies.canonical import canonical_json
from qdspace.policies.model import OfferTerms, make_offer, to_agreement
from qdspace.policies.retention import DeletionDuty, DutyStatus
from qdspace.protocols.v1 import notification_pb2

from ..servicer_doubles import seeded_member

SIGNED = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
FAR = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)


class Node:
    """A member's real contract runtime on its own SQLite file; ``anchored`` lists the
    ledger leaves it would have anchored."""

    def __init__(self, root: Path, name: str, seed: bytes, role: str) -> None:
        key, me = seeded_member(name, seed, role)
        engine = create_store_engine(f"sqlite:///{root / f'{name}.db'}")
        ensure_schema(engine)
        clock = ContractClock(root / f"{name}.clock", control=False)
        self.rt = ContractRuntime(
            me, key, ContractStore(engine, bytes(32)), engine, clock, bytes(32), {}
        )
        self.anchored: list[str] = []
        self.rt.record = lambda kind, ref, data: self.anchored.append(kind)

    def deliver(self, peer: MemberIdentity, body: NotificationBody, nid: str = "n-1") -> bool:
        """What Notify does with a notice `peer` sent (after mutual TLS)."""
        note = Notification(nid, peer.member_id, dt.datetime.now(dt.UTC), body)
        raw = notification_to_proto(note).SerializeToString()
        message = notification_pb2.NotificationMessage.FromString(raw)
        check_values(message)
        return self.rt.handle_notification(peer, notification_from_proto(message))


def _agree(
    node: Node,
    role: Role,
    other_key: SigningKey,
    other: MemberIdentity,
    agreement_id: str,
    orders: frozenset[str] | None = None,
) -> None:
    """An agreement between `node` (in `role`) and `other`, signed on `SIGNED`, with a
    30-day delete duty and a receipt; `orders` None: it names none (every order)."""
    me = node.rt.me
    provider, consumer = (me, other) if role is Role.PROVIDER else (other, me)
    p_key, c_key = (node.rt.signing_key, other_key) if role is Role.PROVIDER else (other_key, None)
    terms = OfferTerms(purposes=frozenset({"qa"}), orders=orders, retention_days=30, receipt=True)
    offer = make_offer(f"offer-{agreement_id}", provider.member_id, "inspections", terms)
    agreement = ContractAgreement(
        agreement_id, f"neg-{agreement_id}", provider.member_id, consumer.member_id,
        "inspections", to_agreement(offer, agreement_id, consumer.member_id), SIGNED, SIGNED,
    )  # fmt: skip
    c_key = c_key or node.rt.signing_key
    signed = countersign(sign_agreement(agreement, p_key), c_key, p_key.verify_key)
    node.rt.store.save_agreement(signed, role)


def _receive(node: Node, agreement_id: str, order: str, count: int = 3) -> None:
    """`count` rows of `order` received under the agreement (what a transfer stores)."""
    rows = [
        canonical_json({"@key": f"{order}-{n}", "@v": 1, "order_id": order, "score": n / 7})
        for n in range(count)
    ]
    incoming = [IncomingRow(n, order, row) for n, row in enumerate(rows)]
    node.rt.store.store_received_rows(agreement_id, f"src-{order}", incoming, SIGNED)


@pytest.fixture
def consumer(tmp_path: Path) -> Node:
    return Node(tmp_path, "sunarc", b"o", "oem")


CELLEX_KEY, CELLEX = seeded_member("cellex", b"s", "supplier")
MALLORY_KEY, MALLORY = seeded_member("mallory", b"m", "oem")


# ----------------------------------------------------------- closures (F3, F4)


def test_invented_closures_under_an_agreement_naming_no_order_sign_nothing(
    consumer: Node,
) -> None:
    """Cellex "closes" 40 orders it invented under an agreement that names no order,
    dated at its signing (their deadlines long past): acknowledged, but the sweep signs,
    anchors and queues nothing for them (on the old code: 40 receipts, 40 leaves, 40
    messages). The order SunArc did receive is deleted and answered with exactly one."""
    _agree(consumer, Role.CONSUMER, CELLEX_KEY, CELLEX, "agr-open")
    _receive(consumer, "agr-open", "PO-HELD")
    for i in range(40):
        assert consumer.deliver(CELLEX, OrderClosed(f"INVENTED-{i}", SIGNED, ("agr-open",)))
    assert consumer.deliver(CELLEX, OrderClosed("PO-HELD", SIGNED, ("agr-open",)))
    store = consumer.rt.store
    assert not [h for h in store.holdings() if h.closed and h.order_id != "PO-HELD"]
    report = consumer.rt.sweep()
    assert [s.receipt.order_id for s in report.receipts] == ["PO-HELD"]
    assert report.receipts[0].receipt.row_count == 3
    assert consumer.anchored == ["deletion_receipt"]
    assert len(store.due_messages(consumer.rt.clock.now())) == 1
    assert consumer.rt.sweep().receipts == ()  # and nothing the next time


def test_a_closure_names_each_agreement_once_and_a_bounded_number(consumer: Node) -> None:
    """A closure naming one agreement 6,000 times (228 KB, under the call's size cap) cost
    the receiver 6.1 s of CPU, a transaction per copy. Repeats, and more than
    `MAX_CLOSED_AGREEMENTS` agreements, are refused where the notice is decoded, before any
    read; a provider with more agreements than that sends several closures."""
    from qdspace.node.errors import WireFormatError
    from qdspace.node.rpc.contracts_notification_serde import MAX_CLOSED_AGREEMENTS
    from qdspace.node.runtime.contracts_notices import _parts

    _agree(consumer, Role.CONSUMER, CELLEX_KEY, CELLEX, "agr-open")
    with pytest.raises(WireFormatError, match="2 agreement ids \\(1 distinct\\)"):
        consumer.deliver(CELLEX, OrderClosed("PO-1", SIGNED, ("agr-open", "agr-open")))
    many = tuple(f"agr-{i}" for i in range(MAX_CLOSED_AGREEMENTS + 1))
    with pytest.raises(WireFormatError, match=f"at most {MAX_CLOSED_AGREEMENTS}, each once"):
        consumer.deliver(CELLEX, OrderClosed("PO-1", SIGNED, many))
    assert consumer.rt.store.closure("agr-open", "PO-1") is None
    assert consumer.deliver(CELLEX, OrderClosed("PO-1", SIGNED, ("agr-open",)))
    parts = _parts(sorted(many))
    assert [len(p) for p in parts] == [MAX_CLOSED_AGREEMENTS, 1]
    assert sorted(a for p in parts for a in p) == sorted(many)


def test_a_closure_binds_data_received_after_it_and_a_named_order_always(
    consumer: Node,
) -> None:
    """The closure of an order not held yet is kept: rows of it received before its
    deadline are deleted on time. Under an agreement that names its order, the closure
    binds though nothing came (a receipt of zero rows answers the provider's duty)."""
    _agree(consumer, Role.CONSUMER, CELLEX_KEY, CELLEX, "agr-open")
    _agree(consumer, Role.CONSUMER, CELLEX_KEY, CELLEX, "agr-named", frozenset({"PO-N"}))
    assert consumer.deliver(CELLEX, OrderClosed("PO-LATE", SIGNED, ("agr-open",)))
    assert consumer.deliver(CELLEX, OrderClosed("PO-N", SIGNED, ("agr-named",)), "n-2")
    _receive(consumer, "agr-open", "PO-LATE", 2)
    receipts = {s.receipt.order_id: s.receipt.row_count for s in consumer.rt.sweep().receipts}
    assert receipts == {"PO-LATE": 2, "PO-N": 0}


def test_closures_of_orders_not_held_are_bounded_per_agreement(
    consumer: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most `MAX_UNHELD_CLOSURES` closures of orders nothing is held of are kept per
    agreement; past it one is refused (a repeat, or an order held, is not). Lapsed ones
    (past their deadline) make room (on the old code every one was kept)."""
    monkeypatch.setattr(closure_store, "MAX_UNHELD_CLOSURES", 3, raising=False)
    _agree(consumer, Role.CONSUMER, CELLEX_KEY, CELLEX, "agr-open")
    now = consumer.rt.clock.now()
    for i in range(3):
        consumer.deliver(CELLEX, OrderClosed(f"INVENTED-{i}", now, ("agr-open",)))
    with pytest.raises(ContractError, match="closures of orders nothing is held of") as refused:
        consumer.deliver(CELLEX, OrderClosed("INVENTED-3", now, ("agr-open",)))
    assert status_code(refused.value, grpc.StatusCode.INTERNAL) is (
        grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert consumer.deliver(CELLEX, OrderClosed("INVENTED-0", now, ("agr-open",))) is False
    _receive(consumer, "agr-open", "PO-HELD")
    assert consumer.deliver(CELLEX, OrderClosed("PO-HELD", now, ("agr-open",)))
    assert len(consumer.rt.store.closures("agr-open")) == 4
    # closures that lapsed at once (dated at the signing: 30 days' retention) take no room
    _agree(consumer, Role.CONSUMER, CELLEX_KEY, CELLEX, "agr-old")
    for i in range(10):
        assert consumer.deliver(CELLEX, OrderClosed(f"OLD-{i}", SIGNED, ("agr-old",)))
    assert len(consumer.rt.store.closures("agr-old")) == 1


@pytest.mark.parametrize(
    ("closed_at", "why"),
    [(EPOCH, "before the agreement was signed"), (FAR, "ahead of this node's clock")],
)
def test_a_closure_dated_outside_its_agreement_is_refused(
    consumer: Node, closed_at: dt.datetime, why: str
) -> None:
    """A close time before the agreement was signed (1970: the retention would be over
    before it began, the sweep deleted at once) or ahead of our clock (9999: the deadline
    overflowed, an INTERNAL error) is refused as the caller's error and records nothing."""
    _agree(consumer, Role.CONSUMER, CELLEX_KEY, CELLEX, "agr-1", frozenset({"PO-1"}))
    with pytest.raises(ContractError, match=why) as refused:
        consumer.deliver(CELLEX, OrderClosed("PO-1", closed_at, ("agr-1",)))
    assert status_code(refused.value, grpc.StatusCode.INTERNAL) is (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert consumer.rt.store.closures() == []
    assert consumer.rt.sweep().receipts == ()


def test_a_closure_dated_within_its_agreement_sets_the_agreed_deadline(consumer: Node) -> None:
    _agree(consumer, Role.CONSUMER, CELLEX_KEY, CELLEX, "agr-1", frozenset({"PO-1"}))
    closed = consumer.rt.clock.now() - dt.timedelta(days=2)  # an outbox delivers late
    assert consumer.deliver(CELLEX, OrderClosed("PO-1", closed, ("agr-1",)))
    closure = consumer.rt.store.closure("agr-1", "PO-1")
    assert closure is not None and closure.deadline == closed + dt.timedelta(days=30)
    assert consumer.rt.sweep().receipts == ()  # 28 days are left


def test_a_deadline_past_the_year_9999_is_the_latest_date_not_an_error() -> None:
    duty = DeletionDuty("agr-1", "cellex", "sunarc", 30, True, FAR - dt.timedelta(days=1))
    assert duty.deadline == dt.datetime.max.replace(tzinfo=dt.UTC)  # not an OverflowError


def test_the_provider_dates_a_closure_no_earlier_than_the_agreement(tmp_path: Path) -> None:
    """An order closed before an agreement concerning it was signed starts that agreement's
    retention at the signing: what the consumer accepts, the agreed retention whole."""
    cellex = Node(tmp_path, "cellex", b"s", "supplier")
    _, sunarc = seeded_member("sunarc", b"o", "oem")
    _agree(cellex, Role.PROVIDER, SigningKey(b"o" * 32), sunarc, "agr-1", frozenset({"PO-1"}))
    store = cellex.rt.store
    assert store.close_order(cellex.rt.me.member_id, "PO-1", EPOCH) == ["agr-1"]
    closure = store.closure("agr-1", "PO-1")
    assert closure is not None and closure.closed_at == SIGNED


@pytest.mark.parametrize(
    ("ended_at", "why"),
    [(EPOCH, "before the agreement was signed"), (FAR, "ahead of this node's clock")],
)
def test_a_termination_dated_outside_its_agreement_is_refused(
    consumer: Node, ended_at: dt.datetime, why: str
) -> None:
    _agree(consumer, Role.CONSUMER, CELLEX_KEY, CELLEX, "agr-1")
    with pytest.raises(ContractError, match=why):
        consumer.deliver(CELLEX, AgreementTermination("agr-1", "ended", ended_at))
    assert consumer.rt.store.agreement("agr-1").terminated_at is None
    now = consumer.rt.clock.now()
    assert consumer.deliver(CELLEX, AgreementTermination("agr-1", "ended", now))
    assert consumer.rt.store.agreement("agr-1").terminated_at == now


# --------------------------------------------------------------- receipts (F7)


def test_a_receipt_dated_outside_its_agreement_is_refused(tmp_path: Path) -> None:
    """SunArc's duty to delete PO-1 is overdue; a receipt dated 1970 (before the agreement
    existed) or ahead of Cellex's clock is refused, and the duty stays overdue (on the old
    code it read fulfilled on time). One dated before the closure, after the signing (a
    consumer that deleted early, leaving the data space), is taken."""
    cellex = Node(tmp_path, "cellex", b"s", "supplier")
    sunarc_key, sunarc = seeded_member("sunarc", b"o", "oem")
    _agree(cellex, Role.PROVIDER, sunarc_key, sunarc, "agr-1", frozenset({"PO-1"}))
    store = cellex.rt.store
    store.record_order_closed("agr-1", "PO-1", dt.datetime(2026, 7, 1, tzinfo=dt.UTC))
    now = cellex.rt.clock.now()

    def receipt(deleted_at: dt.datetime) -> object:
        made = DeletionReceipt("agr-1", sunarc.member_id, 3, "ab" * 32, deleted_at, "PO-1")
        return sign_receipt(made, sunarc_key)

    for deleted_at, why in ((EPOCH, "before the agreement"), (FAR, "ahead of this node")):
        with pytest.raises(ContractError, match=why):
            cellex.deliver(sunarc, receipt(deleted_at))  # type: ignore[arg-type]
    (duty,) = store.deletion_duties(now)
    assert duty.status is DutyStatus.OVERDUE and cellex.anchored == []
    early = SIGNED + dt.timedelta(days=3)
    assert cellex.deliver(sunarc, receipt(early))  # type: ignore[arg-type]
    (duty,) = store.deletion_duties(now)
    assert duty.status is DutyStatus.FULFILLED and cellex.anchored == ["deletion_receipt"]


# ------------------------------------------------------------------ alerts (F5)


def _alert(agreement_id: str, description: str = "PECVD-2 vacuum beyond 3 sigma") -> QualityAlert:
    at = dt.datetime.now(dt.UTC)
    spc = SpcAlert("WE1", description, (SpcPoint(1, 9.9, at),), at)
    return QualityAlert(f"al-{agreement_id}", spc, agreement_id, "PO-1", "pecvd-2", "vacuum")


def test_an_alert_must_name_an_agreement_we_gave_its_sender(tmp_path: Path) -> None:
    """Mallory, no party to the agreement Cellex gave SunArc, sends Cellex an alert naming
    it, and one naming no agreement that exists: both refused alike, nothing kept (on the
    old code both were kept and shown with no sender). SunArc's own is kept, its sender
    with it."""
    cellex = Node(tmp_path, "cellex", b"s", "supplier")
    sunarc_key, sunarc = seeded_member("sunarc", b"o", "oem")
    _agree(cellex, Role.PROVIDER, sunarc_key, sunarc, "agr-sunarc", frozenset({"PO-1"}))
    answers = []
    for agreement_id in ("agr-sunarc", "agr-nowhere", ""):
        with pytest.raises(ContractDenied) as refused:
            cellex.deliver(MALLORY, _alert(agreement_id))
        answers.append(str(refused.value).replace(agreement_id, "ID"))
    assert answers[0] == answers[1]  # an unknown id and somebody else's: the same answer
    assert cellex.rt.store.notices.received_alerts() == []
    assert cellex.deliver(sunarc, _alert("agr-sunarc"))
    from qdspace.node.api.subscription_models import received_alert_public

    (kept,) = cellex.rt.store.notices.received_alerts_with_senders()
    shown = received_alert_public(kept)
    assert (shown.sender_id, shown.sender) == (sunarc.member_id, "sunarc")


# ---------------------------------------------------------- peer text in the log (F8)


def test_a_line_break_in_a_peers_text_makes_no_second_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An alert's description and an investigation's subject may hold line breaks; in
    the log they are escaped, so a peer cannot write a line of its own there."""
    cellex = Node(tmp_path, "cellex", b"s", "supplier")
    sunarc_key, sunarc = seeded_member("sunarc", b"o", "oem")
    _agree(cellex, Role.PROVIDER, sunarc_key, sunarc, "agr-sunarc", frozenset({"PO-1"}))
    forged = "drift\n2026-12-06 20:00:00,000 INFO node.contracts: deletion receipt verified"
    with caplog.at_level(logging.INFO, logger="node.contracts"):
        assert cellex.deliver(sunarc, _alert("agr-sunarc", forged))
        assert cellex.deliver(sunarc, Investigation("inv-1", forged, "d"), "n-2")
    lines = [r.getMessage() for r in caplog.records if r.name == "node.contracts"]
    assert len(lines) == 2, lines
    for line in lines:
        assert "\n" not in line and "drift\\n2026-12-06" in line


def test_an_investigation_is_kept_only_where_there_is_room(tmp_path: Path) -> None:
    """A peer's investigation is asked of the node's free disk (or a tenant's storage
    quota) before it is kept, as quality case data is: where the disk is down to the
    floor the node keeps, it is refused and nothing is kept (it was kept regardless)."""
    from qdspace.node.disk_room import DiskRoom
    from qdspace.node.errors import DiskLow

    cellex = Node(tmp_path, "cellex", b"s", "supplier")
    free = shutil.disk_usage(tmp_path).free
    cellex.rt.received_room = DiskRoom(tmp_path, free + 2**30)  # a floor above what is free
    notice = Investigation("inv-1", "EL cracks in B-7", "seen on three lots")
    with pytest.raises(DiskLow, match="an investigation from mallory"):
        cellex.deliver(MALLORY, notice)
    assert cellex.rt.store.notices.received_investigations() == []
    cellex.rt.received_room = DiskRoom(tmp_path, 0)
    assert cellex.deliver(MALLORY, notice)
