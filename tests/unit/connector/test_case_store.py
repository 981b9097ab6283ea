"""Quality cases in the contract store, on SQLite and PostgreSQL (when QDSPACE_TEST_PG_URL is set):
both logs fold, replays change nothing, a changed replay and an illegal move are refused,
the outbox entry goes in the same commit."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from nacl.signing import SigningKey
from sqlalchemy import Engine, func, select

from qdspace.connector.contract_errors import (
    CaseReplayError,
    CaseTransitionError,
    NotificationQuotaError,
    UnknownCaseError,
)
from qdspace.connector.contract_store import ContractStore, OutboxMessage
from qdspace.connector.contract_store import cases as case_module
from qdspace.connector.contract_store.outbox import outbox_table
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
from qdspace.connector.investigation_wire import sign_event

OEM, SUP = "sunarc-000000000001", "cellex-000000000002"
T0 = datetime(2026, 12, 1, tzinfo=UTC)
O_KEY, S_KEY = SigningKey(b"o" * 32), SigningKey(b"s" * 32)


@pytest.fixture
def store(contract_engine: Engine) -> ContractStore:
    """The contract store on a SQLite file, or a fresh PostgreSQL schema (conftest)."""
    return ContractStore(contract_engine, bytes(32))


def terms() -> CaseTerms:
    action = ActionItem("A1", ActionKind.CONTAINMENT, SUP, date(2026, 12, 5), "quarantine")
    return CaseTerms(
        CaseKind.INVESTIGATION, OEM, SUP, Severity.MAJOR, "EL cracks", actions=(action,)
    )


def note(event: CaseEvent) -> OutboxMessage:
    return OutboxMessage("cellex", "notification", event.event_id, event.event_id, b"x")


def outbox_count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(outbox_table)).scalar_one())


def test_a_case_is_kept_as_its_signed_log(store: ContractStore) -> None:
    opened = [sign_event(e, O_KEY) for e in opening("qc-1", terms(), T0)]
    assert store.cases.append(opened, [note(opened[0].event)], T0)
    log = store.cases.case_log(OEM, "qc-1")
    assert log.case.state is CaseState.SENT and len(log.events) == 2
    assert store.cases.find_case("qc-1") == log
    assert [c.case_id for c in store.cases.cases()] == ["qc-1"]
    assert outbox_count(store._outbox.engine) == 1
    # the same events again: acknowledged as not new, nothing queued twice
    assert not store.cases.append(opened, [note(opened[0].event)], T0)
    assert outbox_count(store._outbox.engine) == 1
    with pytest.raises(UnknownCaseError):
        store.cases.case_log(SUP, "qc-1")


def test_a_replay_with_other_content_is_refused(store: ContractStore) -> None:
    opened = [sign_event(e, O_KEY) for e in opening("qc-1", terms(), T0)]
    store.cases.append(opened, [], T0)
    received = next_event(store.cases.case_log(OEM, "qc-1").case, SUP, Step.RECEIVE, T0)
    store.cases.append([sign_event(received, S_KEY)], [], T0)
    changed = CaseEvent(OEM, "qc-1", SUP, 1, Step.RECEIVE, T0, note="other")
    with pytest.raises(CaseReplayError, match="other content"):
        store.cases.append([sign_event(changed, S_KEY)], [note(changed)], T0)
    assert store.cases.case_log(OEM, "qc-1").events[-1].event == received


def test_an_illegal_move_is_refused_and_nothing_is_queued(store: ContractStore) -> None:
    opened = [sign_event(e, O_KEY) for e in opening("qc-1", terms(), T0)]
    store.cases.append(opened, [], T0)
    jump = CaseEvent(OEM, "qc-1", SUP, 1, Step.ACCEPT, T0)
    with pytest.raises(CaseTransitionError, match="is SENT: ACCEPT"):
        store.cases.append([sign_event(jump, S_KEY)], [note(jump)], T0)
    assert outbox_count(store._outbox.engine) == 0
    assert store.cases.case_log(OEM, "qc-1").case.state is CaseState.SENT


def test_cases_a_peer_opens_are_bounded(
    store: ContractStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(case_module, "MAX_RECEIVED_PER_SENDER", 2)
    for i in range(2):
        opened = [sign_event(e, O_KEY) for e in opening(f"qc-{i}", terms(), T0)]
        store.cases.append(opened, [], T0, quota_for=OEM)
    third = [sign_event(e, O_KEY) for e in opening("qc-3", terms(), T0)]
    with pytest.raises(NotificationQuotaError, match="2 quality cases"):
        store.cases.append(third, [], T0, quota_for=OEM)
    assert len(store.cases.cases()) == 2


def test_a_case_id_is_used_once_whoever_opens_it(store: ContractStore) -> None:
    opened = [sign_event(e, O_KEY) for e in opening("qc-1", terms(), T0)]
    store.cases.append(opened, [], T0)
    shadow = CaseTerms(CaseKind.ALERT, SUP, OEM, Severity.MINOR, "same id, other opener")
    copied = [sign_event(e, S_KEY) for e in opening("qc-1", shadow, T0)]
    with pytest.raises(CaseReplayError, match="already in use"):
        store.cases.append(copied, [], T0, quota_for=SUP)
    assert store.cases.find_case("qc-1").case.opener_id == OEM
