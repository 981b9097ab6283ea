"""Notification ids fit the columns that keep them, whatever the members' names.

An order closing's id names both members and the order, a case event's both members and
the case: with company names near their 63-character limit they pass the 128 characters
the outbox (and the receiving peer, `contracts_serde.required`) keep. `bounded_id`
leaves a short id as it is and turns a long one into its kind and a digest of the whole.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from qdspace.connector.agreement import OrderClosed
from qdspace.connector.contract_store.common import ID_LENGTH
from qdspace.node.errors import WireFormatError
from qdspace.node.member_ids import member_id_for
from qdspace.node.rpc.contracts_notification_serde import (
    Notification,
    notification_from_proto,
    notification_to_proto,
)
from qdspace.node.runtime.contracts_notices import bounded_id

PROVIDER = member_id_for("cellex-photovoltaic-module-components-manufacturing-europe", b"p")
CONSUMER = member_id_for("sunarc-solar-energy-systems-original-equipment-manufacturer", b"c")
AT = datetime(2026, 12, 6, tzinfo=UTC)


def test_a_short_id_is_kept_and_a_long_one_becomes_its_kind_and_a_digest() -> None:
    assert bounded_id("receipt:rcpt-0123") == "receipt:rcpt-0123"
    long_id = f"order-closed:{PROVIDER}:{'ORD-' + '9' * 60}:{CONSUMER}"
    assert len(long_id) > ID_LENGTH
    bounded = bounded_id(long_id)
    assert len(bounded) <= ID_LENGTH and bounded.startswith("order-closed:sha256:")
    assert bounded_id(long_id) == bounded  # a repeat is the same id
    assert bounded_id(long_id + "x") != bounded
    assert bounded_id("x" * 200).startswith("x" * 32 + ":sha256:")  # no kind: cut


def test_the_peer_takes_the_bounded_id_and_would_refuse_the_long_one() -> None:
    long_id = f"order-closed:{PROVIDER}:{'ORD-' + '9' * 60}:{CONSUMER}"
    body = OrderClosed("ORD-" + "9" * 60, AT, ("agr-1",))
    sent = Notification(bounded_id(long_id), PROVIDER, AT, body)
    assert notification_from_proto(notification_to_proto(sent)) == sent
    with pytest.raises(WireFormatError, match="notification_id must be 1 to 128"):
        notification_from_proto(notification_to_proto(Notification(long_id, PROVIDER, AT, body)))


def test_a_notice_is_bounded_where_it_arrives() -> None:
    """Each alert or investigation a member sends is kept here (10,000 of a kind per
    sender): one of 256 KB each let a member fill 2.5 GB. Texts, ids and an alert's
    points are now bounded on the wire, a reason saying which and how long; notices of
    the sizes a node sends itself pass."""
    from qdspace.connector.spc import Investigation, QualityAlert, SpcAlert, SpcPoint

    points = tuple(SpcPoint(i, 1.0, AT) for i in range(8))
    alert = QualityAlert(
        "alert-1", SpcAlert("WE1", "one point beyond 3 sigma", points, AT), "agr-1",
        "ORD-1", "el-1", "score",
    )  # fmt: skip
    sent = Notification("alert:1", CONSUMER, AT, alert)
    assert notification_from_proto(notification_to_proto(sent)) == sent
    huge = SpcAlert("WE1", "x" * 300_000, points, AT)
    oversized = [
        (Notification("alert:2", CONSUMER, AT, QualityAlert("a-2", huge, "agr-1")), "description"),
        (
            Notification(
                "alert:3", CONSUMER, AT,
                QualityAlert("a-3", SpcAlert("WE1", "d", points * 10, AT), "agr-1"),
            ),
            "80 points",
        ),
        (
            Notification(
                "inv:1", CONSUMER, AT, Investigation("inv-1", "subject", "y" * 5000)
            ),
            "investigation description",
        ),
        (
            Notification(
                "inv:2", CONSUMER, AT, Investigation("inv-2", "s", "d", status="x" * 17)
            ),
            "investigation status",
        ),
    ]  # fmt: skip
    for note, said in oversized:
        with pytest.raises(WireFormatError, match=said):
            notification_from_proto(notification_to_proto(note))
