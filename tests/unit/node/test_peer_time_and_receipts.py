"""A peer's clock and a consumer's own receipts decide nothing the provider stores, counts,
signs or anchors beyond what they may (`connector.peer_time`, `record_receipt`).

Each case was a hostile member's, reproduced against the real runtime and store:
requests dated 1970 (the protobuf default) escaped the hourly quotas; a request and an
acceptance dated 9999 made the provider sign and anchor an agreement of 9999; one
agreement with a delete duty let a consumer store, and have the provider anchor, a
receipt for every order id it could invent, and a second receipt for a duty already
answered was anchored though never stored."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from qdspace.connector.agreement import (
    ContractAgreement,
    DeletionReceipt,
    countersign,
    sign_agreement,
    sign_receipt,
)
from qdspace.connector.contract_errors import (
    ContractDenied,
    MessageOutOfTime,
    NegotiationQuotaError,
)
from qdspace.connector.contract_store import ContractStore, ensure_schema
from qdspace.connector.negotiation import ContractRequest, Role
from qdspace.connector.offers import standard_assets
from qdspace.connector.storage import create_store_engine
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.rpc.contracts_notification_serde import Notification
from qdspace.node.runtime.contracts import ContractRuntime
from qdspace.node.runtime.contracts_clock import ContractClock
from qdspace.policies.model import OfferTerms, make_offer, to_agreement

from ..servicer_doubles import seeded_member

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
FAR = dt.datetime(9999, 12, 31, 23, 59, tzinfo=dt.UTC)


def _runtime(root: Path, name: str, seed: bytes, role: str, **assets: Any) -> ContractRuntime:
    key, me = seeded_member(name, seed, role)
    engine = create_store_engine(f"sqlite:///{root / f'{name}.db'}")
    ensure_schema(engine)
    clock = ContractClock(root / f"{name}.clock", control=False)
    return ContractRuntime(
        me, key, ContractStore(engine, bytes(32)), engine, clock, bytes(32), assets
    )


def _request(
    provider: ContractRuntime, consumer: MemberIdentity, nid: str, at: dt.datetime
) -> ContractRequest:
    offer = make_offer(
        f"{nid}:request",
        provider.me.member_id,
        "inspections",
        OfferTerms(purposes=frozenset({"quality-assurance"})),
    )
    return ContractRequest(f"{nid}:c0", nid, consumer.member_id, offer, at)


def test_a_request_dated_1970_counts_against_the_hourly_quota(tmp_path: Path) -> None:
    cellex = _runtime(tmp_path, "cellex", b"p", "supplier")
    cellex.assets = {a.asset_id: a for a in standard_assets(cellex.me.member_id)}
    cellex.negotiations_per_hour = 5
    _, sunarc = seeded_member("sunarc", b"c", "oem")
    opened = 0
    for i in range(20):
        with pytest.raises(MessageOutOfTime, match="behind this node's clock"):
            cellex.handle_negotiation(sunarc, _request(cellex, sunarc, f"neg-{i}", EPOCH))
    assert opened == 0  # a request dated 1970 opens nothing: it is refused
    now = cellex.clock.now()
    for i in range(5):  # dated now, give or take the drift: counted
        minutes = dt.timedelta(minutes=4 * (-1) ** i)
        cellex.handle_negotiation(sunarc, _request(cellex, sunarc, f"neg-now-{i}", now + minutes))
    with pytest.raises(NegotiationQuotaError):
        cellex.handle_negotiation(sunarc, _request(cellex, sunarc, "neg-6", now))
    assert len(cellex.store.negotiations()) == 5


def test_a_message_dated_ahead_of_our_clock_is_refused(tmp_path: Path) -> None:
    cellex = _runtime(tmp_path, "cellex", b"p", "supplier")
    cellex.assets = {a.asset_id: a for a in standard_assets(cellex.me.member_id)}
    _, sunarc = seeded_member("sunarc", b"c", "oem")
    with pytest.raises(MessageOutOfTime, match="ahead of this node's clock"):
        cellex.handle_negotiation(sunarc, _request(cellex, sunarc, "neg-far", FAR))
    assert cellex.store.negotiations() == []
    soon = cellex.clock.now() + dt.timedelta(seconds=30)  # clocks drift: a little is fine
    negotiation, _ = cellex.handle_negotiation(sunarc, _request(cellex, sunarc, "neg-ok", soon))
    assert negotiation.created_at <= soon


def _provider_with_agreement(root: Path) -> tuple[ContractRuntime, SigningKey, MemberIdentity]:
    sunarc = _runtime(root, "sunarc", b"o", "oem")
    ckey, cellex = seeded_member("cellex", b"s", "supplier")
    terms = OfferTerms(
        purposes=frozenset({"qa"}), orders=frozenset({"PO-1"}), retention_days=30, receipt=True
    )
    offer = make_offer("offer-1", sunarc.me.member_id, "inspections", terms)
    at = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
    agreement = ContractAgreement(
        "agr-1", "neg-1", sunarc.me.member_id, cellex.member_id, "inspections",
        to_agreement(offer, "agr-1", cellex.member_id), at, at,
    )  # fmt: skip
    signed = countersign(sign_agreement(agreement, sunarc.signing_key), ckey, sunarc.verify_key)
    sunarc.store.save_agreement(signed, Role.PROVIDER)
    return sunarc, ckey, cellex


def test_receipts_only_for_orders_in_scope_and_one_anchored_per_duty(tmp_path: Path) -> None:
    sunarc, ckey, cellex = _provider_with_agreement(tmp_path)
    anchored: list[str] = []
    sunarc.record = lambda kind, ref, data: anchored.append(ref)
    deleted = dt.datetime(2026, 7, 1, tzinfo=dt.UTC)

    def send(order: str, at: dt.datetime) -> bool:
        receipt = DeletionReceipt("agr-1", cellex.member_id, 3, "ab" * 32, at, order_id=order)
        signed = sign_receipt(receipt, ckey)
        note = Notification(
            f"receipt:{receipt.receipt_id}", cellex.member_id, dt.datetime.now(dt.UTC), signed,
            recipient_id=sunarc.me.member_id,
        )  # fmt: skip
        return sunarc.handle_notification(cellex, note)

    for order in ("FAKE-1", "X" * 200_000):
        with pytest.raises(ContractDenied):
            send(order, deleted)
    assert send("PO-1", deleted) is True
    # another receipt for the same duty: neither stored nor anchored
    assert send("PO-1", deleted + dt.timedelta(microseconds=1)) is False
    held = {s.receipt.receipt_id for s in sunarc.store.receipts("agr-1")}
    assert len(held) == 1 and anchored == sorted(held)
