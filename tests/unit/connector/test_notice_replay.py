"""A notice re-sent under an id it was kept under (`connector.contract_store.notices`).

A peer retries a notification until we acknowledge it, so the same notice arriving
again is answered "kept before" and stores nothing. The review found that the same id
with *other* content was answered the same way: the sender read it as delivered, and
its change (another subject, another batch, an escalated description) was silently
dropped. Now that is refused with `MessageReplayError` (ALREADY_EXISTS / 409, which the
sender's outbox treats as a refusal, not a retry) and the first content stays kept.
Both backends: the comparison reads back what each database stored.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine

from qdspace.connector.contract_errors import MessageReplayError
from qdspace.connector.contract_store import ContractStore
from qdspace.connector.spc import Investigation, QualityAlert, SpcAlert, SpcPoint
from qdspace.node.faults import grpc_status_name, http_status

T0 = datetime(2026, 6, 1, 8, 0, 0, 123456, tzinfo=UTC)
SENDER = "oem-aaaaaaaaaaaa"


@pytest.fixture
def store(contract_engine: Engine) -> ContractStore:
    return ContractStore(contract_engine, bytes(32))


def first_investigation() -> Investigation:
    return Investigation("inv-1", "check batch B1", "minor", "B1", "PO-1")


@pytest.mark.parametrize(
    "change",
    [
        {"subject": "LIFE-THREATENING recall B9"},
        {"description": "other text"},
        {"batch_id": "B9"},
        {"order_id": "PO-9"},
        {"status": "closed"},
    ],
)
def test_an_investigation_resent_with_other_content_is_refused(
    store: ContractStore, change: dict[str, str]
) -> None:
    first = first_investigation()
    assert store.notices.record_investigation(SENDER, first, T0) is True
    changed = dataclasses.replace(first, **change)
    with pytest.raises(MessageReplayError, match=r"investigation inv-1 .* other content"):
        store.notices.record_investigation(SENDER, changed, T0 + timedelta(seconds=1))
    assert store.notices.received_investigations() == [first]  # nothing else stored


def test_an_identical_investigation_resent_is_an_idempotent_retry(store: ContractStore) -> None:
    first = first_investigation()
    assert store.notices.record_investigation(SENDER, first, T0) is True
    again = dataclasses.replace(first)  # an equal notice decoded anew
    assert store.notices.record_investigation(SENDER, again, T0 + timedelta(hours=1)) is False
    assert store.notices.received_investigations() == [first]
    # ids are the sender's: another sender's notice under the same id is its own
    other = dataclasses.replace(first, subject="another member's notice")
    assert store.notices.record_investigation("oem-bbbbbbbbbbbb", other, T0) is True
    assert store.notices.received_investigations("oem-bbbbbbbbbbbb") == [other]


def alert(description: str = "9 points above the centre line", at: datetime = T0) -> QualityAlert:
    points = tuple(SpcPoint(i, 0.5 + i / 7, T0 + timedelta(minutes=i)) for i in range(3))
    return QualityAlert(
        "alert-1",
        SpcAlert("RULE_2", description, points, at),
        agreement_id="agr-1",
        order_id="ORD-1",
        station="EL-1",
        characteristic="score",
    )


def test_an_alert_resent_with_other_content_is_refused_and_an_equal_one_is_a_retry(
    store: ContractStore,
) -> None:
    first = alert()
    assert store.notices.record_alert(SENDER, first, T0) is True
    # the same instant in another zone is the same alert
    same = alert(at=T0.astimezone(timezone(timedelta(hours=2))))
    assert store.notices.record_alert(SENDER, same, T0 + timedelta(seconds=1)) is False
    for changed in (alert("Cpk 0.2: stop the line"), alert(at=T0 + timedelta(seconds=1))):
        with pytest.raises(MessageReplayError, match=r"quality alert alert-1 .* other content"):
            store.notices.record_alert(SENDER, changed, T0 + timedelta(seconds=2))
    assert store.notices.received_alerts() == [first]


def test_the_refusal_is_a_callers_mistake_on_every_transport() -> None:
    """Not an INTERNAL / 500, and a status the outbox counts as the peer's refusal."""
    error = MessageReplayError("investigation inv-1 was received before with other content")
    assert grpc_status_name(error) == "ALREADY_EXISTS"
    assert http_status(error) == 409
